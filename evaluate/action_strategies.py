"""How predicted action chunks become one action per control step.

- :class:`ChunkExecution` (``chunk``): query every ``k`` steps, execute the first ``k`` actions of the
  chunk in order (the reference DexVLA evaluation with ``k = 16``).
- :class:`TemporalAggregation` (``temporal_agg``): query every step (or every ``query_every`` steps) and
  execute, for step ``t``, the exponentially weighted average of the actions that every chunk covering
  ``t`` predicted for it, as ACT and TinyVLA do: weights ``exp(-k * i)`` with ``i = 0`` for the *oldest*
  such chunk, normalised to sum to one (so a small ``k`` such as 0.01 averages almost uniformly, and a
  large one trusts older chunks).

Both share one protocol: ``reset()``, ``needs_query(t)``, ``add_chunk(t, chunk)``, ``action(t)``.
``add_chunk`` refuses a chunk holding NaN or infinity (:class:`~evaluate.robots.base.NonFiniteActionError`):
in temporal aggregation one such chunk would poison every step it covers.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from evaluate.robots.base import check_finite_action

STRATEGIES = ("chunk", "temporal_agg")


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


def make_strategy(name: str, exec_horizon: int | None = None, temporal_k: float = 0.01) -> ActionStrategy:
    """``"chunk"`` (``exec_horizon`` actions per query) or ``"temporal_agg"`` (weights' decay ``temporal_k``).

    ``exec_horizon`` is the steps between queries for both: with ``temporal_agg`` it is the query period
    (``None``: every step, as ACT), so ``--exec_horizon`` is never silently ignored.
    """
    if name == "chunk":
        return ChunkExecution(exec_horizon)
    if name == "temporal_agg":
        return TemporalAggregation(temporal_k, query_every=exec_horizon or 1)
    raise ValueError(f"unknown action strategy {name!r}; choose one of {STRATEGIES}")


__all__ = ["STRATEGIES", "ActionStrategy", "ChunkExecution", "TemporalAggregation", "make_strategy"]
