"""The control loop: observation -> (query the policy when the strategy asks) -> one action per step, at a fixed rate.

``run_episode`` works with anything that has ``infer(obs) -> {"actions": (T, A), ...}``: a local
``DexVLAPolicy`` or openpi's ``WebsocketClientPolicy`` talking to ``serve_policy.py``.

Safety: a chunk from the policy and each action about to be executed must be finite. A non-finite one
is refused (a NaN chunk never enters the strategy, where temporal aggregation would spread it over
``chunk_size`` steps): the robot is told to ``hold()`` its last command and the episode ends, recorded
as ``EpisodeLog.stopped == "non_finite_action"`` at step ``stopped_at``. Any exception in the loop
(inference, the robot, Ctrl-C) also sends ``hold()`` before it propagates.

Asynchronous execution (a strategy with ``asynchronous = True``, :class:`~evaluate.action_strategies.AsyncExecution`):
``policy.infer`` runs in a background thread (:class:`ThreadedInference`, one request in flight at a
time) while the loop keeps executing the queued actions; the loop never blocks on inference except for
the episode's first chunk (there is no command to hold yet; the rate limiter's schedule starts after it).
When the queue runs dry, a paced loop (``fps`` set) *holds*: it re-sends the last action with
``robot.step`` and records the step in ``EpisodeLog.starved``, because a real robot must keep receiving
commands at its rate. An unpaced loop (simulation, replay: time only advances on ``step``) *waits* for
the chunk in flight instead, since re-sending would advance the simulation on a stale command for no
reason but the host's speed. The same safety rules hold for chunks from the thread: a non-finite one is
refused (hold, stop, ``stopped == "non_finite_action"``), an exception raised by ``infer`` in the thread
is re-raised in the loop (hold, then propagate), and the thread is joined when the episode ends, however
it ends.
"""

from __future__ import annotations

import logging
import queue
import threading
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
    Asynchronous execution only: ``queries`` holds ``(observation step, chunk)`` in arrival order;
    ``arrivals`` ``[(observation step, arrival step, actions dropped)]``; ``starved``: the steps at which the
    queue was empty and the last action was re-sent.
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
    arrivals: list[tuple[int, int, int]] = field(default_factory=list)
    starved: list[int] = field(default_factory=list)

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
            "starvations": len(self.starved),
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
    worker: InferenceWorker | None = None,
) -> EpisodeLog:
    """Run one episode of at most ``max_steps`` steps (``first_obs``: an observation ``robot.reset()`` already gave).

    A non-finite chunk or action ends the episode (see the module docstring); an exception is re-raised
    after ``robot.hold()``, with a note naming the step. Pass ``log`` to keep what the episode did when it raises.
    An asynchronous strategy computes chunks through ``worker`` (default: a :class:`ThreadedInference` of
    ``policy``, started and closed here).
    """
    rate = rate or RateLimiter(None)
    log = EpisodeLog() if log is None else log
    strategy.reset()
    obs = robot.reset() if first_obs is None else first_obs
    if getattr(strategy, "asynchronous", False):
        return _run_async_episode(
            worker or ThreadedInference(policy), robot, strategy, max_steps, rate, obs, on_step, log
        )
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


@dataclass
class Arrival:
    """A chunk computed in the background: ``result`` of ``infer`` on the observation of step ``t``."""

    t: int
    result: dict[str, Any]
    infer_ms: float


class InferenceWorker(Protocol):
    """Runs ``infer`` away from the control loop; at most one request in flight.

    ``poll(block)`` returns the finished request (``None`` when there is none and ``block`` is false) and
    re-raises, in the caller's thread, an exception ``infer`` raised; ``busy``: a request was submitted
    and its result not yet collected.
    """

    busy: bool

    def start(self) -> None: ...

    def submit(self, t: int, obs: Observation) -> None: ...

    def poll(self, block: bool = False) -> Arrival | None: ...

    def close(self) -> None: ...


