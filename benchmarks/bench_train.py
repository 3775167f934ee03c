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
from pathlib import Path

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
    import torch
    from transformers import TrainerCallback

    import train_vla
    from aloha_scripts.constants import TASK_CONFIGS
    from qwen2_vla import Qwen2VLAForConditionalGeneration
    from scripts.make_example_episodes import make_example_episodes
    from scripts.make_tiny_qwen2_vl import (
        build_config,
        build_processor,
        build_real_width_qwen2_vl,
        build_tiny_qwen2_vl,
        build_tokenizer,
    )

    gpu = kind == "gpu_2b"
    real_width = kind.startswith("cpu_real_width")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    height, width = (240, 320) if gpu or real_width else (56, 56)
    episodes = tmp / "episodes"
    make_example_episodes(episodes, num_episodes=2, episode_len=80, height=height, width=width, seed=0)
    TASK_CONFIGS["bench_train"] = {"dataset_dir": [str(episodes)], "episode_len": 80, "camera_names": CAMERAS}

    model_dir = tmp / "model"
    if gpu:
        # Config, tokenizer and processor only: the weights are random and built on the GPU below.
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer)
        # The real model's pixel budget, so images give as many tokens as with Qwen2-VL-2B.
        processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
        config = build_config(tokenizer, **QWEN2_VL_2B)
        config.text_config.vocab_size = QWEN2_VL_2B_VOCAB
        config.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    elif real_width:
        build_real_width_qwen2_vl(model_dir, seed=0)
    else:
        build_tiny_qwen2_vl(model_dir, seed=0)
    head_size = "ScaleDP_H" if gpu else "ScaleDP_S" if real_width else "ScaleDP_tiny"

    image_size = f"({width},{height})"
    argv = [
        "--model_name_or_path", str(model_dir), "--task_name", "bench_train", "--output_dir", str(tmp / "out"),
        "--use_reasoning", "True", "--state_dim", "14", "--action_dim", "14",
        "--chunk_size", "50" if gpu or real_width else "16",
        "--policy_head_type", "scale_dp_policy", "--policy_head_size", head_size,
        "--image_size_stable", image_size, "--image_size_wrist", image_size,
        "--per_device_train_batch_size", str(batch), "--max_steps", str(steps), "--save_strategy", "no",
        "--logging_steps", str(steps), "--report_to", "none", "--disable_tqdm", "True",
        "--learning_rate", "2e-5", "--augment_images", "False",
        "--dataloader_num_workers", "4" if gpu else "0",
    ]  # fmt: skip
    if gpu:
        argv += ["--bf16", "True", "--gradient_checkpointing", "True"]
    else:
        argv += ["--use_cpu", "True"] + (["--bf16", "True"] if kind == "cpu_real_width_bf16" else [])
    all_config, model_config = train_vla.parse_config(argv)
    model = None
    if gpu:
        with torch.device("cuda"):
            model = Qwen2VLAForConditionalGeneration(model_config)
    pieces = train_vla.prepare(all_config, model_config, model=model)
    if gpu:
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
        "config": kind,
        "batch": batch,
        "steps_per_s": 1.0 / seconds_per_step,
        "samples_per_s": batch / seconds_per_step,
        "text_tokens": text_tokens,
        "patches": patches,
        "params_M": {k: v / 1e6 for k, v in params.items()},
        "model_tflops": flops_per_sample * batch / seconds_per_step / 1e12,
    }
    if gpu:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        result.update(device=name, peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30)
        result["mfu"] = result["model_tflops"] / peak if peak else None
    else:
        result.update(device=f"cpu x{torch.get_num_threads()} threads", peak_mem_GiB=_peak_rss_gib())
    return result


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
