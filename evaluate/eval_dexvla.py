#!/usr/bin/env python
"""Evaluate a DexVLA checkpoint on a robot: a recorded episode (open loop), the ALOHA simulation, or real arms.

    python -m evaluate.eval_dexvla --ckpt DIR --robot replay --episodes EPISODE.hdf5 [...]
    python -m evaluate.eval_dexvla --ckpt DIR --robot aloha_sim --task transfer_cube --num_episodes 10 [--save_video]
    python -m evaluate.eval_dexvla --ckpt DIR --robot agilex --prompt "fold the shirt" --fps 50

Actions are executed by ``--strategy chunk`` (query every ``--exec_horizon`` steps) or ``temporal_agg``
(query every ``--exec_horizon`` steps, default every step, ACT's exponential weighting with
``--temporal_k``) or ``async`` (inference in a background thread while the queue is executed: a query goes
out when fewer than ``--async_threshold`` actions remain, overtaken actions are dropped, ``--async_blend``
steps smooth the switch to a new chunk); the loop is held at ``--fps``
(default: 50 on the real robot, unpaced in simulation and replay) and warns when inference cannot keep
up. ``--warmup`` inferences run before the first episode. Results go to ``--out`` as JSON (plus a PNG per
replayed episode and optional mp4s of simulated ones), rewritten after every episode; a summary table
ends the run. An episode whose policy produced a non-finite action is stopped (the robot holds its last
command) and marked ``stopped`` in the JSON and the table; an exception mid-episode holds the robot,
records ``failed`` (episode, step, error) next to the finished episodes, closes the robot and propagates.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from evaluate.action_strategies import STRATEGIES, make_strategy  # noqa: E402
from evaluate.control_loop import EpisodeLog, RateLimiter, run_episode  # noqa: E402
from evaluate.robots import ROBOTS, Robot  # noqa: E402

logger = logging.getLogger("evaluate")


def parse_mapping(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b"}``."""
    mapping = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"{flag}: expected NAME=VALUE, got {item!r}")
        mapping[key] = value
    return mapping


def find_episodes(paths: Sequence[str]) -> list[str]:
    """Episodes from HDF5 files, directories (searched recursively, sorted), LeRobot roots (all their
    episodes) and LeRobot episode references ``<root>#episode=<i>``."""
    from data_utils.episode_source import find_episodes as episodes_under
    from data_utils.episode_source import lerobot_root, parse_lerobot_ref

    found: list[str] = []
    missing: list[str] = []
    for path in paths:
        parsed = parse_lerobot_ref(path)
        if parsed is not None:
            try:
                lerobot_root(parsed[0]).episode(parsed[1])
            except (OSError, ValueError) as err:
                missing.append(f"{path} ({err})")
                continue
            found.append(path)
        elif Path(path).is_dir():
            found += episodes_under(path)
        elif Path(path).exists():
            found.append(path)
        else:
            missing.append(path)
    if missing:
        raise SystemExit(f"--episodes: no such episode(s): {missing}")
    return found


