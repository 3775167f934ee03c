#!/usr/bin/env python
"""Can the diffusion head itself learn the first chunk when it is *told* where the cube is?

The VLM is taken out: the head's condition is an oracle for the cube's position, the demonstration's normalised
action at ``--oracle_step`` (the scripted right arm at the cube), next to the robot state as usual. Trained on the
benchmark's demonstrations, the head is then queried at the first frame of held-out ones, where the state says
nothing about the cube, and compared with the blind guess (the training demonstrations' mean chunk) as in
``scripts/sim_localization_probe.py``. ``condition effect``: the mean squared change of the chunk when another held-out
episode's oracle is given (same state, same noise). A head that cannot get below the blind error here cannot do it
behind a VLM either; comparing ``--prediction_type epsilon`` (the reference) with ``sample`` isolates what the head's
training objective contributes.

    python scripts/sim_head_oracle.py --demos DEMOS/*/*.hdf5 --held_out HELD_OUT/*.hdf5 --stats dataset_stats.json
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from data_utils.normalization import NormStats  # noqa: E402
from policy_heads import ScaleDP, ScaleDPPolicyConfig  # noqa: E402


def load_episodes(paths: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(actions (T, A), qpos (T, S))`` float32 of each HDF5 episode."""
    import h5py

    from data_utils.hdf5_io import ACTION_KEY, QPOS_KEY

    episodes = []
    for path in paths:
        with h5py.File(path, "r") as f:
            episodes.append((f[ACTION_KEY][:].astype(np.float32), f[QPOS_KEY][:].astype(np.float32)))
    return episodes


class OracleData:
    """Training samples: a random step's chunk ``(chunk, A)`` (zero-padded), padding mask, state, and the oracle."""

    def __init__(self, episodes, stats: NormStats, chunk: int, oracle_step: int, seed: int) -> None:
        self.episodes, self.stats, self.chunk, self.oracle_step = episodes, stats, chunk, oracle_step
        self.rng = np.random.default_rng(seed)

    def oracle(self, actions: np.ndarray) -> np.ndarray:
        return self.stats.normalize_action(actions[min(self.oracle_step, len(actions) - 1)])

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        rows = {"actions": [], "is_pad": [], "states": [], "hidden_states": []}
        for _ in range(size):
            actions, qpos = self.episodes[self.rng.integers(len(self.episodes))]
            start = int(self.rng.integers(len(actions)))
            chunk = self.stats.normalize_action(actions[start : start + self.chunk])
            pad = np.zeros(self.chunk, bool)
            pad[len(chunk) :] = True
            chunk = np.concatenate([chunk, np.zeros((self.chunk - len(chunk), chunk.shape[1]), np.float32)])
            rows["actions"].append(chunk)
            rows["is_pad"].append(pad)
            rows["states"].append(self.stats.normalize_state(qpos[start]))
            rows["hidden_states"].append(self.oracle(actions))
        return {k: torch.as_tensor(np.stack(v)) for k, v in rows.items()}


def train_head(data: OracleData, prediction_type: str, steps: int, batch_size: int, lr: float, seed: int) -> ScaleDP:
    """ScaleDP_tiny on the oracle condition, AdamW with warmup and cosine decay, as the benchmark trains."""
    torch.manual_seed(seed)
    action_dim = data.episodes[0][0].shape[1]
    config = ScaleDPPolicyConfig(
        model_size="ScaleDP_tiny", cond_dim=action_dim, state_dim=data.episodes[0][1].shape[1], action_dim=action_dim,
        prediction_horizon=data.chunk, prediction_type=prediction_type,
    )
    head = ScaleDP(config).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 50)
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        loss = head(**data.batch(batch_size)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


@torch.no_grad()
def first_chunk_errors(head: ScaleDP, data: OracleData, held_out, train_episodes, seed: int) -> dict[str, float]:
    """Step-0 errors (raw action units) of the head and of the blind mean, and the condition effect."""
    chunk = data.chunk
    blind = np.mean([actions[:chunk] for actions, _ in train_episodes], axis=0)
    noise = torch.randn(1, chunk, head.config.action_dim, generator=torch.Generator().manual_seed(seed))

    def predict(oracle: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        out = head(hidden_states=torch.as_tensor(oracle)[None], states=torch.as_tensor(data.stats.normalize_state(qpos))[None],
                   noise=noise).actions
        return np.asarray(data.stats.unnormalize_action(out[0].numpy()), np.float64)

    policy, blind_err, effect = [], [], []
    for k, (actions, qpos) in enumerate(held_out):
        truth = actions[:chunk]
        predicted = predict(data.oracle(actions), qpos[0])
        policy.append(np.mean((predicted - truth) ** 2))
        blind_err.append(np.mean((blind[: len(truth)] - truth) ** 2))
        other = held_out[(k + 1) % len(held_out)][0]
        effect.append(np.mean((predict(data.oracle(other), qpos[0]) - predicted) ** 2))
    policy_mse, blind_mse = float(np.mean(policy)), float(np.mean(blind_err))
    return {"policy_mse": policy_mse, "blind_mse": blind_mse, "ratio": policy_mse / max(blind_mse, 1e-12),
            "condition_effect": float(np.mean(effect))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demos", type=Path, nargs="+", required=True, help="training demonstrations (hdf5)")
    parser.add_argument("--held_out", type=Path, nargs="+", required=True, help="held-out demonstrations (hdf5)")
    parser.add_argument("--stats", type=Path, required=True, help="the benchmark run's dataset_stats.json")
    parser.add_argument("--prediction_types", nargs="+", default=["epsilon", "sample"], choices=["epsilon", "sample"])
    parser.add_argument("--steps", type=int, nargs="+", default=[600, 2000])
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--oracle_step", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    overlap = set(map(Path.resolve, args.demos)) & set(map(Path.resolve, args.held_out))
    if overlap:
        parser.error(f"held-out episodes {sorted(map(str, overlap))} are also training episodes")
    stats = NormStats.load(args.stats)
    train_episodes, held_out = load_episodes(args.demos), load_episodes(args.held_out)
    print("| prediction type | steps | policy MSE | blind MSE | ratio | condition effect |")
    print("|---|---|---|---|---|---|")
    for prediction_type in args.prediction_types:
        for steps in args.steps:
            data = OracleData(train_episodes, stats, args.chunk, args.oracle_step, args.seed)
            head = train_head(data, prediction_type, steps, args.batch_size, args.lr, args.seed)
            r = first_chunk_errors(head, data, held_out, train_episodes, args.seed)
            print(f"| {prediction_type} | {steps} | {r['policy_mse']:.4f} | {r['blind_mse']:.4f} | {r['ratio']:.2f} | "
                  f"{r['condition_effect']:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
