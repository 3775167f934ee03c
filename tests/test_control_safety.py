"""Safety of the control loop without a model: non-finite actions never reach a robot, a failing episode holds the
robot before it is closed and leaves the finished episodes on disk, ``--max_joint_step`` must be positive.

Fakes only (a scripted policy, a robot that records what reaches it): each test runs in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_utils.normalization import NormStats
from evaluate import eval_dexvla
from evaluate.action_strategies import ChunkExecution, TemporalAggregation, make_strategy
from evaluate.control_loop import EpisodeLog, run_episode
from evaluate.robots.base import NonFiniteActionError, Robot, StepInfo
from tests.test_agilex_robot import COMMAND_TOPICS, commands, make_robot, publish_all

DIM = 14


class RecordingRobot(Robot):
    """Records every call in ``events`` and accepts any action, so a test sees exactly what would reach a motor."""

    name = "recording"

    def __init__(self, max_steps: int = 6) -> None:
        self.max_steps = max_steps
        self.t = 0
        self.events: list[tuple[str, Any]] = []

    def reset(self):
        self.t = 0
        self.events.append(("reset", None))
        return self.get_obs()

    def get_obs(self):
        return {"images": {}, "state": np.full(DIM, float(self.t), np.float32), "prompt": "p"}

    def step(self, action: np.ndarray) -> StepInfo:
        self.events.append(("step", np.array(action, dtype=np.float64)))
        self.t += 1
        return StepInfo()

    def hold(self) -> None:
        self.events.append(("hold", None))

    def close(self) -> None:
        self.events.append(("close", None))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def stepped(self) -> np.ndarray:
        return np.array([a for kind, a in self.events if kind == "step"]).reshape(-1, DIM)


class ScriptedPolicy:
    """Chunk of ``chunk_size`` finite actions per call; ``plan[call]`` (0-based over all calls) makes one bad:
    ``"nan"`` (a NaN at ``bad_index`` of the chunk), ``"inf"`` or ``"raise"`` (a RuntimeError, as a crashed server)."""

    camera_names = ["cam_high"]
    metadata = {"policy": "scripted"}

    def __init__(self, plan: dict[int, str] | None = None, chunk_size: int = 4, bad_index: tuple[int, int] = (0, 3)):
        self.plan, self.chunk_size, self.bad_index = plan or {}, chunk_size, bad_index
        self.calls = 0
        self.on_infer = None
        self.stats = NormStats(
            np.zeros(DIM), np.ones(DIM), -np.ones(DIM), np.ones(DIM), np.zeros(DIM), np.ones(DIM), camera_names=["c"]
        )

    def warmup(self, obs, passes: int) -> list[float]:
        return [0.0] * passes

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        call, self.calls = self.calls, self.calls + 1
        if self.on_infer is not None:
            self.on_infer(call)
        kind = self.plan.get(call)
        if kind == "raise":
            raise RuntimeError(f"inference server died on call {call}")
        chunk = 0.01 * (float(obs["state"][0]) + np.arange(self.chunk_size, dtype=np.float32))[:, None].repeat(DIM, 1)
        if kind in ("nan", "inf"):
            chunk[self.bad_index] = np.nan if kind == "nan" else np.inf
        return {"actions": chunk, "reasoning": f"call {call}"}


# ---- the control loop -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "kind", "bad_index"),
    [
        ("temporal_agg", "nan", (0, 3)),  # averaged into every step the chunk covers
        ("temporal_agg", "inf", (2, 0)),  # a later entry: would surface two steps on
        ("chunk", "nan", (0, 5)),
        ("chunk", "nan", (3, 1)),  # beyond the executed horizon: the chunk is still refused as a whole
    ],
)
def test_a_non_finite_chunk_is_refused_held_and_stops_the_episode(strategy, kind, bad_index):
    robot = RecordingRobot()
    policy = ScriptedPolicy(plan={3: kind}, bad_index=bad_index)  # temporal_agg: call 3 = step 3; chunk (k=1): too
    log = run_episode(policy, robot, make_strategy(strategy, exec_horizon=1), max_steps=10)
    assert np.isfinite(robot.stepped()).all()
    assert robot.kinds() == ["reset", "step", "step", "step", "hold"]  # nothing after the hold
    assert log.stopped == "non_finite_action" and log.stopped_at == 3 and log.steps == 3
    assert "at step 3" in log.stop_detail and f"(step, dim) [{list(bad_index)}]" in log.stop_detail
    assert [t for t, _ in log.queries] == [0, 1, 2]  # the refused chunk is not kept for the metrics
    assert log.outcome() == {"stopped": "non_finite_action", "stopped_at_step": 3, "stop_detail": log.stop_detail}


class NaNAtStep:
    """A strategy whose action at ``bad_step`` is NaN although every chunk was finite (the loop's second check)."""

    name = "nan_at_step"

    def __init__(self, bad_step: int) -> None:
        self.inner, self.bad_step = ChunkExecution(1), bad_step

    def reset(self) -> None:
        self.inner.reset()

    def needs_query(self, t: int) -> bool:
        return self.inner.needs_query(t)

    def add_chunk(self, t: int, chunk: np.ndarray) -> None:
        self.inner.add_chunk(t, chunk)

    def action(self, t: int) -> np.ndarray:
        action = self.inner.action(t)
        return np.full_like(action, np.nan) if t == self.bad_step else action


def test_a_non_finite_action_is_refused_before_robot_step():
    robot = RecordingRobot()
    log = run_episode(ScriptedPolicy(), robot, NaNAtStep(2), max_steps=10)
    assert robot.kinds() == ["reset", "step", "step", "hold"] and np.isfinite(robot.stepped()).all()
    assert log.stopped == "non_finite_action" and log.stopped_at == 2 and "action for step 2" in log.stop_detail


def test_a_finite_episode_is_not_marked_stopped():
    robot = RecordingRobot()
    log = run_episode(ScriptedPolicy(), robot, make_strategy("temporal_agg"), max_steps=5)
    assert log.steps == 5 and log.stopped is None and "hold" not in robot.kinds()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_mid_episode_holds_the_robot_then_propagates(error):
    class Failing(ScriptedPolicy):
        def infer(self, obs):
            if self.calls == 2:
                raise error("boom")
            return super().infer(obs)

    robot, log = RecordingRobot(), EpisodeLog()
    with pytest.raises(error, match="boom") as raised:
        run_episode(Failing(), robot, make_strategy("chunk", exec_horizon=2), max_steps=10, log=log)
    assert robot.kinds() == ["reset", "step", "step", "step", "step", "hold"]
    assert log.steps == 4 and log.stopped is None  # the caller keeps what ran
    assert any("failed at step 4" in note and "hold" in note for note in raised.value.__notes__)


def test_a_failing_hold_does_not_mask_the_original_error():
    class BrokenHold(RecordingRobot):
        def hold(self) -> None:
            raise ConnectionError("ROS master gone")

    with pytest.raises(RuntimeError, match="inference server died") as raised:
        run_episode(ScriptedPolicy(plan={1: "raise"}), BrokenHold(), make_strategy("chunk", exec_horizon=1), 5)
    assert any("hold() failed too: ConnectionError" in note for note in raised.value.__notes__)


@pytest.mark.parametrize("strategy", [ChunkExecution(2), TemporalAggregation(query_every=1)])
def test_strategies_refuse_a_non_finite_chunk_and_keep_their_buffer(strategy):
    strategy.reset()
    strategy.add_chunk(0, np.ones((4, 2)))
    bad = np.ones((4, 2))
    bad[1, 1] = np.nan
    with pytest.raises(NonFiniteActionError, match=r"chunk predicted at step 1 .* \(step, dim\) \[\[1, 1\]\]"):
        strategy.add_chunk(1, bad)
    np.testing.assert_array_equal(strategy.action(1), [1.0, 1.0])  # the earlier chunk still drives the step


# ---- every robot's step -----------------------------------------------------------------------------------------


def test_replay_robot_refuses_non_finite_and_misshapen_actions(episodes_dir):
    from data_utils.hdf5_io import find_all_hdf5
    from evaluate.robots.replay import ReplayRobot
    from tests.conftest import CAMERAS

    robot = ReplayRobot(find_all_hdf5(episodes_dir)[:1], CAMERAS)
    robot.reset()
    with pytest.raises(NonFiniteActionError, match=r"non-finite action of shape \(14,\): NaN/inf at indices \[0\]"):
        robot.step(np.where(np.arange(DIM) == 0, np.inf, 0.0))
    with pytest.raises(ValueError, match=r"actions are \(14,\) as recorded, got shape \(7,\)"):
        robot.step(np.zeros(7))
    assert robot.executed == [] and robot._t == 0  # a refused action is not "executed" and plays no frame
    robot.close()


def test_aloha_sim_robot_refuses_non_finite_actions_before_the_simulator():
    from evaluate.robots.aloha_sim import AlohaSimRobot

    class Env:
        calls = 0

        def step(self, action):
            Env.calls += 1

    robot = object.__new__(AlohaSimRobot)  # no MuJoCo: step checks its input before touching the env
    robot.env = Env()
    with pytest.raises(NonFiniteActionError, match=r"joint targets .* indices \[13\]"):
        robot.step(np.where(np.arange(DIM) == 13, np.nan, 0.0))
    assert Env.calls == 0


def test_agilex_hold_republishes_the_last_command():
    robot, rospy = make_robot(max_joint_step=0.1)
    robot.hold()  # before reset: nothing known, nothing sent
    assert not rospy.published[COMMAND_TOPICS[0]]
    publish_all(rospy, [0.5] * 7, [0.25] * 7)
    robot.reset()
    robot.hold()  # no step yet: hold where the arms are
    np.testing.assert_allclose(commands(rospy)[-1], [0.5] * 7 + [0.25] * 7, rtol=1e-6)
    with pytest.warns(UserWarning, match="clamped"):
        robot.step(np.full(DIM, 2.0))
    with pytest.raises(NonFiniteActionError):
        robot.step(np.full(DIM, np.nan))
    robot.hold()  # the last *published* (clamped) command, not the refused one
    sent = commands(rospy)
    assert len(sent) == 3 and np.isfinite(sent).all()
    np.testing.assert_allclose(sent[-1], [0.6] * 7 + [0.35] * 7, rtol=1e-6)


def test_agilex_refuses_a_non_finite_joint_reading_as_the_clamp_seed():
    robot, rospy = make_robot(max_joint_step=0.1)
    publish_all(rospy, [0.0] * 6 + [np.nan], [0.0] * 7)
    with pytest.raises(NonFiniteActionError, match=r"joint positions from the state topics .* indices \[6\]"):
        robot.reset()
    robot.hold()
    assert not rospy.published[COMMAND_TOPICS[0]]


@pytest.mark.parametrize("step", [-0.1, 0.0, float("nan")])
def test_agilex_rejects_a_non_positive_max_joint_step(step):
    with pytest.raises(ValueError, match=r"max_joint_step must be a positive number of radians"):
        make_robot(max_joint_step=step)


@pytest.mark.parametrize("value", ["-0.1", "0", "nan", "inf", "fast"])
def test_cli_rejects_a_non_positive_max_joint_step(value, capsys):
    with pytest.raises(SystemExit):
        eval_dexvla.build_parser().parse_args(["--ckpt", "c", "--robot", "agilex", "--max_joint_step", value])
    err = capsys.readouterr().err
    assert "--max_joint_step" in err and ("positive number of radians" in err or "expected a number" in err)
    args = eval_dexvla.build_parser().parse_args(["--ckpt", "c", "--robot", "agilex", "--max_joint_step", "0.05"])
    assert args.max_joint_step == 0.05


# ---- eval_dexvla: results after every episode, failures on disk ------------------------------------------------


def run_eval(monkeypatch, tmp_path: Path, robot: Robot, policy: ScriptedPolicy, *extra: str) -> dict:
    monkeypatch.setattr(eval_dexvla, "make_robot", lambda args, cameras, out_dir: robot)
    args = eval_dexvla.build_parser().parse_args(
        ["--ckpt", str(tmp_path / "ckpt"), "--robot", "agilex", "--out", str(tmp_path), "--warmup", "0",
         "--max_steps", "6", "--strategy", "chunk", "--exec_horizon", "2", *extra]
    )
    return eval_dexvla.evaluate(args, policy=policy)


def results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "agilex_results.json").read_text())


