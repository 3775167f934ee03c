"""Latency of one action chunk, stage by stage: the former two-pass path against the one-pass path.

Stages (milliseconds per chunk, medians over ``--iters`` queries of batch 1): ``preprocess`` (validation, image
transform, processor), ``vision`` (vision tower, all its calls), ``prefill`` (language model over more than one
token, all such calls: the two-pass path runs one in ``generate()`` and one in its second pass), ``decode/tok``
(mean single-token language-model step), ``fusion``, ``ddim`` (the whole sampling loop of the head) and
``other`` (the rest: LM head, generation bookkeeping, collation, post-processing). ``total`` is the wall time
of ``DexVLAPolicy.infer``.

Modes: ``before`` is the former code, i.e. ``predict_action(two_pass=True)`` with the former DDIM loop
(diffusers' ``scheduler.step`` per step, reproduced here); ``after`` is the current default; ``reuse k`` is
``reasoning_every=k`` averaged over ``k`` queries. Reasoning rows generate exactly ``--max_new_tokens`` tokens
(EOS is masked out, so random weights cannot stop early and rows compare like for like).

Fixtures, built into a temporary directory: ``tiny`` (the tests' tiny Qwen2-VL, 3 cameras at 56x56, ScaleDP_tiny,
float32) and ``real`` (Qwen2-VL-2B's widths, 2 + 2 layers, 3 cameras at 320x240 = 1188 vision patches, ScaleDP_S,
chunk 50). ``--dtype auto`` runs bfloat16 on a GPU and float32 on a CPU: a CPU without bf16 instructions runs bf16
matrix products some 50x slower than float32, which would measure its emulation rather than this code.

    .venv/bin/python benchmarks/bench_infer.py [--fixtures tiny real] [--iters 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import tempfile
import time
import types
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CAMERAS = ["cam_high", "cam_left_wrist", "cam_right_wrist"]
STAGES = ("preprocess", "vision", "prefill", "decode/tok", "fusion", "ddim", "other", "total")


# ---- fixtures -----------------------------------------------------------------------------------------------
def build_fixture(name: str, root: Path) -> tuple[Path, Path]:
    """``(checkpoint dir, episodes dir)`` of fixture ``name`` (``tiny`` or ``real``) built under ``root``."""
    from evaluate.testing import build_tiny_checkpoint
    from scripts.make_example_episodes import make_example_episodes
    from scripts.make_tiny_qwen2_vl import (
        REAL_MAX_PIXELS,
        REAL_MIN_PIXELS,
        build_real_width_qwen2_vl,
        build_tiny_qwen2_vl,
    )

    episodes = root / f"{name}_episodes"
    if name == "tiny":
        make_example_episodes(episodes, num_episodes=1, episode_len=20, height=56, width=56, seed=0)
        base = build_tiny_qwen2_vl(root / "tiny_qwen2_vl")
        ckpt = build_tiny_checkpoint(root / "tiny_ckpt", base, episodes, CAMERAS, 8)
        return ckpt, episodes
    if name == "real":
        make_example_episodes(episodes, num_episodes=1, episode_len=60, height=240, width=320, seed=0)
        base = build_real_width_qwen2_vl(root / "real_qwen2_vl")
        ckpt = build_tiny_checkpoint(
            root / "real_ckpt", base, episodes, CAMERAS, 50, image_size=(320, 240), image_size_wrist=(320, 240),
            policy_head_size="ScaleDP_S", pixel_budget=(REAL_MIN_PIXELS, REAL_MAX_PIXELS),
        )
        return ckpt, episodes
    raise ValueError(f"unknown fixture {name!r}: expected 'tiny' or 'real'")


def first_observation(episodes: Path) -> dict[str, Any]:
    """Step 0 of the fixture's episode, as a robot sends it."""
    import h5py

    from data_utils.hdf5_io import find_all_hdf5, read_frame, read_language

    with h5py.File(find_all_hdf5(episodes)[0], "r") as root:
        return {
            "images": {cam: read_frame(root, cam, 0) for cam in CAMERAS},
            "state": root["/observations/qpos"][0],
            "prompt": read_language(root),
        }


