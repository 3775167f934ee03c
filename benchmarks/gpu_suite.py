"""GPU suite: training throughput and chunk latency of DexVLA at Qwen2-VL-2B's full shape, in one short GPU slot.

    bash benchmarks/gpu_suite.sh [--smoke] [--out DIR] [--budget_s 480]

Writes ``DIR/results.json`` and ``DIR/results.md`` after every row (temporary file + ``os.replace``, so a slot cut
short still leaves every finished row) and prints the table at the end; default ``DIR``:
``outputs/gpu_suite/<timestamp>``. Nothing is downloaded: every model is built from its config with random weights.
Needs CUDA (exit status 2 without it) unless ``--smoke``.

Rows, most important first; a row is recorded as ``ok``, ``skipped: <reason>`` (flash-attn or Liger not installed,
the CPU, or ``budget``: it would not fit in what is left of ``--budget_s``) or ``failed: <error>`` (e.g. out of
memory); one failure never loses the other rows:

1. latency, batch 1, no reasoning: ``after`` (the one-pass path) and ``before`` (``predict_action(two_pass=True)``
   with the former DDIM loop, ``bench_infer``'s ``before`` mode);
2. training with ``sdpa`` attention;
3. latency at batch 8 without reasoning, then with reasoning at batch 1 and 8, each after and before;
4. training with ``flash_attention_2`` (when flash-attn is installed), and both with ``use_liger_kernel``;
5. latency, batch 1, no reasoning, after, with ``compile_head="reduce-overhead"`` (CUDA graphs of the head).

Training (``bench_train.measure_train``: ``train_vla``'s ``QWen2VLATrainer``, AdamW, no DeepSpeed): stage 2 at
Qwen2-VL-2B's full shape (28 text layers of width 1536, 32 vision layers of width 1280, vocabulary 151936) with
ScaleDP_H and chunk 50, batch 12, three 320x240 cameras, with reasoning, fp32 master weights built directly on the
GPU (no checkpoint is written), ``--bf16`` autocast, gradient checkpointing; 12 steps, the first 4 untimed.
Reported: samples/s, peak memory (``torch.cuda.max_memory_allocated``), model TFLOP/s and MFU with

    FLOPs per sample = 6 x (N_llm x text tokens + N_vit x patches + N_head+fusion x chunk)
    MFU = FLOPs per sample x samples/s / dense bf16 peak (bench_train.PEAK_BF16_TFLOPS: H100/H200 989.4 TFLOP/s)

(``N_*``: parameters of each part; tokens per sample measured on collated batches of the same data; attention's
quadratic term and gradient checkpointing's recomputation are not counted, the usual convention).

Latency (``bench_infer.measure`` around ``DexVLAPolicy.infer_batch``): the same shape in bfloat16 with random
weights, 10 DDIM steps, 16 reasoning tokens (EOS masked so every row generates them all), three 320x240 cameras,
batch 1 and 8 (copies of one observation), median of 10 calls after 2 untimed ones; ms per call (per chunk of the
whole batch) and per observation, with the stages of ``bench_infer``. ``DexVLAPolicy`` loads a checkpoint
directory, so the random model (3.2B parameters) is saved once into the suite's temporary work directory
(5.9 GiB of bf16 safetensors; deleted at the end) and every latency row loads it. The issue's goal, at most 40 ms
per chunk without reasoning on an H100, is printed as met or not from the batch-1 no-reasoning ``after`` rows.

Each group of rows runs in its own worker process (a clean CUDA context and peak-memory count; Liger patches
modules process-wide; an out-of-memory error or a crash costs only its own rows); the worker is stopped at the
time budget. Logs of the workers: ``DIR/logs/``.

``--smoke``: the same code on the CPU at tiny sizes (the tests' tiny Qwen2-VL shape with a vocabulary wider than
its tokenizer, ScaleDP_tiny, chunk 8, 56x56 cameras, training batch 2 with 3 steps, latency batches 1 and 2 with
one timed call, 4 reasoning tokens), all rows in one worker process; GPU-only rows are ``skipped: cpu``. The test
suite runs it (``tests/test_gpu_suite.py``) so this script cannot rot while no GPU is around.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_train import CAMERAS, peak_bf16_tflops  # noqa: E402  (no torch import at module level)

LATENCY_GOAL_MS = 40.0
ROW_PREFIX = "GPU_SUITE_ROW "
FLOP_FORMULA = (
    "FLOPs per sample = 6 x (N_llm x text tokens + N_vit x patches + N_head+fusion x chunk); "
    "MFU = FLOPs per sample x samples/s / dense bf16 peak of the GPU "
    "(attention's quadratic term and gradient checkpointing's recomputation not counted)"
)
# Qwen2-VL-2B-Instruct's preprocessor_config.json pixel budget (min_pixels, max_pixels).
QWEN2_VL_2B_PIXELS = (56 * 56, 28 * 28 * 16384)


@dataclass(frozen=True)
class Sizes:
    """Everything a mode (GPU or ``--smoke``) sizes; estimates are seconds, for the time budget."""

    device: str
    shape: dict[str, Any]  # build_config keyword arguments
    vocab_size: int
    pixel_budget: tuple[int, int] | None  # None: the tiny processor's budget
    image_hw: tuple[int, int]
    head_size: str
    chunk_size: int
    train_batch: int
    train_steps: int
    train_warmup: int
    dataloader_workers: int
    latency_batches: tuple[int, int]
    latency_iters: int
    latency_warmup: int
    reasoning_tokens: int
    ddim_steps: int
    isolate: bool  # one worker process per group of rows
    estimates: dict[str, float] = field(default_factory=dict)


def gpu_sizes() -> Sizes:
    from benchmarks.bench_train import QWEN2_VL_2B, QWEN2_VL_2B_VOCAB

    return Sizes(
        device="cuda", shape=dict(QWEN2_VL_2B), vocab_size=QWEN2_VL_2B_VOCAB, pixel_budget=QWEN2_VL_2B_PIXELS,
        image_hw=(240, 320), head_size="ScaleDP_H", chunk_size=50, train_batch=12, train_steps=12, train_warmup=4,
        dataloader_workers=4, latency_batches=(1, 8), latency_iters=10, latency_warmup=2, reasoning_tokens=16,
        ddim_steps=10, isolate=True,
        estimates={"startup": 20, "build": 60, "load": 20, "latency": 10, "train": 75, "compile": 60},
    )  # fmt: skip


def smoke_sizes() -> Sizes:
    from scripts.make_tiny_qwen2_vl import DEFAULT_BPE_VOCAB_SIZE, SPECIAL_TOKENS

    return Sizes(
        # A vocabulary wider than the tokenizer, as the GPU shape's: generated ids the tokenizer lacks get decoded.
        device="cpu", shape={}, vocab_size=DEFAULT_BPE_VOCAB_SIZE + len(SPECIAL_TOKENS) + 256, pixel_budget=None,
        image_hw=(56, 56), head_size="ScaleDP_tiny", chunk_size=8, train_batch=2, train_steps=3, train_warmup=1,
        dataloader_workers=0, latency_batches=(1, 2), latency_iters=1, latency_warmup=1, reasoning_tokens=4,
        ddim_steps=10, isolate=False,
        estimates={"startup": 10, "build": 3, "load": 2, "latency": 2, "train": 10, "compile": 0},
    )  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One measurement. ``kind`` selects the worker function (:data:`ROW_FUNCTIONS`); rows of one ``group`` share a
    worker process; ``skip``: a reason known before running (then it never runs)."""

    name: str
    kind: str
    group: str
    params: dict[str, Any]
    estimate_s: float
    skip: str | None = None


