"""``ReplayRobot``: a recorded HDF5 episode played back as a robot, for open-loop evaluation.

Every recorded frame is offered as an observation (images, ``qpos`` as the state, the episode's
instruction as the prompt) whatever the policy commanded: the policy is evaluated on the states of the
demonstration, and what it commands is kept for comparison with the recorded actions.

The recorded action a frame is compared with is the one training paired with it: ``action[t]`` for
simulated episodes and ``action[t - 1]`` for real-robot ones (their recordings lag one step; see
``EpisodicDataset.load_raw_step``). ``delta_control`` pairs the same way: training's first delta for
frame ``t`` is that action minus ``qpos[t]``, which deployment adds back to the state it is offered.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_utils.dataset import chunk_start
from data_utils.episode_source import Episode, open_episode
from evaluate.robots.base import Observation, Robot, StepInfo, check_finite_action


def recorded_targets(action: np.ndarray, is_sim: bool) -> np.ndarray:
    """``(T, action_dim)``: the recorded action training pairs with each frame ``t`` (first of its chunk)."""
    return action[[chunk_start(t, is_sim) for t in range(len(action))]].copy()


class ReplayRobot(Robot):
    """Plays ``episode_paths`` one after another (each ``reset()`` starts the next one).

    Args:
        episode_paths: ACT-layout HDF5 episodes and/or LeRobot episodes (``<root>#episode=<i>``, see
            ``data_utils.episode_source``).
        camera_names: cameras the policy needs, in its order.
        camera_map: ``{policy camera: recorded camera}`` where their names differ (default: same names).
        prompt: instruction for every frame (default: the episode's ``language_raw``).
        max_steps: stop an episode after this many steps (default: all frames).
    """

    name = "replay"

    def __init__(
        self,
        episode_paths: Sequence[str | os.PathLike],
        camera_names: Sequence[str],
        camera_map: Mapping[str, str] | None = None,
        prompt: str | None = None,
        max_steps: int | None = None,
    ) -> None:
        if not episode_paths:
            raise ValueError("ReplayRobot needs at least one episode")
        self.episode_refs = [os.fspath(p) for p in episode_paths]
        self.episode_paths = [Path(p) for p in self.episode_refs]
        self.camera_names = list(camera_names)
        self.camera_map = {cam: (camera_map or {}).get(cam, cam) for cam in self.camera_names}
        self.prompt = prompt
        self.max_steps = max_steps
        self._episode = -1
        self._file: Episode | None = None
        self._open = contextlib.ExitStack()
        self._t = 0
        self.executed: list[np.ndarray] = []

    @property
    def num_episodes(self) -> int:
        return len(self.episode_paths)

    @property
    def episode_path(self) -> Path:
        return self.episode_paths[self._episode]

    def reset(self) -> Observation:
        self._close_file()
        self._episode += 1
        if self._episode >= len(self.episode_paths):
            raise RuntimeError(f"all {len(self.episode_paths)} recorded episodes have been replayed")
        path = self.episode_refs[self._episode]
        self._file = self._open.enter_context(open_episode(path))
        missing = []
        for cam, src in self.camera_map.items():
            try:
                self._file.frame(src, 0)
            except (KeyError, ValueError) as err:  # HDF5: no such dataset; LeRobot: no such feature
                missing.append(f"{cam} (recorded as {src!r}: {err})")
        if missing:
            raise KeyError(f"{path}: no camera {missing} (map cameras with --camera_map)")
        action = np.asarray(self._file.action(), dtype=np.float32)
        self.is_sim = self._file.is_sim
        self.actions = action
        self.targets = recorded_targets(action, self.is_sim)
        self.qpos = np.asarray(self._file.qpos(), dtype=np.float32)
        self.length = len(action) if self.max_steps is None else min(len(action), int(self.max_steps))
        self.instruction = self.prompt if self.prompt is not None else self._file.language(0)
        self._t = 0
        self.executed = []
        return self.get_obs()

    def get_obs(self) -> Observation:
        if self._file is None:
            raise RuntimeError("call reset() first")
        t = min(self._t, self.length - 1)
        return {
            "images": {cam: self._file.frame(src, t) for cam, src in self.camera_map.items()},
            "state": self.qpos[t].copy(),
            "prompt": self.instruction,
        }

    def step(self, action: np.ndarray) -> StepInfo:
        """Record ``action (action_dim,)`` for the comparison and move to the next frame (whatever the action)."""
        if self._file is None:
            raise RuntimeError("call reset() first")
        action = check_finite_action(action, "action")  # as a real robot would: nothing non-finite is "executed"
        if action.shape != self.targets.shape[1:]:
            raise ValueError(
                f"{self.episode_path}: actions are {self.targets.shape[1:]} as recorded, got shape {action.shape}"
            )
        self.executed.append(action.astype(np.float32))
        self._t += 1
        return StepInfo(done=self._t >= self.length)

    def episode_summary(self) -> dict[str, Any]:
        return {"episode": self.episode_refs[self._episode], "steps": len(self.executed), "sim": self.is_sim}

    def executed_and_recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N, action_dim)`` commanded and recorded actions of the steps played so far."""
        executed = np.stack(self.executed) if self.executed else np.zeros((0, self.targets.shape[1]), np.float32)
        return executed, self.targets[: len(executed)]

    def _close_file(self) -> None:
        self._open.close()
        self._file = None

    def close(self) -> None:
        self._close_file()


__all__ = ["ReplayRobot", "recorded_targets"]