# ---- timing -------------------------------------------------------------------------------------------------
class StageTimer:
    """Per-stage wall time of the model's modules, through forward hooks (summed per query)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.device = model.device
        self.times: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._starts: list[tuple[str, float]] = []
        modules = {"vision": model.model.visual, "lm": model.model.language_model, "ddim": model.policy_head}
        if model.fusion is not None:
            modules["fusion"] = model.fusion
        self._hooks = []
        for stage, module in modules.items():
            self._hooks.append(module.register_forward_pre_hook(functools.partial(self._start, stage), with_kwargs=True))
            self._hooks.append(module.register_forward_hook(self._stop))

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _start(self, stage: str, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if stage == "lm":
            embeds = kwargs.get("inputs_embeds")
            length = embeds.shape[1] if embeds is not None else kwargs["input_ids"].shape[1]
            stage = "prefill" if length > 1 else "decode"
        self._starts.append((stage, self._now()))

    def _stop(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        stage, start = self._starts.pop()
        self.times[stage] += self._now() - start
        self.counts[stage] += 1

    def reset(self) -> None:
        self.times.clear()
        self.counts.clear()

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def legacy_sample(self: torch.nn.Module, hidden_states, states=None, generator=None, num_inference_timesteps=None,
                  noise=None, action_mask=None, state_mask=None) -> torch.Tensor:
    """The former DDIM loop (``scheduler.step`` per step, timesteps read from the host), for the ``before`` rows.

    Single-embodiment models only (the masks of a multi-embodiment model came later than this loop)."""
    if action_mask is not None or state_mask is not None:
        raise ValueError("the former DDIM loop has no embodiment masks: benchmark a single-embodiment checkpoint")
    from policy_heads.conditioning import pool_condition
    from policy_heads.scheduling import ddim_step_fp32

    cfg = self.config
    shape = (pool_condition(hidden_states).shape[0], cfg.prediction_horizon, cfg.action_dim)
    sample = noise.to(hidden_states.device, torch.float32) if noise is not None else torch.randn(
        shape, generator=generator, dtype=torch.float32).to(hidden_states.device)
    self.noise_scheduler.set_timesteps(num_inference_timesteps or cfg.num_inference_timesteps)
    for t in self.noise_scheduler.timesteps:
        sample = ddim_step_fp32(self.noise_scheduler, self.model_forward(sample, t, hidden_states, states), t, sample)
    return sample


@contextlib.contextmanager
def former_code(policy: Any) -> Iterator[None]:
    """``policy`` runs the two-pass VLM path and the former DDIM loop while inside."""
    model = policy.model
    predict = model.predict_action
    model.predict_action = functools.partial(predict, two_pass=True)
    model.policy_head.sample = types.MethodType(legacy_sample, model.policy_head)
    try:
        yield
    finally:
        del model.predict_action
        del model.policy_head.sample


@contextlib.contextmanager
def no_early_stop(model: torch.nn.Module) -> Iterator[None]:
    """Mask the EOS logits so generation always runs its whole token budget."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else (eos if isinstance(eos, list) else [eos])

    def mask(module: torch.nn.Module, args: tuple, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[..., eos] = torch.finfo(logits.dtype).min
        return logits

    handle = model.lm_head.register_forward_hook(mask)
    try:
        yield
    finally:
        handle.remove()


def measure(
    policy: Any, obs: dict[str, Any], iters: int, warmup: int, group: int = 1, batch: int = 1
) -> dict[str, float]:
    """Median per-stage ms over ``iters`` measurements; each measurement averages ``group`` consecutive queries.

    A query is one ``infer_batch`` call of ``batch`` copies of ``obs`` (ms are per call, i.e. per batch of chunks).
    """
    timer = StageTimer(policy.model)
    rows: list[dict[str, float]] = []
    generated: list[int] = []
    try:
        for i in range(warmup + iters):
            policy.reset_reasoning()
            timer.reset()
            totals = defaultdict(float)
            for _ in range(group):
                start = time.perf_counter()
                out = policy.infer_batch([obs] * batch)[0]
                totals["total"] += time.perf_counter() - start
                totals["preprocess"] += out["policy_timing"]["prepare_ms"] / 1000.0
            if i < warmup:
                continue
            decode_steps, decode_total = timer.counts.get("decode", 0), timer.times["decode"]
            generated.append(decode_steps // group)
            row = {
                "preprocess": totals["preprocess"] / group,
                "vision": timer.times["vision"] / group,
                "prefill": timer.times["prefill"] / group,
                "decode/tok": decode_total / decode_steps if decode_steps else 0.0,
                "fusion": timer.times["fusion"] / group,
                "ddim": timer.times["ddim"] / group,
                "total": totals["total"] / group,
            }
            # The vision tower runs inside the first model call but outside the language model: its own stage.
            accounted = sum(row[k] for k in ("preprocess", "vision", "prefill", "fusion", "ddim")) + decode_total / group
            row["other"] = row["total"] - accounted
            rows.append({k: 1000.0 * v for k, v in row.items()})
    finally:
        timer.close()
    result = {stage: statistics.median(r[stage] for r in rows) for stage in STAGES}
    result["single_token_steps"] = statistics.median(generated) if generated else 0
    return result


def bench_fixture(name: str, root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from evaluate.policy import DexVLAPolicy

    ckpt, episodes = build_fixture(name, root)
    obs = first_observation(episodes)
    results = []
    for reasoning in (True, False):
        policy = DexVLAPolicy(
            ckpt, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens if reasoning else 0,
            seed=0, num_inference_timesteps=args.ddim_steps,
        )
        modes = [("before", former_code(policy), 1), ("after", contextlib.nullcontext(), 1)]
        if reasoning and args.reuse_every > 1:
            modes.append((f"reuse {args.reuse_every}", contextlib.nullcontext(), args.reuse_every))
        for mode, context, group in modes:
            policy.reasoning_every = group
            with context, no_early_stop(policy.model):
                row = measure(policy, obs, args.iters, args.warmup, group)
            row.update(fixture=name, reasoning=reasoning, mode=mode)
            results.append(row)
            print(format_row(row), flush=True)
        del policy
    return results


def format_header() -> str:
    cols = ["fixture", "reasoning", "mode", "1-token steps", *STAGES]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def format_row(row: dict[str, Any]) -> str:
    cells = [row["fixture"], "yes" if row["reasoning"] else "no", row["mode"], f"{row['single_token_steps']:g}"]
    cells += [f"{row[stage]:.1f}" for stage in STAGES]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", nargs="+", default=["tiny", "real"], choices=["tiny", "real"])
    parser.add_argument("--iters", type=int, default=5, help="timed queries per row (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed queries per row first")
    parser.add_argument("--max_new_tokens", type=int, default=16, help="reasoning tokens per chunk")
    parser.add_argument("--ddim_steps", type=int, default=10, help="--num_inference_timesteps")
    parser.add_argument("--reuse_every", type=int, default=4, help="reasoning_every of the reuse row (1: no row)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    parser.add_argument("--work_dir", type=Path, default=None, help="build fixtures here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), "
          f"device {args.device}, dtype {args.dtype}, {args.max_new_tokens} reasoning tokens, {args.ddim_steps} DDIM steps")
    print(format_header(), flush=True)
    rows = []
    with contextlib.ExitStack() as stack:
        root = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_infer_")))
        root.mkdir(parents=True, exist_ok=True)
        for name in args.fixtures:
            rows += bench_fixture(name, root, args)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
