"""Load stage-1 (head-only) diffusion-expert weights into a head before VLA training.

Accepted layouts:

- the reference's released stage-1 checkpoint: a torch file whose `ckpt["nets"]["nets"]` dict holds keys prefixed
  `policy.noise_pred_net.`; the observation embedding (`cond_obs_emb`) is dropped because stage 1 was conditioned
  on a different encoder;
- a `.safetensors` file, or a directory written by `save_pretrained` (this project's stage-1 output, possibly
  sharded); when keys are prefixed `policy_head.` (a checkpoint of a model holding the head, such as the
  stage-1 wrapper's Trainer checkpoints) only those are kept.

Both heads use the reference's parameter names, so reference-format weights of the UNet (DiVLA) head load the
same way as ScaleDP's (e.g. the `policy_head.*` tensors of a reference VLA checkpoint).

Torch files are read with `weights_only=True`: tensors and plain containers only, never arbitrary pickles.
"""

import json
import logging
import os
import re
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

REFERENCE_PREFIX = "policy.noise_pred_net."
# Dropped from reference checkpoints: stage 1 embedded a different observation encoder.
REFERENCE_DROPPED_SUBSTRINGS = ("cond_obs_emb",)
# Prefixes stripped from this project's checkpoints (the stage-1 wrapper names its head `policy_head`).
PROJECT_PREFIXES = ("policy_head.",)


@dataclass
class DitLoadReport:
    """What `load_pretrained_dit` did: the keys loaded, missing from the file, unexpected in it, and dropped."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"loaded {len(self.loaded)}, missing {len(self.missing)} ({_summarize_keys(self.missing)}), "
            f"unexpected {len(self.unexpected)} ({_summarize_keys(self.unexpected)}), dropped {len(self.dropped)}"
        )


def _index_ranges(indices: set[int]) -> str:
    """`{0, 1, 2, 5}` -> `"0-2,5"`."""
    ordered, parts = sorted(indices), []
    start = prev = ordered[0]
    for i in ordered[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if i is not None:
            start = prev = i
    return ",".join(parts)


def _summarize_keys(keys: list[str], limit: int = 12) -> str:
    """One readable line: keys under numbered layers are grouped (`blocks.{0-31}.* (320 keys)`)."""
    if not keys:
        return "none"
    groups: dict[str, tuple[set[int], list[str]]] = {}
    for key in sorted(keys):
        match = re.match(r"^(.*?)\.(\d+)\.(.*)$", key)
        if match is None:
            groups[key] = (set(), [key])
            continue
        indices, members = groups.setdefault(match.group(1), (set(), []))
        indices.add(int(match.group(2)))
        members.append(key)
    items = []
    for name, (indices, members) in groups.items():
        if len(members) == 1:
            items.append(members[0])
        else:
            items.append(f"{name}.{{{_index_ranges(indices)}}}.* ({len(members)} keys)")
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _read_safetensors_dir(path: str) -> dict[str, torch.Tensor]:
    index_path = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(os.path.join(path, shard)))
        return state
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return load_file(single)
    raise FileNotFoundError(f"{path} holds neither model.safetensors nor model.safetensors.index.json")


def read_stage1_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read a stage-1 checkpoint in any accepted layout.

    Returns:
        The head's state dict (prefixes stripped) and the keys deliberately dropped.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        state = _read_safetensors_dir(path)
    elif path.endswith(".safetensors"):
        state = load_file(path)
    elif os.path.isfile(path):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("nets"), dict) and "nets" in ckpt["nets"]:
            nets = ckpt["nets"]["nets"]
            head = {k[len(REFERENCE_PREFIX) :]: v for k, v in nets.items() if k.startswith(REFERENCE_PREFIX)}
            if not head:
                raise ValueError(f"{path}: ckpt['nets']['nets'] has no key starting with {REFERENCE_PREFIX!r}")
            dropped = sorted(k for k in head if any(s in k for s in REFERENCE_DROPPED_SUBSTRINGS))
            return {k: v for k, v in head.items() if k not in dropped}, dropped
        if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = ckpt  # a plain state dict saved with torch.save
        else:
            raise ValueError(f"{path}: not a reference stage-1 checkpoint (ckpt['nets']['nets']) nor a state dict")
    else:
        raise FileNotFoundError(f"stage-1 checkpoint not found: {path}")
    for prefix in PROJECT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            # A checkpoint of a model holding the head (e.g. the stage-1 wrapper with its image encoder):
            # keep the head's tensors, drop the rest.
            dropped = sorted(k for k in state if not k.startswith(prefix))
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, dropped
    return state, []


def load_pretrained_dit(head: nn.Module, path: str | os.PathLike) -> DitLoadReport:
    """Load stage-1 weights into `head` (a `ScaleDP` or `ConditionalUnet1D`) in place.

    Tensors are copied into the existing parameters, so the head keeps its device and dtype. Keys missing from
    the file keep their current (initialised) values; unexpected keys are ignored. Both are reported in one log
    line.

    Raises:
        ValueError: a tensor's shape differs from the head's (naming the key and both shapes), or no tensor of
            the file matches a parameter of the head (a checkpoint of another model: loading nothing would leave
            the head at its random start while the run believes it starts from stage 1).
        FileNotFoundError: `path` does not exist.
    """
    state, dropped = read_stage1_state_dict(path)
    own = head.state_dict()
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"stage-1 weight {key!r} has shape {tuple(tensor.shape)} in {path} but the "
                f"{type(head).__name__} head expects {tuple(own[key].shape)}: the checkpoint was trained with "
                "another config (model_size, cond_dim, state_dim, action_dim or prediction_horizon)"
            )
    matching = {k: v for k, v in state.items() if k in own}
    if not matching:
        raise ValueError(
            f"no tensor of the stage-1 checkpoint {os.fspath(path)} matches the {type(head).__name__} head: "
            f"it holds {len(state)} tensors ({_summarize_keys(sorted(state))}), the head expects keys such as "
            f"{_summarize_keys(sorted(own))}. Is it a checkpoint of another model or head type (--policy_head_type)?"
        )
    result = head.load_state_dict(matching, strict=False)
    report = DitLoadReport(
        loaded=sorted(k for k in state if k in own),
        missing=sorted(result.missing_keys),
        unexpected=sorted(k for k in state if k not in own),
        dropped=dropped,
    )
    # Warn only when something did not match, so a clean load stays quiet at the default log level.
    log = logger.warning if report.missing or report.unexpected else logger.info
    log(
        "Loaded stage-1 weights from %s into %s: %d tensors; missing (%d): %s; unexpected (%d): %s; "
        "dropped on purpose (%d): %s",
        os.fspath(path),
        type(head).__name__,
        len(report.loaded),
        len(report.missing),
        _summarize_keys(report.missing),
        len(report.unexpected),
        _summarize_keys(report.unexpected),
        len(report.dropped),
        _summarize_keys(report.dropped),
    )
    return report


__all__ = ["DitLoadReport", "load_pretrained_dit", "read_stage1_state_dict"]
