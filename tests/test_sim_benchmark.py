"""The closed-loop simulation benchmark's bookkeeping: seeds, intervals, resumption, the report.

The stages themselves (recording, train_vla, eval_dexvla on aloha_sim) have their own tests; here the
benchmark's parts are exercised on fake stage outputs, and its training arguments through the real parser.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.sim_benchmark import (
    REWARD_STAGES,
    SMOKE,
    TASK_NAME,
    BenchmarkConfig,
    SimBenchmark,
    build_parser,
    demo_artifacts_dir,
    frame_pixel_budget,
    main,
    split_evenly,
    wilson_interval,
)


def test_eval_seeds_never_overlap_demo_seeds() -> None:
    with pytest.raises(ValueError, match="demonstration seeds"):
        BenchmarkConfig(num_demos=50, demo_seed=0, num_eval=10, eval_seed=45)
    BenchmarkConfig(num_demos=50, demo_seed=0, num_eval=10, eval_seed=50)  # adjacent is fine


def test_recorded_seed_overlap_is_caught(tmp_path: Path) -> None:
    """The config check covers the intended seeds; the recorded summaries are checked too (a shard from elsewhere)."""
    bench = SimBenchmark(BenchmarkConfig(num_eval=3, eval_seed=1000), tmp_path / "out", 1, tmp_path / "art")
    shard = bench.demo_dir / "shard_0"
    shard.mkdir(parents=True)
    episodes = [{"seed": s, "file": f"episode_{i}.hdf5"} for i, s in enumerate([0, 1001])]
    (shard / "record_summary.json").write_text(json.dumps({"episodes": episodes}))
    with pytest.raises(AssertionError, match=r"\[1001\]"):
        bench.eval_seeds()


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.05 < high < 0.09  # 0/50: not the normal interval's degenerate [0, 0]
    low, high = wilson_interval(25, 50)
    assert low < 0.5 < high and abs((0.5 - low) - (high - 0.5)) < 1e-9
    assert 0.36 < low < 0.37 and 0.63 < high < 0.64
    low, high = wilson_interval(50, 50)
    assert high == pytest.approx(1.0) and 0.9 < low < 0.95


def test_split_evenly_covers_everything_once() -> None:
    for total, parts in [(50, 2), (7, 3), (2, 5), (1, 1)]:
        slices = split_evenly(total, parts)
        covered = [i for offset, count in slices for i in range(offset, offset + count)]
        assert covered == list(range(total)) and all(count > 0 for _, count in slices)


def test_train_args_parse_with_train_vla_parser(tmp_path: Path) -> None:
    import transformers

    from qwen2_vla.arguments import ActionHeadArguments, DataArguments, ModelArguments, TrainingArguments

    bench = SimBenchmark(BenchmarkConfig(), tmp_path / "out", 1, tmp_path / "art")
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments))
    _, data_args, training_args, head_args = parser.parse_args_into_dataclasses(args=bench.train_args())
    assert data_args.task_name == "sim_transfer_cube_benchmark" and data_args.chunk_size == 50
    assert training_args.max_steps == 8000 and training_args.save_steps == 2000
    assert head_args.policy_head_size == "ScaleDP_tiny"
    assert not training_args.freeze_vision_tower and head_args.state_dropout == 0.0  # the published run's
    assert training_args.llm_loss_weight == 1.0
    ablation = SimBenchmark(BenchmarkConfig(freeze_vision_tower=True, state_dropout=1.0), tmp_path / "o2", 1, tmp_path)
    _, _, training_args, head_args = parser.parse_args_into_dataclasses(args=ablation.train_args())
    assert training_args.freeze_vision_tower and head_args.state_dropout == 1.0
    args = build_parser().parse_args(["--freeze_vision_tower", "True", "--state_dropout", "0.5"])
    assert args.freeze_vision_tower is True and args.state_dropout == 0.5
    assert build_parser().parse_args(["--freeze_vision_tower", "false"]).freeze_vision_tower is False


def test_resumed_run_must_keep_its_settings(tmp_path: Path) -> None:
    SimBenchmark(BenchmarkConfig(steps=100, save_every=50), tmp_path, 1, tmp_path / "art").check_config()
    with pytest.raises(SystemExit, match="steps"):
        SimBenchmark(BenchmarkConfig(steps=200, save_every=50), tmp_path, 1, tmp_path / "art").check_config()


def _fake_run(tmp_path: Path) -> tuple[SimBenchmark, list[dict]]:
    config = BenchmarkConfig(num_demos=2, num_eval=4, steps=10, save_every=5)
    bench = SimBenchmark(config, tmp_path / "out", 2, tmp_path / "art")
    shard = bench.demo_dir / "shard_0"
    shard.mkdir(parents=True)
    demos = [{"seed": s, "file": f"episode_{s}.hdf5"} for s in (0, 1)]
    (shard / "record_summary.json").write_text(json.dumps({"episodes": demos}))
    video = tmp_path / "v.mp4"
    video.write_bytes(b"mp4")
    outcomes = [(4, True), (2, False), (1, False), (0, False)]
    for strategy in config.strategies:
        for k, (offset, count) in enumerate(split_evenly(config.num_eval, 2)):
            part = bench.eval_dir(strategy, bench.final_checkpoint()) / f"part_{k}"
            part.mkdir(parents=True)
            episodes = [
                {"seed": 1000 + i, "success": outcomes[i][1], "max_reward": outcomes[i][0],
                 "return": float(outcomes[i][0] * 10), "infer_ms_mean": 20.0, "video": str(video)}
                for i in range(offset, offset + count)
            ]
            (part / "sim_results.json").write_text(json.dumps({"complete": True, "episodes": episodes}))
    state = bench.final_checkpoint() / "trainer_state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"log_history": [{"step": 5, "loss": 0.5}, {"step": 10, "loss": 0.1},
                                                 {"train_runtime": 3.0, "step": 10}]}))
    return bench, outcomes


def test_report_scores_stages_and_picks_videos(tmp_path: Path) -> None:
    bench, outcomes = _fake_run(tmp_path)
    summary = bench.report([bench.final_checkpoint()])
    assert [r["strategy"] for r in summary["results"]] == ["chunk", "temporal_agg"]
    row = summary["results"][0]
    assert row["episodes"] == 4 and row["successes"] == 1 and row["success_rate"] == 0.25
    # Reaching stage k counts every episode whose best reward was >= k.
    expected = {name: sum(r >= level for r, _ in outcomes) for level, name in REWARD_STAGES.items()}
    assert row["reached"] == expected == {"touched": 3, "lifted": 2, "transfer_attempted": 1, "transferred": 1}
    assert row["mean_return"] == pytest.approx(17.5)
    assert summary["training_curve"] == [{"step": 5, "loss": 0.5, "learning_rate": None},
                                         {"step": 10, "loss": 0.1, "learning_rate": None}]
    assert set(summary["videos"]) == {"success", "failure"}
    assert (bench.out / summary["videos"]["success"]).exists()
    md = (bench.out / "summary.md").read_text()
    assert "| checkpoint-10 | chunk (exec 25) | 1/4 (25%) |" in md and "1000-1003" in md


def test_finished_eval_parts_are_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench, _ = _fake_run(tmp_path)
    launched = []
    monkeypatch.setattr("scripts.sim_benchmark.run_parallel", lambda commands, env: launched.extend(commands))
    bench.evaluate("chunk", bench.final_checkpoint())
    assert launched == []
    # A part whose results are incomplete (an interrupted run) is run again, and only that part.
    part = bench.eval_dir("chunk", bench.final_checkpoint()) / "part_1" / "sim_results.json"
    part.write_text(json.dumps({"complete": False, "episodes": []}))
    bench.evaluate("chunk", bench.final_checkpoint())
    assert len(launched) == 1
    argv = launched[0][0]
    assert argv[argv.index("--seed") + 1] == "1002" and argv[argv.index("--num_episodes") + 1] == "2"
    assert argv[argv.index("--exec_horizon") + 1] == "25"


def test_cli_defaults_match_the_config_and_smoke_is_small() -> None:
    args = build_parser().parse_args([])
    assert args.steps == BenchmarkConfig().steps and args.strategies == ["chunk", "temporal_agg"]
    smoke = BenchmarkConfig(**SMOKE)
    assert smoke.steps < 10 and smoke.num_demos <= 2 and smoke.max_episode_steps


def test_overlapping_seeds_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="demonstration seeds"):
        main(["--out", str(tmp_path), "--eval_seed", "10", "--stages", "report"])
    assert not (tmp_path / "config.json").exists()


def test_exec_horizon_ablation_gets_its_own_directory_and_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench, _ = _fake_run(tmp_path)
    launched = []
    monkeypatch.setattr("scripts.sim_benchmark.run_parallel", lambda commands, env: launched.extend(commands))
    bench.evaluate("chunk@10", bench.final_checkpoint(), num_eval=2, videos=False)
    argv = launched[0][0]
    assert argv[argv.index("--strategy") + 1] == "chunk" and argv[argv.index("--exec_horizon") + 1] == "10"
    assert Path(argv[argv.index("--out") + 1]).parent.name == "chunk_exec10" and "--save_video" not in argv


def test_steps_ablation_rows_use_the_ablation_strategy(tmp_path: Path) -> None:
    bench, _ = _fake_run(tmp_path)
    early = bench.train_dir / "checkpoint-5"
    part = bench.eval_dir("temporal_agg", early) / "part_0"
    part.mkdir(parents=True)
    episode = {"seed": 1000, "success": False, "max_reward": 1, "return": 3.0}
    (part / "sim_results.json").write_text(json.dumps({"complete": True, "episodes": [episode]}))
    summary = bench.report([early, bench.final_checkpoint()], ablation_strategy="temporal_agg")
    assert [(r["checkpoint"], r["strategy"]) for r in summary["results"]] == [
        ("checkpoint-5", "temporal_agg"), ("checkpoint-10", "chunk"), ("checkpoint-10", "temporal_agg")
    ]
    assert summary["results"][0]["steps"] == 5 and summary["results"][0]["reached"]["touched"] == 1


def test_pixel_budget_keeps_the_camera_frame_at_its_size() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    assert BenchmarkConfig().model_max_pixels == frame_pixel_budget(120, 160) == 168 * 112  # the published run's
    for height, width in [(120, 160), (240, 320), (168, 224)]:
        budget = BenchmarkConfig(height=height, width=width).model_max_pixels
        resized = smart_resize(height, width, factor=28, min_pixels=28 * 28, max_pixels=budget)
        # Qwen2-VL's processor keeps the frame at its size rounded to 28 px: the budget does not shrink it.
        assert resized == (round(height / 28) * 28, round(width / 28) * 28)
    assert BenchmarkConfig(height=240, width=320, model_max_pixels=1000).model_max_pixels == 1000


def test_ablation_demonstrations_never_overwrite_the_default_ones(tmp_path: Path) -> None:
    root = tmp_path / "art"
    assert demo_artifacts_dir(BenchmarkConfig(steps=100, save_every=50), root) == root  # training settings share
    variants = [
        BenchmarkConfig(wrist_camera="right_wrist"),
        BenchmarkConfig(height=240, width=320),
        BenchmarkConfig(num_demos=25),
        BenchmarkConfig(demo_seed=100, eval_seed=2000),
    ]
    dirs = [demo_artifacts_dir(c, root) for c in variants]
    assert len(set(dirs)) == len(dirs) and all(d.parent == root / "sim_benchmark_variants" for d in dirs)
    assert "top+right_wrist" in dirs[0].name and "320x240" in dirs[1].name


def test_wrist_camera_ablation_records_and_trains_both_cameras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from aloha_scripts.constants import TASK_CONFIGS
    from qwen2_vla.arguments import ActionHeadArguments, DataArguments, ModelArguments, TrainingArguments

    with pytest.raises(ValueError, match="wrist_camera='left_wrist'.*camera='top'"):
        BenchmarkConfig(wrist_camera="left_wrist")
    config = BenchmarkConfig(wrist_camera="right_wrist")
    bench = SimBenchmark(config, tmp_path / "out", 1, tmp_path / "art")
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments))
    _, data_args, _, _ = parser.parse_args_into_dataclasses(args=bench.train_args())
    assert data_args.task_name != TASK_NAME
    assert TASK_CONFIGS[data_args.task_name]["camera_names"] == config.camera_names == ["top", "right_wrist"]
    launched = []
    monkeypatch.setattr("scripts.sim_benchmark.run_parallel", lambda commands, env: launched.extend(commands))
    with pytest.raises(SystemExit, match="no demonstrations"):  # nothing was really recorded
        bench.record()
    argv = launched[0][0]
    assert argv[argv.index("--camera_names") + 1: argv.index("--camera_names") + 3] == ["top", "right_wrist"]


def test_width_flags_reach_the_model_and_old_configs_still_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scripts.sim_benchmark.ARTIFACTS_DIR", tmp_path / "art")
    with pytest.raises(SystemExit, match="no demonstrations"):
        main(["--out", str(tmp_path / "wide"), "--vision_embed_dim", "128", "--stages", "report"])
    saved = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert saved["model_widths"]["vision_embed_dim"] == 128 and saved["model_widths"]["hidden_size"] == 64
    # A run directory written before `wrist_camera` existed resumes with the default, and refuses another value.
    old = tmp_path / "old"
    SimBenchmark(BenchmarkConfig(), old, 1, tmp_path / "art").check_config()
    saved = json.loads((old / "config.json").read_text())
    del saved["wrist_camera"]
    (old / "config.json").write_text(json.dumps(saved))
    SimBenchmark(BenchmarkConfig(), old, 1, tmp_path / "art").check_config()
    with pytest.raises(SystemExit, match="wrist_camera"):
        SimBenchmark(BenchmarkConfig(wrist_camera="right_wrist"), old, 1, tmp_path / "art").check_config()


def test_probe_records_held_out_demos_and_reports_the_ratio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench, _ = _fake_run(tmp_path)
    with pytest.raises(ValueError, match="probe_episodes=-1"):
        BenchmarkConfig(probe_episodes=-1)
    launched = []
    monkeypatch.setattr("scripts.sim_benchmark.run_parallel", lambda commands, env: launched.extend(commands))
    bench.probe([bench.final_checkpoint()])
    record = [argv for argv, _ in launched if "record_sim_episodes.py" in argv[1]]
    # The held-out demonstrations are recorded at the evaluation seeds, apart from the training demonstrations.
    assert record and record[0][record[0].index("--seed") + 1] == str(bench.eval_seeds()[0])
    assert Path(record[0][record[0].index("--out") + 1]).parent == bench.probe_demo_dir != bench.demo_dir
    # Pretend they were recorded, then the probe runs on held-out and training files.
    launched.clear()
    for directory, name in ((bench.probe_demo_dir, "held0"), (bench.probe_demo_dir, "held1"), (bench.demo_dir, "train")):
        shard = directory / "shard_0"
        shard.mkdir(parents=True, exist_ok=True)
        (shard / f"episode_{name}.hdf5").write_bytes(b"")
    for k, (offset, count) in enumerate(split_evenly(bench.config.num_eval, 2)):  # probe_episodes capped
        shard = bench.probe_demo_dir / f"shard_{k}"
        shard.mkdir(parents=True, exist_ok=True)
        episodes = [{"seed": 1000 + offset + i, "file": f"episode_{i}.hdf5"} for i in range(count)]
        (shard / "record_summary.json").write_text(json.dumps(
            {"num_episodes": count, "camera_names": ["top"], "image_size": [120, 160], "num_written": count,
             "episodes": episodes}))
    (bench.probe_demo_dir / "shard_0" / "episode_held1.hdf5").rename(tmp_path / "aside.hdf5")
    bench.probe([bench.final_checkpoint()])
    assert launched == []  # one held-out demonstration (the others failed): skipped, with a reason
    (tmp_path / "aside.hdf5").rename(bench.probe_demo_dir / "shard_0" / "episode_held1.hdf5")
    bench.probe([bench.final_checkpoint()])
    assert len(launched) == 1
    argv = launched[0][0]
    held = argv[argv.index("--episodes") + 1: argv.index("--train_episodes")]
    assert held == [str(bench.probe_demo_dir / "shard_0" / f"episode_held{i}.hdf5") for i in (0, 1)]
    assert argv[argv.index("--train_episodes") + 1].endswith("episode_train.hdf5")
    row = {"step": 0, "episodes": 1, "policy_all": 0.02, "blind_all": 0.01, "ratio_all": 2.0, "ratio_right": 1.5,
           "image_effect": 0.0}
    result = bench.probe_path(bench.final_checkpoint())
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"rows": [row]}))
    launched.clear()
    bench.probe([bench.final_checkpoint()])
    assert launched == []  # done once
    summary = bench.report([bench.final_checkpoint()])
    assert summary["probe"] == {"checkpoint-10": [row]}
    assert "| checkpoint-10 | 0 | 1 | 0.0200 | 0.0100 | 2.00 | 1.50 | 0.0e+00 |" in (bench.out / "summary.md").read_text()


def test_width_ablation_builds_a_model_of_that_width(tmp_path: Path) -> None:
    from scripts.sim_benchmark import MODEL_WIDTHS

    with pytest.raises(ValueError, match="hidden_size must be a multiple of 16"):
        BenchmarkConfig(model_widths=dict(MODEL_WIDTHS, hidden_size=72))
    with pytest.raises(ValueError, match=r"state_dropout=1.5 must be in \[0, 1\]"):
        BenchmarkConfig(state_dropout=1.5)
    config = BenchmarkConfig(model_widths=dict(MODEL_WIDTHS, hidden_size=32, intermediate_size=64))
    bench = SimBenchmark(config, tmp_path / "out", 1, tmp_path / "art")
    bench.build_model()
    saved = json.loads((bench.model_dir / "config.json").read_text())
    text = saved.get("text_config", saved)
    assert text["hidden_size"] == 32 and text["num_attention_heads"] == 2
