"""``EpisodicDataset``: one item = one time step of one episode, with the action chunk that follows it."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from data_utils.episode_source import lerobot_feature_config, open_episode, restore_lerobot_features
from data_utils.image_utils import DEFAULT_CROP_RATIO, CameraImageTransform, parse_image_size
from data_utils.normalization import NormStats

# Heads trained as diffusion policies get image augmentation by default (as the reference).
DIFFUSION_POLICY_CLASSES = ("scale_dp_policy", "unet_diffusion_policy", "ScaleDP", "unet_diffusion")


def resolve_augment_images(augment_images: bool | None, policy_class: str | None) -> bool:
    """``--augment_images`` as given, or by default on for diffusion heads (as the reference)."""
    return policy_class in DIFFUSION_POLICY_CLASSES if augment_images is None else bool(augment_images)


def training_crop_ratio(augment_images: bool | None, policy_class: str | None) -> float | None:
    """The crop training applies (and inference repeats, deterministically): 0.95 when augmenting, else none."""
    return DEFAULT_CROP_RATIO if resolve_augment_images(augment_images, policy_class) else None


class SampleProcessor(Protocol):
    def forward_process(self, sample: dict[str, Any], use_reasoning: bool = True) -> dict[str, Any]: ...


def chunk_start(start_ts: int, is_sim: bool) -> int:
    """First action of the chunk paired with frame ``start_ts``.

    Real-robot recordings lag one step, so the reference starts their chunk at ``start_ts - 1``;
    simulated ones at ``start_ts``. Training and open-loop evaluation both use this one rule.
    """
    return start_ts if is_sim else max(0, start_ts - 1)


def chunk_action_deltas(actions: np.ndarray, qpos: np.ndarray) -> np.ndarray:
    """What ``delta_control`` trains on for frame ``t``: ``(n, A)`` float64 deltas of one chunk.

    ``actions (n, A)`` is ``action[s : s + n]`` with ``s = chunk_start(t)`` and ``qpos (A,)`` the state
    at frame ``t``: ``d[0] = action[s] - qpos[t]``, ``d[k] = action[s+k] - action[s+k-1]``. Deployment
    integrates a chunk from the state it measures at the query (:func:`integrate_action_deltas`), so
    the recorded deltas give back exactly the recorded actions. Needs ``action_dim == state_dim``.
    """
    actions, qpos = np.asarray(actions, np.float64), np.asarray(qpos, np.float64)
    if actions.ndim != 2 or qpos.shape != actions.shape[1:]:
        raise ValueError(
            f"delta_control takes actions relative to the state, so it needs actions (n, A) and a state (A,) "
            f"of one width (action_dim == state_dim); got actions {actions.shape} and state {qpos.shape}"
        )
    return np.diff(actions, axis=0, prepend=qpos[None])


def integrate_action_deltas(deltas: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Inverse of :func:`chunk_action_deltas`: ``deltas (..., n, A)`` and ``state (..., A)`` ->
    actions ``(..., n, A)`` = ``state + cumsum(deltas)`` (float64)."""
    deltas, state = np.asarray(deltas, np.float64), np.asarray(state, np.float64)
    return state[..., None, :] + np.cumsum(deltas, axis=-2)


