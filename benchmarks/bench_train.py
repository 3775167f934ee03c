"""Training throughput of the VLA through QWen2VLATrainer: steps/s, samples/s, peak memory (and MFU on GPU).

    python benchmarks/bench_train.py                  # CPU: tiny VLA, batch 1 and 4; real-width VLA, batch 1
    python benchmarks/bench_train.py --gpu_batches 4 12   # + on CUDA: Qwen2-VL-2B shape, ScaleDP_H, random weights

Every configuration runs in its own process (clean peak memory) on generated episodes in a temporary
directory; nothing is downloaded. The first steps (warm-up) are not timed. Not a test.

The CPU "real-width" row trains the bf16 fixture at Qwen2-VL-2B's widths (2 text + 2 vision layers,
``make_tiny_qwen2_vl.py --real-width``) with ScaleDP_S, chunk 50, three 320x240 cameras (1188 patches),
fp32 master weights in fp32 compute (``--real_width_precision bf16``: ``--bf16 True`` autocast, as a GPU run,
but bf16 matmuls are emulated on most CPUs: ~10 minutes a step here).

MFU = model FLOPs / (time x peak) with 6 x params x tokens per part: LLM x text tokens, ViT x patches,
head + fusion x action steps; attention's quadratic term and the recomputation of gradient
checkpointing are not counted (the usual convention).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# Dense bf16 peak per GPU (TFLOP/s), by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}
# Qwen2-VL-2B-Instruct's shape (config.json of the release), built with random weights.
QWEN2_VL_2B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    mrope_section=(16, 24, 24),
    vision_depth=32,
    vision_embed_dim=1280,
    vision_num_heads=16,
    tie_word_embeddings=True,
)
QWEN2_VL_2B_VOCAB = 151936
CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]


def _part_params(model) -> dict[str, int]:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    inner = model.model
    llm = count(inner.language_model)
    if not model.config.get_text_config().tie_word_embeddings:
        llm += count(model.lm_head)
    return {"llm": llm, "vit": count(inner.visual), "head": count(model.policy_head) + count(model.fusion)}


def run_one(kind: str, batch: int, steps: int, warmup: int) -> dict:
    """One configuration in this process; returns its measurements."""
    if kind == "gpu_2b":
        return measure_train(
            batch, steps, warmup, device="cuda", label=kind, random_shape=QWEN2_VL_2B, vocab_size=QWEN2_VL_2B_VOCAB,
            # The real model's pixel budget, so images give as many tokens as with Qwen2-VL-2B.
            pixel_budget=(56 * 56, 28 * 28 * 16384), head_size="ScaleDP_H", chunk_size=50, image_hw=(240, 320),
            bf16=True, gradient_checkpointing=True, dataloader_num_workers=4,
        )
    from scripts.make_tiny_qwen2_vl import build_real_width_qwen2_vl, build_tiny_qwen2_vl

    if kind.startswith("cpu_real_width"):
        return measure_train(
            batch, steps, warmup, label=kind, build_model_dir=build_real_width_qwen2_vl, head_size="ScaleDP_S",
            chunk_size=50, image_hw=(240, 320), bf16=kind == "cpu_real_width_bf16",
        )
    return measure_train(batch, steps, warmup, label=kind, build_model_dir=build_tiny_qwen2_vl)


def measure_train(
    batch: int,
    steps: int,
    warmup: int,
    *,
    label: str = "",
    device: str = "cpu",
    random_shape: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    pixel_budget: tuple[int, int] | None = None,
    build_model_dir: Callable[[Path], Path] | None = None,
    head_size: str = "ScaleDP_tiny",
    chunk_size: int = 16,
    image_hw: tuple[int, int] = (56, 56),
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    use_liger_kernel: bool = False,
    dataloader_num_workers: int = 0,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Train ``steps`` steps of batch ``batch`` with ``train_vla`` (``QWen2VLATrainer``) in this process; the
    measurements of the steps after the first ``warmup`` (``warmup`` >= 1 and ``steps - warmup`` >= 2).

    The model is either built from a config with random weights directly on ``device`` (``random_shape``:
    ``build_config`` keyword arguments, e.g. :data:`QWEN2_VL_2B`; ``vocab_size`` overrides the tokenizer's;
    ``pixel_budget`` ``(min, max)`` the processor's; nothing but config and processor is written), or a directory
    ``build_model_dir(path)`` writes (e.g. ``build_tiny_qwen2_vl``), loaded by ``load_model`` as training does.
    ``device``: ``"cpu"`` (``--use_cpu``) or ``"cuda"``. ``bf16``: ``--bf16 True`` (autocast over fp32 master
    weights). ``attn_implementation``: set on the VLM (``"sdpa"``, ``"flash_attention_2"``; None: the default).
    ``use_liger_kernel``: the Trainer's ``--use_liger_kernel``. Episodes: 2 of 80 steps at ``image_hw`` (H, W),
    three cameras, generated under ``work_dir`` (default: a new temporary directory).

    Returns samples/s, steps/s, tokens per sample, parameters per part (M), model TFLOP/s by the convention of
    the module docstring (``flops_per_sample``), peak memory (GPU: torch max allocated; CPU: process max RSS)
    and, on a GPU of :data:`PEAK_BF16_TFLOPS`, the MFU.
    """
    import torch
    from transformers import TrainerCallback

    import train_vla
    from aloha_scripts.constants import TASK_CONFIGS
    from qwen2_vla import Qwen2VLAForConditionalGeneration
    from scripts.make_example_episodes import make_example_episodes
    from scripts.make_tiny_qwen2_vl import build_config, build_processor, build_tiny_qwen2_vl, build_tokenizer

    if warmup < 1 or steps - warmup < 2:
        raise ValueError(f"need warmup >= 1 and at least 2 timed steps, got steps={steps}, warmup={warmup}")
    gpu = device.startswith("cuda")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_", dir=work_dir))
    height, width = image_hw
    episodes = tmp / "episodes"
    make_example_episodes(episodes, num_episodes=2, episode_len=80, height=height, width=width, seed=0)
    TASK_CONFIGS["bench_train"] = {"dataset_dir": [str(episodes)], "episode_len": 80, "camera_names": CAMERAS}

    model_dir = tmp / "model"
    if random_shape is not None:
        # Config, tokenizer and processor only: the weights are random and built on the device below.
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer)
        if pixel_budget is not None:
            processor.image_processor.size = {"shortest_edge": pixel_budget[0], "longest_edge": pixel_budget[1]}
        config = build_config(tokenizer, **random_shape)
        if vocab_size is not None:
            config.text_config.vocab_size = vocab_size
        config.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    else:
        (build_model_dir or build_tiny_qwen2_vl)(model_dir)

    image_size = f"({width},{height})"
    argv = [
        "--model_name_or_path", str(model_dir), "--task_name", "bench_train", "--output_dir", str(tmp / "out"),
        "--use_reasoning", "True", "--state_dim", "14", "--action_dim", "14", "--chunk_size", str(chunk_size),
        "--policy_head_type", "scale_dp_policy", "--policy_head_size", head_size,
        "--image_size_stable", image_size, "--image_size_wrist", image_size,
        "--per_device_train_batch_size", str(batch), "--max_steps", str(steps), "--save_strategy", "no",
        "--logging_steps", str(steps), "--report_to", "none", "--disable_tqdm", "True",
        "--learning_rate", "2e-5", "--augment_images", "False",
        "--dataloader_num_workers", str(dataloader_num_workers),
    ]  # fmt: skip
    argv += ["--bf16", "True"] if bf16 else []
    argv += ["--gradient_checkpointing", "True"] if gradient_checkpointing else []
    argv += ["--use_liger_kernel", "True"] if use_liger_kernel else []
    argv += [] if gpu else ["--use_cpu", "True"]
    all_config, model_config = train_vla.parse_config(argv)
    model = None
    if random_shape is not None:
        with torch.device(device):
            model = Qwen2VLAForConditionalGeneration(model_config)
    pieces = train_vla.prepare(all_config, model_config, model=model)
    if attn_implementation is not None:
        # The VLM's own attention only: the policy head does not dispatch through transformers' attention.
        pieces["model"].set_attn_implementation(
            {"": attn_implementation, "text_config": attn_implementation, "vision_config": attn_implementation}
        )
    if random_shape is not None and gradient_checkpointing:
        # load_model's step for loaded models: checkpointed layers need inputs that require grad.
        pieces["model"].enable_input_require_grads()
    params = _part_params(pieces["model"])

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if gpu:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    timer = Timer()
    trainer = train_vla.build_trainer(all_config, callbacks=[timer], **pieces)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = timer.times[warmup:]
    seconds_per_step = (timed[-1] - timed[0]) / (len(timed) - 1)

    # Tokens per sample, from collated batches of the same data.
    samples = [pieces["train_dataset"][i] for i in range(0, len(pieces["train_dataset"]), 17)][:16]
    collated = trainer.data_collator(samples)
    text_tokens = float(collated["attention_mask"].sum()) / len(samples)
    patches = collated["pixel_values"].shape[0] / len(samples)
    chunk = collated["actions"].shape[1]
    flops_per_sample = 6 * (params["llm"] * text_tokens + params["vit"] * patches + params["head"] * chunk)

    result = {
        "config": label,
        "batch": batch,
        "steps_per_s": 1.0 / seconds_per_step,
        "samples_per_s": batch / seconds_per_step,
        "text_tokens": text_tokens,
        "patches": patches,
        "params_M": {k: v / 1e6 for k, v in params.items()},
        "flops_per_sample": flops_per_sample,
        "model_tflops": flops_per_sample * batch / seconds_per_step / 1e12,
        "attn_implementation": pieces["model"].config._attn_implementation,
        "liger_patched_modules": _instance_patched_modules(pieces["model"]),
    }
    if gpu:
        name = torch.cuda.get_device_name()
        result.update(device=name, peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30)
        peak = peak_bf16_tflops(name)
        result["mfu"] = result["model_tflops"] / peak if peak else None
    else:
        result.update(device=f"cpu x{torch.get_num_threads()} threads", peak_mem_GiB=_peak_rss_gib(), mfu=None)
    del trainer, pieces, model
    return result


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 peak (TFLOP/s) of a GPU named ``device_name`` (:data:`PEAK_BF16_TFLOPS`), None if unknown."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def _instance_patched_modules(model) -> int:
    """Submodules whose ``forward`` was replaced on the instance (how Liger patches a model; 0 without Liger).

    The model itself is left out: accelerate wraps its ``forward`` for mixed precision."""
    return sum(1 for name, module in model.named_modules() if name and "forward" in vars(module))


