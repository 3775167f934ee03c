"""Open-loop metrics of a replayed episode: commanded vs recorded actions, and the plot per episode.

Errors are reported in raw robot units and in normalised units (the [-1, 1] min-max scaling of the
checkpoint's ``dataset_stats.json``, i.e. what the model was trained on; for ``delta_control``
checkpoints the normalised errors are those of the deltas it predicts, ``chunk_action_deltas``: taken
from the state at the query frame, so they need the recorded states, else only raw errors are given).

- ``executed``: the action each step actually commanded (after chunking / temporal aggregation) against
  the recorded action of that step;
- ``chunk``: every step of every predicted chunk against the recorded action it predicts (steps past the
  end of the recording are skipped).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_utils.dataset import chunk_action_deltas, chunk_start
from data_utils.normalization import NormStats


def error_stats(pred: np.ndarray, target: np.ndarray, norm_pred: np.ndarray | None = None,
                norm_target: np.ndarray | None = None) -> dict[str, Any]:
    """MSE and L1, overall and per dimension, of ``pred`` vs ``target (N, A)`` (and of their normalised forms)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    out: dict[str, Any] = {"count": int(pred.shape[0])}
    pairs = [("raw", pred, target)]
    if norm_pred is not None and norm_target is not None:
        pairs.append(("norm", np.asarray(norm_pred, np.float64), np.asarray(norm_target, np.float64)))
    per_dim: dict[str, list[float]] = {}
    for unit, p, t in pairs:
        if len(p) == 0:
            out[f"mse_{unit}"] = out[f"l1_{unit}"] = None
            continue
        diff = p - t
        out[f"mse_{unit}"] = float(np.mean(diff**2))
        out[f"l1_{unit}"] = float(np.mean(np.abs(diff)))
        per_dim[f"mse_{unit}"] = np.mean(diff**2, axis=0).tolist()
        per_dim[f"l1_{unit}"] = np.mean(np.abs(diff), axis=0).tolist()
    out["per_dim"] = per_dim
    return out


def executed_errors(
    executed: np.ndarray, recorded: np.ndarray, stats: NormStats, qpos: np.ndarray | None = None
) -> dict[str, Any]:
    """Errors of ``executed (N, A)`` vs ``recorded (N, A)`` actions, step by step.

    With ``delta_control`` the normalised errors are those of the first delta of each step's chunk,
    ``action - qpos[t]`` (``qpos (N, S)``: the recorded state of each step); without ``qpos``, raw only.
    """
    executed, recorded = np.asarray(executed, np.float64), np.asarray(recorded, np.float64)
    if not stats.delta_control:
        return error_stats(executed, recorded, stats.normalize_action(executed), stats.normalize_action(recorded))
    if qpos is None:
        return error_stats(executed, recorded)
    state = np.asarray(qpos, np.float64)[: len(executed)]
    return error_stats(
        executed, recorded, stats.normalize_action(executed - state), stats.normalize_action(recorded - state)
    )


def chunk_errors(
    queries: Sequence[tuple[int, np.ndarray]],
    actions: np.ndarray,
    stats: NormStats,
    is_sim: bool = True,
    qpos: np.ndarray | None = None,
) -> dict[str, Any]:
    """Errors of every predicted chunk step against the recorded ``actions (T, A)``.

    ``queries`` = ``[(t, (T, A) chunk predicted at frame t), ...]``; a chunk is compared with the
    recorded actions training paired with frame ``t`` (``chunk_start``: one step earlier on real robots).
    With ``delta_control`` the normalised errors are those of the deltas the model predicts: both the
    chunk and the recorded actions as ``chunk_action_deltas`` from the query-time state ``qpos (T, S)``.
    """
    preds, targets, pred_deltas, target_deltas = [], [], [], []
    for t, chunk in queries:
        start = chunk_start(t, is_sim)
        n = max(0, min(len(chunk), len(actions) - start))
        pred = np.asarray(chunk[:n], np.float64)
        target = np.asarray(actions[start : start + n], np.float64)
        preds.append(pred)
        targets.append(target)
        if stats.delta_control and qpos is not None and n > 0:
            pred_deltas.append(chunk_action_deltas(pred, qpos[t]))
            target_deltas.append(chunk_action_deltas(target, qpos[t]))
    width = actions.shape[1]
    pred = np.concatenate(preds) if preds else np.zeros((0, width))
    target = np.concatenate(targets) if targets else np.zeros((0, width))
    if not stats.delta_control:
        return error_stats(pred, target, stats.normalize_action(pred), stats.normalize_action(target))
    if qpos is None:  # without the states the predicted deltas can't be recovered: raw units only
        return error_stats(pred, target)
    pred_d = np.concatenate(pred_deltas) if pred_deltas else np.zeros((0, width))
    target_d = np.concatenate(target_deltas) if target_deltas else np.zeros((0, width))
    return error_stats(pred, target, stats.normalize_action(pred_d), stats.normalize_action(target_d))


def plot_episode(
    executed: np.ndarray,
    recorded: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    dim_names: Sequence[str] | None = None,
    query_steps: Sequence[int] = (),
) -> Path:
    """PNG of commanded vs recorded action per dimension over time (one panel per dimension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    executed, recorded = np.asarray(executed), np.asarray(recorded)
    dims = recorded.shape[1]
    cols = 2 if dims > 1 else 1
    rows = (dims + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 1.8 * rows), sharex=True, squeeze=False)
    steps = np.arange(len(recorded))
    for d in range(rows * cols):
        ax = axes[d % rows][d // rows]
        if d >= dims:
            ax.axis("off")
            continue
        ax.plot(steps, recorded[:, d], color="black", linewidth=1.2, label="recorded")
        ax.plot(steps[: len(executed)], executed[:, d], color="tab:red", linewidth=1.0, label="policy")
        for t in query_steps:
            ax.axvline(t, color="tab:blue", alpha=0.08, linewidth=0.8)
        ax.set_ylabel(dim_names[d] if dim_names else f"a[{d}]", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper right")
    for c in range(cols):
        axes[rows - 1][c].set_xlabel("step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


ALOHA_JOINT_NAMES = [
    f"{arm}_{joint}"
    for arm in ("left", "right")
    for joint in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
]

__all__ = ["ALOHA_JOINT_NAMES", "chunk_errors", "error_stats", "executed_errors", "plot_episode"]