def positive_radians(text: str) -> float:
    """argparse type of ``--max_joint_step``: a finite number > 0 (a negative one would invert the clamp)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of radians, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of radians, got {text!r} (a negative step inverts the clamp's bounds and "
            "drives every joint whatever the policy says; 0 would freeze the arms)"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint directory (full or LoRA-merged)")
    parser.add_argument("--robot", required=True, choices=ROBOTS)
    parser.add_argument("--out", default=None, help="results directory (default: outputs/eval/<ckpt>/<robot>)")
    parser.add_argument(
        "--embodiment", default=None,
        help="which embodiment of a checkpoint trained over several to run (optional with one); replay figures "
        "are reported per embodiment: run once per embodiment on its episodes",
    )
    model = parser.add_argument_group("policy")
    model.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda when present)")
    model.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16")
    model.add_argument("--max_new_tokens", type=int, default=64, help="reasoning budget per query (0: no reasoning)")
    model.add_argument(
        "--seed", type=int, default=0, help="DDIM noise seed (and sim episode seeds); -1: fresh noise every query"
    )
    model.add_argument("--num_inference_timesteps", type=int, default=None, help="DDIM steps (default: checkpoint's)")
    model.add_argument("--image_size_stable", default=None, help="override the checkpoint's '(W,H)'")
    model.add_argument("--image_size_wrist", default=None, help="override the checkpoint's '(W,H)'")
    model.add_argument(
        "--image_crop_ratio", type=float, default=None,
        help="training's crop for checkpoints that do not record it (0.95: diffusion head trained with augmentation)",
    )
    model.add_argument(
        "--reasoning_every", type=int, default=1,
        help="generate the reasoning on one query in K per prompt, reuse the last one otherwise (1: every query)",
    )
    model.add_argument(
        "--compile_head", nargs="?", const=True, default=False,
        help="torch.compile the head's denoiser (GPU serving); optionally a mode, e.g. reduce-overhead",
    )
    model.add_argument("--prompt", default=None, help="instruction (default: the episode's / the sim task's)")
    loop = parser.add_argument_group("control loop")
    loop.add_argument("--strategy", default="chunk", choices=STRATEGIES)
    loop.add_argument(
        "--exec_horizon",
        type=int,
        default=None,
        help="steps between queries: chunk: actions per query (default: whole chunk; replay: 1, so every recorded "
        "frame is queried); temporal_agg: the query period (default: 1)",
    )
    loop.add_argument("--temporal_k", type=float, default=0.01, help="temporal_agg: weight decay exp(-k i)")
    loop.add_argument(
        "--async_threshold",
        type=int,
        default=None,
        help="async: query when fewer actions than this remain queued; keep it above the inference latency in "
        "control steps (default: half the actions executed per chunk)",
    )
    loop.add_argument(
        "--async_blend", type=int, default=0, help="async: steps over which a new chunk is blended with the old queue"
    )
    loop.add_argument("--fps", type=float, default=None, help="control rate (default: 50 on agilex, unpaced otherwise)")
    loop.add_argument("--warmup", type=int, default=2, help="inferences before the first episode")
    loop.add_argument("--num_episodes", type=int, default=None, help="episodes (default: all replayed / 10 sim / 1)")
    loop.add_argument("--max_steps", type=int, default=None, help="steps per episode (default: robot's)")
    loop.add_argument("--camera_map", nargs="*", default=None, metavar="POLICY_CAM=SOURCE_CAM")
    replay = parser.add_argument_group("replay")
    replay.add_argument(
        "--episodes", nargs="*", default=None,
        help="HDF5 episodes or directories, LeRobot roots, or LeRobot episodes ROOT#episode=N",
    )
    sim = parser.add_argument_group("aloha_sim")
    sim.add_argument("--task", default="transfer_cube", choices=["transfer_cube", "insertion"])
    sim.add_argument("--sim_height", type=int, default=240)
    sim.add_argument("--sim_width", type=int, default=320)
    sim.add_argument("--save_video", action="store_true", help="write an mp4 per simulated episode")
    real = parser.add_argument_group("agilex")
    real.add_argument("--camera_topics", nargs="*", default=None, metavar="CAM=TOPIC")
    real.add_argument("--state_topics", nargs=2, default=None, metavar=("LEFT", "RIGHT"))
    real.add_argument("--command_topics", nargs=2, default=None, metavar=("LEFT", "RIGHT"))
    real.add_argument(
        "--max_joint_step", type=positive_radians, default=0.1, help="clamp per-step joint change (rad, > 0)"
    )
    return parser


def make_robot(args: argparse.Namespace, camera_names: Sequence[str], out_dir: Path) -> Robot:
    camera_map = parse_mapping(args.camera_map, "--camera_map")
    if args.robot == "replay":
        from evaluate.robots.replay import ReplayRobot

        if not args.episodes:
            raise SystemExit("--robot replay needs --episodes FILE_OR_DIR ...")
        episodes = find_episodes(args.episodes)[: args.num_episodes]
        return ReplayRobot(episodes, camera_names, camera_map, args.prompt, args.max_steps)
    if args.robot == "aloha_sim":
        from evaluate.robots.aloha_sim import AlohaSimRobot

        return AlohaSimRobot(
            args.task, camera_names, camera_map, args.sim_height, args.sim_width, max(args.seed, 0), args.max_steps,
            args.prompt, out_dir / "videos" if args.save_video else None,
        )
    from evaluate.robots.agilex import DEFAULT_COMMAND_TOPICS, DEFAULT_STATE_TOPICS, AgileXRobot

    return AgileXRobot(
        camera_names, parse_mapping(args.camera_topics, "--camera_topics"),
        args.state_topics or DEFAULT_STATE_TOPICS, args.command_topics or DEFAULT_COMMAND_TOPICS,
        args.prompt or "", args.max_joint_step,
    )


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Plain-text table of ``rows`` (dicts) over ``columns``; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line, rule] + ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body])


def _mean(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


RESULT_FILES = {"replay": "replay_metrics.json", "aloha_sim": "sim_results.json", "agilex": "agilex_results.json"}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``: never a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def evaluate(args: argparse.Namespace, policy: Any | None = None) -> dict[str, Any]:
    """Run the evaluation described by ``args`` (see :func:`build_parser`); returns the summary written to JSON.

    ``policy``: a loaded policy to evaluate instead of ``DexVLAPolicy(args.ckpt)`` (it needs ``infer``,
    ``warmup``, ``camera_names``, ``chunk_size``, ``metadata`` and, for replay, ``stats``).
    The JSON is rewritten after every episode (``complete`` false until the last one). When an episode
    raises, the robot has been told to hold (see :func:`~evaluate.control_loop.run_episode`); the JSON then
    gets ``failed: {"episode", "step", "error"}`` next to the finished episodes, the robot is closed and the
    exception propagates.
    """
    from tqdm import tqdm

    ckpt = Path(args.ckpt)
    out_dir = Path(args.out) if args.out else Path("outputs/eval") / ckpt.name / args.robot
    out_dir.mkdir(parents=True, exist_ok=True)
    if policy is None:
        from evaluate.policy import DexVLAPolicy

        policy = DexVLAPolicy(
            ckpt, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
            seed=None if args.seed < 0 else args.seed,
            num_inference_timesteps=args.num_inference_timesteps, image_size_stable=args.image_size_stable,
            image_size_wrist=args.image_size_wrist, default_prompt=args.prompt, image_crop_ratio=args.image_crop_ratio,
            reasoning_every=args.reasoning_every, compile_head=args.compile_head, embodiment=args.embodiment,
        )
    robot = make_robot(args, policy.camera_names, out_dir)
    fps = args.fps if args.fps is not None else robot.default_fps
    rate = RateLimiter(fps, warn=logger.warning)
    if args.robot == "replay":
        num_episodes = robot.num_episodes
    else:
        num_episodes = args.num_episodes or (10 if args.robot == "aloha_sim" else 1)
    path = out_dir / RESULT_FILES[args.robot]

    episodes: list[dict[str, Any]] = []
    warmup_ms: list[float] = []
    try:
        # A results file of an earlier run in this directory must not pass for this one's.
        write_json_atomic(path, _summarise(args, policy, episodes, warmup_ms, fps, out_dir, complete=False))
        for index in range(num_episodes):
            log = EpisodeLog()
            try:
                obs = robot.reset()
                if index == 0 and args.warmup > 0:
                    warmup_ms = policy.warmup(obs, args.warmup)
                    obs = robot.get_obs()  # warm-up took time: act on a fresh observation
                max_steps = args.max_steps or getattr(robot, "length", None) or getattr(robot, "max_steps", None)
                if max_steps is None:
                    raise SystemExit(f"--robot {args.robot} needs --max_steps")
                exec_horizon = _exec_horizon(args)
                if exec_horizon is not None and not 0 < exec_horizon <= policy.chunk_size:
                    raise SystemExit(f"--exec_horizon {exec_horizon} must be in [1, chunk size {policy.chunk_size}]")
                strategy = make_strategy(
                    args.strategy, exec_horizon, args.temporal_k, *_async_settings(args, exec_horizon, policy.chunk_size)
                )
                with tqdm(total=max_steps, desc=f"{args.robot} episode {index}", unit="step", leave=False) as bar:

                    def on_step(t: int, info, bar=bar) -> None:
                        bar.update(1)
                        if info.reward is not None:
                            bar.set_postfix(reward=info.reward, success=info.success, refresh=False)

                    run_episode(policy, robot, strategy, max_steps, rate, first_obs=obs, on_step=on_step, log=log)
                record = {"index": index, "steps": log.steps, **robot.episode_summary(), **log.timing(), **log.outcome()}
                record["reasoning"] = [{"t": t, "text": text} for t, text in log.reasoning[:50]]
                if args.robot == "replay":
                    record.update(_replay_results(robot, log, policy.stats, out_dir, index))
            except BaseException as err:
                failed = {"episode": index, "step": log.steps, "error": f"{type(err).__name__}: {err}"}
                summary = _summarise(args, policy, episodes, warmup_ms, fps, out_dir, complete=False, failed=failed)
                write_json_atomic(path, summary)
                logger.error(
                    "episode %d failed at step %d (%s); the %d finished episodes are in %s",
                    index, log.steps, failed["error"], len(episodes), path,
                )
                raise
            episodes.append(record)
            if log.stopped:
                logger.warning("episode %d stopped at step %d: %s", index, log.stopped_at, log.stop_detail)
            complete = len(episodes) == num_episodes
            write_json_atomic(path, _summarise(args, policy, episodes, warmup_ms, fps, out_dir, complete=complete))
    finally:
        robot.close()

    summary = _summarise(args, policy, episodes, warmup_ms, fps, out_dir, complete=True)
    _print_summary(args.robot, episodes, summary, path)
    return summary


def _exec_horizon(args: argparse.Namespace) -> int | None:
    """``--exec_horizon``; open-loop replay scores the policy on every recorded frame unless told otherwise."""
    return args.exec_horizon if args.exec_horizon or args.robot != "replay" else 1


def _async_settings(args: argparse.Namespace, exec_horizon: int | None, chunk_size: int) -> tuple[int | None, int]:
    """``(async_threshold, async_blend)`` for ``make_strategy``, checked against the actions usable per chunk."""
    if args.strategy != "async":
        for flag, value, default in (("--async_threshold", args.async_threshold, None), ("--async_blend", args.async_blend, 0)):
            if value != default:
                raise SystemExit(f"{flag} only applies to --strategy async (got --strategy {args.strategy})")
        return None, 0
    usable = exec_horizon or chunk_size
    threshold = args.async_threshold if args.async_threshold is not None else max(1, usable // 2)
    if not 1 <= threshold <= usable:
        raise SystemExit(f"--async_threshold {threshold} must be in [1, actions executed per chunk {usable}]")
    if args.async_blend < 0:
        raise SystemExit(f"--async_blend {args.async_blend} must be >= 0 steps")
    return threshold, args.async_blend


def _replay_results(robot, log, stats, out_dir: Path, index: int) -> dict[str, Any]:
    from evaluate.metrics import ALOHA_JOINT_NAMES, chunk_errors, executed_errors, plot_episode

    executed, recorded = robot.executed_and_recorded()
    names = ALOHA_JOINT_NAMES if recorded.shape[1] == len(ALOHA_JOINT_NAMES) else None
    plot = plot_episode(
        executed, recorded, out_dir / f"replay_episode_{index}.png",
        title=f"{robot.episode_path.name}: policy vs recorded action", dim_names=names,
        query_steps=[t for t, _ in log.queries],
    )
    return {
        "executed": executed_errors(executed, recorded, stats, robot.qpos[: len(executed)]),
        "chunk": chunk_errors(log.queries, robot.actions[: robot.length], stats, robot.is_sim, robot.qpos),
        "plot": str(plot),
    }


def _summarise(
    args, policy, episodes, warmup_ms, fps, out_dir: Path, complete: bool, failed: dict[str, Any] | None = None
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "complete": complete,
        "failed": failed,
        "checkpoint": str(args.ckpt),
        "robot": args.robot,
        # The embodiment these figures are of (None: a single-embodiment checkpoint).
        "embodiment": getattr(policy, "embodiment", None) if getattr(policy, "multi_embodiment", False) else None,
        "strategy": args.strategy,
        "exec_horizon": args.exec_horizon,
        "temporal_k": args.temporal_k if args.strategy == "temporal_agg" else None,
        "async_threshold": _async_settings(args, _exec_horizon(args), policy.chunk_size)[0],
        "async_blend": args.async_blend if args.strategy == "async" else None,
        "fps": fps,
        "policy": policy.metadata,
        "warmup_ms": warmup_ms,
        "num_episodes": len(episodes),
        "infer_ms_mean": _mean([e["infer_ms_mean"] for e in episodes]),
        "step_ms_mean": _mean([e["step_ms_mean"] for e in episodes]),
        "late_steps": int(sum(e["late_steps"] for e in episodes)),
        "starvations": int(sum(e["starvations"] for e in episodes)),
        "stopped_episodes": [e["index"] for e in episodes if e["stopped"]],
        "episodes": episodes,
        "out_dir": str(out_dir),
    }
    if args.robot == "replay":
        for part in ("executed", "chunk"):
            for key in ("mse_raw", "l1_raw", "mse_norm", "l1_norm"):
                summary[f"{part}_{key}"] = _mean([e[part].get(key) for e in episodes])
    if args.robot == "aloha_sim":
        summary["success_rate"] = _mean([float(e["success"]) for e in episodes])
        summary["mean_return"] = _mean([e["return"] for e in episodes])
    return summary


def _stopped(episode: dict[str, Any]) -> str | None:
    """The table's ``stopped`` cell: why and at which step the loop ended the episode (``None``: it did not)."""
    return f"{episode['stopped']} at {episode['stopped_at_step']}" if episode.get("stopped") else None