def test_eval_writes_results_after_every_episode(monkeypatch, tmp_path):
    policy, seen = ScriptedPolicy(), {}
    # 3 queries per episode: call 3 is episode 1's first. What is on disk then?
    policy.on_infer = lambda call: seen.setdefault(call, results(tmp_path)) if call in (0, 3) else None
    summary = run_eval(monkeypatch, tmp_path, RecordingRobot(), policy, "--num_episodes", "2")
    assert seen[0]["episodes"] == [] and seen[0]["complete"] is False  # an earlier run's file is replaced at once
    assert [e["index"] for e in seen[3]["episodes"]] == [0] and seen[3]["complete"] is False
    assert results(tmp_path) == json.loads(json.dumps(summary)) and summary["complete"] is True
    assert summary["failed"] is None and summary["stopped_episodes"] == []
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writes left no temporary file


def test_eval_failure_holds_keeps_finished_episodes_and_closes(monkeypatch, tmp_path):
    robot = RecordingRobot()
    policy = ScriptedPolicy(plan={4: "raise"})  # episode 1's second query, after its first 2 steps
    with pytest.raises(RuntimeError, match="inference server died on call 4"):
        run_eval(monkeypatch, tmp_path, robot, policy, "--num_episodes", "3")
    written = results(tmp_path)
    assert written["complete"] is False and [e["index"] for e in written["episodes"]] == [0]
    assert written["episodes"][0]["steps"] == 6 and written["num_episodes"] == 1
    assert written["failed"] == {"episode": 1, "step": 2, "error": "RuntimeError: inference server died on call 4"}
    assert robot.kinds()[-2:] == ["hold", "close"]  # hold first, then close
    assert robot.kinds().count("reset") == 2 and robot.stepped().shape == (8, DIM)


