"""``AgileXRobot`` without ROS: stand-in rospy / sensor_msgs / cv_bridge modules, messages delivered by hand.

The fakes keep rospy's call shapes (``Subscriber(topic, cls, callback, callback_args=, queue_size=)``,
``Publisher(topic, cls, queue_size=)``, ``Time.now()``, ``is_shutdown()``), so the robot's real wiring runs.
"""

from __future__ import annotations

import threading
import time
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from evaluate.robots.agilex import DEFAULT_CAMERA_TOPICS, AgileXRobot

CAMS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
STATE_TOPICS = ("/puppet/joint_left", "/puppet/joint_right")
COMMAND_TOPICS = ("/master/joint_left", "/master/joint_right")


class FakeJointState:
    def __init__(self, position: list[float] | None = None) -> None:
        self.header = SimpleNamespace(stamp=None)
        self.position = list(position or [])


class FakeImage:
    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame


class FakeBridge:
    encodings: list[str] = []

    def imgmsg_to_cv2(self, msg: FakeImage, desired_encoding: str) -> np.ndarray:
        self.encodings.append(desired_encoding)
        return msg.frame


class FakeRospy:
    """Records subscribers and published messages; ``deliver`` plays a message to a topic's callback."""

    def __init__(self) -> None:
        self.subscribers: dict[str, tuple[Any, Any]] = {}
        self.published: dict[str, list[FakeJointState]] = {}
        self.unregistered: list[str] = []
        self.shutdown = False
        self.node: str | None = None
        self.Time = SimpleNamespace(now=lambda: "stamp")

    def init_node(self, name: str, anonymous: bool = False, disable_signals: bool = False) -> None:
        self.node = name

    def Subscriber(self, topic, msg_cls, callback, callback_args=None, queue_size=None):  # noqa: N802 (rospy's name)
        self.subscribers[topic] = (callback, callback_args)
        return SimpleNamespace(unregister=lambda: self.unregistered.append(topic))

    def Publisher(self, topic, msg_cls, queue_size=None):  # noqa: N802
        self.published[topic] = []
        return SimpleNamespace(
            publish=self.published[topic].append, unregister=lambda: self.unregistered.append(topic)
        )

    def is_shutdown(self) -> bool:
        return self.shutdown

    def deliver(self, topic: str, msg: Any) -> None:
        callback, arg = self.subscribers[topic]
        callback(msg, arg)


def make_robot(**kwargs) -> tuple[AgileXRobot, FakeRospy]:
    rospy = FakeRospy()
    ros = {"rospy": rospy, "Image": FakeImage, "JointState": FakeJointState, "CvBridge": FakeBridge}
    robot = AgileXRobot(CAMS, state_topics=STATE_TOPICS, command_topics=COMMAND_TOPICS, ros=ros, **kwargs)
    return robot, rospy


def frame(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, dtype=np.uint8)


def publish_all(rospy: FakeRospy, left: list[float], right: list[float], cams: list[str] = CAMS, value: int = 7) -> None:
    for cam in cams:
        rospy.deliver(DEFAULT_CAMERA_TOPICS[cam], FakeImage(frame(value)))
    rospy.deliver(STATE_TOPICS[0], FakeJointState(left))
    rospy.deliver(STATE_TOPICS[1], FakeJointState(right))


def commands(rospy: FakeRospy) -> np.ndarray:
    """``(steps, 14)``: what was published, left topic's 7 then right topic's 7."""
    left, right = (rospy.published[t] for t in COMMAND_TOPICS)
    assert len(left) == len(right)
    return np.array([[*a.position, *b.position] for a, b in zip(left, right, strict=True)])


def test_wiring_observation_and_the_7_plus_7_split():
    robot, rospy = make_robot(prompt="fold", max_joint_step=None)
    assert rospy.node == "dexvla_eval"
    assert set(rospy.subscribers) == {*(DEFAULT_CAMERA_TOPICS[c] for c in CAMS), *STATE_TOPICS}
    left, right = [0.1 * i for i in range(7)], [1.0 + 0.1 * i for i in range(7)]
    publish_all(rospy, left + [9.9], right)  # an extra joint (e.g. a second finger) is dropped
    obs = robot.reset()
    assert FakeBridge.encodings[-1] == "rgb8"  # the policy's images are RGB, whatever the camera encodes
    assert obs["prompt"] == "fold" and set(obs["images"]) == set(CAMS)
    np.testing.assert_allclose(obs["state"], left + right, rtol=1e-6)
    target = np.arange(14, dtype=np.float32)
    info = robot.step(target)
    assert not info.done
    for topic, part in zip(COMMAND_TOPICS, (target[:7], target[7:]), strict=True):
        (msg,) = rospy.published[topic]
        assert msg.header.stamp == "stamp" and len(msg.position) == 7
        np.testing.assert_array_equal(msg.position, part)
    rospy.shutdown = True
    assert robot.step(target).done  # ROS going down ends the episode
    robot.close()
    assert set(rospy.unregistered) == {*(DEFAULT_CAMERA_TOPICS[c] for c in CAMS), *STATE_TOPICS, *COMMAND_TOPICS}