class ThreadedInference:
    """``policy.infer`` in one background thread (a local policy or a websocket client: both are ``infer(obs)``).

    The thread is started by :meth:`start` and ends in :meth:`close`, which waits up to ``join_timeout_s``
    for an inference in flight to finish (its result is discarded). The thread is a daemon so that a
    hung remote call can never keep the process alive; ``close`` warns when it had to leave it running.
    """

    def __init__(self, policy: Policy, join_timeout_s: float = 60.0) -> None:
        self.policy, self.join_timeout_s = policy, join_timeout_s
        self.busy = False
        self._requests: queue.Queue[tuple[int, Observation] | None] = queue.Queue()
        self._results: queue.Queue[tuple[int, dict[str, Any] | None, float, BaseException | None]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this ThreadedInference was already started (one per episode)")
        self._thread = threading.Thread(target=self._serve, name="dexvla-async-inference", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            t, obs = request
            start = time.perf_counter()
            try:
                result, error = self.policy.infer(obs), None
            except BaseException as err:  # handed to the control loop, which holds the robot and re-raises
                result, error = None, err
            self._results.put((t, result, 1000.0 * (time.perf_counter() - start), error))

    def submit(self, t: int, obs: Observation) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("submit() before start() or after close()")
        if self.busy:
            raise RuntimeError(f"step {t}: a request is already in flight (one at a time)")
        self.busy = True
        self._requests.put((t, obs))

    def poll(self, block: bool = False) -> Arrival | None:
        if block and not self.busy:
            raise RuntimeError("poll(block=True) with no request in flight would wait forever")
        try:
            t, result, infer_ms, error = self._results.get(block=block)
        except queue.Empty:
            return None
        self.busy = False
        if error is not None:
            error.add_note(f"raised by policy.infer in the inference thread, on the observation of step {t}")
            raise error
        return Arrival(t, result, infer_ms)

    def close(self) -> None:
        if self._thread is None:
            return
        self._requests.put(None)
        self._thread.join(self.join_timeout_s)
        if self._thread.is_alive():
            logger.warning(
                "the inference thread is still in policy.infer after %.0f s; leaving it (daemon)", self.join_timeout_s
            )


def _run_async_episode(
    worker: InferenceWorker,
    robot: Robot,
    strategy: Any,
    max_steps: int,
    rate: RateLimiter,
    obs: Observation,
    on_step: Callable[[int, StepInfo], None] | None,
    log: EpisodeLog,
) -> EpisodeLog:
    """``run_episode`` for an asynchronous strategy (see the module docstring for hold vs wait)."""
    wait_when_dry = not rate.period
    late_before = rate.overruns
    last: np.ndarray | None = None
    t = 0

    def integrate(arrival: Arrival, now: int) -> bool:
        chunk = np.asarray(arrival.result["actions"], dtype=np.float32)
        log.infer_ms.append(arrival.infer_ms)
        what = f"action chunk from the policy (observation of step {arrival.t}) at step {now}"
        if not _accept(chunk, what, robot, log, now):
            return False
        dropped = strategy.add_chunk(arrival.t, chunk, now)
        log.queries.append((arrival.t, chunk))
        log.arrivals.append((arrival.t, now, dropped))
        if arrival.result.get("reasoning"):
            log.reasoning.append((arrival.t, str(arrival.result["reasoning"])))
        return True

    try:
        worker.start()
        worker.submit(0, obs)
        if not integrate(worker.poll(block=True), 0):  # nothing to hold before the first chunk: wait for it
            return log
        rate.start()
        for t in range(max_steps):
            start = time.perf_counter()
            while True:
                arrival = worker.poll()
                if arrival is not None and not integrate(arrival, t):
                    return log
                if strategy.needs_query(t) and not worker.busy:
                    worker.submit(t, obs)  # the freshest observation: taken at the start of this step
                if strategy.remaining or not wait_when_dry:
                    break
                if not integrate(worker.poll(block=True), t):  # unpaced: wait (see the module docstring)
                    return log
            if strategy.remaining:
                action = strategy.action(t)
            else:
                action = last  # paced and dry: keep commanding the robot where it is
                log.starved.append(t)
            if not _accept(action, f"action for step {t}", robot, log, t):
                return log
            info = robot.step(action)
            last = action
            log.actions.append(action)
            log.infos.append(info)
            if on_step is not None:
                on_step(t, info)
            log.step_ms.append(1000.0 * (time.perf_counter() - start))
            if info.done:
                break
            rate.wait()
            obs = robot.get_obs()
    except BaseException as err:
        _hold_after_failure(robot, err, t)
        raise
    finally:
        log.late_steps = rate.overruns - late_before
        worker.close()
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


__all__ = ["Arrival", "EpisodeLog", "InferenceWorker", "Policy", "RateLimiter", "ThreadedInference", "run_episode"]