def plan_rows(sizes: Sizes, flash_attn: bool, liger: bool) -> list[Row]:
    """The suite's rows in order of importance (see the module docstring); ``flash_attn``/``liger``: installed."""
    est = sizes.estimates
    small, large = sizes.latency_batches
    gpu = sizes.device.startswith("cuda")

    def latency(batch: int, reasoning: bool, mode: str, group: str, extra_s: float = 0.0, **params: Any) -> Row:
        label = "reasoning" if reasoning else "no-reasoning"
        name = f"latency b{batch} {label} {mode}" + (" compile_head" if params.get("compile_head") else "")
        params = {"batch": batch, "reasoning": reasoning, "mode": mode, **params}
        return Row(name, "latency", group, params, est["latency"] + extra_s)

    def train(attn: str, use_liger: bool) -> Row:
        name = f"train {attn}" + (" + liger" if use_liger else "")
        missing = [pkg for pkg, need, have in (("flash_attn", attn == "flash_attention_2", flash_attn),
                                               ("liger_kernel", use_liger, liger)) if need and not have]  # fmt: skip
        skip = None
        if (attn == "flash_attention_2" or use_liger) and not gpu:
            skip = "skipped: cpu (CUDA kernels)"
        elif missing:
            skip = f"skipped: not installed ({', '.join(missing)})"
        params = {"attn_implementation": attn, "use_liger_kernel": use_liger}
        return Row(name, "train", name, params, est["train"], skip)

    compile_row = latency(
        1, False, "after", "latency-compile", est["load"] + est["compile"], compile_head="reduce-overhead", warmup=3
    )
    if not gpu:
        compile_row = replace(compile_row, skip="skipped: cpu (compile_head is a GPU serving option)")
    return [
        latency(1, False, "after", "latency-1", est["build"] + est["load"]),
        latency(1, False, "before", "latency-1"),
        train("sdpa", False),
        latency(large, False, "after", "latency-2", est["load"]),
        latency(large, False, "before", "latency-2"),
        latency(small, True, "after", "latency-2", est["load"]),
        latency(small, True, "before", "latency-2"),
        latency(large, True, "after", "latency-2"),
        latency(large, True, "before", "latency-2"),
        train("flash_attention_2", False),
        train("sdpa", True),
        train("flash_attention_2", True),
        compile_row,
    ]


