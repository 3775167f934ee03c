"""The robot interface the evaluation loop drives: ``reset() -> obs``, ``get_obs() -> obs``, ``step(action)``, ``close()``.

An observation is the policy wrapper's input (openpi's key names)::

    {"images": {camera: (H, W, 3) uint8}, "state": (state_dim,) float, "prompt": str}

``step`` returns a :class:`StepInfo`; ``done`` ends the episode early (a replay ran out of frames, a
simulated task succeeded). ``episode_summary()`` reports what the robot measured over the episode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Observation = dict[str, Any]


@dataclass
class StepInfo:
    """What one executed action led to. ``reward``/``success`` only where the robot can tell."""

    done: bool = False
    reward: float | None = None
    success: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Robot(ABC):
    """A robot (real, simulated or recorded) seen through observations and absolute actions."""

    name: str = "robot"
    #: control rate the robot expects (frames per second); ``None``: no real-time constraint.
    default_fps: float | None = None

    @abstractmethod
    def reset(self) -> Observation:
        """Start an episode; returns its first observation."""

    @abstractmethod
    def get_obs(self) -> Observation:
        """The current observation."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepInfo:
        """Execute one ``(action_dim,)`` action in robot units."""

    def close(self) -> None:  # noqa: B027  (optional hook: most robots hold nothing to release)
        """Release the robot (idempotent)."""

    def episode_summary(self) -> dict[str, Any]:
        """Per-episode measurements (success, return, errors against a recording, ...)."""
        return {}

    def __enter__(self) -> Robot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Observation", "Robot", "StepInfo"]
