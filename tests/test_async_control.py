"""``--strategy async``: chunks computed in a background thread while the queue is executed.

The fake policy encodes where each chunk came from: the chunk computed from the observation of step ``s``
predicts ``s + i`` for step ``s + i`` (plus ``offset * call`` when a test needs chunks to differ), so an
executed action equal to its step index proves that overtaken actions were dropped exactly and that no
step was skipped or repeated. Most tests run on a simulated clock with a worker that delivers after a
fixed latency (deterministic, no threads); the threaded ones use real time, each under about a second.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from evaluate import eval_dexvla
from evaluate.action_strategies import AsyncExecution, make_strategy
from evaluate.control_loop import Arrival, EpisodeLog, RateLimiter, ThreadedInference, run_episode
from evaluate.robots.base import Robot, StepInfo
from tests.test_action_strategies import SimClock

DIM = 2


class StepRobot(Robot):
    """Observation state is the step index; records ``step``/``hold`` calls; ``fail_at`` makes ``step`` raise."""

    name = "step_robot"

    def __init__(self, fail_at: int | None = None) -> None:
        self.t, self.fail_at = 0, fail_at
        self.events: list[tuple[str, Any]] = []

    def reset(self):
        self.t = 0
        self.events.append(("reset", None))
        return self.get_obs()

    def get_obs(self):
        return {"images": {}, "state": np.full(DIM, float(self.t), np.float32), "prompt": "p"}

    def step(self, action: np.ndarray) -> StepInfo:
        if self.t == self.fail_at:
            raise ConnectionError(f"arm bus lost at step {self.t}")
        self.events.append(("step", float(action[0])))
        self.t += 1
        return StepInfo()

    def hold(self) -> None:
        self.events.append(("hold", None))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


class StepChunkPolicy:
    """``chunk[i] = s + i + offset * call`` for the observation of step ``s``; ``latency_s`` of real sleep.

    ``plan[call]``: ``"nan"`` (a NaN at entry 2) or ``"raise"`` (a RuntimeError, as a crashed server).
    """

    camera_names = ["cam_high"]
    metadata = {"policy": "step_chunk"}

    def __init__(self, chunk_size: int = 8, latency_s: float = 0.0, offset: float = 0.0, plan: dict | None = None):
        self.chunk_size, self.latency_s, self.offset, self.plan = chunk_size, latency_s, offset, plan or {}
        self.calls = 0
        self.threads: set[str] = set()

    def warmup(self, obs, passes: int) -> list[float]:
        return [0.0] * passes

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        call, self.calls = self.calls, self.calls + 1
        self.threads.add(threading.current_thread().name)
        time.sleep(self.latency_s)
        if self.plan.get(call) == "raise":
            raise RuntimeError(f"inference server died on call {call}")
        s = float(obs["state"][0])
        chunk = (s + np.arange(self.chunk_size, dtype=np.float32) + self.offset * call)[:, None].repeat(DIM, 1)
        if self.plan.get(call) == "nan":
            chunk[2, 1] = np.nan
        return {"actions": chunk, "reasoning": f"from step {s:g}"}


class SimLatencyWorker:
    """An ``InferenceWorker`` on a simulated clock: a request's result is ready ``latency_s`` after it was submitted.

    A blocking poll advances the clock to that moment (what waiting would cost); ``blocking_polls`` counts them.
    """

    def __init__(self, policy: StepChunkPolicy, clock: SimClock, latency_s: float) -> None:
        self.policy, self.clock, self.latency_s = policy, clock, latency_s
        self.busy, self.blocking_polls, self.submitted = False, 0, []
        self.started = self.closed = False
        self._pending: tuple[int, dict[str, Any], float] | None = None

    def start(self) -> None:
        self.started = True

    def submit(self, t: int, obs) -> None:
        assert not self.busy, "two requests in flight"
        self.busy = True
        self.submitted.append(t)
        self._pending = (t, obs, self.clock() + self.latency_s)

    def poll(self, block: bool = False) -> Arrival | None:
        if self._pending is None:
            return None
        t, obs, ready_at = self._pending
        if self.clock() < ready_at:
            if not block:
                return None
            self.blocking_polls += 1
            self.clock.now = ready_at
        self._pending, self.busy = None, False
        return Arrival(t, self.policy.infer(obs), 1000.0 * self.latency_s)

    def close(self) -> None:
        self.closed = True


def sim_episode(threshold: int, fps: float | None, steps: int = 20, blend: int = 0, offset: float = 0.0, chunk=8):
    """An async episode on a simulated clock: period 0.25 s (``fps=4``), inference latency 0.75 s (3 periods)."""
    clock = SimClock()
    policy = StepChunkPolicy(chunk, offset=offset)
    worker = SimLatencyWorker(policy, clock, latency_s=0.75)
    rate = RateLimiter(fps, warn=lambda _: None, clock=clock, sleep=clock.sleep)
    robot = StepRobot()
    log = run_episode(policy, robot, AsyncExecution(threshold, blend), steps, rate=rate, worker=worker)
    assert worker.started and worker.closed
    return log, worker, robot


def ours_alive() -> int:
    """Live threads other than tqdm's progress-bar monitor (tqdm starts and stops it on its own schedule)."""
    return sum(t.name != "tqdm_monitor" for t in threading.enumerate())