# ---- worker side --------------------------------------------------------------------------------------------
class WorkerContext:
    """What rows of one worker share: sizes, the work directory (episodes, the random checkpoint), one policy."""

    def __init__(self, sizes: Sizes, work_dir: Path) -> None:
        self.sizes = sizes
        self.work_dir = Path(work_dir)
        self._policy: Any = None
        self._policy_key: tuple | None = None

    @property
    def device_name(self) -> str:
        import torch

        if self.sizes.device.startswith("cuda"):
            return torch.cuda.get_device_name(torch.device(self.sizes.device))
        return f"cpu x{torch.get_num_threads()} threads"

    def episodes(self) -> Path:
        from scripts.make_example_episodes import make_example_episodes

        height, width = self.sizes.image_hw
        return _build_once(
            self.work_dir / "episodes",
            lambda out: make_example_episodes(out, num_episodes=1, episode_len=60, height=height, width=width, seed=0),
        )

    def checkpoint(self) -> Path:
        episodes = self.episodes()
        return _build_once(self.work_dir / "checkpoint", lambda out: build_random_checkpoint(out, episodes, self.sizes))

    def observation(self) -> dict[str, Any]:
        from benchmarks.bench_infer import first_observation

        return first_observation(self.episodes())

    def policy(self, reasoning: bool, compile_head: bool | str = False) -> Any:
        """A ``DexVLAPolicy`` on :meth:`checkpoint` (``dtype="auto"``: bf16 on a GPU, fp32 on a CPU); the last
        one is kept for the next row that asks for the same."""
        from evaluate.policy import DexVLAPolicy

        key = (reasoning, compile_head)
        if self._policy_key != key:
            self.release()
            self._policy = DexVLAPolicy(
                self.checkpoint(), device=self.sizes.device, dtype="auto",
                max_new_tokens=self.sizes.reasoning_tokens if reasoning else 0, seed=0,
                num_inference_timesteps=self.sizes.ddim_steps, compile_head=compile_head,
            )  # fmt: skip
            self._policy_key = key
        return self._policy

    def release(self) -> None:
        """Free the kept policy (before a training row, so its memory is not counted there)."""
        import torch

        self._policy, self._policy_key = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _build_once(path: Path, build: Callable[[Path], Any]) -> Path:
    """``build(tmp)`` then rename to ``path``, unless ``path`` exists: a worker stopped mid-build leaves no
    half-written directory for the next one to trust."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    os.replace(tmp, path)
    return path


def build_random_checkpoint(out_dir: Path, episodes_dir: Path, sizes: Sizes, seed: int = 0) -> Path:
    """A DexVLA checkpoint directory (config, bf16 or fp32 safetensors, processor, ``dataset_stats.json``) of
    ``sizes``' shape with random weights, built directly on ``sizes.device`` (no base model is written or read).

    Weights are saved in the dtype ``DexVLAPolicy`` runs (``resolve_dtype("auto")``: bf16 on a GPU, fp32 on a CPU).
    """
    import torch

    from data_utils.hdf5_io import find_all_hdf5
    from data_utils.utils import get_norm_stats
    from evaluate.policy import resolve_dtype
    from policy_heads import build_policy_head_config
    from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration
    from scripts.make_tiny_qwen2_vl import build_config, build_generation_config, build_processor, build_tokenizer

    device = torch.device(sizes.device)
    dtype = resolve_dtype("auto", device)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, *sizes.pixel_budget) if sizes.pixel_budget else build_processor(tokenizer)
    base = build_config(tokenizer, dtype=str(dtype).removeprefix("torch."), **sizes.shape)
    base.text_config.vocab_size = sizes.vocab_size
    stats, _ = get_norm_stats(
        find_all_hdf5(episodes_dir), camera_names=list(CAMERAS), chunk_size=sizes.chunk_size,
        dataset_dirs=[str(episodes_dir)],
    )  # fmt: skip
    head = build_policy_head_config(
        "scale_dp_policy", base.text_config.hidden_size, stats.state_dim, stats.action_dim, sizes.chunk_size,
        sizes.head_size,
    )  # fmt: skip
    height, width = sizes.image_hw
    config = Qwen2VLAConfig.from_qwen2_vl_config(
        base, head, image_size_stable=f"({width},{height})", image_size_wrist=f"({width},{height})"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2VLAForConditionalGeneration(config)
    model = model.to(dtype).eval()
    model.generation_config = build_generation_config(tokenizer)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    stats.save(out_dir)
    del model
    return out_dir


def latency_row(row: Row, ctx: WorkerContext) -> dict[str, Any]:
    """``bench_infer.measure`` of one (batch, reasoning, mode) on the random checkpoint: ms per call and stages."""
    import torch

    from benchmarks.bench_infer import STAGES, former_code, measure, no_early_stop

    params, sizes = row.params, ctx.sizes
    policy = ctx.policy(params["reasoning"], params.get("compile_head", False))
    obs = ctx.observation()
    gpu = policy.device.type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(policy.device)
    mode = former_code(policy) if params["mode"] == "before" else contextlib.nullcontext()
    with mode, no_early_stop(policy.model):
        stages = measure(
            policy, obs, sizes.latency_iters, params.get("warmup", sizes.latency_warmup), batch=params["batch"]
        )
    result = {
        "ms_per_call": stages["total"],
        "ms_per_obs": stages["total"] / params["batch"],
        "stages_ms": {stage: stages[stage] for stage in STAGES},
        "single_token_steps": stages["single_token_steps"],
        "dtype": str(policy.dtype).removeprefix("torch."),
    }
    if gpu:
        result["peak_mem_GiB"] = torch.cuda.max_memory_allocated(policy.device) / 2**30
    return result


def train_row(row: Row, ctx: WorkerContext) -> dict[str, Any]:
    """``bench_train.measure_train`` of the suite's training shape with the row's attention and Liger setting."""
    from benchmarks.bench_train import measure_train

    sizes = ctx.sizes
    ctx.release()
    result = measure_train(
        sizes.train_batch, sizes.train_steps, sizes.train_warmup, label=row.name, device=sizes.device,
        random_shape=sizes.shape, vocab_size=sizes.vocab_size, pixel_budget=sizes.pixel_budget,
        head_size=sizes.head_size, chunk_size=sizes.chunk_size, image_hw=sizes.image_hw, bf16=True,
        gradient_checkpointing=True, dataloader_num_workers=sizes.dataloader_workers, work_dir=ctx.work_dir,
        **row.params,
    )  # fmt: skip
    result["seconds_per_step"] = 1.0 / result["steps_per_s"]
    if row.params.get("use_liger_kernel") and result["liger_patched_modules"] == 0:
        # transformers hands the model to Liger, which picks kernels by config.model_type.
        result["note"] = "use_liger_kernel patched no module (Liger has no kernels for this model_type)"
    return result


ROW_FUNCTIONS: dict[str, Callable[[Row, Any], dict[str, Any]]] = {"latency": latency_row, "train": train_row}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def run_rows(
    rows: Sequence[Row],
    ctx: Any,
    emit: Callable[[dict[str, Any]], None],
    deadline: float = math.inf,
    functions: Mapping[str, Callable[[Row, Any], dict[str, Any]]] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run ``rows`` one by one and ``emit`` one result each: ``{"name", "status", "seconds", "metrics"}``.

    ``status``: ``"ok"``, ``"failed: <error's first line>"`` (the row raised; the next rows still run) or
    ``"skipped: budget"`` (its estimate does not fit before ``deadline``, a ``clock()`` time).
    """
    functions = ROW_FUNCTIONS if functions is None else functions
    for row in rows:
        if clock() + row.estimate_s > deadline:
            emit({"name": row.name, "status": "skipped: budget", "seconds": 0.0, "metrics": {}})
            continue
        start = clock()
        try:
            metrics, status = functions[row.kind](row, ctx), "ok"
        except Exception as error:  # a row's failure is its result; the suite goes on
            traceback.print_exc()
            metrics, status = {}, f"failed: {first_line(error)}"
        emit({"name": row.name, "status": status, "seconds": clock() - start, "metrics": metrics})


