"""Scripted waypoint policies for the gym-aloha tasks in end-effector space, with a sub-step label per step.

A policy is built from the first observation of an episode (initial mocap poses, object poses) as two
lists of waypoints, one per arm: at time ``t`` an arm's mocap target is interpolated between the
waypoints around ``t`` (position and gripper linearly, orientation by normalised linear interpolation of
the quaternions). Each step also carries the sub-step the scene is in ("reach the cube", "grasp the
cube", ...), written into the demonstrations as their per-step reasoning.

The waypoint layout follows ACT's scripted demonstrations for these two tasks (400 steps at 50 Hz).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Quaternions are (w, x, y, z), as MuJoCo stores them.


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of two ``(4,)`` quaternions."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def axis_angle_quat(axis: Sequence[float], degrees: float) -> np.ndarray:
    """Unit quaternion ``(4,)`` of a rotation by ``degrees`` about ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = np.deg2rad(degrees) / 2.0
    return np.concatenate([[np.cos(half)], np.sin(half) * axis])


def nlerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    """Normalised linear interpolation between two unit quaternions (along the shorter arc)."""
    if np.dot(q0, q1) < 0:
        q1 = -q1
    q = (1.0 - fraction) * q0 + fraction * q1
    return q / np.linalg.norm(q)


@dataclass(frozen=True)
class Waypoint:
    """An arm's mocap target at step ``t``: ``xyz (3,)``, ``quat (4,)``, ``gripper`` (0 closed .. 1 open)."""

    t: int
    xyz: np.ndarray
    quat: np.ndarray
    gripper: float


@dataclass(frozen=True)
class SubStep:
    """The scene is in sub-step ``text`` from step ``start`` on (until the next sub-step starts)."""

    start: int
    text: str


def interpolate(waypoints: Sequence[Waypoint], t: int) -> np.ndarray:
    """The arm's action ``(8,)`` = xyz (3), quat (4), gripper (1) at step ``t`` (held after the last waypoint)."""
    if t <= waypoints[0].t:
        w = waypoints[0]
        return np.concatenate([w.xyz, w.quat, [w.gripper]])
    for prev, nxt in zip(waypoints[:-1], waypoints[1:], strict=True):
        if prev.t <= t <= nxt.t:
            f = (t - prev.t) / (nxt.t - prev.t)
            xyz = (1.0 - f) * prev.xyz + f * nxt.xyz
            quat = nlerp(prev.quat, nxt.quat, f)
            gripper = (1.0 - f) * prev.gripper + f * nxt.gripper
            return np.concatenate([xyz, quat, [gripper]])
    w = waypoints[-1]
    return np.concatenate([w.xyz, w.quat, [w.gripper]])


class ScriptedPolicy:
    """Two arms' waypoints and the sub-step timeline; ``policy(t) -> (16,)`` EE action, ``substep(t) -> str``."""

    def __init__(self, left: Sequence[Waypoint], right: Sequence[Waypoint], substeps: Sequence[SubStep]) -> None:
        for name, waypoints in (("left", left), ("right", right)):
            times = [w.t for w in waypoints]
            if times != sorted(times) or len(set(times)) != len(times):
                raise ValueError(f"{name} waypoints must have strictly increasing t, got {times}")
        self.left, self.right, self.substeps = list(left), list(right), sorted(substeps, key=lambda s: s.start)

    @property
    def duration(self) -> int:
        return max(self.left[-1].t, self.right[-1].t)

    def __call__(self, t: int) -> np.ndarray:
        return np.concatenate([interpolate(self.left, t), interpolate(self.right, t)])

    def substep(self, t: int) -> str:
        current = self.substeps[0].text
        for step in self.substeps:
            if t >= step.start:
                current = step.text
        return current


