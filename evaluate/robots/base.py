"""The robot interface the evaluation loop drives: ``reset() -> obs``, ``get_obs() -> obs``, ``step(action)``, ``close()``.

An observation is the policy wrapper's input (openpi's key names)::

    {"images": {camera: (H, W, 3) uint8}, "state": (state_dim,) float, "prompt": str}

``step`` returns a :class:`StepInfo`; ``done`` ends the episode early (a replay ran out of frames, a
simulated task succeeded). ``episode_summary()`` reports what the robot measured over the episode.

Safety contract: ``step`` refuses a non-finite action (:func:`check_finite_action`: ``np.clip`` lets
NaN through, and a NaN joint target must never reach a motor), and ``hold()`` keeps the robot where the
last accepted command put it; the control loop calls it when it refuses an action or an exception cuts
an episode short, before the robot is closed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Observation = dict[str, Any]


class NonFiniteActionError(ValueError):
    """An action (or action chunk) holds NaN or infinity; ``indices``: the flat positions of those values."""

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices


def check_finite_action(action: Any, what: str = "action") -> np.ndarray:
    """``action`` as a float64 array, or :class:`NonFiniteActionError` naming ``what`` and the bad positions.

    Positions are flat indices (for a ``(T, A)`` chunk: ``step * A + dim``); the message gives them as
    ``(step, dim)`` pairs for a chunk.
    """
    array = np.asarray(action, dtype=np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        flat = np.flatnonzero(bad).tolist()
        where = np.argwhere(bad).tolist() if array.ndim > 1 else flat
        more = f" (+{len(where) - 8} more)" if len(where) > 8 else ""  # a whole NaN chunk: keep the message short
        label = "(step, dim)" if array.ndim > 1 else "indices"
        raise NonFiniteActionError(
            f"non-finite {what} of shape {array.shape}: NaN/inf at {label} {where[:8]}{more}", flat
        )
    return array


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
        """Execute one ``(action_dim,)`` action in robot units (a non-finite one: :class:`NonFiniteActionError`)."""

    def hold(self) -> None:  # noqa: B027  (optional hook: see the docstring for who needs it)
        """Keep the robot where the last accepted command put it (re-send that command where that means anything).

        Called by the control loop when it refuses an action or the episode fails, before ``close()``;
        safe to call before any command was sent. The default does nothing: right for a recording (its
        frames do not move) and a simulation (its time only advances on ``step``, so not stepping holds).
        A real robot overrides it: :class:`~evaluate.robots.agilex.AgileXRobot` re-publishes its last command.
        """

    def close(self) -> None:  # noqa: B027  (optional hook: most robots hold nothing to release)
        """Release the robot (idempotent)."""

    def episode_summary(self) -> dict[str, Any]:
        """Per-episode measurements (success, return, errors against a recording, ...)."""
        return {}

    def __enter__(self) -> Robot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["NonFiniteActionError", "Observation", "Robot", "StepInfo", "check_finite_action"]
