"""The gym-aloha simulation, made fast and seedable, in joint space (evaluation) and end-effector space (demos).

gym-aloha's tasks render three 480x640 cameras with shadows on every step (250-380 ms); the tasks here
render only the cameras asked for, without shadows (~25 ms per camera on a CPU). The end-effector (mocap)
tasks ship in gym-aloha but are not registered; :func:`make_ee_env` builds them, with the object pose set
from a seed (gym-aloha's own EE tasks draw it unseeded) and the mocap weld strengthened: under MuJoCo 3
the gripper otherwise lags the mocap target and waypoint policies miss their grasps.

Everything that needs MuJoCo is imported here, so ``import evaluate`` works without it. MuJoCo renders
offscreen through EGL unless ``MUJOCO_GL`` says otherwise (set before the first import of this module).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")


def _load_triton_before_gl() -> None:
    """Load triton's native library (bundled LLVM) before MuJoCo opens a software-EGL context.

    Mesa's llvmpipe, behind EGL on GPU-less machines, loads its own LLVM; importing triton (which torch
    does on first use of torch._dynamo, e.g. when torchvision or a transformers model is imported) *after*
    that segfaults the process. In the other order both work.
    """
    try:
        import triton._C  # noqa: F401
    except Exception:  # triton absent (CPU-only torch builds) or unloadable: nothing to order
        pass


_load_triton_before_gl()

import numpy as np  # noqa: E402
from dm_control import mujoco  # noqa: E402
from dm_control.rl import control  # noqa: E402
from dm_control.suite import base  # noqa: E402
from gym_aloha import constants as aloha_constants  # noqa: E402
from gym_aloha.env import AlohaEnv  # noqa: E402
from gym_aloha.tasks import sim as joint_tasks  # noqa: E402
from gym_aloha.tasks import sim_end_effector as ee_tasks  # noqa: E402
from gym_aloha.utils import sample_box_pose, sample_insertion_pose  # noqa: E402
from gymnasium import spaces  # noqa: E402

DT = aloha_constants.DT
FPS = aloha_constants.FPS
# Torque scale of the two mocap welds (column 10 of a weld's eq_data): the known fix for the gripper lag.
WELD_TORQUE_SCALE = 3.75
# Every camera in the gym-aloha scene.
SIM_CAMERAS = ("top", "angle", "front_close", "left_pillar", "right_pillar", "left_wrist", "right_wrist")
# The success stage of both tasks' staged reward (0..4).
MAX_REWARD = 4


@dataclass(frozen=True)
class SimTaskSpec:
    """One gym-aloha task: scene files, task classes, how its objects are placed, what it asks for."""

    name: str
    joint_xml: str
    ee_xml: str
    joint_task: type[base.Task]
    ee_task: type[base.Task]
    sample_object_pose: Callable[[int | None], np.ndarray]
    instruction: str
    episode_len: int = 400


def _insertion_pose(seed: int | None) -> np.ndarray:
    """``(14,)`` peg pose then socket pose (position + quaternion each)."""
    return np.concatenate(sample_insertion_pose(seed))


SIM_TASKS: dict[str, SimTaskSpec] = {
    "transfer_cube": SimTaskSpec(
        name="transfer_cube",
        joint_xml="bimanual_viperx_transfer_cube.xml",
        ee_xml="bimanual_viperx_end_effector_transfer_cube.xml",
        joint_task=joint_tasks.TransferCubeTask,
        ee_task=ee_tasks.TransferCubeEndEffectorTask,
        sample_object_pose=sample_box_pose,
        instruction="Pick up the red cube with the right arm and hand it over to the left arm.",
    ),
    "insertion": SimTaskSpec(
        name="insertion",
        joint_xml="bimanual_viperx_insertion.xml",
        ee_xml="bimanual_viperx_end_effector_insertion.xml",
        joint_task=joint_tasks.InsertionTask,
        ee_task=ee_tasks.InsertionEndEffectorTask,
        sample_object_pose=_insertion_pose,
        instruction="Pick up the red peg and the blue socket, and insert the peg into the socket.",
    ),
}


def get_sim_task(name: str) -> SimTaskSpec:
    if name not in SIM_TASKS:
        raise KeyError(f"unknown sim task {name!r}; known: {sorted(SIM_TASKS)}")
    return SIM_TASKS[name]


def disable_shadows(physics: mujoco.Physics) -> None:
    """Shadows cost most of a software-rendered frame and carry nothing a policy needs."""
    physics.model.light_castshadow[:] = 0


def check_cameras(camera_names: Sequence[str]) -> list[str]:
    unknown = [c for c in camera_names if c not in SIM_CAMERAS]
    if unknown:
        raise ValueError(f"cameras {unknown} are not in the gym-aloha scene; it has {list(SIM_CAMERAS)}")
    return list(camera_names)


class _RenderSelectedCameras:
    """Mixin for gym-aloha task classes: observe only ``camera_names`` at ``(height, width)``."""

    camera_names: list[str]
    height: int
    width: int

    def configure_rendering(self, camera_names: Sequence[str], height: int, width: int) -> None:
        self.camera_names, self.height, self.width = check_cameras(camera_names), int(height), int(width)

    def render_cameras(self, physics: mujoco.Physics) -> dict[str, np.ndarray]:
        """``{camera: (height, width, 3) uint8}`` for the configured cameras (none: ``{}``)."""
        return {cam: physics.render(height=self.height, width=self.width, camera_id=cam) for cam in self.camera_names}

    def get_observation(self, physics: mujoco.Physics) -> collections.OrderedDict:
        obs = collections.OrderedDict()
        obs["qpos"] = self.get_qpos(physics)
        obs["qvel"] = self.get_qvel(physics)
        obs["env_state"] = self.get_env_state(physics)
        obs["images"] = self.render_cameras(physics)
        return obs


class FastTransferCubeTask(_RenderSelectedCameras, joint_tasks.TransferCubeTask):
    """gym-aloha's joint-space transfer-cube task, rendering only the configured cameras."""


