"""Action strategies and the control loop without a model: temporal aggregation with a query period > 1,
query counts over an episode, and the rate limiter on a simulated clock (no wall-clock assertions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluate.action_strategies import ChunkExecution, TemporalAggregation, make_strategy
from evaluate.control_loop import RateLimiter, run_episode
from evaluate.robots.base import Robot, StepInfo


def w(i: int, k: float) -> float:
    """ACT's weight of the ``i``-th oldest chunk covering a step."""
    return math.exp(-k * i)


def test_query_period_2_hand_computed():
    """Chunks of 5 queried every 2 steps: two or three chunks cover a step, the oldest weighs most."""
    k = 0.5
    agg = TemporalAggregation(k=k, query_every=2)
    base = {0: 1.0, 2: 10.0, 4: 100.0, 6: 1000.0}  # chunk queried at s predicts base[s] * (j + 1) for step s + j
    got, queried = [], []
    for t in range(8):
        if agg.needs_query(t):
            queried.append(t)
            agg.add_chunk(t, (base[t] * np.arange(1, 6, dtype=np.float64))[:, None])
        got.append(float(agg.action(t)[0]))
    w1, w2 = w(1, k), w(2, k)
    expected = [
        1.0,  # t=0: chunk 0 alone
        2.0,  # t=1: chunk 0 alone (no query at odd steps)
        (3.0 + 10.0 * w1) / (1 + w1),  # t=2: chunks 0, 2
        (4.0 + 20.0 * w1) / (1 + w1),  # t=3
        (5.0 + 30.0 * w1 + 100.0 * w2) / (1 + w1 + w2),  # t=4: chunks 0 (last entry), 2, 4
        (40.0 + 200.0 * w1) / (1 + w1),  # t=5: chunk 0 has run out
        (50.0 + 300.0 * w1 + 1000.0 * w2) / (1 + w1 + w2),  # t=6: chunks 2, 4, 6
        (400.0 + 2000.0 * w1) / (1 + w1),  # t=7: chunks 4, 6
    ]
    assert queried == [0, 2, 4, 6]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


class CountingRobot(Robot):
    """Observation state is the step index; ``step`` records actions (and can advance a simulated clock)."""

    name = "counting"

    def __init__(self, clock: SimClock | None = None, work_s: dict[int, float] | None = None) -> None:
        self.t = 0
        self.actions: list[np.ndarray] = []
        self.clock, self.work_s = clock, work_s or {}

    def reset(self):
        self.t = 0
        return self.get_obs()

    def get_obs(self):
        return {"images": {}, "state": np.array([float(self.t)]), "prompt": ""}

    def step(self, action: np.ndarray) -> StepInfo:
        self.actions.append(np.asarray(action))
        if self.clock is not None:
            self.clock.now += self.work_s.get(self.t, 0.001)
        self.t += 1
        return StepInfo()


class StepPolicy:
    """Chunk queried at step ``s`` predicts ``100 * s + j`` for step ``s + j``; checks it sees step ``s``'s obs."""

    def __init__(self, chunk: int) -> None:
        self.chunk, self.calls = chunk, 0

    def infer(self, obs):
        self.calls += 1
        s = float(obs["state"][0])
        return {"actions": (100.0 * s + np.arange(self.chunk, dtype=np.float32))[:, None], "reasoning": f"at {s:g}"}


def test_query_period_3_through_the_control_loop():
    k = 0.1
    robot, policy = CountingRobot(), StepPolicy(chunk=4)
    log = run_episode(policy, robot, make_strategy("temporal_agg", exec_horizon=3, temporal_k=k), max_steps=10)
    assert [t for t, _ in log.queries] == [0, 3, 6, 9] and policy.calls == 4
    assert [text for _, text in log.reasoning] == ["at 0", "at 3", "at 6", "at 9"]  # each query saw its own step
    w1 = w(1, k)
    expected = [
        0.0, 1.0, 2.0,
        (3.0 + 300.0 * w1) / (1 + w1),  # t=3: chunk 0's last entry and chunk 3's first
        301.0, 302.0,
        (303.0 + 600.0 * w1) / (1 + w1),
        601.0, 602.0,
        (603.0 + 900.0 * w1) / (1 + w1),
    ]  # fmt: skip
    np.testing.assert_allclose([float(a[0]) for a in log.actions], expected, rtol=1e-6)
    np.testing.assert_allclose([float(a[0]) for a in robot.actions], expected, rtol=1e-6)
    assert log.timing()["queries"] == 4 and log.steps == 10