def executed(log: EpisodeLog) -> list[float]:
    return [float(a[0]) for a in log.actions]


def assert_continuous(log: EpisodeLog) -> None:
    """Action ``t`` is ``t``, except a starved step, which repeats the previous action (a documented hold)."""
    values = executed(log)
    for t, value in enumerate(values):
        expected = values[t - 1] if t in log.starved else float(t)
        assert value == expected, f"step {t}: executed {value}, expected {expected} (starved {log.starved})"


# ---- the strategy alone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("elapsed", [0, 1, 3, 5])
def test_arriving_chunk_drops_exactly_the_elapsed_steps(elapsed):
    strategy = AsyncExecution(threshold=2)
    strategy.add_chunk(0, np.arange(8.0)[:, None])
    for t in range(6):  # execute steps 0..5 of the first chunk; 2 remain
        strategy.action(t)
    assert strategy.remaining == 2 and not strategy.needs_query(6)
    strategy.action(6)
    assert strategy.needs_query(7)  # 1 < threshold 2
    s = 7 - elapsed  # the chunk's observation was taken at step s; it arrives at step 7
    assert strategy.add_chunk(s, (100.0 + s + np.arange(8.0))[:, None], now=7) == elapsed
    assert strategy.remaining == 8 - elapsed
    assert [float(strategy.action(t)[0]) for t in range(7, 9)] == [107.0, 108.0]


def test_blending_hand_computed():
    strategy = AsyncExecution(threshold=3, blend=2)
    strategy.add_chunk(0, np.arange(6.0)[:, None])
    for t in range(4):
        strategy.action(t)  # queue: [4, 5] for steps 4, 5
    strategy.add_chunk(2, (100.0 + 2 + np.arange(6.0))[:, None], now=4)  # steps 4..7 after dropping 2
    got = [float(strategy.action(t)[0]) for t in range(4, 8)]
    np.testing.assert_allclose(got, [(2 * 4 + 104) / 3, (5 + 2 * 105) / 3, 106.0, 107.0], rtol=1e-6)
    # An old queue shorter than the blend: the ramp spans what overlaps (one step, weight 1/2).
    short = AsyncExecution(threshold=3, blend=4)
    short.add_chunk(0, np.arange(4.0)[:, None])
    for t in range(3):
        short.action(t)
    short.add_chunk(3, np.full((4, 1), 10.0), now=3)
    assert [float(short.action(t)[0]) for t in range(3, 7)] == [6.5, 10.0, 10.0, 10.0]


