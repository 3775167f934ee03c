"""``AlohaSimRobot``: closed-loop evaluation in the gym-aloha simulation (transfer-cube, insertion).

Actions are gym-aloha's 14 absolute joint targets (6 joints + normalised gripper per arm); the state is
its ``agent_pos``. The policy's cameras are rendered from the scene's cameras: ``top``, ``angle``,
``left_wrist``, ``right_wrist``, ... by name, and ALOHA's real-robot names are mapped to their sim
counterparts (``cam_high -> top``, ``cam_low -> angle``, ``cam_left_wrist -> left_wrist``,
``cam_right_wrist -> right_wrist``) unless ``camera_map`` says otherwise.

An episode ends on success (gym-aloha's reward reaches stage 4) or after ``max_steps`` (default: the
400 steps of the scripted demonstrations; gym-aloha registers its envs with 300, too short for
insertion). Per episode: ``success``, ``return`` (sum of the stage rewards), ``max_reward``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.robots.base import Observation, Robot, StepInfo, check_finite_action

ALOHA_TO_SIM_CAMERAS = {
    "cam_high": "top",
    "cam_low": "angle",
    "cam_left_wrist": "left_wrist",
    "cam_right_wrist": "right_wrist",
}


def gym_aloha_import_error() -> str | None:
    """``None`` when gym-aloha (and MuJoCo) import, else why not."""
    try:
        import evaluate.aloha_sim.envs  # noqa: F401
    except Exception as err:  # ImportError, or a MuJoCo/GL initialisation error
        return f"{type(err).__name__}: {err}"
    return None


class AlohaSimRobot(Robot):
    """The gym-aloha joint-space task as a robot.

    Args:
        task: ``"transfer_cube"`` or ``"insertion"``.
        camera_names: the policy's cameras, in its order.
        camera_map: ``{policy camera: sim camera}`` (default: see the module docstring).
        height, width: rendered frame size (the scripted demonstrations default to 240x320).
        seed: episode ``i`` places the objects with ``seed + i``.
        max_steps: episode length limit (default: the task's 400).
        prompt: instruction (default: the task's, as in the scripted demonstrations).
        video_dir: when given, each episode's frames of ``video_camera`` are written there as mp4.
        video_camera: sim camera recorded into the video (default: the first policy camera's).
    """

    name = "aloha_sim"
    default_fps = None  # simulated time: nothing to keep pace with

    def __init__(
        self,
        task: str,
        camera_names: Sequence[str],
        camera_map: Mapping[str, str] | None = None,
        height: int = 240,
        width: int = 320,
        seed: int = 0,
        max_steps: int | None = None,
        prompt: str | None = None,
        video_dir: str | os.PathLike | None = None,
        video_camera: str | None = None,
    ) -> None:
        problem = gym_aloha_import_error()
        if problem is not None:
            raise RuntimeError(
                f"--robot aloha_sim needs gym-aloha and MuJoCo (pip install gym-aloha mujoco dm-control): {problem}"
            )
        from evaluate.aloha_sim.envs import SIM_CAMERAS, FastAlohaEnv, get_sim_task

        self.spec = get_sim_task(task)
        self.camera_names = list(camera_names)
        overrides = dict(camera_map or {})
        self.camera_map = {
            cam: overrides.get(cam, cam if cam in SIM_CAMERAS else ALOHA_TO_SIM_CAMERAS.get(cam, cam))
            for cam in self.camera_names
        }
        unknown = {c: s for c, s in self.camera_map.items() if s not in SIM_CAMERAS}
        if unknown:
            raise ValueError(f"policy cameras {unknown} have no sim camera; map them (--camera_map) to {SIM_CAMERAS}")
        self.video_dir = None if video_dir is None else Path(video_dir)
        self.video_camera = video_camera or self.camera_map[self.camera_names[0]]
        rendered = list(dict.fromkeys([*self.camera_map.values(), *([self.video_camera] if video_dir else [])]))
        self.env = FastAlohaEnv(task, camera_names=rendered, height=height, width=width)
        self.seed = int(seed)
        self.max_steps = int(max_steps or self.spec.episode_len)
        self.prompt = prompt or self.spec.instruction
        self._episode = -1
        self._obs: dict[str, Any] | None = None
        self._t = 0
        self._rewards: list[float] = []
        self._frames: list[np.ndarray] = []
        self._success = False

    def _observation(self) -> Observation:
        pixels = self._obs["pixels"]
        return {
            "images": {cam: pixels[src] for cam, src in self.camera_map.items()},
            "state": np.asarray(self._obs["agent_pos"], dtype=np.float32),
            "prompt": self.prompt,
        }

    def reset(self) -> Observation:
        self._finish_video()
        self._episode += 1
        self._obs, _ = self.env.reset(seed=self.seed + self._episode)
        self._t, self._rewards, self._frames, self._success = 0, [], [], False
        self._record_frame()
        return self._observation()

    def get_obs(self) -> Observation:
        if self._obs is None:
            raise RuntimeError("call reset() first")
        return self._observation()

    def step(self, action: np.ndarray) -> StepInfo:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (14,):
            raise ValueError(f"gym-aloha takes (14,) joint targets, got {action.shape}")
        check_finite_action(action, "joint targets")  # MuJoCo would integrate NaN into the whole state
        self._obs, reward, terminated, _, info = self.env.step(action)
        self._t += 1
        self._rewards.append(float(reward))
        self._success = self._success or bool(info.get("is_success", False))
        self._record_frame()
        return StepInfo(done=bool(terminated) or self._t >= self.max_steps, reward=float(reward), success=self._success)

    def _record_frame(self) -> None:
        if self.video_dir is not None:
            self._frames.append(self._obs["pixels"][self.video_camera])

    def _finish_video(self) -> Path | None:
        """Write the current episode's frames (if any were recorded and not yet written) as mp4."""
        if self.video_dir is None or not self._frames:
            return None
        import imageio.v2 as imageio

        self.video_dir.mkdir(parents=True, exist_ok=True)
        path = self.video_dir / f"{self.spec.name}_episode_{self._episode}.mp4"
        from evaluate.aloha_sim.envs import FPS

        imageio.mimsave(path, self._frames, fps=FPS, macro_block_size=1)
        self._frames = []
        return path

    def episode_summary(self) -> dict[str, Any]:
        rewards = np.asarray(self._rewards)
        summary = {
            "seed": self.seed + self._episode,
            "steps": self._t,
            "success": bool(self._success),
            # Summed over the steps run: an episode ends at success, so compare success rates first.
            "return": float(rewards.sum()),
            "max_reward": float(rewards.max()) if len(rewards) else 0.0,
        }
        video = self._finish_video()
        if video is not None:
            summary["video"] = str(video)
        return summary

    def close(self) -> None:
        self._finish_video()
        self.env.close()


__all__ = ["ALOHA_TO_SIM_CAMERAS", "AlohaSimRobot", "gym_aloha_import_error"]