class FastInsertionTask(_RenderSelectedCameras, joint_tasks.InsertionTask):
    """gym-aloha's joint-space insertion task, rendering only the configured cameras."""


_FAST_JOINT_TASKS: dict[str, type[base.Task]] = {"transfer_cube": FastTransferCubeTask, "insertion": FastInsertionTask}


class FastAlohaEnv(AlohaEnv):
    """gym-aloha's ``AlohaEnv`` (joint-position actions, staged reward, ``info["is_success"]``), fast.

    Observations: ``{"pixels": {camera: (height, width, 3) uint8}, "agent_pos": (14,) float64}``.
    ``reset(seed)`` places the objects exactly as gym-aloha does for that seed.

    Args:
        task: ``"transfer_cube"`` or ``"insertion"``.
        camera_names: cameras to render each step (any of :data:`SIM_CAMERAS`; may be empty).
        height, width: rendered frame size.
    """

    def __init__(
        self, task: str, camera_names: Sequence[str] = ("top",), height: int = 480, width: int = 640
    ) -> None:
        self._camera_names, self._height, self._width = check_cameras(camera_names), int(height), int(width)
        super().__init__(
            task=task, obs_type="pixels_agent_pos", observation_width=width, observation_height=height,
            visualization_width=width, visualization_height=height,
        )
        frame = spaces.Box(low=0, high=255, shape=(height, width, 3), dtype=np.uint8)
        self.observation_space["pixels"] = spaces.Dict({cam: frame for cam in self._camera_names})

    def _make_env_task(self, task_name: str) -> control.Environment:
        spec = get_sim_task(task_name)
        physics = mujoco.Physics.from_xml_path(str(aloha_constants.ASSETS_DIR / spec.joint_xml))
        disable_shadows(physics)
        task = _FAST_JOINT_TASKS[task_name]()
        task.configure_rendering(self._camera_names, self._height, self._width)
        return control.Environment(
            physics, task, time_limit=float("inf"), control_timestep=DT, n_sub_steps=None, flat_observation=False
        )

    def _format_raw_obs(self, raw_obs: dict[str, Any]) -> dict[str, Any]:
        return {"pixels": {k: v.copy() for k, v in raw_obs["images"].items()}, "agent_pos": raw_obs["qpos"].copy()}

    @property
    def physics(self) -> mujoco.Physics:
        return self._env.physics

    def joint_velocities(self) -> np.ndarray:
        """``(14,)`` joint velocities in the layout of ``agent_pos`` (grippers normalised, as ACT records ``qvel``)."""
        return self._env.task.get_qvel(self._env.physics)