def test_overtaken_chunk_is_discarded_and_arguments_are_checked():
    strategy = AsyncExecution(threshold=2, horizon=4)
    strategy.add_chunk(0, np.arange(8.0)[:, None])
    assert strategy.remaining == 4  # the horizon caps the usable actions
    strategy.action(0)
    assert strategy.add_chunk(0, np.full((8, 1), 9.0), now=5) == 4  # all 4 usable actions overtaken
    assert strategy.remaining == 3 and float(strategy.action(1)[0]) == 1.0  # the old queue stays
    with pytest.raises(ValueError, match="cannot arrive at an earlier step"):
        strategy.add_chunk(5, np.zeros((8, 1)), now=4)
    with pytest.raises(ValueError, match="4 actions per chunk but the policy predicts chunks of 3"):
        strategy.add_chunk(5, np.zeros((3, 1)), now=5)
    with pytest.raises(ValueError, match="threshold >= 1"):
        AsyncExecution(0)
    with pytest.raises(ValueError, match="blend must be >= 0"):
        AsyncExecution(2, blend=-1)
    with pytest.raises(ValueError, match="threshold 5 exceeds the 4 actions"):
        AsyncExecution(5, horizon=4)
    with pytest.raises(ValueError, match="needs async_threshold"):
        make_strategy("async")
    made = make_strategy("async", exec_horizon=6, async_threshold=3, async_blend=2)
    assert (made.threshold, made.blend, made.horizon) == (3, 2, 6)


# ---- the loop on a simulated clock (deterministic) ------------------------------------------------------------


def test_threshold_above_latency_never_waits_and_executes_every_step_once():
    log, worker, robot = sim_episode(threshold=5, fps=4.0)
    assert executed(log) == list(range(20)) and [v for k, v in robot.events if k == "step"] == list(range(20))
    assert worker.blocking_polls == 1  # the first chunk only: nothing to hold before it
    assert log.starved == [] and log.late_steps == 0
    # Chunks of 8: the queue falls below 5 four steps after a chunk lands; each lands 3 steps later, 3 dropped.
    assert worker.submitted == [0, 4, 8, 12, 16]
    assert log.arrivals == [(0, 0, 0), (4, 7, 3), (8, 11, 3), (12, 15, 3), (16, 19, 3)]
    assert [t for t, _ in log.queries] == [0, 4, 8, 12, 16] and log.timing()["starvations"] == 0


def test_threshold_below_latency_holds_the_last_action_on_a_paced_loop():
    log, worker, robot = sim_episode(threshold=2, fps=4.0)
    assert worker.submitted == [0, 7, 14] and log.arrivals == [(0, 0, 0), (7, 10, 3), (14, 17, 3)]
    assert log.starved == [8, 9, 15, 16] and worker.blocking_polls == 1
    assert executed(log) == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 10, 11, 12, 13, 14, 14, 14, 17, 18, 19]
    assert_continuous(log)
    assert "hold" not in robot.kinds() and log.late_steps == 0  # holding is re-sending, at the control rate


def test_unpaced_loop_waits_instead_of_holding():
    log, worker, _ = sim_episode(threshold=2, fps=None)
    assert log.starved == [] and executed(log) == list(range(20))
    # Simulated time stands still between steps: the chunk asked for at step 7 is waited for at step 8.
    assert log.arrivals[:3] == [(0, 0, 0), (7, 8, 1), (14, 15, 1)] and worker.blocking_polls == 3


def test_blending_in_the_loop():
    log, _, _ = sim_episode(threshold=6, fps=4.0, blend=2, offset=100.0, steps=8)
    # Call c adds 100 c. Chunk 1 (observation of step 3: 8 - 3 < 6) lands at step 6 on an old queue [6, 7]:
    # the first 2 steps ramp from the old plan to the new one with weights 1/3 and 2/3.
    assert log.arrivals == [(0, 0, 0), (3, 6, 3)]
    np.testing.assert_allclose(executed(log), [0, 1, 2, 3, 4, 5, (2 * 6 + 106) / 3, (7 + 2 * 107) / 3], rtol=1e-6)


# ---- real threads ---------------------------------------------------------------------------------------------