def worker_main(spec_path: Path) -> int:
    """Entry of a worker process: run the rows of ``spec_path`` and print one :data:`ROW_PREFIX` line per row."""
    import torch
    import transformers

    spec = json.loads(Path(spec_path).read_text())
    sizes = Sizes(**{**spec["sizes"], "latency_batches": tuple(spec["sizes"]["latency_batches"])})
    if not sizes.device.startswith("cuda"):
        # Tiny matrices: a second intra-op thread only contends.
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    transformers.logging.set_verbosity_error()
    ctx = WorkerContext(sizes, Path(spec["work_dir"]))
    rows = [Row(**row) for row in spec["rows"]]
    device = {"device": None}

    def emit(result: dict[str, Any]) -> None:
        if device["device"] is None:
            with contextlib.suppress(Exception):
                device["device"] = ctx.device_name
        result["metrics"].setdefault("device", device["device"])
        print(ROW_PREFIX + json.dumps(result, default=_json_default), flush=True)

    run_rows(rows, ctx, emit, deadline=spec["deadline"])
    return 0


# ---- orchestrator side --------------------------------------------------------------------------------------
Launcher = Callable[[Sequence[Row], float], Iterator[dict[str, Any]]]


class SubprocessLauncher:
    """Runs rows in a worker process (``python gpu_suite.py --worker SPEC``) and yields their results as they come;
    stops the worker at the deadline (``time.monotonic()``). Rows a worker never reported come back as
    ``skipped: budget (stopped ...)`` when it was stopped, else ``failed: worker exited ...`` with its last log line."""

    def __init__(self, sizes: Sizes, work_dir: Path, log_dir: Path) -> None:
        self.sizes, self.work_dir, self.log_dir = sizes, work_dir, log_dir
        self.launches = 0

    def __call__(self, rows: Sequence[Row], deadline: float) -> Iterator[dict[str, Any]]:
        self.launches += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        group = re.sub(r"[^A-Za-z0-9_.-]+", "_", rows[0].group)  # plain file names only
        log_path = self.log_dir / f"worker_{self.launches}_{group}.log"
        spec_path = self.work_dir / f"spec_{self.launches}.json"
        spec = {
            "sizes": asdict(self.sizes),
            "work_dir": str(self.work_dir),
            "rows": [asdict(row) for row in rows],
            "deadline": time.time() + (deadline - time.monotonic()),
        }
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        reported: set[str] = set()
        stopped = ended = False
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO_ROOT,
                start_new_session=True,  # its own process group: stopping it stops its data loader workers too
            )  # fmt: skip
            lines: queue.Queue[str | None] = queue.Queue()
            reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
            reader.start()
            try:
                while True:
                    try:
                        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        stopped = True
                        break
                    if line is None:
                        ended = True
                        break
                    if line.startswith(ROW_PREFIX):
                        result = json.loads(line[len(ROW_PREFIX) :])
                        reported.add(result["name"])
                        yield result
                    else:
                        log.write(line)
                        log.flush()
            finally:
                if ended:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=30)  # its output ended: it is exiting
                # The whole group: a worker stopped at the deadline, and anything a finished one left behind.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
                reader.join(timeout=10)
        last = _last_line(log_path)
        for row in rows:
            if row.name in reported:
                continue
            if stopped:
                status = "skipped: budget (worker stopped at the time budget)"
            else:
                status = f"failed: worker exited with status {rc}" + (f": {last}" if last else "")
            yield {"name": row.name, "status": status, "seconds": 0.0, "metrics": {}}