def transfer_cube_policy(first_obs: dict[str, np.ndarray]) -> ScriptedPolicy:
    """Right arm picks the cube and lifts it to the middle; left arm takes it over; right lets go.

    ``first_obs``: the EE env's first observation (``mocap_pose_left/right (7,)``, ``env_state`` with the cube pose).
    """
    left0, right0 = first_obs["mocap_pose_left"], first_obs["mocap_pose_right"]
    cube = np.asarray(first_obs["env_state"])[:3]
    pick = quat_multiply(right0[3:], axis_angle_quat([0, 1, 0], -60))
    meet_left = axis_angle_quat([1, 0, 0], 90)
    meet = np.array([0.0, 0.5, 0.25])
    level = np.array([1.0, 0.0, 0.0, 0.0])
    left = [
        Waypoint(0, left0[:3], left0[3:], 0.0),
        Waypoint(100, meet + [-0.1, 0, -0.02], meet_left, 1.0),  # approach the meeting point
        Waypoint(260, meet + [0.02, 0, -0.02], meet_left, 1.0),  # move in around the cube
        Waypoint(310, meet + [0.02, 0, -0.02], meet_left, 0.0),  # close the gripper
        Waypoint(360, meet + [-0.1, 0, -0.02], level, 0.0),  # pull away with the cube
        Waypoint(400, meet + [-0.1, 0, -0.02], level, 0.0),  # hold
    ]
    right = [
        Waypoint(0, right0[:3], right0[3:], 0.0),
        Waypoint(90, cube + [0, 0, 0.08], pick, 1.0),  # above the cube, gripper open
        Waypoint(130, cube + [0, 0, -0.015], pick, 1.0),  # down around it
        Waypoint(170, cube + [0, 0, -0.015], pick, 0.0),  # close the gripper
        Waypoint(200, meet + [0.05, 0, 0], pick, 0.0),  # lift towards the middle
        Waypoint(220, meet, pick, 0.0),  # at the meeting point
        Waypoint(310, meet, pick, 1.0),  # let go once the left gripper holds it
        Waypoint(360, meet + [0.1, 0, 0], pick, 1.0),  # move away
        Waypoint(400, meet + [0.1, 0, 0], pick, 1.0),  # hold
    ]
    substeps = [
        SubStep(0, "reach the cube with the right gripper"),
        SubStep(90, "lower the right gripper around the cube"),
        SubStep(130, "grasp the cube with the right gripper"),
        SubStep(170, "lift the cube to the middle"),
        SubStep(220, "hand over the cube to the left gripper"),
        SubStep(290, "grasp the cube with the left gripper"),
        SubStep(310, "release the cube from the right gripper"),
        SubStep(360, "hold the cube with the left gripper"),
    ]
    return ScriptedPolicy(left, right, substeps)


def insertion_policy(first_obs: dict[str, np.ndarray]) -> ScriptedPolicy:
    """Right arm picks the peg, left arm the socket; both meet in the middle and the peg goes in.

    ``first_obs``: the EE env's first observation (``env_state`` = peg pose (7) then socket pose (7)).
    """
    left0, right0 = first_obs["mocap_pose_left"], first_obs["mocap_pose_right"]
    state = np.asarray(first_obs["env_state"])
    peg, socket = state[:3], state[7:10]
    pick_right = quat_multiply(right0[3:], axis_angle_quat([0, 1, 0], -60))
    pick_left = quat_multiply(left0[3:], axis_angle_quat([0, 1, 0], 60))
    meet = np.array([0.0, 0.5, 0.15])
    lift_right = 0.00715
    # 5 mm deeper than ACT's layout: the joint-space replay follows the EE path only to a few mm, and
    # at ACT's depth the peg then stops just short of the pin (2/20 replays succeeded; 9/10 at this depth).
    depth = 0.045
    left = [
        Waypoint(0, left0[:3], left0[3:], 0.0),
        Waypoint(120, socket + [0, 0, 0.08], pick_left, 1.0),  # above the socket
        Waypoint(170, socket + [0, 0, -0.03], pick_left, 1.0),  # down around it
        Waypoint(220, socket + [0, 0, -0.03], pick_left, 0.0),  # grasp
        Waypoint(285, meet + [-0.1, 0, 0], pick_left, 0.0),  # to the meeting point
        Waypoint(340, meet + [-depth, 0, 0], pick_left, 0.0),  # insert
        Waypoint(400, meet + [-depth, 0, 0], pick_left, 0.0),  # hold
    ]
    right = [
        Waypoint(0, right0[:3], right0[3:], 0.0),
        Waypoint(120, peg + [0, 0, 0.08], pick_right, 1.0),
        Waypoint(170, peg + [0, 0, -0.03], pick_right, 1.0),
        Waypoint(220, peg + [0, 0, -0.03], pick_right, 0.0),
        Waypoint(285, meet + [0.1, 0, lift_right], pick_right, 0.0),
        Waypoint(340, meet + [depth, 0, lift_right], pick_right, 0.0),
        Waypoint(400, meet + [depth, 0, lift_right], pick_right, 0.0),
    ]
    substeps = [
        SubStep(0, "reach the peg and the socket"),
        SubStep(120, "lower both grippers"),
        SubStep(170, "grasp the peg and the socket"),
        SubStep(220, "lift both and bring them together"),
        SubStep(285, "insert the peg into the socket"),
        SubStep(340, "hold the peg in the socket"),
    ]
    return ScriptedPolicy(left, right, substeps)


SCRIPTED_POLICIES = {"transfer_cube": transfer_cube_policy, "insertion": insertion_policy}


def make_scripted_policy(task: str, first_obs: dict[str, np.ndarray]) -> ScriptedPolicy:
    if task not in SCRIPTED_POLICIES:
        raise KeyError(f"no scripted policy for task {task!r}; known: {sorted(SCRIPTED_POLICIES)}")
    return SCRIPTED_POLICIES[task](first_obs)


__all__ = [
    "SCRIPTED_POLICIES",
    "ScriptedPolicy",
    "SubStep",
    "Waypoint",
    "axis_angle_quat",
    "insertion_policy",
    "make_scripted_policy",
    "nlerp",
    "quat_multiply",
    "transfer_cube_policy",
]