def test_threaded_inference_never_blocks_the_loop():
    before = threading.active_count()
    period, latency = 0.025, 0.1  # inference takes 4 control periods
    policy, robot = StepChunkPolicy(chunk_size=16, latency_s=latency), StepRobot()
    log = run_episode(policy, robot, AsyncExecution(threshold=8), 30, rate=RateLimiter(1 / period, warn=lambda _: None))
    assert threading.active_count() == before
    assert policy.threads == {"dexvla-async-inference"}  # never on the control loop's thread
    assert max(log.step_ms) < 0.5 * 1000 * latency, log.step_ms
    assert log.starved == [] and executed(log) == list(range(30))
    assert len(log.arrivals) >= 3
    for s, now, dropped in log.arrivals[1:]:
        assert dropped == now - s >= 4  # at least the 4 periods of latency were overtaken, and exactly those dropped
    assert all(now - s < 8 for s, now, _ in log.arrivals)  # each lands before the queue runs out


def test_threaded_non_finite_chunk_holds_stops_and_reports():
    before = threading.active_count()
    robot = StepRobot()
    policy = StepChunkPolicy(latency_s=0.01, plan={1: "nan"})
    log = run_episode(policy, robot, AsyncExecution(threshold=5), 20, rate=RateLimiter(100.0, warn=lambda _: None))
    assert threading.active_count() == before
    s, t = 4, log.stopped_at  # the second query goes out at step 4 (8 - 4 < 5) and is refused when it lands
    assert log.stopped == "non_finite_action" and t > s and log.steps == t
    assert f"(observation of step {s}) at step {t}" in log.stop_detail and "[[2, 1]]" in log.stop_detail
    assert robot.kinds()[-1] == "hold" and robot.kinds().count("step") == t and executed(log) == list(range(t))
    assert [q for q, _ in log.queries] == [0]  # the refused chunk is not kept


def test_threaded_worker_exception_holds_then_reraises_in_the_loop():
    before = threading.active_count()
    robot, log = StepRobot(), EpisodeLog()
    policy = StepChunkPolicy(latency_s=0.01, plan={1: "raise"})
    with pytest.raises(RuntimeError, match="inference server died on call 1") as raised:
        run_episode(policy, robot, AsyncExecution(threshold=5), 20, RateLimiter(100.0, warn=lambda _: None), log=log)
    assert threading.active_count() == before
    notes = raised.value.__notes__
    assert any("inference thread, on the observation of step 4" in n for n in notes)
    assert any(f"failed at step {log.steps}" in n and "hold" in n for n in notes)
    assert robot.kinds()[-1] == "hold" and 4 < log.steps <= 8 and executed(log) == list(range(log.steps))


def test_exception_in_the_loop_joins_the_thread_in_flight():
    before = threading.active_count()
    robot = StepRobot(fail_at=5)
    policy = StepChunkPolicy(latency_s=0.05)
    with pytest.raises(ConnectionError, match="arm bus lost at step 5"):
        run_episode(policy, robot, AsyncExecution(threshold=6), 20, RateLimiter(200.0, warn=lambda _: None))
    assert robot.kinds()[-1] == "hold" and threading.active_count() == before  # the request of step 3 was in flight
    assert policy.calls == 2


def test_threaded_first_chunk_non_finite_and_worker_misuse():
    before = threading.active_count()
    robot = StepRobot()
    log = run_episode(StepChunkPolicy(plan={0: "nan"}), robot, AsyncExecution(threshold=2), 5)
    assert log.stopped_at == 0 and log.steps == 0 and robot.kinds() == ["reset", "hold"]
    assert threading.active_count() == before
    worker = ThreadedInference(StepChunkPolicy())
    with pytest.raises(RuntimeError, match="before start"):
        worker.submit(0, robot.get_obs())
    worker.start()
    with pytest.raises(RuntimeError, match="no request in flight"):
        worker.poll(block=True)
    worker.submit(0, robot.get_obs())
    with pytest.raises(RuntimeError, match="already in flight"):
        worker.submit(1, robot.get_obs())
    worker.close()
    assert threading.active_count() == before


