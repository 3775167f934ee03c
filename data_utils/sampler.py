"""Weighted step sampler over several datasets (the reference built one and never used it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class EpisodeSampler(torch.utils.data.Sampler[int]):
    """Draws global step indices of an ``EpisodicDataset`` whose episodes come from several datasets.

    Each draw picks a dataset with probability ``sample_weights`` (default: in proportion to its
    number of steps), then, with ``episode_first``, an episode uniformly and a step inside it
    (short episodes weigh as much as long ones), or otherwise a step uniformly over the dataset.

    Deterministic given ``seed`` and the epoch (``set_epoch``), so a resumed run sees the same order.

    Args:
        episode_len_l: per dataset, the lengths of its episodes, in the dataset's index order.
        sample_weights: one weight per dataset (need not sum to 1).
        episode_first: sample episodes uniformly before steps.
        num_samples: draws per epoch (default: total number of steps).
        seed: base seed.
        dataset: optional dataset whose ``set_epoch`` is called with the sampler's: under several
            processes accelerate sets the epoch on the sampler only, and the augmentation draws
            of ``EpisodicDataset`` depend on it.
    """

    def __init__(
        self,
        episode_len_l: Sequence[Sequence[int]],
        sample_weights: Sequence[float] | None = None,
        episode_first: bool = False,
        num_samples: int | None = None,
        seed: int = 0,
        dataset: torch.utils.data.Dataset | None = None,
    ) -> None:
        self.episode_len_l = [np.asarray(lens, dtype=np.int64) for lens in episode_len_l]
        steps = np.array([lens.sum() for lens in self.episode_len_l], dtype=np.float64)
        if len(self.episode_len_l) == 0 or steps.sum() == 0:
            raise ValueError("EpisodeSampler needs at least one non-empty episode")
        if sample_weights is None:
            weights = steps
        else:
            if len(sample_weights) != len(self.episode_len_l):
                raise ValueError(
                    f"sample_weights has {len(sample_weights)} entries for {len(self.episode_len_l)} datasets"
                )
            weights = np.asarray(sample_weights, dtype=np.float64)
            if np.any(weights < 0) or weights.sum() <= 0:
                raise ValueError(f"sample_weights must be non-negative with a positive sum, got {list(sample_weights)}")
            weights = np.where(steps > 0, weights, 0.0)  # an empty dataset can't be drawn from
        self.probabilities = weights / weights.sum()
        self.episode_first = episode_first
        self.num_samples = int(num_samples) if num_samples is not None else int(steps.sum())
        self.seed = seed
        self.epoch = 0
        self.dataset = dataset
        # Global offsets: datasets are laid out one after another, episodes within each.
        self._episode_offsets = []
        offset = 0
        for lens in self.episode_len_l:
            starts = offset + np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(lens) else np.zeros(0, np.int64)
            self._episode_offsets.append(starts.astype(np.int64))
            offset += int(lens.sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.dataset is not None and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def sample_indices(self, epoch: int | None = None) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        datasets = rng.choice(len(self.episode_len_l), size=self.num_samples, p=self.probabilities)
        out = np.empty(self.num_samples, dtype=np.int64)
        for d, lens in enumerate(self.episode_len_l):
            mask = datasets == d
            count = int(mask.sum())
            if count == 0:
                continue
            if self.episode_first:
                episodes = rng.integers(0, len(lens), size=count)
                steps = (rng.random(count) * lens[episodes]).astype(np.int64)
                out[mask] = self._episode_offsets[d][episodes] + steps
            else:
                base = self._episode_offsets[d][0]
                out[mask] = base + rng.integers(0, int(lens.sum()), size=count)
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.sample_indices().tolist())