# ---- end-effector (mocap) space: scripted demonstrations ------------------------------------------------
class _SeededEndEffectorTask(_RenderSelectedCameras):
    """Mixin for gym-aloha's EE tasks: objects placed at ``object_pose``; mocap and gripper state observed."""

    object_pose: np.ndarray | None = None
    object_joints: tuple[str, ...] = ()

    def initialize_episode(self, physics: mujoco.Physics) -> None:
        if self.object_pose is None:
            raise RuntimeError("set object_pose (SimTaskSpec.sample_object_pose(seed)) before resetting the EE env")
        self.initialize_robots(physics)
        for i, joint in enumerate(self.object_joints):
            physics.named.data.qpos[joint] = self.object_pose[7 * i : 7 * (i + 1)]
        base.Task.initialize_episode(self, physics)

    def get_observation(self, physics: mujoco.Physics) -> collections.OrderedDict:
        obs = super().get_observation(physics)
        obs["mocap_pose_left"] = np.concatenate([physics.data.mocap_pos[0], physics.data.mocap_quat[0]]).copy()
        obs["mocap_pose_right"] = np.concatenate([physics.data.mocap_pos[1], physics.data.mocap_quat[1]]).copy()
        obs["gripper_ctrl"] = physics.data.ctrl.copy()
        return obs


class SeededTransferCubeEETask(_SeededEndEffectorTask, ee_tasks.TransferCubeEndEffectorTask):
    object_joints = ("red_box_joint",)


class SeededInsertionEETask(_SeededEndEffectorTask, ee_tasks.InsertionEndEffectorTask):
    object_joints = ("red_peg_joint", "blue_socket_joint")


_EE_TASKS: dict[str, type[_SeededEndEffectorTask]] = {
    "transfer_cube": SeededTransferCubeEETask,
    "insertion": SeededInsertionEETask,
}


def make_ee_env(
    task: str, camera_names: Sequence[str] = (), height: int = 480, width: int = 640
) -> control.Environment:
    """The end-effector-space env of ``task`` (dm_control API); set ``env.task.object_pose`` before ``reset()``.

    Actions ``(16,)``: per arm (left, then right) mocap position (3), quaternion (4, w first), gripper (1,
    normalised: 0 closed, 1 open). Observations add ``mocap_pose_left/right (7,)`` and ``gripper_ctrl (4,)``.
    """
    spec = get_sim_task(task)
    physics = mujoco.Physics.from_xml_path(str(aloha_constants.ASSETS_DIR / spec.ee_xml))
    disable_shadows(physics)
    physics.model.eq_data[:, 10] = WELD_TORQUE_SCALE
    ee_task = _EE_TASKS[task]()
    ee_task.configure_rendering(camera_names, height, width)
    return control.Environment(
        physics, ee_task, time_limit=float("inf"), control_timestep=DT, n_sub_steps=None, flat_observation=False
    )


def gripper_ctrl_to_normalized(ctrl: float) -> float:
    """A finger's position control (metres) -> the normalised gripper action of the joint-space env."""
    return float(aloha_constants.normalize_puppet_gripper_position(ctrl))


__all__ = [
    "DT",
    "FPS",
    "MAX_REWARD",
    "SIM_CAMERAS",
    "SIM_TASKS",
    "FastAlohaEnv",
    "SimTaskSpec",
    "get_sim_task",
    "gripper_ctrl_to_normalized",
    "make_ee_env",
]