def _print_summary(robot: str, episodes: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    if robot == "replay":
        columns = ["episode", "steps", "queries", "exec_mse_raw", "exec_mse_norm", "chunk_mse_norm", "infer_ms",
                   "step_ms"]
        rows = [
            {"episode": Path(e["episode"]).name, "steps": e["steps"], "queries": e["queries"],
             "exec_mse_raw": e["executed"]["mse_raw"], "exec_mse_norm": e["executed"]["mse_norm"],
             "chunk_mse_norm": e["chunk"]["mse_norm"], "infer_ms": e["infer_ms_mean"], "step_ms": e["step_ms_mean"]}
            for e in episodes
        ]
        rows.append({"episode": "mean", "exec_mse_raw": summary["executed_mse_raw"],
                     "exec_mse_norm": summary["executed_mse_norm"], "chunk_mse_norm": summary["chunk_mse_norm"],
                     "infer_ms": summary["infer_ms_mean"], "step_ms": summary["step_ms_mean"]})
    elif robot == "aloha_sim":
        columns = ["episode", "seed", "steps", "success", "return", "max_reward", "infer_ms", "step_ms"]
        rows = [{"episode": e["index"], "seed": e["seed"], "steps": e["steps"], "success": e["success"],
                 "return": e["return"], "max_reward": e["max_reward"], "infer_ms": e["infer_ms_mean"],
                 "step_ms": e["step_ms_mean"]} for e in episodes]
        rows.append({"episode": "mean", "success": None, "return": summary["mean_return"],
                     "infer_ms": summary["infer_ms_mean"], "step_ms": summary["step_ms_mean"]})
    else:
        columns = ["episode", "steps", "queries", "infer_ms", "step_ms", "late_steps"]
        rows = [{"episode": e["index"], "steps": e.get("steps"), "queries": e["queries"], "infer_ms": e["infer_ms_mean"],
                 "step_ms": e["step_ms_mean"], "late_steps": e["late_steps"]} for e in episodes]
    columns.append("stopped")
    for row, episode in zip(rows, episodes, strict=False):  # the replay and sim tables end with a "mean" row
        row["stopped"] = _stopped(episode)
    print(format_table(rows, columns))
    if summary["stopped_episodes"]:
        print(f"warning: episodes {summary['stopped_episodes']} stopped early: the policy produced non-finite actions")
    if robot == "aloha_sim":
        print(f"success rate: {summary['success_rate']:.0%} over {summary['num_episodes']} episodes")
    if summary["starvations"]:
        print(f"warning: {summary['starvations']} steps re-sent the last action: the async queue ran dry")
    if summary["late_steps"]:
        print(f"warning: {summary['late_steps']} steps overran the {summary['fps']:g} Hz budget")
    print(f"results: {path}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    summary = evaluate(args)
    logger.info("evaluation took %.1f s", time.perf_counter() - start)
    return summary


if __name__ == "__main__":
    main()