def _pump(stream: Any, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _last_line(path: Path) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return text.splitlines()[-1].strip()[:300] if text else ""


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_suite(
    rows: Sequence[Row],
    out_dir: Path,
    budget_s: float,
    launch: Launcher,
    meta: dict[str, Any],
    isolate: bool = True,
    startup_s: float = 0.0,
) -> dict[str, Any]:
    """Run ``rows`` through ``launch`` (one launch per group when ``isolate``, else one for all), writing
    ``out_dir/results.json`` and ``results.md`` after every row; returns the final results document.

    A group is not launched when ``startup_s`` plus its first row's estimate (for training rows: the last training
    row's measured time, once there is one) exceeds what is left of ``budget_s``: its rows are ``skipped: budget``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + budget_s
    doc = {"suite": {**meta, "budget_s": budget_s, "elapsed_s": 0.0}, "rows": []}
    index: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = {"name": row.name, "kind": row.kind, "group": row.group, **row.params, "status": "pending"}
        doc["rows"].append(entry)
        index[row.name] = entry
    measured: dict[str, float] = {}

    def record(result: dict[str, Any]) -> None:
        entry = index.get(result["name"])
        if entry is None:  # not a row of this suite: nothing to record
            return
        entry.update(status=result["status"], seconds=result.get("seconds", 0.0), **result.get("metrics", {}))
        if entry["status"] == "ok":
            measured[entry["kind"]] = entry["seconds"]
        if doc["suite"].get("device") is None and result.get("metrics", {}).get("device"):
            doc["suite"]["device"] = result["metrics"]["device"]
            if doc["suite"].get("mode") == "gpu":
                doc["suite"]["peak_bf16_tflops"] = peak_bf16_tflops(doc["suite"]["device"])
        doc["suite"]["elapsed_s"] = time.monotonic() - start
        doc["suite"]["goal"] = latency_goal(doc)
        write_atomic(out_dir / "results.json", json.dumps(doc, indent=2, default=_json_default))
        write_atomic(out_dir / "results.md", format_markdown(doc))

    write_atomic(out_dir / "results.json", json.dumps(doc, indent=2, default=_json_default))
    runnable = []
    for row in rows:
        if row.skip:
            record({"name": row.name, "status": row.skip})
        else:
            runnable.append(row)
    launches: list[list[Row]] = []
    for row in runnable:
        if isolate and launches and launches[-1][0].group == row.group:
            launches[-1].append(row)
        elif isolate or not launches:
            launches.append([row])
        else:
            launches[-1].append(row)
    for batch in launches:
        first = batch[0]
        estimate = startup_s + (measured.get("train", first.estimate_s) if first.kind == "train" else first.estimate_s)
        if time.monotonic() + estimate > deadline:
            for row in batch:
                record({"name": row.name, "status": "skipped: budget"})
            continue
        try:
            for result in launch(batch, deadline):
                record(result)
        except Exception as error:  # the launcher itself broke: its rows fail, the suite goes on
            traceback.print_exc()
            for row in batch:
                if index[row.name]["status"] == "pending":
                    record({"name": row.name, "status": f"failed: {first_line(error)}"})
        for row in batch:
            if index[row.name]["status"] == "pending":
                record({"name": row.name, "status": "failed: no result from the worker"})
    doc["suite"]["elapsed_s"] = time.monotonic() - start
    doc["suite"]["goal"] = latency_goal(doc)
    write_atomic(out_dir / "results.json", json.dumps(doc, indent=2, default=_json_default))
    write_atomic(out_dir / "results.md", format_markdown(doc))
    return doc


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def latency_goal(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's goal (at most :data:`LATENCY_GOAL_MS` ms per chunk without reasoning on an H100), judged on the
    fastest finished batch-1 no-reasoning ``after`` row; only a GPU run at the full shape is judged."""
    rows = [
        r for r in doc["rows"]
        if r["kind"] == "latency" and r["status"] == "ok" and r.get("batch") == 1 and not r.get("reasoning")
        and r.get("mode") == "after"
    ]  # fmt: skip
    goal: dict[str, Any] = {"target_ms": LATENCY_GOAL_MS, "met": None}
    if not rows:
        goal["verdict"] = "not measured"
        return goal
    best = min(rows, key=lambda r: r["ms_per_call"])
    goal.update(measured_ms=best["ms_per_call"], row=best["name"])
    if doc["suite"].get("mode") != "gpu":
        goal["verdict"] = "not judged (smoke run: tiny model on the CPU)"
        return goal
    goal["met"] = best["ms_per_call"] <= LATENCY_GOAL_MS
    device = doc["suite"].get("device") or "?"
    where = "" if "H100" in device else f" (measured on {device}; the goal names an H100)"
    goal["verdict"] = ("met" if goal["met"] else "not met") + where
    return goal


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


TRAIN_COLUMNS = ("row", "status", "attention", "liger", "samples/s", "s/step", "peak GiB", "TFLOP/s", "MFU")
LATENCY_COLUMNS = (
    "row", "status", "batch", "reasoning", "mode", "ms/call", "ms/obs", "vision", "prefill", "decode/tok", "ddim",
    "peak GiB",
)  # fmt: skip


def _table(columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def format_markdown(doc: Mapping[str, Any]) -> str:
    """The results as Markdown: a training table, a latency table, the goal and the FLOP convention."""
    suite = doc["suite"]
    train, latency = [], []
    for r in doc["rows"]:
        if r["kind"] == "train":
            mfu = r.get("mfu")
            train.append([
                r["name"], r["status"], r.get("attn_implementation", "-"), "on" if r.get("use_liger_kernel") else "off",
                _fmt(r.get("samples_per_s"), ".2f"), _fmt(r.get("seconds_per_step"), ".3f"),
                _fmt(r.get("peak_mem_GiB"), ".1f"), _fmt(r.get("model_tflops"), ".1f"),
                "-" if mfu is None else f"{mfu:.1%}",
            ])  # fmt: skip
        else:
            stages = r.get("stages_ms", {})
            latency.append([
                r["name"], r["status"], _fmt(r.get("batch")), "yes" if r.get("reasoning") else "no",
                str(r.get("mode", "-")) + (" + compile_head" if r.get("compile_head") else ""),
                _fmt(r.get("ms_per_call"), ".1f"), _fmt(r.get("ms_per_obs"), ".1f"),
                *(_fmt(stages.get(k), ".1f") for k in ("vision", "prefill", "decode/tok", "ddim")),
                _fmt(r.get("peak_mem_GiB"), ".1f"),
            ])  # fmt: skip
    goal = suite.get("goal", {})
    notes = [f"- {r['name']}: {r['note']}" for r in doc["rows"] if r.get("note")]
    parts = [
        f"# GPU suite ({suite.get('mode')}): {suite.get('device') or '?'}",
        "",
        f"{suite.get('started', '')}; torch {suite.get('torch', '?')}, transformers {suite.get('transformers', '?')}; "
        f"budget {suite['budget_s']:.0f} s, elapsed {suite['elapsed_s']:.0f} s.",
        "",
        f"## Training: {suite.get('train_shape', '')}",
        "",
        _table(TRAIN_COLUMNS, train),
        "",
        f"MFU: {FLOP_FORMULA}; "
        + (f"peak {suite['peak_bf16_tflops']:g} TFLOP/s" if suite.get("peak_bf16_tflops") else "no peak known here")
        + ". Peak memory: GPU torch.cuda.max_memory_allocated, CPU process max RSS.",
        "",
        f"## Latency: {suite.get('latency_shape', '')}",
        "",
        _table(LATENCY_COLUMNS, latency),
        "",
        "ms per DexVLAPolicy.infer_batch call (one chunk per observation of the batch), median; stages as bench_infer. "
        "before: predict_action(two_pass=True) with the former DDIM loop; after: the one-pass path.",
        "",
        f"Goal: <= {LATENCY_GOAL_MS:g} ms per chunk without reasoning at batch 1 on an H100: "
        f"{_fmt(goal.get('measured_ms'), '.1f')} ms ({goal.get('row', '-')}): {goal.get('verdict', 'not measured')}.",
    ]
    if notes:
        parts += ["", "Notes:", *notes]
    return "\n".join(parts) + "\n"


def describe(sizes: Sizes) -> tuple[str, str]:
    """One-line descriptions of the training and latency shapes, for the report."""
    shape = sizes.shape
    width = (
        f"{shape['num_hidden_layers']} text layers x {shape['hidden_size']}, {shape['vision_depth']} vision layers x "
        f"{shape['vision_embed_dim']}"
        if shape
        else "the tests' tiny Qwen2-VL shape"
    )
    height, image_width = sizes.image_hw
    common = (
        f"{width}, vocabulary {sizes.vocab_size}, {sizes.head_size}, chunk {sizes.chunk_size}, "
        f"3 cameras {image_width}x{height}"
    )
    train = (
        f"{common}, random weights, batch {sizes.train_batch}, bf16 autocast, gradient checkpointing, "
        f"{sizes.train_steps} steps ({sizes.train_warmup} untimed)"
    )
    latency = (
        f"{common}, random weights ({'bf16' if sizes.device.startswith('cuda') else 'fp32'}), {sizes.ddim_steps} DDIM "
        f"steps, {sizes.reasoning_tokens} reasoning tokens, median of {sizes.latency_iters} calls"
    )
    return train, latency


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes (tests)")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/gpu_suite/<timestamp>")
    parser.add_argument("--budget_s", type=float, default=480.0, help="time budget of the whole suite (seconds)")
    parser.add_argument("--work_dir", type=Path, default=None, help="models and episodes (default: a temp dir)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)

    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_suite: no CUDA device visible to torch; run it on a GPU machine, or pass --smoke for the "
                "CPU smoke run",
                file=sys.stderr,
            )
            return 2
    # A slot that ends with SIGTERM unwinds through the launcher, which stops its worker (its own process group).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = smoke_sizes() if args.smoke else gpu_sizes()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or REPO_ROOT / "outputs" / "gpu_suite" / stamp
    flash = importlib.util.find_spec("flash_attn") is not None
    liger = importlib.util.find_spec("liger_kernel") is not None
    rows = plan_rows(sizes, flash_attn=flash, liger=liger)
    train_shape, latency_shape = describe(sizes)
    meta = {
        "mode": "smoke" if args.smoke else "gpu",
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": importlib.metadata.version("torch"),
        "transformers": importlib.metadata.version("transformers"),
        "flash_attn_installed": flash,
        "liger_kernel_installed": liger,
        "device": None,
        "peak_bf16_tflops": None,
        "flop_formula": FLOP_FORMULA,
        "train_shape": train_shape,
        "latency_shape": latency_shape,
        "sizes": asdict(sizes),
    }
    print(f"gpu_suite: {meta['mode']} run, {len(rows)} rows, budget {args.budget_s:.0f} s -> {out_dir}", flush=True)
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_suite_")))
        work_dir.mkdir(parents=True, exist_ok=True)
        launcher = SubprocessLauncher(sizes, work_dir, out_dir / "logs")

        def progress(batch: Sequence[Row], deadline: float) -> Iterator[dict[str, Any]]:
            for result in launcher(batch, deadline):
                print(f"  {result['name']}: {result['status']} ({result.get('seconds', 0.0):.1f} s)", flush=True)
                yield result

        run_suite(
            rows, out_dir, args.budget_s, progress, meta, isolate=sizes.isolate, startup_s=sizes.estimates["startup"]
        )
    print()
    print((out_dir / "results.md").read_text())
    print(f"gpu_suite: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