def test_eval_reports_a_stopped_episode_and_goes_on(monkeypatch, tmp_path, capsys):
    robot = RecordingRobot()
    summary = run_eval(monkeypatch, tmp_path, robot, ScriptedPolicy(plan={1: "nan"}), "--num_episodes", "2")
    assert np.isfinite(robot.stepped()).all() and robot.stepped().shape == (2 + 6, DIM)
    first, second = results(tmp_path)["episodes"]
    assert first["stopped"] == "non_finite_action" and first["stopped_at_step"] == 2 and first["steps"] == 2
    assert "action chunk from the policy at step 2" in first["stop_detail"]
    assert second["stopped"] is None and second["steps"] == 6
    assert summary["stopped_episodes"] == [0] and summary["complete"] is True
    out = capsys.readouterr().out
    assert "non_finite_action at 2" in out and "episodes [0] stopped early" in out


def test_replay_eval_of_an_episode_stopped_at_its_first_query(monkeypatch, tmp_path, episodes_dir):
    """Replay's metrics and plot cope with an episode that executed nothing."""
    from data_utils.hdf5_io import find_all_hdf5
    from tests.conftest import CAMERAS

    episodes = [str(p) for p in find_all_hdf5(episodes_dir)[:2]]
    args = eval_dexvla.build_parser().parse_args(
        ["--ckpt", str(tmp_path / "ckpt"), "--robot", "replay", "--episodes", *episodes, "--out", str(tmp_path),
         "--warmup", "0", "--max_steps", "5", "--strategy", "chunk", "--exec_horizon", "4"]
    )
    policy = ScriptedPolicy(plan={0: "nan"})
    policy.camera_names = CAMERAS
    summary = eval_dexvla.evaluate(args, policy=policy)
    first, second = json.loads((tmp_path / "replay_metrics.json").read_text())["episodes"]
    assert first["stopped_at_step"] == 0 and first["steps"] == 0 and first["executed"]["mse_raw"] is None
    assert second["stopped"] is None and second["steps"] == 5 and np.isfinite(second["executed"]["mse_raw"])
    assert summary["executed_mse_raw"] == pytest.approx(second["executed"]["mse_raw"])
