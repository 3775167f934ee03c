"""``AgileXRobot``: the real AgileX / ALOHA arms through ROS 1 (what the reference evaluation drove).

Observations come from ROS topics (camera images, the puppet arms' joint states) and actions are
published as ``sensor_msgs/JointState`` joint targets for each arm, 7 numbers per arm (6 joints +
gripper) as the AgileX stack expects. The topic names default to the AgileX ALOHA launch files'.

ROS (``rospy``, ``sensor_msgs``, ``cv_bridge``) is imported only when the robot is created, so this
module imports anywhere; without ROS, creating the robot fails with a message naming what is missing.
Tests pass stand-ins for those modules as ``ros=`` (the same mapping :func:`import_ros` returns).

Safety is deliberately minimal here: a non-finite target is refused before anything is published,
each commanded joint moves at most ``max_joint_step`` per step away from the last command (clamped,
with a warning), and ``hold()`` re-publishes the last command. Joint limits, homing, an e-stop and
gripper calibration belong to the robot's own stack (see the evaluation README for what to add).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from evaluate.robots.base import Observation, Robot, StepInfo, check_finite_action

DEFAULT_CAMERA_TOPICS = {
    "cam_high": "/camera_f/color/image_raw",
    "cam_left_wrist": "/camera_l/color/image_raw",
    "cam_right_wrist": "/camera_r/color/image_raw",
}
DEFAULT_STATE_TOPICS = ("/puppet/joint_left", "/puppet/joint_right")
DEFAULT_COMMAND_TOPICS = ("/master/joint_left", "/master/joint_right")
JOINTS_PER_ARM = 7


def import_ros() -> dict[str, Any]:
    """``{"rospy", "Image", "JointState", "CvBridge"}``, or a RuntimeError naming the missing pieces."""
    found: dict[str, Any] = {}
    missing: list[str] = []
    try:
        import rospy

        found["rospy"] = rospy
    except ImportError:
        missing.append("rospy")
    try:
        from sensor_msgs.msg import Image, JointState

        found.update(Image=Image, JointState=JointState)
    except ImportError:
        missing.append("sensor_msgs")
    try:
        from cv_bridge import CvBridge

        found["CvBridge"] = CvBridge
    except ImportError:
        missing.append("cv_bridge")
    if missing:
        raise RuntimeError(
            f"--robot agilex needs ROS 1 Python packages, missing: {', '.join(missing)}. Install ROS Noetic "
            "(ros-noetic-ros-base, ros-noetic-cv-bridge) and `source /opt/ros/noetic/setup.bash` in this shell, "
            "or run the policy server (evaluate/serve_policy.py) and drive it from the robot's computer."
        )
    return found


class AgileXRobot(Robot):
    """AgileX dual arms through ROS 1.

    Args:
        camera_names: the policy's cameras, in its order.
        camera_topics: ``{camera: image topic}`` (defaults: :data:`DEFAULT_CAMERA_TOPICS`).
        state_topics: the left and right puppet arms' ``JointState`` topics.
        command_topics: the left and right ``JointState`` command topics.
        prompt: the instruction sent with every observation.
        max_joint_step: largest change of any commanded joint per step (radians, > 0); ``None``: no clamp.
        obs_timeout_s: how long ``get_obs`` waits for fresh messages on every topic.
        node_name: the ROS node's name.
        ros: the ROS modules as :func:`import_ros` returns them (default: imported now; tests pass fakes).
    """

    name = "agilex"
    default_fps = 50.0
    #: ``{camera name or "arm0"/"arm1": ROS topic}``, for error messages.
    _topic_of: Mapping[str, str] = MappingProxyType({})

    def __init__(
        self,
        camera_names: Sequence[str],
        camera_topics: Mapping[str, str] | None = None,
        state_topics: Sequence[str] = DEFAULT_STATE_TOPICS,
        command_topics: Sequence[str] = DEFAULT_COMMAND_TOPICS,
        prompt: str = "",
        max_joint_step: float | None = 0.1,
        obs_timeout_s: float = 1.0,
        node_name: str = "dexvla_eval",
        ros: Mapping[str, Any] | None = None,
    ) -> None:
        # A negative step inverts the clamp's bounds (every joint then moves by that step whatever the policy
        # says), zero freezes the arms, NaN makes every target NaN: refuse them before touching ROS.
        if max_joint_step is not None and not (np.isfinite(max_joint_step) and max_joint_step > 0):
            raise ValueError(
                f"max_joint_step must be a positive number of radians (or None: no clamp), got {max_joint_step!r}"
            )
        ros = import_ros() if ros is None else ros
        self._rospy, self._joint_state_cls = ros["rospy"], ros["JointState"]
        self._bridge = ros["CvBridge"]()
        topics = {**DEFAULT_CAMERA_TOPICS, **dict(camera_topics or {})}
        missing = [cam for cam in camera_names if cam not in topics]
        if missing:
            raise ValueError(f"no image topic for cameras {missing}; give them in camera_topics")
        if len(state_topics) != 2 or len(command_topics) != 2:
            raise ValueError(
                f"AgileX has two arms: state_topics and command_topics need (left, right), got "
                f"{list(state_topics)} and {list(command_topics)}"
            )
        self.camera_names = list(camera_names)
        self.prompt = prompt
        self.max_joint_step = max_joint_step
        self.obs_timeout_s = float(obs_timeout_s)
        self._lock = threading.Condition()
        self._images: dict[str, np.ndarray] = {}
        self._arms: list[np.ndarray | None] = [None, None]
        # Receive time of each topic's latest message: an observation must be newer than the last one
        # handed out, so a dead camera or arm topic stops the loop instead of feeding stale data.
        self._received: dict[str, float] = {}
        self._last_obs_time = float("-inf")
        self._last_command: np.ndarray | None = None
        self.clamped_steps = 0
        self._topic_of = {
            **{cam: topics[cam] for cam in self.camera_names},
            **{f"arm{arm}": topic for arm, topic in enumerate(state_topics)},
        }

        self._rospy.init_node(node_name, anonymous=True, disable_signals=True)
        self._subscribers = [
            self._rospy.Subscriber(topics[cam], ros["Image"], self._on_image, callback_args=cam, queue_size=1)
            for cam in self.camera_names
        ]
        self._subscribers += [
            self._rospy.Subscriber(topic, ros["JointState"], self._on_joints, callback_args=arm, queue_size=1)
            for arm, topic in enumerate(state_topics)
        ]
        self._publishers = [self._rospy.Publisher(topic, ros["JointState"], queue_size=1) for topic in command_topics]

    # ---- ROS callbacks ------------------------------------------------------------------------------
    def _on_image(self, msg: Any, camera: str) -> None:
        frame = self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
        with self._lock:
            self._images[camera] = np.asarray(frame, dtype=np.uint8)
            self._received[camera] = time.monotonic()
            self._lock.notify_all()

    def _on_joints(self, msg: Any, arm: int) -> None:
        with self._lock:
            self._arms[arm] = np.asarray(msg.position[:JOINTS_PER_ARM], dtype=np.float32)
            self._received[f"arm{arm}"] = time.monotonic()
            self._lock.notify_all()

    # ---- Robot --------------------------------------------------------------------------------------
    def _stale_topics(self) -> list[str]:
        """Topics with no message since the previous observation was handed out."""
        topics = [*self.camera_names, "arm0", "arm1"]
        return [t for t in topics if self._received.get(t, float("-inf")) <= self._last_obs_time]

    def get_obs(self) -> Observation:
        """The next observation, every camera and arm newer than the previous one (else ``TimeoutError``)."""
        deadline = time.monotonic() + self.obs_timeout_s
        with self._lock:
            while stale := self._stale_topics():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    topics = ", ".join(self._topic_of.get(key, key) for key in stale)
                    raise TimeoutError(
                        f"no fresh message within {self.obs_timeout_s} s on: {', '.join(stale)} (topics: {topics})"
                    )
                self._lock.wait(remaining)
            for arm, joints in enumerate(self._arms):
                if joints.shape != (JOINTS_PER_ARM,):  # a short JointState would shift the right arm's joints
                    raise ValueError(
                        f"arm{arm} topic {self._topic_of.get(f'arm{arm}', f'arm{arm}')}: JointState.position has "
                        f"{len(joints)} values, expected at least {JOINTS_PER_ARM} (6 joints + gripper)"
                    )
            self._last_obs_time = time.monotonic()
            return {
                "images": {cam: self._images[cam].copy() for cam in self.camera_names},
                "state": np.concatenate(self._arms),
                "prompt": self.prompt,
            }

    def episode_summary(self) -> dict[str, Any]:
        return {"clamped_steps": self.clamped_steps}

    def reset(self) -> Observation:
        """Wait for a fresh observation; the arms' state seeds the joint clamp (the first step moves from there)."""
        self._last_command = None
        self.clamped_steps = 0
        obs = self.get_obs()
        # The seed bounds every later command: a NaN joint reading would make that joint's targets NaN.
        seed = check_finite_action(obs["state"], "joint positions from the state topics (seeding the clamp)")
        self._last_command = seed
        return obs

    def step(self, action: np.ndarray) -> StepInfo:
        """Publish ``action (14,)``: left arm's 7 joint targets to ``command_topics[0]``, right arm's to ``[1]``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2 * JOINTS_PER_ARM,):
            raise ValueError(
                f"AgileX takes ({2 * JOINTS_PER_ARM},) joint targets (left arm's {JOINTS_PER_ARM}, then the right's), "
                f"got shape {action.shape}"
            )
        check_finite_action(action, "joint targets")  # NaN passes np.clip untouched: never send it to the motors
        if self.max_joint_step is not None:
            if self._last_command is None:  # the first command would go out unclamped
                raise RuntimeError("AgileXRobot.step before reset(): reset() reads the arms to seed the joint clamp")
            clamped = np.clip(
                action, self._last_command - self.max_joint_step, self._last_command + self.max_joint_step
            )
            if not np.allclose(clamped, action):
                self.clamped_steps += 1
                if self.clamped_steps == 1 or self.clamped_steps % 50 == 0:  # every clamp counts; logs stay readable
                    warnings.warn(
                        f"commanded joints moved more than {self.max_joint_step} rad in one step: clamped "
                        f"({self.clamped_steps} steps so far)",
                        stacklevel=2,
                    )
            action = clamped
        self._publish(action)
        self._last_command = action
        return StepInfo(done=self._rospy.is_shutdown())

    def hold(self) -> None:
        """Re-publish the last command (after ``reset()`` and before any step: the arms' state it was seeded with)."""
        if self._last_command is not None:
            self._publish(self._last_command)

    def _publish(self, action: np.ndarray) -> None:
        now = self._rospy.Time.now()
        for arm, publisher in enumerate(self._publishers):
            msg = self._joint_state_cls()
            msg.header.stamp = now
            msg.position = action[arm * JOINTS_PER_ARM : (arm + 1) * JOINTS_PER_ARM].tolist()
            publisher.publish(msg)

    def close(self) -> None:
        for endpoint in [*getattr(self, "_subscribers", []), *getattr(self, "_publishers", [])]:
            endpoint.unregister()
        self._subscribers, self._publishers = [], []


__all__ = ["AgileXRobot", "DEFAULT_CAMERA_TOPICS", "import_ros"]