@pytest.mark.parametrize(("query_every", "steps"), [(1, 10), (2, 10), (3, 10), (3, 11), (4, 9)])
def test_temporal_agg_query_count(query_every, steps):
    policy = StepPolicy(chunk=4)
    strategy = make_strategy("temporal_agg", exec_horizon=query_every)
    log = run_episode(policy, CountingRobot(), strategy, max_steps=steps)
    assert [t for t, _ in log.queries] == list(range(0, steps, query_every))
    assert policy.calls == math.ceil(steps / query_every) and log.steps == steps
    # A second episode starts clean: the previous episode's chunks are not reused.
    again = run_episode(policy, CountingRobot(), strategy, max_steps=steps)
    assert [t for t, _ in again.queries] == [t for t, _ in log.queries]
    np.testing.assert_array_equal(np.stack(again.actions), np.stack(log.actions))


def test_chunk_execution_query_count():
    policy = StepPolicy(chunk=4)
    log = run_episode(policy, CountingRobot(), make_strategy("chunk", exec_horizon=3), max_steps=10)
    assert [t for t, _ in log.queries] == [0, 3, 6, 9]
    # Chunk execution takes the k first actions as they are: no averaging.
    assert [float(a[0]) for a in log.actions] == [0, 1, 2, 300, 301, 302, 600, 601, 602, 900]


def test_strategy_arguments():
    assert make_strategy("temporal_agg").query_every == 1  # ACT: every step
    assert make_strategy("temporal_agg", exec_horizon=3, temporal_k=0.2).query_every == 3
    with pytest.raises(ValueError, match="query_every must be positive"):
        TemporalAggregation(query_every=0)
    with pytest.raises(ValueError, match="k >= 0"):
        TemporalAggregation(k=-1.0)
    with pytest.raises(ValueError, match="query_every=5 .* chunks of 4"):
        TemporalAggregation(query_every=5).add_chunk(0, np.zeros((4, 2)))
    agg = TemporalAggregation(query_every=2)
    agg.add_chunk(2, np.zeros((4, 1)))
    with pytest.raises(ValueError, match="time order"):
        agg.add_chunk(2, np.zeros((4, 1)))
    with pytest.raises(ValueError, match="unknown action strategy"):
        make_strategy("bogus")
    with pytest.raises(RuntimeError, match="no queued action"):
        ChunkExecution(2).action(0)


class SimClock:
    """A simulated ``perf_counter``/``sleep`` pair: sleeping advances time exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_on_a_simulated_clock():
    clock, warnings = SimClock(), []
    limiter = RateLimiter(20.0, warn=warnings.append, warn_every=3, clock=clock, sleep=clock.sleep)
    limiter.start()
    for _ in range(5):
        clock.now += 0.01  # 10 ms of work in a 50 ms period
        limiter.wait()
    assert clock.now == pytest.approx(0.25) and clock.sleeps == pytest.approx([0.04] * 5)
    assert limiter.overruns == 0 and not warnings
    clock.now += 0.08  # an 80 ms step: late by 30 ms
    limiter.wait()
    assert limiter.overruns == 1 and limiter.worst_ms == pytest.approx(80.0)
    assert len(warnings) == 1 and "cannot keep up with --fps 20: a step took 80.0 ms (budget 50.0 ms" in warnings[0]
    clock.now += 0.01  # back on time: the schedule restarts from the late step, no burst of catch-up steps
    limiter.wait()
    assert clock.sleeps[-1] == pytest.approx(0.04)
    for _ in range(5):  # overruns 2..6 warn at 3 and 6 only
        clock.now += 0.07
        limiter.wait()
    assert limiter.overruns == 6 and len(warnings) == 3 and "6 late steps so far" in warnings[-1]
    assert len(clock.sleeps) == 6  # late steps do not sleep
    unpaced = RateLimiter(None, clock=clock, sleep=clock.sleep)
    unpaced.start()
    clock.now += 1.0
    unpaced.wait()
    assert unpaced.overruns == 0 and len(clock.sleeps) == 6  # no pacing: never sleeps, never late


def test_run_episode_counts_late_steps_on_a_simulated_clock():
    clock = SimClock()
    robot = CountingRobot(clock=clock, work_s={4: 0.2})  # step 4 takes 200 ms at 20 fps
    rate = RateLimiter(20.0, warn=lambda _: None, clock=clock, sleep=clock.sleep)
    log = run_episode(StepPolicy(chunk=4), robot, make_strategy("chunk", exec_horizon=4), max_steps=8, rate=rate)
    assert log.late_steps == 1 and log.timing()["late_steps"] == 1 and log.steps == 8
