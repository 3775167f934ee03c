"""``benchmarks/gpu_suite.sh``: its ``--smoke`` run end to end (CPU, tiny sizes, the GPU run's code), and the
row runner's bookkeeping (failures, the time budget, results written after every row) with fake rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_suite
from benchmarks.gpu_suite import Row, plan_rows, run_rows, run_suite

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_suite.sh"


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.mark.slow
def test_smoke_run_measures_every_row_kind(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    start = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), "--smoke", "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["suite"]["mode"] == "smoke"
    rows = {row["name"]: row for row in doc["rows"]}
    assert len(rows) == len(doc["rows"])

    # Every row of the plan has a final status: ok, or skipped with a reason.
    for row in doc["rows"]:
        assert row["status"] == "ok" or row["status"].startswith("skipped: "), (row["name"], row["status"])
        if row["status"].startswith("skipped"):
            assert len(row["status"]) > len("skipped: ") + 2, row
    # The rows the smoke run must measure: training with sdpa, latency at both batch sizes with and without
    # reasoning, before and after the one-pass change.
    train = rows["train sdpa"]
    assert train["status"] == "ok" and train["attn_implementation"] == "sdpa" and train["batch"] == 2
    for key in ("samples_per_s", "seconds_per_step", "peak_mem_GiB", "model_tflops", "flops_per_sample"):
        assert math.isfinite(train[key]) and train[key] > 0, (key, train[key])
    latency = [row for row in doc["rows"] if row["kind"] == "latency" and row["status"] == "ok"]
    measured = {(row["batch"], row["reasoning"], row["mode"]) for row in latency}
    assert measured == {(b, r, m) for b in (1, 2) for r in (False, True) for m in ("before", "after")}
    for row in latency:
        assert math.isfinite(row["ms_per_call"]) and row["ms_per_call"] > 0, row
        assert row["ms_per_obs"] == pytest.approx(row["ms_per_call"] / row["batch"])
        assert row["stages_ms"]["ddim"] > 0 and row["stages_ms"]["vision"] > 0, row
        # Reasoning rows decode their tokens one by one; the others never decode.
        assert (row["single_token_steps"] > 0) == row["reasoning"], row
    for row in doc["rows"]:
        assert all(math.isfinite(n) for n in _numbers(row)), row["name"]
    # GPU-only rows are recorded, with the reason they did not run.
    for name in ("train flash_attention_2", "train sdpa + liger", "train flash_attention_2 + liger",
                 "latency b1 no-reasoning after compile_head"):  # fmt: skip
        assert rows[name]["status"].startswith("skipped: cpu"), rows[name]
    assert doc["suite"]["goal"]["met"] is None and doc["suite"]["goal"]["row"] == "latency b1 no-reasoning after"

    markdown = (tmp_path / "results.md").read_text()
    assert "| row | status | attention | liger | samples/s |" in markdown
    assert "| row | status | batch | reasoning | mode | ms/call |" in markdown
    assert "6 x (N_llm x text tokens" in markdown
    assert "| row | status | batch | reasoning | mode | ms/call |" in done.stdout  # the table is printed
    assert list((tmp_path / "logs").glob("worker_*.log"))
    print(f"gpu_suite --smoke: {elapsed:.1f} s")


def _fake_row(name: str, kind: str, estimate_s: float = 0.0, skip: str | None = None, group: str = "") -> Row:
    return Row(name, kind, group or name, {"batch": 1}, estimate_s, skip)


def test_a_failing_row_is_recorded_and_the_next_rows_run() -> None:
    calls: list[str] = []

    def boom(row: Row, ctx: Any) -> dict[str, Any]:
        calls.append(row.name)
        raise RuntimeError("CUDA out of memory\nsecond line")

    def fine(row: Row, ctx: Any) -> dict[str, Any]:
        calls.append(row.name)
        return {"value": 1.5}

    results: list[dict[str, Any]] = []
    rows = [_fake_row("a", "boom"), _fake_row("b", "fine"), _fake_row("c", "boom"), _fake_row("d", "fine")]
    run_rows(rows, None, results.append, functions={"boom": boom, "fine": fine})
    assert calls == ["a", "b", "c", "d"]
    assert [r["status"] for r in results] == [
        "failed: RuntimeError: CUDA out of memory", "ok", "failed: RuntimeError: CUDA out of memory", "ok",
    ]  # fmt: skip
    assert results[1]["metrics"] == {"value": 1.5} and results[0]["metrics"] == {}


def test_run_rows_skips_what_does_not_fit_the_deadline() -> None:
    now = [100.0]
    results: list[dict[str, Any]] = []

    def slow(row: Row, ctx: Any) -> dict[str, Any]:
        now[0] += 30.0
        return {"value": 1.0}

    rows = [_fake_row("a", "slow", 20.0), _fake_row("b", "slow", 20.0), _fake_row("c", "slow", 5.0)]
    run_rows(rows, None, results.append, deadline=145.0, functions={"slow": slow}, clock=lambda: now[0])
    # a fits (100 + 20 <= 145) and takes 30 s; b would end at 150; c fits in what is left.
    assert [r["status"] for r in results] == ["ok", "skipped: budget", "ok"]
    assert results[0]["seconds"] == 30.0


def test_run_suite_writes_every_row_as_it_comes(tmp_path: Path) -> None:
    seen_before_b: list[dict[str, Any]] = []

    def fine(row: Row, ctx: Any) -> dict[str, Any]:
        if row.name == "b":
            # Row a's result is on disk before row b runs.
            seen_before_b.extend(json.loads((tmp_path / "results.json").read_text())["rows"])
        return {"ms_per_call": 12.0}

    def boom(row: Row, ctx: Any) -> dict[str, Any]:
        raise ValueError("bad shape")

    functions = {"latency": fine, "boom": boom}
    launches: list[list[str]] = []

    def launch(rows: list[Row], deadline: float):
        launches.append([r.name for r in rows])
        if rows[0].name == "broken":
            yield {"name": "broken", "status": "ok", "seconds": 0.1, "metrics": {"ms_per_call": 1.0}}
            raise OSError("worker pipe closed")
        for row in rows:  # results come back one by one, as from a worker process
            results: list[dict[str, Any]] = []
            run_rows([row], None, results.append, functions=functions)
            yield from results

    rows = [
        _fake_row("a", "latency", group="g1"),
        _fake_row("x", "boom", group="g1"),
        _fake_row("b", "latency", group="g1"),
        _fake_row("flash", "latency", skip="skipped: not installed (flash_attn)"),
        _fake_row("broken", "latency", group="g2"),
        _fake_row("lost", "latency", group="g2"),
        _fake_row("late", "latency", estimate_s=1e6, group="g3"),
    ]
    doc = run_suite(rows, tmp_path, budget_s=60.0, launch=launch, meta={"mode": "smoke"}, isolate=True)
    status = {r["name"]: r["status"] for r in doc["rows"]}
    assert status == {
        "a": "ok",
        "x": "failed: ValueError: bad shape",
        "b": "ok",
        "flash": "skipped: not installed (flash_attn)",
        "broken": "ok",
        "lost": "failed: OSError: worker pipe closed",
        "late": "skipped: budget",
    }
    assert launches == [["a", "x", "b"], ["broken", "lost"]]  # one launch per group; skipped rows never launch
    assert {r["name"]: r["status"] for r in seen_before_b}["a"] == "ok"
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(doc))
    assert "| a | ok |" in (tmp_path / "results.md").read_text()


def test_worker_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    """A worker still running at the deadline is stopped (its process group) and its rows are skipped: budget."""
    launcher = gpu_suite.SubprocessLauncher(gpu_suite.smoke_sizes(), tmp_path, tmp_path / "logs")
    rows = [_fake_row("a", "latency"), _fake_row("b", "train")]
    start = time.monotonic()
    results = list(launcher(rows, time.monotonic() + 0.5))  # the worker is still importing torch by then
    assert time.monotonic() - start < 30
    assert [r["status"] for r in results] == ["skipped: budget (worker stopped at the time budget)"] * 2


def test_plan_orders_rows_by_importance_and_names_missing_kernels() -> None:
    rows = plan_rows(gpu_suite.gpu_sizes(), flash_attn=False, liger=True)
    names = [row.name for row in rows]
    assert names[:3] == ["latency b1 no-reasoning after", "latency b1 no-reasoning before", "train sdpa"]
    latency = {(r.params["batch"], r.params["reasoning"], r.params["mode"]) for r in rows if r.kind == "latency"}
    assert latency >= {(b, r, m) for b in (1, 8) for r in (False, True) for m in ("before", "after")}
    skips = {row.name: row.skip for row in rows}
    assert skips["train flash_attention_2"] == "skipped: not installed (flash_attn)"
    assert skips["train sdpa + liger"] is None and skips["train sdpa"] is None
    assert skips["train flash_attention_2 + liger"] == "skipped: not installed (flash_attn)"


def test_goal_is_judged_on_the_fastest_batch1_no_reasoning_after_row() -> None:
    def doc(mode: str, *ms: float) -> dict[str, Any]:
        rows = [{"name": f"r{i}", "kind": "latency", "status": "ok", "batch": 1, "reasoning": False,
                 "mode": "after", "ms_per_call": m} for i, m in enumerate(ms)]  # fmt: skip
        rows.append({"name": "slow b8", "kind": "latency", "status": "ok", "batch": 8, "reasoning": False,
                     "mode": "after", "ms_per_call": 1.0})  # fmt: skip
        return {"suite": {"mode": mode, "device": "NVIDIA H100 80GB HBM3"}, "rows": rows}

    assert gpu_suite.latency_goal(doc("gpu", 55.0, 38.5)) == {
        "target_ms": 40.0, "met": True, "measured_ms": 38.5, "row": "r1", "verdict": "met",
    }  # fmt: skip
    assert gpu_suite.latency_goal(doc("gpu", 41.0))["met"] is False
    assert gpu_suite.latency_goal(doc("smoke", 1.0))["met"] is None
    assert gpu_suite.latency_goal({"suite": {"mode": "gpu"}, "rows": []})["verdict"] == "not measured"


def test_without_cuda_the_gpu_run_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    assert "--smoke" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
