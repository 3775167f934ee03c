"""The control loop: observation -> (query the policy when the strategy asks) -> one action per step, at a fixed rate.

``run_episode`` works with anything that has ``infer(obs) -> {"actions": (T, A), ...}``: a local
``DexVLAPolicy`` or openpi's ``WebsocketClientPolicy`` talking to ``serve_policy.py``.

Safety: a chunk from the policy and each action about to be executed must be finite. A non-finite one
is refused (a NaN chunk never enters the strategy, where temporal aggregation would spread it over
``chunk_size`` steps): the robot is told to ``hold()`` its last command and the episode ends, recorded
as ``EpisodeLog.stopped == "non_finite_action"`` at step ``stopped_at``. Any exception in the loop
(inference, the robot, Ctrl-C) also sends ``hold()`` before it propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from evaluate.action_strategies import ActionStrategy
from evaluate.robots.base import NonFiniteActionError, Observation, Robot, StepInfo, check_finite_action

logger = logging.getLogger(__name__)


class Policy(Protocol):
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]: ...


class RateLimiter:
    """Holds a loop at ``fps`` iterations per second; warns when an iteration overruns its budget.

    ``fps`` of ``None`` or 0 disables pacing (simulation, replay). The first overrun warns at once,
    later ones every ``warn_every`` overruns, so a slow policy is noticed without flooding the log.
    ``clock`` (seconds) and ``sleep`` default to the real ones; tests pass a simulated pair.
    """

    def __init__(
        self,
        fps: float | None,
        warn: Callable[[str], None] | None = None,
        warn_every: int = 100,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self.fps = fps
        self.warn = warn or logger.warning
        self.warn_every = warn_every
        self.overruns = 0
        self.worst_ms = 0.0
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None

    def start(self) -> None:
        self._next = self._clock() + self.period

    def wait(self) -> None:
        """Sleep until the next tick (the tick after ``start()`` or the previous ``wait()``)."""
        if not self.period:
            return
        if self._next is None:
            self.start()
        now = self._clock()
        late = now - self._next
        if late > 0:
            self.overruns += 1
            self.worst_ms = max(self.worst_ms, 1000.0 * (late + self.period))
            if self.overruns == 1 or self.overruns % self.warn_every == 0:
                self.warn(
                    f"inference cannot keep up with --fps {self.fps:g}: a step took {1000 * (late + self.period):.1f} ms "
                    f"(budget {1000 * self.period:.1f} ms; {self.overruns} late steps so far)"
                )
            self._next = now + self.period  # don't try to catch up with a burst of actions
        else:
            self._sleep(-late)
            self._next += self.period


@dataclass
class EpisodeLog:
    """What happened in one episode.

    ``actions (N, A)`` commanded; ``queries`` ``[(t, (T, A) chunk)]``; ``reasoning`` ``[(t, text)]``;
    ``infer_ms`` per query; ``step_ms`` per step (compute only, without the rate limiter's sleep).
    ``stopped``: why the loop ended the episode early (``"non_finite_action"``), else ``None``; ``stopped_at``:
    the step whose action was refused (the steps before it were executed); ``stop_detail``: the refusal.
    """

    actions: list[np.ndarray] = field(default_factory=list)
    queries: list[tuple[int, np.ndarray]] = field(default_factory=list)
    reasoning: list[tuple[int, str]] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    infos: list[StepInfo] = field(default_factory=list)
    late_steps: int = 0
    stopped: str | None = None
    stopped_at: int | None = None
    stop_detail: str | None = None

    @property
    def steps(self) -> int:
        return len(self.actions)

    def timing(self) -> dict[str, float | int | None]:
        infer, step = np.asarray(self.infer_ms), np.asarray(self.step_ms)
        return {
            "queries": len(infer),
            "infer_ms_mean": float(infer.mean()) if len(infer) else None,
            "infer_ms_p95": float(np.percentile(infer, 95)) if len(infer) else None,
            "step_ms_mean": float(step.mean()) if len(step) else None,
            "step_ms_max": float(step.max()) if len(step) else None,
            "late_steps": self.late_steps,
        }

    def outcome(self) -> dict[str, Any]:
        """``{"stopped", "stopped_at_step", "stop_detail"}`` (all ``None`` for an episode that ran its course)."""
        return {"stopped": self.stopped, "stopped_at_step": self.stopped_at, "stop_detail": self.stop_detail}


def run_episode(
    policy: Policy,
    robot: Robot,
    strategy: ActionStrategy,
    max_steps: int,
    rate: RateLimiter | None = None,
    first_obs: Observation | None = None,
    on_step: Callable[[int, StepInfo], None] | None = None,
    log: EpisodeLog | None = None,
) -> EpisodeLog:
    """Run one episode of at most ``max_steps`` steps (``first_obs``: an observation ``robot.reset()`` already gave).

    A non-finite chunk or action ends the episode (see the module docstring); an exception is re-raised
    after ``robot.hold()``, with a note naming the step. Pass ``log`` to keep what the episode did when it raises.
    """
    rate = rate or RateLimiter(None)
    log = EpisodeLog() if log is None else log
    strategy.reset()
    obs = robot.reset() if first_obs is None else first_obs
    late_before = rate.overruns
    rate.start()
    t = 0
    try:
        for t in range(max_steps):
            start = time.perf_counter()
            if strategy.needs_query(t):
                query_start = time.perf_counter()
                result = policy.infer(obs)
                log.infer_ms.append(1000.0 * (time.perf_counter() - query_start))
                chunk = np.asarray(result["actions"], dtype=np.float32)  # a float64 beyond float32's range: inf
                if not _accept(chunk, f"action chunk from the policy at step {t}", robot, log, t):
                    break
                strategy.add_chunk(t, chunk)
                log.queries.append((t, chunk))
                if result.get("reasoning"):
                    log.reasoning.append((t, str(result["reasoning"])))
            action = strategy.action(t)
            if not _accept(action, f"action for step {t}", robot, log, t):
                break
            info = robot.step(action)
            log.actions.append(action)
            log.infos.append(info)
            if on_step is not None:
                on_step(t, info)
            if info.done:
                log.step_ms.append(1000.0 * (time.perf_counter() - start))
                break
            log.step_ms.append(1000.0 * (time.perf_counter() - start))
            rate.wait()
            obs = robot.get_obs()  # after the wait: the policy acts on the freshest observation
    except BaseException as err:  # Ctrl-C too: the arms must not be left tracking a half-executed chunk
        _hold_after_failure(robot, err, t)
        raise
    finally:
        log.late_steps = rate.overruns - late_before
    return log


def _accept(action: np.ndarray, what: str, robot: Robot, log: EpisodeLog, t: int) -> bool:
    """``True`` for a finite ``action``; else hold the robot, record why in ``log`` and return ``False``."""
    try:
        check_finite_action(action, what)
    except NonFiniteActionError as err:
        logger.error("%s; holding the robot at its last command and ending the episode", err)
        log.stopped, log.stopped_at, log.stop_detail = "non_finite_action", t, str(err)
        robot.hold()
        return False
    return True


def _hold_after_failure(robot: Robot, err: BaseException, t: int) -> None:
    """``robot.hold()`` after ``err`` cut the episode short at step ``t``; a failing hold is noted, never raised."""
    try:
        robot.hold()
    except Exception as hold_err:  # the original error is the one to report
        logger.error("robot.hold() after %s failed: %r", type(err).__name__, hold_err)
        err.add_note(f"control loop: step {t}: robot.hold() failed too: {hold_err!r}")
        return
    err.add_note(f"control loop: the episode failed at step {t}; the robot was told to hold its last command")


__all__ = ["EpisodeLog", "Policy", "RateLimiter", "run_episode"]
