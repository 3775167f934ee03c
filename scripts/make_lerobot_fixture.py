"""Write the test fixture LeRobotDataset v3.0 with the ``lerobot`` library's own writer.

Runs in the throwaway lerobot venv (``scripts/setup_lerobot_venv.sh``), not in ``.venv``::

    scripts/setup_lerobot_venv.sh
    PYTHONHASHSEED=0 .lerobot-venv/bin/python scripts/make_lerobot_fixture.py   # -> tests/data/lerobot_fixture

The content is deterministic; the bytes are too except the random dataset fingerprint that the
``datasets`` library stores in the data parquet's metadata (PYTHONHASHSEED=0 fixes the key order
of ``meta/stats.json``).

What the fixture holds is defined by formula in ``tests/lerobot_fixture_spec.py`` (3 episodes of
20/25/30 frames at 50 fps; two cameras as AV1 video, the library's default, one as image features;
14-dim state and action; per-episode tasks; a per-frame string feature ``observation.reasoning``).
The dataset is written to a temporary folder beside the output and moved into place at the end,
so an interrupted run leaves the previous fixture intact.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests import lerobot_fixture_spec as spec  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "tests" / "data" / "lerobot_fixture"


def features() -> dict[str, dict]:
    """The LeRobot feature spec of the fixture (shapes as the library wants them: images ``(H, W, C)``)."""
    joints = [f"joint_{j}" for j in range(spec.DIM)]
    feats: dict[str, dict] = {
        spec.STATE_KEY: {"dtype": "float32", "shape": (spec.DIM,), "names": joints},
        spec.ACTION_KEY: {"dtype": "float32", "shape": (spec.DIM,), "names": joints},
        spec.REASONING_KEY: {"dtype": "string", "shape": (1,), "names": None},
    }
    for key, (height, width), kind in spec.CAMERAS:
        feats[key] = {"dtype": kind, "shape": (height, width, 3), "names": ["height", "width", "channels"]}
    return feats


def write(out: Path, vcodec: str) -> None:
    # Offline: the writer must not try the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lerobot_fixture_", dir=out.parent))
    root = staging / "root"  # the writer creates the root itself and refuses an existing one
    try:
        dataset = LeRobotDataset.create(
            repo_id="dexvla/lerobot_fixture",
            fps=spec.FPS,
            features=features(),
            root=root,
            robot_type="aloha",
            use_videos=True,
            vcodec=vcodec,
        )
        for e, length in enumerate(spec.EPISODE_LENGTHS):
            states, actions = spec.state(e), spec.action(e)
            for t in range(length):
                frame = {
                    spec.STATE_KEY: states[t],
                    spec.ACTION_KEY: actions[t],
                    spec.REASONING_KEY: spec.reasoning(e, t),
                    "task": spec.task(e),
                }
                for c, (key, _, _) in enumerate(spec.CAMERAS):
                    frame[key] = spec.frame(c, e, t)
                dataset.add_frame(frame)
            # One encoder process at a time: the machine is small and the videos tiny.
            dataset.save_episode(parallel_encoding=False)
        dataset.finalize()
        leftover = root / "images"
        if leftover.exists():  # temporary PNGs of the writer, not part of the dataset
            shutil.rmtree(leftover)
        if out.exists():
            shutil.rmtree(out)
        root.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dataset root to write (replaced)")
    parser.add_argument("--vcodec", default="libsvtav1", help="the writer's codec (libsvtav1 is its default)")
    args = parser.parse_args()
    write(args.out, args.vcodec)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.1f} KiB)")
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(args.out)}  {p.stat().st_size} B")


if __name__ == "__main__":
    main()