def test_async_through_the_websocket_client():
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from evaluate.serve_policy import PolicyServer

    server = PolicyServer(StepChunkPolicy(chunk_size=12, latency_s=0.04), host="127.0.0.1", port=0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        before = threading.active_count()
        log = run_episode(client, StepRobot(), AsyncExecution(threshold=6), 24, RateLimiter(50.0, warn=lambda _: None))
        assert threading.active_count() == before
        assert executed(log) == list(range(24)) and log.starved == [] and len(log.arrivals) >= 3
        assert all(dropped == now - s for s, now, dropped in log.arrivals)
        client._ws.close()
    finally:
        server.shutdown()
        serving.join(timeout=10)


# ---- eval_dexvla --strategy async -----------------------------------------------------------------------------


def test_eval_cli_runs_async_and_checks_its_flags(monkeypatch, tmp_path, capsys):
    robot, before = StepRobot(), ours_alive()
    monkeypatch.setattr(eval_dexvla, "make_robot", lambda args, cameras, out_dir: robot)
    policy = StepChunkPolicy(latency_s=0.005)
    policy.chunk_size = 8

    def parse(*extra: str):
        return eval_dexvla.build_parser().parse_args(
            ["--ckpt", str(tmp_path / "ckpt"), "--robot", "agilex", "--out", str(tmp_path), "--warmup", "0",
             "--max_steps", "16", "--fps", "100", *extra]
        )  # fmt: skip

    summary = eval_dexvla.evaluate(parse("--strategy", "async", "--async_blend", "1"), policy=policy)
    assert summary["strategy"] == "async" and summary["async_threshold"] == 4 and summary["async_blend"] == 1
    written = json.loads((tmp_path / "agilex_results.json").read_text())
    assert written["complete"] and written["episodes"][0]["steps"] == 16 and "starvations" in written["episodes"][0]
    assert policy.threads == {"dexvla-async-inference"} and ours_alive() == before
    for extra, message in [
        (["--strategy", "async", "--async_threshold", "9"], r"--async_threshold 9 must be in \[1, .* 8\]"),
        (["--strategy", "async", "--exec_horizon", "4", "--async_threshold", "5"], r"must be in \[1, .* 4\]"),
        (["--strategy", "async", "--async_blend", "-1"], "--async_blend -1 must be >= 0"),
        (["--strategy", "chunk", "--async_threshold", "3"], "--async_threshold only applies to --strategy async"),
    ]:
        with pytest.raises(SystemExit, match=message):
            eval_dexvla.evaluate(parse(*extra), policy=StepChunkPolicy())


@pytest.mark.slow
def test_aloha_sim_evaluation_with_async(tmp_path, tiny_vla_ckpt):
    """The tiny DexVLA policy, in the inference thread, drives 12 simulated steps (unpaced: the loop waits)."""
    from tests.test_sim_aloha import SIM_IMPORT_ERROR, SKIP_SIM

    if SKIP_SIM:
        pytest.skip("DEXVLA_SKIP_SIM=1: the simulation tests did NOT run")
    assert SIM_IMPORT_ERROR is None, SIM_IMPORT_ERROR
    before_ours = ours_alive()
    args = eval_dexvla.build_parser().parse_args(
        ["--ckpt", str(tiny_vla_ckpt), "--robot", "aloha_sim", "--task", "transfer_cube", "--num_episodes", "1",
         "--max_steps", "12", "--strategy", "async", "--async_threshold", "3", "--max_new_tokens", "2",
         "--sim_height", "48", "--sim_width", "64", "--out", str(tmp_path), "--warmup", "0"]
    )  # fmt: skip
    summary = eval_dexvla.evaluate(args)
    episode = summary["episodes"][0]
    assert episode["steps"] == 12 and episode["queries"] >= 2 and episode["starvations"] == 0
    assert summary["strategy"] == "async" and summary["async_threshold"] == 3 and np.isfinite(summary["mean_return"])
    # tqdm (the episode's progress bar) may start a monitor thread of its own: count the others.
    assert ours_alive() == before_ours and "dexvla-async-inference" not in [t.name for t in threading.enumerate()]
