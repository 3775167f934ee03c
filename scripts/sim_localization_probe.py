"""Does the policy see where the cube is? Its first chunk on held-out demonstrations against a blind guess.

At the first frame of a transfer-cube episode the arms always start in the same pose, so the state says nothing
about the cube: only the camera does. The probe queries the policy at ``--steps`` (default: the first frame) of
each held-out demonstration and compares the predicted chunk with the recorded actions there, next to the
*blind* prediction: the mean of the training demonstrations' actions at the same step, what a policy that
ignores the images would do at best. A ratio (policy / blind error) near 1 means the chunk does not follow the
cube; open-loop replay cannot show this, because from the second query on the state tells where the
demonstration was heading. ``image effect``: the mean squared change of the chunk when the frames are swapped for
another held-out episode's (the cube elsewhere) with the state and the noise kept: 0 for a policy blind to its
cameras.

    python scripts/sim_localization_probe.py --ckpt DIR --episodes HELD_OUT/*.hdf5 --train_episodes DEMOS/*.hdf5
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# The right arm grasps the cube in transfer-cube: its joints (ALOHA order, after the left arm's 7) are the ones
# whose first chunk must follow the cube.
RIGHT_ARM = slice(7, 14)


def recorded_actions(path: Path, start: int, length: int) -> np.ndarray:
    """``(length, action_dim)`` actions of an episode from ``start`` (the last one repeated past the end)."""
    import h5py

    with h5py.File(path, "r") as f:
        actions = np.asarray(f["action"][()], dtype=np.float64)
    window = actions[start:start + length]
    if len(window) < length:
        window = np.concatenate([window, np.repeat(actions[-1:], length - len(window), axis=0)])
    return window


def observation(path: Path, step: int, camera_names: Sequence[str]) -> dict:
    """The policy's observation at ``step`` of a recorded episode: ``images`` ``{camera: (H, W, 3) uint8}`` (JPEG
    frames decoded), ``state`` ``(state_dim,)`` and the episode's instruction as ``prompt``."""
    import h5py

    from data_utils.hdf5_io import read_frame, read_language

    with h5py.File(path, "r") as f:
        length = int(f["action"].shape[0])
        if not 0 <= step < length:
            raise ValueError(f"{path}: step {step} is outside the episode's {length} steps")
        return {
            "images": {cam: np.asarray(read_frame(f, cam, step)) for cam in camera_names},
            "state": np.asarray(f["observations/qpos"][step], dtype=np.float32),
            "prompt": read_language(f),
        }


def probe(
    ckpt: Path, episodes: Sequence[Path], train_episodes: Sequence[Path], steps: Sequence[int], seed: int = 0
) -> dict:
    """Query ``ckpt`` at each of ``steps`` of each held-out episode; per step, the mean squared errors of its chunk
    ``(chunk, action_dim)`` and of the blind guess against the recorded actions (all joints, and the right arm's),
    their ratios, and ``image_effect`` (None with one episode: there is no other episode's frames to swap in)."""
    from evaluate.policy import DexVLAPolicy

    policy = DexVLAPolicy(ckpt, max_new_tokens=0, seed=seed)
    chunk = policy.chunk_size
    rows = []
    for step in steps:
        errors: dict[str, list[float]] = {"policy_all": [], "blind_all": [], "policy_right": [], "blind_right": []}
        effects = []
        blind = np.mean([recorded_actions(p, step, chunk) for p in train_episodes], axis=0)
        observations = [observation(path, step, policy.camera_names) for path in episodes]
        for k, (path, obs) in enumerate(zip(episodes, observations, strict=True)):
            predicted = np.asarray(policy.infer(obs)["actions"], np.float64)
            truth = recorded_actions(path, step, chunk)
            for name, guess in (("policy", predicted), ("blind", blind)):
                errors[f"{name}_all"].append(float(np.mean((guess - truth) ** 2)))
                errors[f"{name}_right"].append(float(np.mean((guess[:, RIGHT_ARM] - truth[:, RIGHT_ARM]) ** 2)))
            if len(episodes) > 1:
                # The same query with the next episode's frames (the cube elsewhere), this one's state and noise:
                # how much the chunk follows the cameras at all.
                swapped = dict(obs, images=observations[(k + 1) % len(observations)]["images"])
                moved = np.asarray(policy.infer(swapped)["actions"], np.float64)
                effects.append(float(np.mean((moved - predicted) ** 2)))
        means = {k: float(np.mean(v)) for k, v in errors.items()}
        rows.append({
            "step": step, "chunk": chunk, "episodes": len(episodes), **means,
            "ratio_all": means["policy_all"] / max(means["blind_all"], 1e-12),
            "ratio_right": means["policy_right"] / max(means["blind_right"], 1e-12),
            "image_effect": float(np.mean(effects)) if effects else None,
        })
    return {"ckpt": str(ckpt), "episodes": [str(p) for p in episodes], "train_episodes": len(train_episodes),
            "rows": rows}


def format_effect(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"  # a blind policy's effect is 1e-6 or less, not a round 0


def table(result: dict) -> str:
    lines = ["| step | policy MSE (all) | blind MSE (all) | ratio | policy MSE (right arm) | blind MSE (right arm) | "
             "ratio | image effect |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['step']} | {r['policy_all']:.4f} | {r['blind_all']:.4f} | {r['ratio_all']:.2f} | "
                     f"{r['policy_right']:.4f} | {r['blind_right']:.4f} | {r['ratio_right']:.2f} | "
                     f"{format_effect(r['image_effect'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--episodes", type=Path, nargs="+", required=True, help="held-out demonstrations (hdf5)")
    parser.add_argument("--train_episodes", type=Path, nargs="+", required=True,
                        help="the training demonstrations (their mean is the blind prediction)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    train = set(map(Path.resolve, args.train_episodes))
    overlap = [str(p) for p in args.episodes if p.resolve() in train]
    if overlap:
        parser.error(f"held-out episodes {overlap} are also training episodes")
    result = probe(args.ckpt, args.episodes, args.train_episodes, args.steps)
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