def test_reset_seeds_the_clamp_and_every_clamped_step_counts():
    robot, rospy = make_robot(max_joint_step=0.1)
    start = [0.5] * 7
    publish_all(rospy, start, start)
    with pytest.raises(RuntimeError, match="before reset"):
        robot.step(np.zeros(14))  # no seed yet: nothing may go out unclamped
    assert not rospy.published[COMMAND_TOPICS[0]]
    robot.reset()
    far = np.full(14, 2.0)
    far[3] = 0.45  # within the step: passes unchanged
    with pytest.warns(UserWarning, match="clamped \\(1 steps so far\\)"):
        robot.step(far)
    expected = np.full(14, 0.6)
    expected[3] = 0.45
    np.testing.assert_allclose(commands(rospy)[-1], expected, atol=1e-6)  # seeded from the state, not from 0
    # The next clamp is relative to the last *command*: 0.6 -> 0.7, 0.45 -> 0.35.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warnings are rate-limited (1st, 50th, ...): the 2nd is silent
        robot.step(np.where(np.arange(14) == 3, -5.0, 5.0))
    expected = np.where(np.arange(14) == 3, 0.35, 0.7)
    np.testing.assert_allclose(commands(rospy)[-1], expected, atol=1e-6)
    robot.step(expected + 0.05)  # a small move: not clamped, not counted
    np.testing.assert_allclose(commands(rospy)[-1], expected + 0.05, atol=1e-6)
    assert robot.episode_summary() == {"clamped_steps": 2}
    publish_all(rospy, [0.0] * 7, [0.0] * 7)
    robot.reset()  # a new episode: counter cleared, clamp re-seeded from the new state
    assert robot.episode_summary() == {"clamped_steps": 0}
    robot.step(np.full(14, 0.05))
    np.testing.assert_allclose(commands(rospy)[-1], 0.05, atol=1e-6)
    assert robot.clamped_steps == 0


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (np.zeros(7), r"\(14,\) joint targets .* got shape \(7,\)"),
        (np.zeros((2, 7)), r"got shape \(2, 7\)"),
        (np.zeros(16), r"got shape \(16,\)"),
        (np.where(np.arange(14) == 9, np.nan, 0.0), r"non-finite joint targets of shape \(14,\): NaN/inf at indices \[9\]"),
    ],
)
def test_bad_actions_are_refused_before_anything_is_published(action, error):
    robot, rospy = make_robot(max_joint_step=None)
    publish_all(rospy, [0.0] * 7, [0.0] * 7)
    robot.reset()
    with pytest.raises(ValueError, match=error):
        robot.step(action)
    assert all(not msgs for msgs in rospy.published.values())


@pytest.mark.parametrize(
    ("silent", "topic"),
    [("cam_left_wrist", "/camera_l/color/image_raw"), ("arm1", "/puppet/joint_right")],
)
def test_a_stale_topic_times_out_naming_it(silent, topic):
    robot, rospy = make_robot(obs_timeout_s=0.05)
    publish_all(rospy, [0.0] * 7, [0.0] * 7)
    robot.reset()
    # Everything but one topic publishes again: the old message on the silent one must not be reused.
    for cam in CAMS:
        if cam != silent:
            rospy.deliver(DEFAULT_CAMERA_TOPICS[cam], FakeImage(frame(1)))
    for arm, state_topic in enumerate(STATE_TOPICS):
        if f"arm{arm}" != silent:
            rospy.deliver(state_topic, FakeJointState([0.0] * 7))
    with pytest.raises(TimeoutError, match=f"0.05 s on: {silent} \\(topics: {topic}\\)"):
        robot.get_obs()
    publish_all(rospy, [0.0] * 7, [0.0] * 7, value=3)  # the topic comes back: observations flow again
    assert robot.get_obs()["images"]["cam_high"][0, 0, 0] == 3


def test_never_heard_topics_are_all_named():
    robot, rospy = make_robot(obs_timeout_s=0.01)
    with pytest.raises(TimeoutError) as err:
        robot.reset()
    for name in [*(DEFAULT_CAMERA_TOPICS[c] for c in CAMS), *STATE_TOPICS]:
        assert name in str(err.value)


def test_short_joint_state_is_an_error_naming_the_topic():
    robot, rospy = make_robot()
    publish_all(rospy, [0.0] * 7, [0.0] * 6)
    with pytest.raises(ValueError, match="arm1 topic /puppet/joint_right: JointState.position has 6 values"):
        robot.reset()


def test_get_obs_waits_for_messages_from_another_thread():
    robot, rospy = make_robot(obs_timeout_s=10.0)  # generous: a loaded machine only makes the wait longer
    publish_all(rospy, [0.0] * 7, [0.0] * 7)
    robot.reset()

    def later() -> None:
        time.sleep(0.02)
        publish_all(rospy, [0.2] * 7, [0.3] * 7, value=5)

    thread = threading.Thread(target=later)
    thread.start()
    obs = robot.get_obs()  # blocks until the thread's messages arrive (ROS delivers on its own threads)
    thread.join(timeout=10)
    np.testing.assert_allclose(obs["state"], [0.2] * 7 + [0.3] * 7, rtol=1e-6)
    assert obs["images"]["cam_right_wrist"][0, 0, 0] == 5


def test_constructor_checks():
    rospy = FakeRospy()
    ros = {"rospy": rospy, "Image": FakeImage, "JointState": FakeJointState, "CvBridge": FakeBridge}
    with pytest.raises(ValueError, match="no image topic for cameras \\['cam_low'\\]"):
        AgileXRobot(["cam_low"], ros=ros)
    with pytest.raises(ValueError, match="two arms"):
        AgileXRobot(CAMS, state_topics=("/only_one",), ros=ros)
    robot = AgileXRobot(["cam_low"], camera_topics={"cam_low": "/camera_b/color/image_raw"}, ros=ros)
    assert "/camera_b/color/image_raw" in rospy.subscribers and robot.camera_names == ["cam_low"]
