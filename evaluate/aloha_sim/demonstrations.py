"""Scripted demonstrations: roll the waypoint policy out in end-effector space, replay its joints in joint space.

1. :func:`scripted_joint_trajectory`: the scripted policy drives the mocap (EE) env; the joint positions
   it reaches become joint-space targets (the grippers' targets are the commanded gripper positions,
   not the lagging measured ones).
2. :func:`replay_in_joint_env`: those targets drive gym-aloha's registered joint-space task from the
   same seed, recording observations, rewards and success. Only what succeeds *here* is a usable
   demonstration, since this is the env a learned policy is evaluated in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluate.aloha_sim.envs import MAX_REWARD, FastAlohaEnv, get_sim_task, gripper_ctrl_to_normalized, make_ee_env
from evaluate.aloha_sim.scripted_policy import make_scripted_policy


@dataclass
class ScriptedTrajectory:
    """``actions (T, 14)`` joint targets, ``reasoning`` (T strings), and how the EE rollout itself fared."""

    task: str
    seed: int
    actions: np.ndarray
    reasoning: list[str]
    ee_max_reward: int


@dataclass
class JointReplay:
    """What the joint-space env saw while executing ``actions``: per step ``t`` the observation *before* action t.

    ``qpos, qvel (T, 14)``, ``images {camera: (T, H, W, 3) uint8}``, ``rewards (T,)`` (reward after action t).
    """

    qpos: np.ndarray
    qvel: np.ndarray
    images: dict[str, np.ndarray]
    rewards: np.ndarray
    success: bool
    max_reward: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def scripted_joint_trajectory(task: str, seed: int, episode_len: int | None = None) -> ScriptedTrajectory:
    """Run the scripted EE policy for ``episode_len`` steps (default: the task's) with objects placed by ``seed``."""
    spec = get_sim_task(task)
    episode_len = episode_len or spec.episode_len
    env = make_ee_env(task)
    env.task.object_pose = spec.sample_object_pose(seed)
    ts = env.reset()
    policy = make_scripted_policy(task, ts.observation)
    actions, reasoning, max_reward = [], [], 0
    for t in range(episode_len):
        reasoning.append(policy.substep(t))
        ts = env.step(policy(t))
        obs = ts.observation
        target = np.asarray(obs["qpos"], dtype=np.float64).copy()
        ctrl = obs["gripper_ctrl"]  # commanded finger positions: left (+, -), right (+, -)
        target[6], target[13] = gripper_ctrl_to_normalized(ctrl[0]), gripper_ctrl_to_normalized(ctrl[2])
        actions.append(target)
        max_reward = max(max_reward, int(ts.reward))
    return ScriptedTrajectory(task, seed, np.stack(actions), reasoning, max_reward)


def replay_in_joint_env(
    task: str,
    seed: int,
    actions: np.ndarray,
    camera_names: Sequence[str] = (),
    height: int = 480,
    width: int = 640,
) -> JointReplay:
    """Execute ``actions (T, 14)`` in the joint-space env reset with ``seed``; record what it observed."""
    env = FastAlohaEnv(task, camera_names=camera_names, height=height, width=width)
    obs, _ = env.reset(seed=seed)
    qpos, qvel, rewards = [], [], []
    frames: dict[str, list[np.ndarray]] = {cam: [] for cam in camera_names}
    for action in actions:
        qpos.append(obs["agent_pos"])
        qvel.append(env.joint_velocities())
        for cam in camera_names:
            frames[cam].append(obs["pixels"][cam])
        obs, reward, _, _, _ = env.step(np.asarray(action, dtype=np.float64))
        rewards.append(reward)
    env.close()
    rewards_arr = np.asarray(rewards, dtype=np.float64)
    max_reward = int(rewards_arr.max()) if len(rewards_arr) else 0
    return JointReplay(
        qpos=np.stack(qpos),
        qvel=np.stack(qvel),
        images={cam: np.stack(f) for cam, f in frames.items()},
        rewards=rewards_arr,
        success=max_reward == MAX_REWARD,
        max_reward=max_reward,
    )


__all__ = ["JointReplay", "ScriptedTrajectory", "replay_in_joint_env", "scripted_joint_trajectory"]