def pad_with_mask(values: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``values (..., D)`` zero-padded to ``(..., width)`` and the ``(width,)`` bool mask of its real dimensions."""
    dim = values.shape[-1]
    if dim > width:
        raise ValueError(f"cannot pad width {dim} to the narrower {width}")
    padded = torch.nn.functional.pad(values, (0, width - dim))
    mask = torch.zeros(width, dtype=torch.bool)
    mask[:dim] = True
    return padded, mask


class EmbodimentConcatDataset(torch.utils.data.ConcatDataset):
    """The training sets of several tasks one after another (the layout ``EpisodeSampler`` draws from), with
    ``set_epoch`` passed on so each part's augmentation changes per epoch as a single ``EpisodicDataset``'s does."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)


class EpisodicDataset(torch.utils.data.Dataset):
    """Steps of episodes (ACT HDF5 files and LeRobot episodes, see ``data_utils.episode_source``) as samples.

    Args:
        dataset_path_list: all episodes (flattened over dataset dirs): HDF5 paths and/or LeRobot
            references ``<root>#episode=<i>``.
        camera_names: image keys, in the order the model sees them.
        norm_stats: statistics used to normalise state and action.
        episode_ids: which entries of ``dataset_path_list`` belong to this split.
        episode_len: the length of each episode in ``episode_ids`` (same order).
        chunk_size: number of future actions per sample.
        policy_class: head type; diffusion heads turn on augmentation unless ``augment_images`` says otherwise.
        llava_pythia_process: optional processor (``Qwen2VLAProcess``); when given, items are its output.
        augment_images: force augmentation on/off (default: on for diffusion heads).
        image_size: ``(width, height)`` (or ``"(320,240)"``) every camera's frame is resized to first, the
            stable cameras' training size (``--image_size_stable``); ``None`` keeps the frames as stored,
            which then must share one resolution.
        crop_ratio: the crop of training (see ``CameraImageTransform``): drawn at random with
            ``augment_images``, else applied in its deterministic (centre) form, as inference does. Default:
            0.95 when augmenting, else no crop. A validation split passes the training split's ratio.
        delta_control: train on action deltas instead of absolute actions.
        use_reasoning: passed to the processor (answer with the sub-step reasoning or not).
        seed: base seed of the augmentation; each item's draw depends only on (seed, epoch, index),
            so a resumed run augments exactly as the uninterrupted one.
        pad_to: ``(state_width, action_width)`` of a model trained over several embodiments: state and action
            are zero-padded to them (after normalisation) and the item gets ``state_mask``/``action_mask``;
            ``None`` (one embodiment): the widths of the data, no masks.

    Without a processor an item is the ``sample`` dict: ``image (num_cams, 3, H, W) uint8``,
    ``state (state_dim,)`` z-scored, ``action (chunk_size, action_dim)`` in [-1, 1],
    ``is_pad (chunk_size,) bool``, ``raw_lang str``, ``reasoning str`` (``/substep_reasonings[t]``, else
    the episode's ``/reasoning``), or ``None`` when the episode has neither: the processor then answers
    that sample without reasoning (an annotated empty string is still a reasoning).
    With ``delta_control`` the action chunk holds :func:`chunk_action_deltas`.
    With ``pad_to`` the state is ``(state_width,)``, the action ``(chunk_size, action_width)``, zero beyond the
    embodiment's own widths, and ``state_mask (state_width,)`` / ``action_mask (action_width,)`` bool say which
    dimensions are real.
    """

    def __init__(
        self,
        dataset_path_list: Sequence[str],
        camera_names: Sequence[str],
        norm_stats: NormStats,
        episode_ids: Sequence[int],
        episode_len: Sequence[int],
        chunk_size: int,
        policy_class: str | None = None,
        llava_pythia_process: SampleProcessor | None = None,
        augment_images: bool | None = None,
        delta_control: bool = False,
        use_reasoning: bool = True,
        rank0_print: Callable[..., None] = print,
        seed: int = 0,
        image_size: tuple[int, int] | str | None = None,
        crop_ratio: float | None = None,
        pad_to: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if len(episode_ids) != len(episode_len):
            raise ValueError(f"episode_ids ({len(episode_ids)}) and episode_len ({len(episode_len)}) differ in length")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.dataset_path_list = list(dataset_path_list)
        self.camera_names = list(camera_names)
        self.norm_stats = norm_stats
        self.episode_ids = [int(i) for i in episode_ids]
        self.episode_len = [int(n) for n in episode_len]
        self.cumulative_len = np.cumsum(self.episode_len).tolist()
        self.chunk_size = int(chunk_size)
        self.policy_class = policy_class
        self.llava_pythia_process = llava_pythia_process
        self.augment_images = resolve_augment_images(augment_images, policy_class)
        if crop_ratio is None:
            crop_ratio = training_crop_ratio(augment_images, policy_class)
        self.crop_ratio = crop_ratio
        self.image_size = None if image_size is None else parse_image_size(image_size)
        self.image_transform = CameraImageTransform(self.image_size, crop_ratio)
        self.delta_control = delta_control
        self.pad_to = None if pad_to is None else (int(pad_to[0]), int(pad_to[1]))
        if self.pad_to is not None and (
            self.pad_to[0] < norm_stats.state_dim or self.pad_to[1] < norm_stats.action_dim
        ):
            raise ValueError(
                f"pad_to={self.pad_to} is narrower than the data's (state_dim, action_dim) "
                f"({norm_stats.state_dim}, {norm_stats.action_dim})"
            )
        self.use_reasoning = use_reasoning
        self.seed = seed
        self.epoch = 0
        # The feature keys LeRobot roots are read with (TASK_CONFIGS "lerobot_features"), as configured now.
        self.lerobot_features = lerobot_feature_config()
        if delta_control != norm_stats.delta_control:
            raise ValueError(
                f"delta_control={delta_control} but the statistics were computed with "
                f"delta_control={norm_stats.delta_control}; recompute them on what you train on"
            )
        rank0_print(
            f"EpisodicDataset: {len(self.episode_ids)} episodes, {len(self)} steps, "
            f"augment_images={self.augment_images}, delta_control={delta_control}"
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A worker started by spawn (not fork) must read LeRobot roots with the task's feature keys too.
        restore_lerobot_features(state.get("lerobot_features", {}))
        self.__dict__.update(state)

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's data loader each epoch; changes the augmentation draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.cumulative_len[-1]) if self.cumulative_len else 0

    def _locate_transition(self, index: int) -> tuple[int, int]:
        """Global step ``index`` -> (episode id in ``dataset_path_list``, start step inside it)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} steps")
        position = bisect.bisect_right(self.cumulative_len, index)
        start_ts = index - (self.cumulative_len[position - 1] if position > 0 else 0)
        return self.episode_ids[position], int(start_ts)

    def load_raw_step(self, episode_id: int, start_ts: int) -> dict[str, Any]:
        """Un-normalised data of one step: ``images``, ``qpos``, ``action``, ``is_pad``, text.

        ``images`` is ``(num_cams, H, W, 3)`` uint8 as stored, or a list of ``(H_i, W_i, 3)`` frames when the
        cameras' resolutions differ.
        """
        with open_episode(self.dataset_path_list[episode_id]) as episode:
            action_start = chunk_start(start_ts, episode.is_sim)
            action_end = min(episode.length, action_start + self.chunk_size)
            action = episode.action(action_start, action_end)
            qpos = np.asarray(episode.qpos(start_ts, start_ts + 1)[0], dtype=np.float32)
            # delta_control: relative to this frame's (float32, as deployment sees it) state.
            action = chunk_action_deltas(action, qpos) if self.delta_control else action.astype(np.float32)
            frames = [episode.frame(camera, start_ts) for camera in self.camera_names]
            raw_lang = episode.language(start_ts)
            reasoning = episode.reasoning(start_ts)
        padded = np.zeros((self.chunk_size, action.shape[1]), dtype=np.float32)
        padded[: len(action)] = action
        is_pad = np.zeros(self.chunk_size, dtype=bool)
        is_pad[len(action) :] = True
        return {
            # Cameras may differ in resolution (wrist cameras often do): stacked only when they agree.
            "images": np.stack(frames) if len({f.shape for f in frames}) == 1 else frames,
            "qpos": qpos,
            "action": padded,
            "is_pad": is_pad,
            "raw_lang": raw_lang,
            "reasoning": reasoning,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode_id, start_ts = self._locate_transition(int(index))
        raw = self.load_raw_step(episode_id, start_ts)

        # Resize to the training size, then the crop (random when augmenting, else its deterministic form,
        # exactly what inference does); each item's draw depends only on (seed, epoch, index).
        item_seed = None
        if self.augment_images:
            item_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        image = self.image_transform(raw["images"], seed=item_seed)  # (num_cams, 3, H, W) uint8
        is_pad = torch.from_numpy(raw["is_pad"])
        action = torch.as_tensor(self.norm_stats.normalize_action(raw["action"]), dtype=torch.float32)
        action[is_pad] = 0.0  # padded steps carry no target; keep them neutral
        sample = {
            "image": image,
            "state": torch.as_tensor(self.norm_stats.normalize_state(raw["qpos"]), dtype=torch.float32),
            "action": action,
            "is_pad": is_pad,
            "raw_lang": raw["raw_lang"],
            "reasoning": raw["reasoning"],
        }
        if self.pad_to is not None:
            sample["state"], sample["state_mask"] = pad_with_mask(sample["state"], self.pad_to[0])
            sample["action"], sample["action_mask"] = pad_with_mask(sample["action"], self.pad_to[1])
        if self.llava_pythia_process is not None:
            return self.llava_pythia_process.forward_process(sample, use_reasoning=self.use_reasoning)
        return sample
