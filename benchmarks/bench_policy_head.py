"""Speed of the diffusion experts: training steps/s and 10-step DDIM sampling latency, batch 1 and 8.

Shapes are DexVLA's stage-2 setting (condition width 1536 = Qwen2-VL-2B hidden size, state/action 14, chunk 50).
CPU rows always run; ScaleDP_H in bf16 (and the CPU models) also run on CUDA when it is available.

    .venv/bin/python benchmarks/bench_policy_head.py [--iters 5] [--no-cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policy_heads import build_policy_head_config  # noqa: E402

COND, STATE, ACT, CHUNK = 1536, 14, 14, 50

# name -> (policy_head_type, model_size, extra config)
MODELS: dict[str, tuple[str, str | None, dict]] = {
    "ScaleDP_tiny": ("scale_dp_policy", "ScaleDP_tiny", {"combine_hidden_dim": 256}),
    "ScaleDP_S": ("scale_dp_policy", "ScaleDP_S", {}),
    "UNet tiny": ("unet_diffusion_policy", None, {"down_dims": [64, 128, 256], "diffusion_step_embed_dim": 64}),
    "UNet (reference size)": ("unet_diffusion_policy", None, {}),
    "ScaleDP_H": ("scale_dp_policy", "ScaleDP_H", {}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], iters: int, device: torch.device, warmup: int = 2) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench(name: str, device: torch.device, dtype: torch.dtype, iters: int) -> dict[str, float | str]:
    head_type, size, extra = MODELS[name]
    cfg = build_policy_head_config(head_type, COND, STATE, ACT, CHUNK, model_size=size, **extra)
    torch.manual_seed(0)
    head = AutoModel.from_config(cfg).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)
    row: dict[str, float | str] = {
        "model": name,
        "device": f"{device.type} {str(dtype).removeprefix('torch.')}",
        "params (M)": sum(p.numel() for p in head.parameters()) / 1e6,
    }
    for batch in (1, 8):
        gen = torch.Generator(device=device).manual_seed(0)
        cond = torch.randn(batch, 1, COND, device=device, dtype=dtype)
        states = torch.randn(batch, STATE, device=device, dtype=dtype)
        actions = torch.rand(batch, CHUNK, ACT, device=device, dtype=dtype) * 2 - 1

        def train_step(cond=cond, states=states, actions=actions, gen=gen) -> None:
            loss = head(actions=actions, hidden_states=cond, states=states, generator=gen).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def sample(cond=cond, states=states, gen=gen) -> None:
            head(hidden_states=cond, states=states, generator=gen, num_inference_timesteps=10)

        head.train()
        row[f"train steps/s B={batch}"] = 1.0 / _time(train_step, iters, device)
        head.eval()
        row[f"sample ms B={batch}"] = 1000.0 * _time(sample, iters, device)
    return row


def print_table(rows: list[dict[str, float | str]]) -> None:
    columns = list(rows[0])
    cells = [[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per measurement (median reported)")
    parser.add_argument("--no-cuda", action="store_true", help="CPU rows only")
    parser.add_argument("--cpu-models", nargs="+", default=["ScaleDP_tiny", "ScaleDP_S", "UNet tiny"])
    args = parser.parse_args()

    cpu = torch.device("cpu")
    runs = [(name, cpu, torch.float32) for name in args.cpu_models]
    if torch.cuda.is_available() and not args.no_cuda:
        cuda = torch.device("cuda")
        runs += [(name, cuda, torch.bfloat16) for name in [*args.cpu_models, "UNet (reference size)", "ScaleDP_H"]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, cuda={torch.cuda.is_available()}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    rows = []
    for name, device, dtype in runs:
        rows.append(bench(name, device, dtype, args.iters))
        print(f"  done: {name} on {device.type}", file=sys.stderr, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
