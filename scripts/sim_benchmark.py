#!/usr/bin/env python
"""Closed-loop simulation benchmark: scripted demonstrations -> stage-2 training on CPU -> success rate in sim.

    bash scripts/sim_benchmark.sh                    # the benchmark (about 1 h 10 min on 2 CPU cores)
    bash scripts/sim_benchmark.sh --smoke            # the same path at toy sizes (about a minute)
    python scripts/sim_benchmark.py --stages eval report --checkpoints 5000   # re-run parts

Stages (each resumable, each skipped when its outputs are complete; ``--stages`` picks some):

1. ``record``: ``--num_demos`` scripted transfer-cube demonstrations (seeds ``--demo_seed`` ...), ``top`` camera
   (and ``--wrist_camera``, the camera-count ablation) at ``--height`` x ``--width``, recorded by ``--workers`` processes into ``$DEXVLA_ARTIFACTS/
   sim_benchmark_demos`` (the ``sim_transfer_cube_benchmark`` task of ``aloha_scripts/constants.py``).
2. ``train``: a CPU-trainable tiny Qwen2-VL (built offline, see ``MODEL_WIDTHS``) with ScaleDP_tiny through
   ``train_vla.py`` (stage 2, no reasoning), checkpoints every ``--save_every`` steps; an interrupted run
   resumes from its last checkpoint. ``--state_dropout 1.0`` trains a head that never sees the robot state.
   Another recording setting (size, cameras, count) keeps its demonstrations in a directory of its own.
3. ``eval``: closed loop in gym-aloha on ``--num_eval`` seeds from ``--eval_seed`` (never a demonstration seed:
   asserted), with each execution strategy of ``--strategies`` (``chunk`` executes ``--exec_horizon`` actions per
   query; ``temporal_agg`` queries every step, ACT's weighting with ``--temporal_k``), split over ``--workers``
   processes. ``--checkpoints`` also evaluates intermediate checkpoints (the training-steps ablation) with
   ``--ablation_strategy`` (default: the first strategy); ``--ablate_exec H ...`` evaluates the final checkpoint
   under ``chunk`` executing ``H`` actions per query.
4. ``probe``: does the policy see the cube? ``--probe_episodes`` scripted demonstrations at the first evaluation
   seeds (never trained on) are replayed open loop at steps ``PROBE_STEPS``: the predicted chunk's error against
   the recorded one, next to a blind guess (``scripts/sim_localization_probe.py``), for each checkpoint.
5. ``report``: ``summary.json`` and ``summary.md`` in ``--out``: success rate with a 95% Wilson interval, how
   many episodes reached each reward stage of the sim (touched, lifted, transfer attempted, transferred), mean
   return, the training curve, timings, and one mp4 of a success and one of a failure (``videos/``).

Times are printed before each stage (estimates from ``SECONDS_PER`` measured on the 2-core development machine)
and every stage streams its progress.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from aloha_scripts.constants import ARTIFACTS_DIR  # noqa: E402
from scripts.sim_localization_probe import format_effect  # noqa: E402

TASK_NAME = "sim_transfer_cube_benchmark"
# The camera-count ablation adds the grasping (right) arm's wrist camera: a TASK_CONFIGS entry of its own.
WRIST_TASK_NAMES = {"right_wrist": "sim_transfer_cube_benchmark_wrist"}
SIM_TASK = "transfer_cube"
STAGES = ("record", "train", "eval", "probe", "report")
# Steps of the held-out demonstrations at which the probe compares the policy's chunk with the recorded one: the
# first frame (the state says nothing of the cube) and one chunk-execution later.
PROBE_STEPS = (0, 25)
# gym-aloha's transfer-cube reward: 1 right gripper touches the cube, 2 lifted, 3 left gripper touches it
# (transfer attempted), 4 the left gripper holds it off the table (success).
REWARD_STAGES = {1: "touched", 2: "lifted", 3: "transfer_attempted", 4: "transferred"}
# The benchmark's VLM: the tests' tiny Qwen2-VL with a wider vision tower, and a pixel budget that keeps the
# camera's frame at its own size, rounded to whole 28-pixel merged patches (160x120 -> 168x112: 96 patches, 24
# visual tokens) instead of the tests' 112x112 cap.
MODEL_WIDTHS = dict(hidden_size=64, intermediate_size=128, vision_embed_dim=64, vision_num_heads=4)
MERGED_PATCH = 28
LLM_HEAD_DIM = 16  # twice the tiny model's M-RoPE sections (2, 3, 3): other text widths change the head count


def frame_pixel_budget(height: int, width: int) -> int:
    """Qwen2-VL's ``max_pixels`` that keeps a ``height`` x ``width`` frame at its size (rounded to 28-pixel units)."""
    return max(MERGED_PATCH, round(height / MERGED_PATCH) * MERGED_PATCH) * max(
        MERGED_PATCH, round(width / MERGED_PATCH) * MERGED_PATCH
    )


