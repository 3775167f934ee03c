"""Evaluation of DexVLA checkpoints: the policy wrapper, the robot loop, replay / sim / real robots, the server.

- ``policy.DexVLAPolicy``: checkpoint directory -> ``infer(obs) -> {"actions", "reasoning", ...}``
- ``action_strategies``: ``chunk`` and ``temporal_agg`` execution; ``control_loop``: rate-held loop
- ``robots``: ``ReplayRobot`` (open loop), ``AlohaSimRobot`` (gym-aloha), ``AgileXRobot`` (ROS 1)
- ``eval_dexvla``: the command line; ``serve_policy``: openpi-compatible websocket server
- ``aloha_sim``: fast gym-aloha envs and the scripted demonstrations behind ``scripts/record_sim_episodes.py``

Heavy or optional dependencies (MuJoCo, ROS, matplotlib) are imported only where used.
"""
