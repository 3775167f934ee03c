"""``EpisodicDataset``: one item = one time step of one episode, with the action chunk that follows it."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import h5py
import numpy as np
import torch

from data_utils.hdf5_io import ACTION_KEY, QPOS_KEY, read_frame, read_language, read_reasoning
from data_utils.image_utils import build_train_augmentation
from data_utils.normalization import NormStats

# Heads trained as diffusion policies get image augmentation by default (as the reference).
DIFFUSION_POLICY_CLASSES = ("scale_dp_policy", "unet_diffusion_policy", "ScaleDP", "unet_diffusion")


class SampleProcessor(Protocol):
    def forward_process(self, sample: dict[str, Any], use_reasoning: bool = True) -> dict[str, Any]: ...


def chunk_start(start_ts: int, is_sim: bool) -> int:
    """First action of the chunk paired with frame ``start_ts``.

    Real-robot recordings lag one step, so the reference starts their chunk at ``start_ts - 1``;
    simulated ones at ``start_ts``. Training and open-loop evaluation both use this one rule.
    """
    return start_ts if is_sim else max(0, start_ts - 1)


def episode_action_deltas(action: np.ndarray) -> np.ndarray:
    """``delta[t] = action[t] - action[t-1]`` with ``delta[0] = 0``: what ``delta_control`` trains on."""
    deltas = np.zeros_like(action)
    deltas[1:] = action[1:] - action[:-1]
    return deltas


class EpisodicDataset(torch.utils.data.Dataset):
    """Steps of HDF5 episodes as samples.

    Args:
        dataset_path_list: all episode files (flattened over dataset dirs).
        camera_names: image keys, in the order the model sees them.
        norm_stats: statistics used to normalise state and action.
        episode_ids: which entries of ``dataset_path_list`` belong to this split.
        episode_len: the length of each episode in ``episode_ids`` (same order).
        chunk_size: number of future actions per sample.
        policy_class: head type; diffusion heads turn on augmentation unless ``augment_images`` says otherwise.
        llava_pythia_process: optional processor (``Qwen2VLAProcess``); when given, items are its output.
        augment_images: force augmentation on/off (default: on for diffusion heads).
        delta_control: train on action deltas instead of absolute actions.
        use_reasoning: passed to the processor (answer with the sub-step reasoning or not).
        seed: base seed of the augmentation; each item's draw depends only on (seed, epoch, index),
            so a resumed run augments exactly as the uninterrupted one.

    Without a processor an item is the ``sample`` dict: ``image (num_cams, 3, H, W) uint8``,
    ``state (state_dim,)`` z-scored, ``action (chunk_size, action_dim)`` in [-1, 1],
    ``is_pad (chunk_size,) bool``, ``raw_lang str``, ``reasoning str``.
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
        self.augment_images = policy_class in DIFFUSION_POLICY_CLASSES if augment_images is None else augment_images
        self.delta_control = delta_control
        self.use_reasoning = use_reasoning
        self._augment: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.seed = seed
        self.epoch = 0
        if delta_control != norm_stats.delta_control:
            raise ValueError(
                f"delta_control={delta_control} but the statistics were computed with "
                f"delta_control={norm_stats.delta_control}; recompute them on what you train on"
            )
        rank0_print(
            f"EpisodicDataset: {len(self.episode_ids)} episodes, {len(self)} steps, "
            f"augment_images={self.augment_images}, delta_control={delta_control}"
        )

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
        """Un-normalised data of one step: ``images (num_cams, H, W, 3)``, ``qpos``, ``action``, ``is_pad``, text."""
        path = self.dataset_path_list[episode_id]
        with h5py.File(path, "r") as root:
            is_sim = bool(root.attrs.get("sim", False))
            episode_len = root[ACTION_KEY].shape[0]
            action_start = chunk_start(start_ts, is_sim)
            action_end = min(episode_len, action_start + self.chunk_size)
            if self.delta_control:
                window = root[ACTION_KEY][max(0, action_start - 1) : action_end].astype(np.float64)
                deltas = episode_action_deltas(window)
                action = deltas[1:] if action_start > 0 else deltas
            else:
                action = root[ACTION_KEY][action_start:action_end].astype(np.float32)
            qpos = root[QPOS_KEY][start_ts].astype(np.float32)
            frames = [read_frame(root, camera, start_ts) for camera in self.camera_names]
            raw_lang = read_language(root)
            reasoning = read_reasoning(root, start_ts)
        shapes = {frame.shape for frame in frames}
        if len(shapes) != 1:
            raise ValueError(
                f"{path}: cameras {self.camera_names} have different frame shapes {sorted(shapes)}; "
                "all cameras of an episode must share one resolution"
            )
        padded = np.zeros((self.chunk_size, action.shape[1]), dtype=np.float32)
        padded[: len(action)] = action
        is_pad = np.zeros(self.chunk_size, dtype=bool)
        is_pad[len(action) :] = True
        return {
            "images": np.stack(frames),
            "qpos": qpos,
            "action": padded,
            "is_pad": is_pad,
            "raw_lang": raw_lang,
            "reasoning": reasoning,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode_id, start_ts = self._locate_transition(int(index))
        raw = self.load_raw_step(episode_id, start_ts)

        image = torch.from_numpy(raw["images"]).permute(0, 3, 1, 2).contiguous()  # (num_cams, 3, H, W)
        if self.augment_images:
            if self._augment is None:
                self._augment = build_train_augmentation(image.shape[-2], image.shape[-1])
            item_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed)
                image = self._augment(image)
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
        if self.llava_pythia_process is not None:
            return self.llava_pythia_process.forward_process(sample, use_reasoning=self.use_reasoning)
        return sample