# Wall-clock estimates (seconds) on the 2-core development machine, one thread per process.
SECONDS_PER = {"demo": 15.0, "train_step": 0.45, "eval_episode": {"chunk": 8.0, "temporal_agg": 25.0, "async": 10.0}}


@dataclass
class BenchmarkConfig:
    """Everything that defines one benchmark run (saved as ``config.json``; a resumed run must match it)."""

    num_demos: int = 50
    demo_seed: int = 0
    num_eval: int = 50
    eval_seed: int = 1000
    camera: str = "top"
    wrist_camera: str | None = None  # also record and train on this wrist camera (one of WRIST_TASK_NAMES)
    height: int = 120
    width: int = 160
    chunk_size: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    steps: int = 8000
    save_every: int = 2000
    head_size: str = "ScaleDP_tiny"
    state_dropout: float = 0.0  # the head's --state_dropout (1.0: it never sees the robot state)
    # Keep the tiny ViT at its random initialisation: trained from scratch here, its output collapses to a
    # constant within a few hundred steps (the first-chunk probe and README show it), so the head goes blind.
    freeze_vision_tower: bool = False
    condition_norm: bool = False  # the head's --condition_norm
    cross_attention: bool = False  # the head's --cross_attention
    condition_tokens_from: str = "last_hidden_state"  # the head's --condition_tokens_from (with cross_attention)
    condition_token_norm: bool = False  # the head's --condition_token_norm (with cross_attention)
    # The reference's image augmentation (random crop, rotation, colour jitter) for diffusion heads; False: none.
    augment_images: bool = True
    prediction_type: str = "epsilon"  # the head's --prediction_type
    # The language-model loss on the (constant) answer: without reasoning it only teaches the VLM to ignore its input.
    llm_loss_weight: float = 1.0
    # Held-out demonstrations for the first-chunk probe, at the first evaluation seeds (at most num_eval of them).
    probe_episodes: int = 10
    strategies: list[str] = field(default_factory=lambda: ["chunk", "temporal_agg"])
    exec_horizon: int = 25
    temporal_k: float = 0.01
    max_episode_steps: int | None = None
    keep_failed_demos: bool = False
    model_widths: dict[str, int] = field(default_factory=lambda: dict(MODEL_WIDTHS))
    model_max_pixels: int | None = None  # None: the frame's own size (``frame_pixel_budget``)

    @property
    def camera_names(self) -> list[str]:
        return [self.camera] + ([self.wrist_camera] if self.wrist_camera else [])

    @property
    def task_name(self) -> str:
        """The TASK_CONFIGS entry training reads (its cameras are ``camera_names``)."""
        return WRIST_TASK_NAMES[self.wrist_camera] if self.wrist_camera else TASK_NAME

    def __post_init__(self) -> None:
        if self.wrist_camera is not None and (self.wrist_camera not in WRIST_TASK_NAMES or self.camera != "top"):
            raise ValueError(
                f"wrist_camera={self.wrist_camera!r} with camera={self.camera!r}: the benchmark's tasks pair the top "
                f"camera with one of {sorted(WRIST_TASK_NAMES)}"
            )
        if self.model_max_pixels is None:
            self.model_max_pixels = frame_pixel_budget(self.height, self.width)
        demo_seeds = set(range(self.demo_seed, self.demo_seed + self.num_demos))
        overlap = demo_seeds & set(range(self.eval_seed, self.eval_seed + self.num_eval))
        if overlap:
            raise ValueError(
                f"eval_seed={self.eval_seed} with num_eval={self.num_eval} reuses demonstration seeds "
                f"{sorted(overlap)[:5]}... (demo_seed={self.demo_seed}, num_demos={self.num_demos}): evaluation "
                "episodes must place the cube where no demonstration did"
            )
        if not 0 < self.exec_horizon <= self.chunk_size:
            raise ValueError(f"exec_horizon={self.exec_horizon} must be in [1, chunk_size={self.chunk_size}]")
        if self.probe_episodes < 0:
            raise ValueError(f"probe_episodes={self.probe_episodes} must be >= 0")
        if not 0.0 <= self.state_dropout <= 1.0:
            raise ValueError(f"state_dropout={self.state_dropout} must be in [0, 1]")
        widths = self.model_widths
        if widths["hidden_size"] % LLM_HEAD_DIM or widths["vision_embed_dim"] % widths["vision_num_heads"]:
            raise ValueError(
                f"model widths {widths}: hidden_size must be a multiple of {LLM_HEAD_DIM} (the tiny LLM's head width, "
                "fixed by its M-RoPE sections) and vision_embed_dim a multiple of vision_num_heads"
            )
        if self.save_every <= 0 or self.steps <= 0:
            raise ValueError(f"steps={self.steps} and save_every={self.save_every} must be positive")


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at 0 and ``trials`` successes, unlike the normal one)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """``(offset, count)`` of ``parts`` contiguous, non-empty slices covering ``range(total)``."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    slices, offset = [], 0
    for i in range(parts):
        count = base + (i < extra)
        slices.append((offset, count))
        offset += count
    return slices


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_parallel(commands: Sequence[tuple[list[str], Path]], env: dict[str, str]) -> None:
    """Run ``commands`` (argv, log file) at once; each log is echoed line by line with a ``[k]`` prefix."""
    procs = []
    for argv, log_path in commands:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        procs.append((subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env), log_path))
    positions = [0] * len(procs)
    while True:
        running = [p.poll() is None for p, _ in procs]
        for k, (_, log_path) in enumerate(procs):
            text = log_path.read_text(errors="replace")
            new, positions[k] = text[positions[k]:], len(text)
            for line in new.replace("\r", "\n").splitlines():
                # Per-episode results and errors; not the per-step progress bars.
                if line.strip() and "%|" not in line and ("episode" in line or "rror" in line or "success" in line):
                    print(f"  [{k}] {line.strip()[:160]}", flush=True)
        if not any(running):
            break
        time.sleep(2.0)
    failed = [(k, p.returncode, log) for k, (p, log) in enumerate(procs) if p.returncode != 0]
    if failed:
        k, rc, log = failed[0]
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"worker {k} exited with {rc}; its log is {log}:\n{tail}")


class SimBenchmark:
    def __init__(
        self, config: BenchmarkConfig, out: Path, workers: int, artifacts: Path = ARTIFACTS_DIR,
        python: str = sys.executable,
    ) -> None:
        self.config = config
        self.out = out
        self.workers = max(1, workers)
        self.python = python
        # The task's dataset_dir is $DEXVLA_ARTIFACTS/sim_benchmark_demos: children get the same artifacts dir.
        self.demo_dir = artifacts / "sim_benchmark_demos"
        # Demonstrations at evaluation seeds, never trained on: what the first-chunk probe compares against.
        self.probe_demo_dir = artifacts / "sim_benchmark_probe_demos"
        self.model_dir = out / "model"
        self.train_dir = out / "train"
        self.env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                        DEXVLA_ARTIFACTS=str(artifacts), TOKENIZERS_PARALLELISM="false")

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def check_config(self) -> None:
        """Write ``config.json``, or refuse to resume a run directory made with another configuration."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "config.json"
        current = asdict(self.config)
        if path.exists():
            saved = json.loads(path.read_text())
            defaults = asdict(BenchmarkConfig())
            # A setting added after the run was made takes its default there.
            changed = {k: (saved.get(k, defaults[k]), v) for k, v in current.items() if saved.get(k, defaults[k]) != v}
            if changed:
                raise SystemExit(
                    f"{path} was written by a run with other settings {changed} (saved, now); use another --out "
                    "or remove the directory"
                )
        write_json_atomic(path, current)

    def estimate(self, stages: Sequence[str]) -> dict[str, float]:
        c = self.config
        est = {}
        if "record" in stages:
            est["record"] = c.num_demos * SECONDS_PER["demo"] / self.workers
        if "train" in stages:
            est["train"] = c.steps * SECONDS_PER["train_step"]
        if "eval" in stages:
            per = sum(SECONDS_PER["eval_episode"].get(s, 25.0) for s in c.strategies)
            est["eval"] = c.num_eval * per / self.workers
        if "probe" in stages and c.probe_episodes:
            # Recording the held-out demonstrations (once); the queries themselves take seconds.
            est["probe"] = min(c.probe_episodes, c.num_eval) * SECONDS_PER["demo"] / self.workers
        return est

    # ---- stages --------------------------------------------------------------------------------------------
    def record(self) -> None:
        c = self.config
        self._record_shards(self.demo_dir, c.num_demos, c.demo_seed, c.keep_failed_demos)
        self.demo_seeds()  # validates what was written

    def _record_shards(self, directory: Path, count: int, first_seed: int, keep_failed: bool) -> None:
        """Scripted demonstrations of seeds ``first_seed ...`` into ``directory/shard_k`` (``--workers`` shards);
        shards already recorded with these settings are kept."""
        c = self.config
        commands = []
        slices = split_evenly(count, self.workers) if count else []
        for k, (offset, shard_count) in enumerate(slices):
            shard = directory / f"shard_{k}"
            summary = shard / "record_summary.json"
            wanted = {"num_episodes": shard_count, "camera_names": c.camera_names, "image_size": [c.height, c.width]}
            if summary.exists():
                done = json.loads(summary.read_text())
                seeds = [e["seed"] for e in done["episodes"]]
                if all(done.get(key) == value for key, value in wanted.items()) and seeds[:1] == [first_seed + offset]:
                    print(f"  {directory.name} shard {k}: {done['num_written']} demonstrations already recorded",
                          flush=True)
                    continue
            commands.append((
                [self.python, str(REPO_ROOT / "scripts/record_sim_episodes.py"), "--task", SIM_TASK,
                 "--num_episodes", str(shard_count), "--seed", str(first_seed + offset), "--out", str(shard),
                 "--camera_names", *c.camera_names, "--height", str(c.height), "--width", str(c.width), "--overwrite",
                 *(["--episode_len", str(c.max_episode_steps)] if c.max_episode_steps else []),
                 *(["--keep_failed"] if keep_failed else [])],
                self.out / "logs" / f"record_{directory.name}_{k}.log",
            ))
        # Shards of an earlier run with more workers would be read too.
        for stale in sorted(directory.glob("shard_*"))[len(slices):]:
            shutil.rmtree(stale)
        if commands:
            run_parallel(commands, self.env)

    def demo_seeds(self) -> list[int]:
        """Seeds of the recorded (successful, hence written) demonstrations, from the shards' summaries."""
        seeds = []
        for summary in sorted(self.demo_dir.glob("shard_*/record_summary.json")):
            seeds += [e["seed"] for e in json.loads(summary.read_text())["episodes"] if e["file"]]
        if not seeds:
            raise SystemExit(f"no demonstrations under {self.demo_dir}: run the record stage")
        return seeds

    def eval_seeds(self) -> list[int]:
        seeds = list(range(self.config.eval_seed, self.config.eval_seed + self.config.num_eval))
        overlap = set(seeds) & set(self.demo_seeds())
        assert not overlap, f"evaluation seeds {sorted(overlap)} were used by demonstrations"
        return seeds

    def build_model(self) -> None:
        if (self.model_dir / "config.json").exists():
            return
        from scripts.make_tiny_qwen2_vl import build_tiny_qwen2_vl

        heads = self.config.model_widths["hidden_size"] // LLM_HEAD_DIM
        build_tiny_qwen2_vl(self.model_dir, seed=0, max_pixels=self.config.model_max_pixels,
                            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                            **self.config.model_widths)

    def train_args(self) -> list[str]:
        c = self.config
        size = f"({c.width},{c.height})"
        return [
            "--model_name_or_path", str(self.model_dir), "--task_name", c.task_name,
            "--output_dir", str(self.train_dir), "--logging_dir", str(self.train_dir / "log"),
            "--use_cpu", "True", "--use_reasoning", "False", "--state_dim", "14", "--action_dim", "14",
            "--chunk_size", str(c.chunk_size), "--policy_head_type", "scale_dp_policy",
            "--policy_head_size", c.head_size, "--state_dropout", str(c.state_dropout),
            "--condition_norm", str(c.condition_norm), "--cross_attention", str(c.cross_attention),
            "--prediction_type", c.prediction_type, "--condition_tokens_from", c.condition_tokens_from,
            "--condition_token_norm", str(c.condition_token_norm), "--augment_images", str(c.augment_images),
            "--freeze_vision_tower", str(c.freeze_vision_tower), "--llm_loss_weight", str(c.llm_loss_weight),
            "--image_size_stable", size, "--image_size_wrist", size,
            "--per_device_train_batch_size", str(c.batch_size), "--gradient_accumulation_steps", "1",
            "--learning_rate", str(c.learning_rate), "--weight_decay", "0.0", "--lr_scheduler_type", c.lr_scheduler,
            "--warmup_ratio", "0.02", "--max_steps", str(c.steps), "--save_strategy", "steps",
            "--save_steps", str(c.save_every), "--logging_steps", str(max(1, min(100, c.steps // 20))),
            # One loader process decodes and augments frames on the second core while the first trains.
            "--dataloader_num_workers", "1", "--report_to", "none", "--disable_tqdm", "True",
        ]

    def final_checkpoint(self) -> Path:
        return self.train_dir / f"checkpoint-{self.config.steps}"

    def train(self) -> None:
        self.build_model()
        done = self.out / "train_done.json"
        if done.exists():
            print(f"  training already finished ({done})", flush=True)
            return
        args = self.train_args()
        if list(self.train_dir.glob("checkpoint-*")):
            args += ["--resume_from_checkpoint", "True"]
            print("  resuming from the last checkpoint in", self.train_dir, flush=True)
        start = time.perf_counter()
        log_path = self.out / "logs" / "train.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            proc = subprocess.Popen([self.python, str(REPO_ROOT / "train_vla.py"), *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=self.env, text=True, cwd=REPO_ROOT)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.startswith("{") and "loss" in line:  # the Trainer's log lines
                    print(f"  {line.strip()}", flush=True)
            rc = proc.wait()
        if rc != 0:
            raise SystemExit(f"training failed (exit {rc}); see {log_path}. Re-run to resume from the last checkpoint")
        write_json_atomic(done, {"seconds_this_session": time.perf_counter() - start, "steps": self.config.steps})

    def eval_dir(self, strategy: str, checkpoint: Path) -> Path:
        """``strategy``: ``chunk``, ``temporal_agg``, ``async``, or ``chunk@H`` (chunk executing ``H`` actions)."""
        return self.out / "eval" / checkpoint.name / strategy.replace("@", "_exec")

    def evaluate(self, strategy: str, checkpoint: Path, num_eval: int | None = None, videos: bool = True) -> None:
        c = self.config
        seeds = self.eval_seeds()[: num_eval or c.num_eval]
        commands = []
        for k, (offset, count) in enumerate(split_evenly(len(seeds), self.workers)):
            part = self.eval_dir(strategy, checkpoint) / f"part_{k}"
            result = part / "sim_results.json"
            if result.exists():
                saved = json.loads(result.read_text())
                if saved.get("complete") and len(saved.get("episodes", [])) == count and \
                        saved["episodes"][0]["seed"] == seeds[offset]:
                    continue
            name, _, horizon = strategy.partition("@")
            argv = [self.python, "-m", "evaluate.eval_dexvla", "--ckpt", str(checkpoint), "--robot", "aloha_sim",
                    "--task", SIM_TASK, "--num_episodes", str(count), "--seed", str(seeds[offset]),
                    "--sim_height", str(c.height), "--sim_width", str(c.width), "--max_new_tokens", "0",
                    "--strategy", name, "--warmup", "1", "--out", str(part)]
            if name == "chunk":
                argv += ["--exec_horizon", horizon or str(c.exec_horizon)]
            if name == "temporal_agg":
                argv += ["--temporal_k", str(c.temporal_k)]
            if c.max_episode_steps:
                argv += ["--max_steps", str(c.max_episode_steps)]
            if videos:
                argv.append("--save_video")
            commands.append((argv, self.out / "logs" / f"eval_{checkpoint.name}_{strategy}_{k}.log"))
        if commands:
            print(f"  {strategy} on {checkpoint.name}: {len(seeds)} episodes (seeds {seeds[0]}-{seeds[-1]})", flush=True)
            run_parallel([(argv, log) for argv, log in commands], dict(self.env, PYTHONPATH=str(REPO_ROOT)))

    def episodes(self, strategy: str, checkpoint: Path) -> list[dict[str, Any]]:
        episodes = []
        for result in sorted(self.eval_dir(strategy, checkpoint).glob("part_*/sim_results.json")):
            episodes += json.loads(result.read_text())["episodes"]
        return sorted(episodes, key=lambda e: e["seed"])

    def probe(self, checkpoints: Sequence[Path]) -> None:
        """The first-chunk probe (``scripts/sim_localization_probe.py``) of each checkpoint on
        ``probe_episodes`` held-out demonstrations recorded at the first evaluation seeds."""
        c = self.config
        count = min(c.probe_episodes, c.num_eval)
        if not count:
            return
        # Evaluation seeds: asserted disjoint from the training demonstrations' (``eval_seeds``).
        self._record_shards(self.probe_demo_dir, count, self.eval_seeds()[0], keep_failed=c.keep_failed_demos)
        held_out = sorted(self.probe_demo_dir.glob("shard_*/episode_*.hdf5"))
        training = sorted(self.demo_dir.glob("shard_*/episode_*.hdf5"))
        if len(held_out) < 2 or not training:
            print(f"  probe skipped: {len(held_out)} held-out and {len(training)} training demonstrations were "
                  "written (it needs two held-out ones, to swap their frames, and the training ones)", flush=True)
            return
        for checkpoint in checkpoints:
            result = self.probe_path(checkpoint)
            if result.exists():
                continue
            print(f"  probe of {checkpoint.name} on {len(held_out)} held-out demonstrations", flush=True)
            argv = [self.python, str(REPO_ROOT / "scripts/sim_localization_probe.py"), "--ckpt", str(checkpoint),
                    "--episodes", *map(str, held_out), "--train_episodes", *map(str, training),
                    "--steps", *map(str, PROBE_STEPS), "--out", str(result)]
            log = self.out / "logs" / f"probe_{checkpoint.name}.log"
            run_parallel([(argv, log)], dict(self.env, PYTHONPATH=str(REPO_ROOT)))

    def probe_path(self, checkpoint: Path) -> Path:
        return self.out / "probe" / f"{checkpoint.name}.json"

    # ---- report --------------------------------------------------------------------------------------------
    def score(self, episodes: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(episodes)
        successes = sum(bool(e["success"]) for e in episodes)
        low, high = wilson_interval(successes, n)
        reached = {name: sum(e["max_reward"] >= level for e in episodes) for level, name in REWARD_STAGES.items()}
        returns = [e["return"] for e in episodes]
        return {
            "episodes": n, "successes": successes, "success_rate": successes / n if n else None,
            "ci95": [low, high], "reached": reached,
            "mean_return": sum(returns) / n if n else None,
            "infer_ms_mean": _mean([e.get("infer_ms_mean") for e in episodes]),
            "stopped": sum(bool(e.get("stopped")) for e in episodes),
        }

    def training_curve(self) -> list[dict[str, float]]:
        states = sorted(self.train_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name[11:]))
        if not states:
            return []
        history = json.loads(states[-1].read_text())["log_history"]
        return [{"step": h["step"], "loss": h["loss"], "learning_rate": h.get("learning_rate")}
                for h in history if "loss" in h]

    def report(
        self, checkpoints: Sequence[Path], extra_strategies: Sequence[str] = (), ablation_strategy: str | None = None
    ) -> dict[str, Any]:
        c = self.config
        final = self.final_checkpoint()
        rows = []
        for checkpoint in checkpoints:
            for strategy in (
                [*c.strategies, *extra_strategies] if checkpoint == final else [ablation_strategy or c.strategies[0]]
            ):
                episodes = self.episodes(strategy, checkpoint)
                if episodes:
                    rows.append({"checkpoint": checkpoint.name, "steps": int(checkpoint.name.split("-")[-1]),
                                 "strategy": strategy, **self.score(episodes)})
        videos = self.pick_videos(final, c.strategies)
        timings = {}
        for name in ("timings.json",):
            path = self.out / name
            if path.exists():
                timings = json.loads(path.read_text())
        probe = {p.name: json.loads(self.probe_path(p).read_text())["rows"] for p in checkpoints
                 if self.probe_path(p).exists()}
        summary = {
            "config": asdict(c), "demo_seeds": self.demo_seeds(), "eval_seeds": self.eval_seeds(),
            "results": rows, "probe": probe, "training_curve": self.training_curve(), "videos": videos, "timings": timings,
        }
        write_json_atomic(self.out / "summary.json", summary)
        (self.out / "summary.md").write_text(markdown(summary))
        return summary

    def pick_videos(self, checkpoint: Path, strategies: Sequence[str]) -> dict[str, str]:
        """Copy the first success and the first failure (searching ``strategies`` in order) into ``videos/``."""
        picked = {}
        for strategy in strategies:
            for episode in self.episodes(strategy, checkpoint):
                kind = "success" if episode["success"] else "failure"
                if kind not in picked and episode.get("video") and Path(episode["video"]).exists():
                    target = self.out / "videos" / f"{kind}_{strategy}_seed{episode['seed']}.mp4"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(episode["video"], target)
                    picked[kind] = str(target.relative_to(self.out))
        return picked

def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def markdown(summary: dict[str, Any]) -> str:
    c = summary["config"]
    lines = [
        f"Transfer-cube, {len(summary['demo_seeds'])} scripted demonstrations, `{c['camera']}` camera "
        f"{'+ `' + c['wrist_camera'] + '` ' if c.get('wrist_camera') else ''}"
        f"{c['width']}x{c['height']}, tiny Qwen2-VL + {c['head_size']}, chunk {c['chunk_size']}, batch "
        f"{c['batch_size']}, lr {c['learning_rate']:g} {c['lr_scheduler']}; closed loop on seeds "
        f"{summary['eval_seeds'][0]}-{summary['eval_seeds'][-1]} (no demonstration seed).",
        "",
        "| checkpoint | strategy | success | 95% CI | touched | lifted | transfer attempted | transferred | "
        "mean return | ms/query |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        n = r["episodes"]
        name, _, horizon = r["strategy"].partition("@")
        strategy = name + (f" (exec {horizon or c['exec_horizon']})" if name == "chunk" else "")
        reached = " | ".join(f"{r['reached'][name]}/{n}" for name in REWARD_STAGES.values())
        infer = "-" if r["infer_ms_mean"] is None else f"{r['infer_ms_mean']:.0f}"
        lines.append(
            f"| {r['checkpoint']} | {strategy} | {r['successes']}/{n} ({100 * r['success_rate']:.0f}%) | "
            f"{100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}% | {reached} | {r['mean_return']:.1f} | {infer} |"
        )
    if summary.get("probe"):
        lines += [
            "",
            "First-chunk probe: the chunk predicted at a step of held-out demonstrations against the recorded one, "
            "as a ratio to a blind guess (the training demonstrations' mean chunk at that step): 0 exact, 1 no better "
            "than the mean, about 2 an arbitrary demonstration's chunk. At step 0 only the cameras show the cube. Image "
            "effect: how much the chunk changes (MSE) when the frames are swapped for another episode's; 0: blind.",
            "",
            "| checkpoint | step | episodes | MSE | blind MSE | ratio | ratio, right arm | image effect |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, probe_rows in summary["probe"].items():
            lines += [f"| {name} | {r['step']} | {r['episodes']} | {r['policy_all']:.4f} | {r['blind_all']:.4f} | "
                      f"{r['ratio_all']:.2f} | {r['ratio_right']:.2f} | {format_effect(r.get('image_effect'))} |"
                      for r in probe_rows]
    curve = summary["training_curve"]
    if curve:
        marks = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1})
        lines += ["", "Training loss: " + ", ".join(f"step {curve[i]['step']}: {curve[i]['loss']:.4f}" for i in marks)]
    if summary["timings"]:
        lines += ["", "Time: " + ", ".join(f"{k} {fmt_duration(v)}" for k, v in summary["timings"].items())]
    if summary["videos"]:
        lines += ["", "Videos: " + ", ".join(f"{k}: `{v}`" for k, v in summary["videos"].items())]
    return "\n".join(lines) + "\n"


def demo_artifacts_dir(config: BenchmarkConfig, root: Path) -> Path:
    """The ``$DEXVLA_ARTIFACTS`` of a run: ``root`` for the default recording, else a directory of its own per
    recording setting, so an ablation's demonstrations (other size, count or seed) never overwrite the default's."""
    recording = ("camera", "wrist_camera", "height", "width", "num_demos", "demo_seed", "max_episode_steps", "keep_failed_demos")
    default = BenchmarkConfig()
    if all(getattr(config, k) == getattr(default, k) for k in recording):
        return root
    name = f"{'+'.join(config.camera_names)}_{config.width}x{config.height}_{config.num_demos}demos_seed{config.demo_seed}"
    name += f"_len{config.max_episode_steps}" if config.max_episode_steps else ""
    name += "_keepfailed" if config.keep_failed_demos else ""
    return root / "sim_benchmark_variants" / name


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchmarkConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "sim_benchmark")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workers", type=int, default=2, help="parallel processes for recording and evaluation")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[],
                        help="also evaluate these intermediate checkpoints (steps) with the first strategy")
    parser.add_argument("--ablation_eval", type=int, default=None,
                        help="episodes per intermediate checkpoint (default: --num_eval)")
    parser.add_argument("--ablation_strategy", default=None,
                        help="strategy of the intermediate checkpoints' evaluation (default: the first of --strategies)")
    parser.add_argument("--ablate_exec", type=int, nargs="*", default=[],
                        help="also evaluate the final checkpoint with chunk executing each of these horizons")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: 2 demos, 4 steps, 2 short eval episodes")
    for name, value in MODEL_WIDTHS.items():
        parser.add_argument(f"--{name}", type=int, default=value, help="width of the tiny VLM (model-width ablation)")
    for name, value in asdict(defaults).items():
        if name in ("model_widths", "model_max_pixels", "keep_failed_demos"):
            continue
        if isinstance(value, list):
            parser.add_argument(f"--{name}", nargs="+", default=value)
        else:
            # Fields that default to None say their type here.
            kind = {"max_episode_steps": int, "wrist_camera": str}.get(name) or (
                parse_bool if isinstance(value, bool) else type(value))
            choices = sorted(WRIST_TASK_NAMES) if name == "wrist_camera" else None
            parser.add_argument(f"--{name}", type=kind, default=value, choices=choices)
    return parser


# Toy sizes: 30-step episodes are too short for the scripted policy to succeed, so failed demos are kept.
SMOKE = dict(num_demos=2, num_eval=2, steps=4, save_every=2, batch_size=2, chunk_size=10, exec_horizon=5,
             max_episode_steps=30, keep_failed_demos=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fields = {k: getattr(args, k) for k in asdict(BenchmarkConfig()) if hasattr(args, k)}
    fields["model_widths"] = {name: getattr(args, name) for name in MODEL_WIDTHS}
    if args.smoke:
        fields.update(SMOKE)
    config = BenchmarkConfig(**fields)
    # A smoke run keeps its demonstrations in its own directory, away from the benchmark's.
    artifacts = args.out / "artifacts" if args.smoke else demo_artifacts_dir(config, ARTIFACTS_DIR)
    bench = SimBenchmark(config, args.out, args.workers, artifacts)
    bench.check_config()
    estimates = bench.estimate(args.stages)
    if estimates:
        print("expected duration (2-core machine): " + ", ".join(f"{k} {fmt_duration(v)}" for k, v in estimates.items())
              + f"; total {fmt_duration(sum(estimates.values()))}", flush=True)
    timings_path = args.out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    checkpoints = [bench.train_dir / f"checkpoint-{s}" for s in args.checkpoints] + [bench.final_checkpoint()]
    for stage in args.stages:
        print(f"== {stage}", flush=True)
        start = time.perf_counter()
        if stage == "record":
            bench.record()
        elif stage == "train":
            bench.train()
        elif stage == "probe":
            bench.probe(checkpoints)
        elif stage == "eval":
            bench.eval_seeds()
            for strategy in config.strategies:
                bench.evaluate(strategy, bench.final_checkpoint())
            for horizon in args.ablate_exec:
                bench.evaluate(f"chunk@{horizon}", bench.final_checkpoint(), args.ablation_eval, videos=False)
            for checkpoint in checkpoints[:-1]:
                bench.evaluate(args.ablation_strategy or config.strategies[0], checkpoint, args.ablation_eval,
                               videos=False)
        else:
            summary = bench.report(checkpoints, [f"chunk@{h}" for h in args.ablate_exec], args.ablation_strategy)
            print((args.out / "summary.md").read_text(), flush=True)
            print(f"summary: {args.out / 'summary.json'} ({len(summary['results'])} rows)")
            continue
        elapsed = time.perf_counter() - start
        timings[stage] = timings.get(stage, 0.0) + elapsed
        write_json_atomic(timings_path, timings)
        print(f"   {stage} took {fmt_duration(elapsed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