def _peak_rss_gib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu_batches", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--cpu_steps", type=int, default=30)
    parser.add_argument("--real_width_batches", type=int, nargs="*", default=[1], help="empty: skip")
    parser.add_argument("--real_width_steps", type=int, default=4)
    parser.add_argument(
        "--real_width_precision", nargs="*", default=["fp32"], choices=["fp32", "bf16"],
        help="bf16: --bf16 True autocast as a GPU run (emulated on most CPUs: ~10 min a step here)",
    )
    parser.add_argument("--gpu_batches", type=int, nargs="*", default=[4, 12], help="empty: skip the GPU run")
    parser.add_argument("--gpu_steps", type=int, default=12)
    parser.add_argument("--one", nargs=3, metavar=("KIND", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, batch, steps = args.one[0], int(args.one[1]), int(args.one[2])
        print("RESULT " + json.dumps(run_one(kind, batch, steps, warmup=max(2, steps // 4))), flush=True)
        return

    import torch

    runs = [("cpu_tiny", b, args.cpu_steps) for b in args.cpu_batches]
    runs += [
        (f"cpu_real_width_{precision}", b, args.real_width_steps)
        for precision in args.real_width_precision
        for b in args.real_width_batches
    ]
    if torch.cuda.is_available():
        runs += [("gpu_2b", b, args.gpu_steps) for b in args.gpu_batches]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rows = []
    for kind, batch, steps in runs:
        # The tiny model's matrices are too small for two threads to help; they only contend.
        run_env = {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")} if kind == "cpu_tiny" else env
        done = subprocess.run(
            [sys.executable, __file__, "--one", kind, str(batch), str(steps)],
            env=run_env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{kind} batch {batch}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1][len("RESULT ") :]))

    header = (
        f"{'config':>19} {'batch':>5} {'s/step':>8} {'steps/s':>8} {'samples/s':>9} {'peak GiB':>8} {'TFLOP/s':>8} {'MFU':>6}  device"
    )
    print(header)
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        print(
            f"{r['config']:>19} {r['batch']:>5} {1 / r['steps_per_s']:>8.3g} {r['steps_per_s']:>8.3g} {r['samples_per_s']:>9.2f} "
            f"{r['peak_mem_GiB']:>8.2f} {r['model_tflops']:>8.3g} {mfu:>6}  {r['device']}"
        )
    firsts = {r["config"]: r for r in reversed(rows)}
    for r in firsts.values():
        print(
            f"{r['config']}: {r['text_tokens']:.0f} text tokens + {r['patches']:.0f} patches per sample; "
            f"params (M) {json.dumps({k: round(v, 1) for k, v in r['params_M'].items()})}"
        )
    print("(CPU peak = process max RSS; GPU peak = torch max allocated. QWen2VLATrainer, AdamW, no DeepSpeed;")
    print(" cpu_real_width_fp32: fp32 weights and compute; _bf16: --bf16 True autocast over fp32 master weights.)")


if __name__ == "__main__":
    main()
