"""How predicted action chunks become one action per control step.

- :class:`ChunkExecution` (``chunk``): query every ``k`` steps, execute the first ``k`` actions of the
  chunk in order (the reference DexVLA evaluation with ``k = 16``).
- :class:`TemporalAggregation` (``temporal_agg``): query every step (or every ``query_every`` steps) and
  execute, for step ``t``, the exponentially weighted average of the actions that every chunk covering
  ``t`` predicted for it, as ACT and TinyVLA do: weights ``exp(-k * i)`` with ``i = 0`` for the *oldest*
  such chunk, normalised to sum to one (so a small ``k`` such as 0.01 averages almost uniformly, and a
  large one trusts older chunks).
- :class:`AsyncExecution` (``async``): the control loop keeps executing a queue of actions while the
  next chunk is computed in a background thread (see :func:`evaluate.control_loop.run_episode`); a
  query goes out when fewer than ``threshold`` actions remain, and the arriving chunk's actions that
  the robot has already overtaken are dropped before the rest replaces the queue.

All share one protocol: ``reset()``, ``needs_query(t)``, ``add_chunk(t, chunk)``, ``action(t)``.
``add_chunk`` refuses a chunk holding NaN or infinity (:class:`~evaluate.robots.base.NonFiniteActionError`):
in temporal aggregation one such chunk would poison every step it covers.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from evaluate.robots.base import check_finite_action

STRATEGIES = ("chunk", "temporal_agg", "async")


class ActionStrategy(Protocol):
    name: str

    def reset(self) -> None: ...

    def needs_query(self, t: int) -> bool: ...

    def add_chunk(self, t: int, chunk: np.ndarray) -> None: ...

    def action(self, t: int) -> np.ndarray: ...


class ChunkExecution:
    """Execute ``k`` actions of each chunk, then query again.

    Args:
        k: actions executed per query (``None``: the whole chunk).
    """

    name = "chunk"

    def __init__(self, k: int | None = None) -> None:
        if k is not None and k <= 0:
            raise ValueError(f"chunk execution needs k > 0, got {k}")
        self.k = k
        self._queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self._queue.clear()

    def needs_query(self, t: int) -> bool:
        return not self._queue

    def add_chunk(self, t: int, chunk: np.ndarray) -> None:
        """``chunk (T, action_dim)`` predicted at step ``t``; its first ``k`` actions are queued."""
        check_finite_action(chunk, f"action chunk predicted at step {t}")
        k = len(chunk) if self.k is None else self.k
        if k > len(chunk):
            raise ValueError(f"k={k} actions per query but the policy predicts chunks of {len(chunk)}")
        self._queue = deque(np.asarray(chunk[:k], dtype=np.float32))

    def action(self, t: int) -> np.ndarray:
        if not self._queue:
            raise RuntimeError(f"step {t}: no queued action (query the policy first)")
        return self._queue.popleft()


class TemporalAggregation:
    """ACT's temporal ensembling over every chunk that covers the current step.

    Args:
        k: decay of the weights ``exp(-k * i)`` (``i = 0``: oldest chunk).
        query_every: steps between queries (1 in ACT; larger trades accuracy for speed).
    """

    name = "temporal_agg"

    def __init__(self, k: float = 0.01, query_every: int = 1) -> None:
        if k < 0:
            raise ValueError(f"temporal aggregation needs k >= 0, got {k}")
        if query_every <= 0:
            raise ValueError(f"query_every must be positive, got {query_every}")
        self.k, self.query_every = float(k), int(query_every)
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (step queried, (T, action_dim)), oldest first

    def reset(self) -> None:
        self._chunks.clear()

    def needs_query(self, t: int) -> bool:
        return t % self.query_every == 0 or not self._covering(t)

    def add_chunk(self, t: int, chunk: np.ndarray) -> None:
        """``chunk (T, action_dim)`` predicted at step ``t`` for steps ``t .. t + T - 1``."""
        if len(chunk) < self.query_every:
            raise ValueError(
                f"query_every={self.query_every} steps between queries but the policy predicts chunks of "
                f"{len(chunk)}: some steps would have no prediction"
            )
        check_finite_action(chunk, f"action chunk predicted at step {t}")
        if self._chunks and t <= self._chunks[-1][0]:
            raise ValueError(f"chunks must arrive in time order; got step {t} after step {self._chunks[-1][0]}")
        self._chunks.append((t, np.asarray(chunk, dtype=np.float64)))

    def _covering(self, t: int) -> list[np.ndarray]:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= t:
            self._chunks.popleft()  # no longer covers t (nor any later step)
        return [chunk[t - start] for start, chunk in self._chunks if start <= t]

    def action(self, t: int) -> np.ndarray:
        """``(action_dim,)`` weighted average of the predictions for step ``t``."""
        predictions = self._covering(t)
        if not predictions:
            raise RuntimeError(f"step {t}: no chunk covers this step (query the policy first)")
        weights = np.exp(-self.k * np.arange(len(predictions)))
        weights /= weights.sum()
        return (np.stack(predictions) * weights[:, None]).sum(axis=0).astype(np.float32)


class AsyncExecution:
    """A queue of actions refilled, while it is being executed, by chunks computed from older observations.

    The queue's front is always the action for the current step. A chunk computed from the observation
    of step ``t`` predicts steps ``t, t + 1, ...``; when it arrives at step ``now`` the robot has already
    executed steps ``t .. now - 1``, so its first ``now - t`` actions are dropped and the rest (up to
    ``horizon`` actions counted from step ``t``) replaces the queue. With ``blend = K > 0`` the first
    ``n = min(K, len(old queue), len(new queue))`` actions of the new queue are blended linearly with the
    old queue's actions for the same steps: ``new[j] = (1 - w_j) * old[j] + w_j * new[j]``,
    ``w_j = (j + 1) / (n + 1)`` (``j = 0``: the next step), so the trajectory moves from the old plan to the
    new one over ``n`` steps instead of jumping. A chunk wholly overtaken (``now - t >= `` its usable
    length) is discarded and the queue kept. Any step the queue is empty at is a starvation (the loop
    holds or waits; see :func:`evaluate.control_loop.run_episode`).

    Used synchronously (``add_chunk(t, chunk)`` at the step it was queried for), nothing is dropped and this
    is chunk execution that re-queries when fewer than ``threshold`` actions remain.

    Args:
        threshold: query when fewer than this many actions remain (>= 1). Pick it above the inference
            latency in control steps (plus ``blend``): then a chunk arrives before the queue runs dry.
        blend: steps over which an arriving chunk is blended with the old queue (0: replace outright).
        horizon: actions of a chunk that may be executed, counted from its observation's step (``None``:
            the whole chunk), as ``k`` of :class:`ChunkExecution`.
    """

    name = "async"
    asynchronous = True  # run_episode computes chunks in a background thread

    def __init__(self, threshold: int, blend: int = 0, horizon: int | None = None) -> None:
        if threshold < 1:
            raise ValueError(f"async execution needs threshold >= 1, got {threshold}")
        if blend < 0:
            raise ValueError(f"async blend must be >= 0 steps, got {blend}")
        if horizon is not None and horizon < threshold:
            raise ValueError(
                f"async threshold {threshold} exceeds the {horizon} actions executed per chunk: the queue would "
                "always be below it"
            )
        self.threshold, self.blend, self.horizon = int(threshold), int(blend), horizon
        self._queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self._queue.clear()

    @property
    def remaining(self) -> int:
        """Actions queued for the current and later steps."""
        return len(self._queue)

    def needs_query(self, t: int) -> bool:
        return len(self._queue) < self.threshold

    def add_chunk(self, t: int, chunk: np.ndarray, now: int | None = None) -> int:
        """``chunk (T, action_dim)`` computed from step ``t``'s observation, arriving at step ``now`` (default ``t``).

        Returns the number of actions dropped as overtaken (``now - t``, at most the usable length).
        """
        now = t if now is None else now
        if now < t:
            raise ValueError(f"a chunk from the observation of step {t} cannot arrive at an earlier step {now}")
        check_finite_action(chunk, f"action chunk predicted at step {t}")
        usable = len(chunk) if self.horizon is None else self.horizon
        if not 0 < usable <= len(chunk):
            raise ValueError(
                f"async execution of {usable} actions per chunk but the policy predicts chunks of {len(chunk)}"
            )
        elapsed = now - t
        if elapsed >= usable:
            return usable  # overtaken entirely: the old queue is all there is
        fresh = np.asarray(chunk[elapsed:usable], dtype=np.float32).copy()
        overlap = min(self.blend, len(self._queue), len(fresh))
        if overlap:
            old = np.stack([self._queue[j] for j in range(overlap)])
            weights = (np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1))[:, None]
            fresh[:overlap] = (1.0 - weights) * old + weights * fresh[:overlap]
        self._queue = deque(fresh)
        return elapsed

    def action(self, t: int) -> np.ndarray:
        if not self._queue:
            raise RuntimeError(f"step {t}: the async action queue is empty (the loop holds or waits instead)")
        return self._queue.popleft()


def make_strategy(
    name: str,
    exec_horizon: int | None = None,
    temporal_k: float = 0.01,
    async_threshold: int | None = None,
    async_blend: int = 0,
) -> ActionStrategy:
    """``"chunk"`` (``exec_horizon`` actions per query), ``"temporal_agg"`` (weights' decay ``temporal_k``) or
    ``"async"`` (query below ``async_threshold`` queued actions, blend over ``async_blend`` steps).

    ``exec_horizon`` is the steps between queries for ``chunk`` and ``temporal_agg`` (there the query period,
    ``None``: every step, as ACT), and the actions usable per chunk for ``async``, so ``--exec_horizon`` is
    never silently ignored.
    """
    if name == "chunk":
        return ChunkExecution(exec_horizon)
    if name == "temporal_agg":
        return TemporalAggregation(temporal_k, query_every=exec_horizon or 1)
    if name == "async":
        if async_threshold is None:
            raise ValueError("the async strategy needs async_threshold (query when fewer actions remain)")
        return AsyncExecution(async_threshold, async_blend, exec_horizon)
    raise ValueError(f"unknown action strategy {name!r}; choose one of {STRATEGIES}")


__all__ = ["STRATEGIES", "ActionStrategy", "AsyncExecution", "ChunkExecution", "TemporalAggregation", "make_strategy"]
