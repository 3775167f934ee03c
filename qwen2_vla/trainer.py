"""``QWen2VLATrainer``: ``transformers.Trainer`` with DexVLA's hooks (seed notes: 训练器：Qwen2VLATrainer).

The reference copied ``_inner_training_loop`` and ``training_step`` to return its component
losses; here only hooks are overridden:

- ``compute_loss``: records ``llm_loss`` / ``action_loss`` of every training micro-batch; ``log``
  adds their mean since the previous log (over micro-steps, then over processes) beside ``loss``,
  so TensorBoard shows ``train/llm_loss`` and ``train/action_loss``.
- ``model_accepts_loss_kwargs = False`` and ``loss_is_scaled_for_ga = False``: the model returns
  per-batch means, so the Trainer divides by the gradient-accumulation steps itself.
- ``create_optimizer``: decay / no-decay groups (transformers' rule, which also spares RMSNorm
  weights the reference decayed; see scripts/README.md), plus ``non_lora_lr`` for the trainable
  non-LoRA modules of a LoRA run (the reference's ``non_lora_modules`` list).
- ``compute_loss`` also guards against non-finite losses (``--non_finite_loss``): the losses of every
  process are gathered each micro-batch, so all processes stop together with an error naming the step
  and the loss (the Trainer's ``logging_nan_inf_filter`` would hide it while NaN weights reach every
  later checkpoint and the EMA), or all skip that micro-batch (see :meth:`QWen2VLATrainer._skip_batch_loss`).
- ``_get_train_sampler``: ``EpisodeSampler`` from ``load_data``'s ``sampler_params`` seeded with
  ``args.seed``: deterministic per epoch, so a resumed run sees the same order.
- ``_save``: every save is self-contained: weights + config + processor (tokenizer, chat template,
  image processor) + ``dataset_stats.json`` (+ ``ema_weights.safetensors``).
- ``_load_from_checkpoint``: resume loads the weights through ``from_pretrained`` (the parent
  skipped Qwen2-VL's renamed keys without a word).
- ``_save_checkpoint``: ``Trainer`` (5.x) writes ``checkpoint-N`` in place; this stages it in a
  hidden sibling directory and renames it when every process is done, so a crash never leaves a
  half-written ``checkpoint-N`` for ``--resume_from_checkpoint True`` to pick up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from data_utils.normalization import NormStats
from data_utils.sampler import EpisodeSampler
from qwen2_vla.ema import EMACallback
from qwen2_vla.model_load_utils import HEAD_FULLY_TRAINED

# Modules that train at `non_lora_lr` in a LoRA run (the reference's list; names that don't exist
# in this model simply match nothing).
NON_LORA_MODULES: tuple[str, ...] = (
    "vision_resampler",
    "merger",
    "lm_head",
    "proj_to_action",
    "text_hidden_fcs",
    "external_vit",
    "input_action_proj",
    "gt_action_proj",
    "gt_film",
    "reasoning_action_proj",
    "reasoning_film",
    "channel_proj",
    "xattn",
)
# With LoRA on the diffusion head, only its input embeddings are non-LoRA modules (one list, shared
# with the loader that decides what trains).
HEAD_NON_LORA_MODULES: tuple[str, ...] = HEAD_FULLY_TRAINED
logger = logging.getLogger(__name__)
COMPONENT_LOSSES: tuple[str, ...] = ("llm_loss", "action_loss")
STAGING_PREFIX = ".staging-"
LORA_BASE_DIR_NAME = "lora_base"


def non_lora_module_keywords(lora_modules: Sequence[str]) -> tuple[str, ...]:
    """Name fragments of the modules trained at ``non_lora_lr`` for the given ``lora_module`` parts."""
    head = HEAD_NON_LORA_MODULES if "di_head" in lora_modules else ("policy_head",)
    return NON_LORA_MODULES + head


def is_lora_parameter(name: str) -> bool:
    return "lora_" in name


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


class AtomicCheckpointMixin:
    """``Trainer`` (5.x) writes ``checkpoint-N`` in place; this stages it in a hidden sibling
    directory and renames it once every process is done, so a crash never leaves a half-written
    ``checkpoint-N`` for ``--resume_from_checkpoint True`` to pick up. Mix in before ``Trainer``.
    """

    _staging_run_dir: str | None = None  # set while _save_checkpoint writes into the staging directory

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        final_dir = os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)  # left over by a crashed save
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        # Every process wrote its part (RNG state, ZeRO shards) into the staging directory.
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # The same step may be saved again (e.g. a rerun into the same output_dir).
            replace_directory(os.path.join(staging_root, name), final_dir)
            shutil.rmtree(staging_root, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial) -> str:
        return self._staging_run_dir if self._staging_run_dir is not None else super()._get_output_dir(trial)



def replace_directory(staging: str, target: str) -> None:
    """Put the complete directory ``staging`` at ``target``; at every instant one of them is whole.

    An existing ``target`` is renamed aside first and deleted only once ``staging`` has taken its place,
    so a crash in between leaves the old copy (``.old-<name>``) rather than nothing.
    """
    target = os.path.normpath(target)
    old = os.path.join(os.path.dirname(target), f".old-{os.path.basename(target)}")
    if os.path.isdir(old):
        shutil.rmtree(old)
    if os.path.isdir(target):
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


# Files of a saved model that an older save in the same directory may have left and the new one lacks
# (e.g. shards where the new save is one file, a full model where the new one is an adapter).
_MODEL_FILE_PREFIXES = ("model.safetensors", "model-", "adapter_model", "pytorch_model", "ema_weights")
_MODEL_CONFIG = "config.json"


def publish_files_into(staging: str, target: str) -> None:
    """Move the files of the complete save ``staging`` into ``target``, a directory that also holds other things.

    ``target`` (a run's ``output_dir``, beside its ``checkpoint-N``) cannot be swapped whole. Its old
    ``config.json`` goes first and the new one comes last: a crash in between leaves a directory that
    does not load (and the complete copy in ``staging``), never one that loads mixed weights.
    """
    os.makedirs(target, exist_ok=True)
    config = os.path.join(target, _MODEL_CONFIG)
    if os.path.exists(config):
        os.remove(config)
    staged = set(os.listdir(staging))
    for name in os.listdir(target):
        path = os.path.join(target, name)
        if name not in staged and os.path.isfile(path) and name.startswith(_MODEL_FILE_PREFIXES):
            os.remove(path)
    for name in sorted(staged - {_MODEL_CONFIG}):
        destination = os.path.join(target, name)
        if os.path.isdir(destination):
            shutil.rmtree(destination)
        os.replace(os.path.join(staging, name), destination)
    if _MODEL_CONFIG in staged:
        os.replace(os.path.join(staging, _MODEL_CONFIG), config)
    shutil.rmtree(staging, ignore_errors=True)


def resume_arg(value: str | bool | None) -> str | bool | None:
    """``--resume_from_checkpoint`` as the Trainer takes it: a path, True (the last checkpoint-N) or None."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "last"):
            return True
        if lowered in ("", "false", "none"):
            return None
    return value or None


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite (raised on every process, before the optimizer step)."""


def non_finite_loss_report(values: torch.Tensor, names: Sequence[str]) -> str | None:
    """What is non-finite in ``values (world_size, len(names))``, the gathered losses; None when all are finite."""
    bad = ~torch.isfinite(values)
    if not bad.any():
        return None
    parts = []
    for column, name in enumerate(names):
        ranks = bad[:, column].nonzero().flatten().tolist()
        if ranks:
            shown = ", ".join(f"{values[r, column].item()} on process {r}" for r in ranks)
            parts.append(f"{name} = {shown}")
    return "; ".join(parts)


class QWen2VLATrainer(AtomicCheckpointMixin, Trainer):
    """Trainer for ``Qwen2VLAForConditionalGeneration``.

    Args:
        sampler_params: ``load_data``'s ``sampler_params``; ``["train"]`` builds the ``EpisodeSampler``
            (without it the Trainer's default random sampler is used).
        norm_stats: the dataset statistics written as ``dataset_stats.json`` into every save.
        *args, **kwargs: ``transformers.Trainer``'s; pass the Qwen2-VL processor as ``processing_class``.
    """

    # The model's loss is a per-batch mean: let the Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        sampler_params: dict[str, dict[str, Any]] | None = None,
        norm_stats: NormStats | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sampler_params = sampler_params
        self.norm_stats = norm_stats
        # forward(**kwargs) would make the Trainer pass num_items_in_batch into Qwen2-VL; the action
        # loss can't use it, and mixing token-sum and mean losses would weigh the two parts unevenly.
        self.model_accepts_loss_kwargs = False
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_counts: dict[str, int] = {}
        self.skipped_batches = 0  # micro-batches whose loss was non-finite (non_finite_loss="skip")
        self._skip_this_step = False  # an optimizer step whose window holds a skipped micro-batch
        if getattr(self.args, "non_finite_loss", "stop") == "skip" and is_deepspeed_zero3_enabled():
            raise ValueError(
                "non_finite_loss='skip' with ZeRO-3: its parameters are partitioned outside forward, so a skipped "
                "micro-batch cannot give them a zero gradient; use non_finite_loss='stop' or ZeRO-2"
            )
        logging_dir = getattr(self.args, "logging_dir", None)
        if logging_dir:
            # transformers 5 dropped TrainingArguments.logging_dir; its TensorBoard callback reads this attribute.
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback):
                    callback.logging_dir = logging_dir
        self.ema: EMACallback | None = None
        if getattr(self.args, "using_ema", False):
            if is_deepspeed_zero3_enabled():
                raise ValueError("using_ema=True with ZeRO-3: parameters are sharded; use ZeRO-2 (scripts/zero2.json)")
            self.ema = EMACallback(self.accelerator.unwrap_model(self.model), decay=self.args.ema_decay)
            self.add_callback(self.ema)

    # ---- losses and logging -------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self._loss_is_non_finite(loss, outputs):
            loss = self._skip_batch_loss(model)
            return (loss, outputs) if return_outputs else loss
        if model.training:
            for name in COMPONENT_LOSSES:
                value = getattr(outputs, name, None)
                if value is None:
                    continue
                value = value.detach().float().mean()
                if name in self._component_sums:
                    self._component_sums[name] += value
                else:
                    self._component_sums[name] = value.clone()
                self._component_counts[name] = self._component_counts.get(name, 0) + 1
        return (loss, outputs) if return_outputs else loss

    def _loss_is_non_finite(self, loss: torch.Tensor, outputs: Any) -> bool:
        """Whether any process's loss is non-finite; raises :class:`NonFiniteLossError` unless skipping.

        Every process gathers every process's losses, so all of them take the same branch (one raising
        alone would leave the others waiting in the next collective).
        """
        names = ("loss", *COMPONENT_LOSSES)
        local = [loss, *(getattr(outputs, n, None) for n in COMPONENT_LOSSES)]
        values = torch.stack(
            [v.detach().float().mean() if v is not None else loss.new_zeros((), dtype=torch.float32) for v in local]
        )
        gathered = self.accelerator.gather(values).reshape(-1, len(names)).cpu()
        report = non_finite_loss_report(gathered, names)
        if report is None:
            return False
        step = self.state.global_step + 1
        if self.args.non_finite_loss != "skip":
            raise NonFiniteLossError(
                f"non-finite training loss at step {step}: {report}. Training stopped before this step's update, "
                "so no checkpoint holds it. Common causes: a learning rate too high, fp16 overflow (use --bf16), "
                "corrupt data (python -m data_utils.check_data_integrity). --non_finite_loss skip skips such "
                "micro-batches instead."
            )
        self.skipped_batches += 1
        self._skip_this_step = True
        logger.warning(
            "non-finite training loss at step %d: %s; micro-batch skipped (%d so far)", step, report,
            self.skipped_batches,
        )
        return True

    def _skip_batch_loss(self, model: nn.Module) -> torch.Tensor:
        """A loss whose gradient is exactly zero for every trainable parameter (the skipped micro-batch's).

        Backward still runs, so DDP and DeepSpeed see a gradient for every parameter as usual; zero
        times the parameters (not the non-finite activations) keeps NaN out of every gradient. Without
        DeepSpeed the optimizer step of that window is skipped as well (see :meth:`create_optimizer`).
        """
        trainable = [p for p in model.parameters() if p.requires_grad]
        return torch.stack([p.sum().float() for p in trainable]).sum() * 0.0

    def _drop_gradients_of_skipped_step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        """Optimizer pre-step hook: a window with a skipped micro-batch updates nothing (no moments, no decay)."""
        if self._skip_this_step:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
        self._skip_this_step = False

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.args.non_finite_loss == "skip":
            logs["skipped_batches"] = self.skipped_batches
        # Training logs carry "loss"; every process reaches this point together, so the reduce is safe.
        if "loss" in logs and self._component_sums:
            names = sorted(self._component_sums)
            local = torch.stack([self._component_sums[n] / self._component_counts[n] for n in names])
            averaged = self.accelerator.reduce(local, reduction="mean")
            for name, value in zip(names, averaged.tolist(), strict=True):
                logs[name] = value
            self._component_sums.clear()
            self._component_counts.clear()
        super().log(logs, start_time)

    # ---- data ---------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        if self.sampler_params is None:
            return super()._get_train_sampler(train_dataset)
        params = self.sampler_params["train"]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        sampler = EpisodeSampler(
            episode_len_l=params["episode_len_l"],
            sample_weights=params.get("sample_weights"),
            episode_first=params.get("episode_first", False),
            seed=seed,
            dataset=dataset,
        )
        if dataset is not None and len(sampler) != len(dataset):
            raise ValueError(
                f"sampler_params['train'] describes {len(sampler)} steps but the train dataset has {len(dataset)}; "
                "pass the sampler_params that load_data returned with this dataset"
            )
        return sampler

    # ---- optimizer ----------------------------------------------------------------------------
    def optimizer_param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Trainable parameters in groups: (decay | no decay) x (base lr | ``non_lora_lr``); empty groups dropped."""
        decay_names = set(self.get_decay_parameter_names(model))
        special_lr = self.args.non_lora_lr if self.args.lora_enable else None
        keywords = non_lora_module_keywords(self.args.lora_modules)

        def at_special_lr(name: str) -> bool:
            return special_lr is not None and not is_lora_parameter(name) and any(k in name for k in keywords)

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = []
        for special in (False, True):
            for decayed in (True, False):
                params = [p for n, p in trainable if (n in decay_names) == decayed and at_special_lr(n) == special]
                if not params:
                    continue
                group: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
                if special:
                    group["lr"] = special_lr
                groups.append(group)
        return groups

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(self.optimizer_param_groups(opt_model), **optimizer_kwargs)
            if isinstance(self.optimizer, torch.optim.Optimizer):
                # Torch optimizers leave a parameter whose grad is None untouched: that is the skip.
                self.optimizer.register_step_pre_hook(self._drop_gradients_of_skipped_step)
        # The parent returns the optimizer built above (and wraps it where SageMaker MP needs that).
        return super().create_optimizer(model)

    # ---- training entry -----------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """``Trainer.train``; ``resume_from_checkpoint=True`` picks the last ``checkpoint-N`` of ``output_dir``."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint-N")
        if resume_from_checkpoint and self.ema is not None and not self.ema.load(resume_from_checkpoint):
            self.ema.shadow = {}  # no EMA in that checkpoint: start the average at the resumed weights
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # save_pretrained writes Qwen2-VL's original key layout (visual.*, model.layers.*), but Trainer
        # (5.24) reloads that file with load_state_dict(strict=False): the renamed ViT and LLM weights were
        # silently left as they were (transformers issue #43701). from_pretrained applies the renaming.
        target = self.model if model is None else model
        has_weights = any(
            os.path.isfile(os.path.join(resume_from_checkpoint, f))
            for f in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        )
        if not has_weights or not isinstance(target, PreTrainedModel) or self.is_fsdp_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        dtype = next(target.parameters()).dtype
        saved = type(target).from_pretrained(resume_from_checkpoint, config=target.config, dtype=dtype)
        target.load_state_dict(saved.state_dict(), strict=True)
        del saved

    # ---- saving -------------------------------------------------------------------------------
    _export_target: tuple[str, str] | None = None  # (staging, final) while save_model writes a staged export

    def export_staging_dir(self, output_dir: str) -> str:
        """Where :meth:`save_model` stages an export bound for ``output_dir`` (inside the run, hidden)."""
        run_dir = os.path.normpath(self.args.output_dir)
        target = os.path.normpath(output_dir)
        if target == run_dir:
            return os.path.join(run_dir, f"{STAGING_PREFIX}export")
        return os.path.join(os.path.dirname(target), f"{STAGING_PREFIX}{os.path.basename(target)}")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``, atomic: written to a hidden staging directory, then published.

        ``checkpoint-N`` saves (``_internal_call``) are staged by ``_save_checkpoint`` already. A final
        export into ``output_dir`` itself is published file by file (see :func:`publish_files_into`),
        one into its own directory (``merged/``, ``ema/``) by renaming (:func:`replace_directory`).
        """
        if _internal_call:
            super().save_model(output_dir, _internal_call=True)
            return
        target = os.path.normpath(output_dir if output_dir is not None else self.args.output_dir)
        staging = self.export_staging_dir(target)
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)  # left over by a crashed export
        self.accelerator.wait_for_everyone()
        self._export_target = (staging, target)
        try:
            super().save_model(staging, _internal_call=True)
        finally:
            self._export_target = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.publish_export(staging, target)
        self.accelerator.wait_for_everyone()

    def publish_export(self, staging: str, target: str) -> None:
        """Move the complete export ``staging`` to ``target`` (see :meth:`save_model`)."""
        if os.path.normpath(target) == os.path.normpath(self.args.output_dir):
            publish_files_into(staging, target)
        else:
            replace_directory(staging, target)

    def _final_location(self, output_dir: str) -> str:
        """Where a directory being written now will live once published (staged saves are renamed)."""
        if self._export_target is not None and os.path.normpath(output_dir) == self._export_target[0]:
            return self._export_target[1]
        if self._staging_run_dir is not None and os.path.abspath(output_dir).startswith(
            os.path.abspath(self._staging_run_dir)
        ):
            return os.path.join(self.args.output_dir, os.path.basename(os.path.normpath(output_dir)))
        return output_dir

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if _is_peft_model(model):
            # An adapter directory alone doesn't say which VLA (head, fusion, sizes) it belongs to.
            base = model.get_base_model()
            base.config.save_pretrained(output_dir)
            if base.generation_config is not None:
                base.generation_config.save_pretrained(output_dir)
            self._point_adapter_at_run_base(model, output_dir)
        if self.norm_stats is not None:
            self.norm_stats.save(output_dir)  # atomic (temp file + rename)
        if self.ema is not None and self.ema.shadow:
            self.ema.save(output_dir)

    def _save_lora_base(self, model: nn.Module) -> str:
        """The frozen base weights, once per run, in ``output_dir/lora_base`` (a plain VLA checkpoint).

        LoRA freezes the backbone, so one copy serves every ``checkpoint-N``; with it a run directory
        holds everything its adapters need, whatever happens to the model it started from.
        """
        base_dir = os.path.join(self.args.output_dir, LORA_BASE_DIR_NAME)
        # Written by this trainer already; one left by an earlier run into the same directory may hold
        # another base model, so the first save of every run writes it afresh.
        if getattr(self, "_lora_base_written", False):
            return base_dir
        base = model.get_base_model()
        state = {}
        for name, tensor in base.state_dict().items():
            if "lora_" in name or ".modules_to_save." in name:
                continue  # the adapter checkpoint holds these
            state[name.replace(".base_layer.", ".").replace(".original_module.", ".")] = tensor
        staging = os.path.join(self.args.output_dir, f"{STAGING_PREFIX}{LORA_BASE_DIR_NAME}")
        shutil.rmtree(staging, ignore_errors=True)
        base.save_pretrained(staging, state_dict=state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(staging)
        if self.norm_stats is not None:
            self.norm_stats.save(staging)
        replace_directory(staging, base_dir)
        self._lora_base_written = True
        return base_dir

    def _point_adapter_at_run_base(self, model: nn.Module, output_dir: str) -> None:
        """Make ``adapter_config.json`` name the run's ``lora_base`` by a path relative to the checkpoint."""
        adapter_config = os.path.join(output_dir, "adapter_config.json")
        if not os.path.isfile(adapter_config) or is_deepspeed_zero3_enabled():
            return  # ZeRO-3 shards the base: the merged export at the end is the self-contained model
        base_dir = self._save_lora_base(model)
        # A staged save is renamed (checkpoint-N, the final export): relative to where it will live.
        final_dir = self._final_location(output_dir)
        with open(adapter_config) as f:
            data = json.load(f)
        data["base_model_name_or_path"] = os.path.relpath(base_dir, final_dir)
        with open(adapter_config + ".tmp", "w") as f:
            json.dump(data, f, indent=2)
        os.replace(adapter_config + ".tmp", adapter_config)

    def save_merged_model(self, output_dir: str) -> str | None:
        """Merge the LoRA weights into the base model and save a plain, self-contained VLA at ``output_dir``.

        Call once, after training: merging replaces the LoRA layers of the trained model in place.
        Returns ``output_dir``, or None for a run without LoRA.
        """
        model = self.accelerator.unwrap_model(self.model)
        if not _is_peft_model(model):
            return None
        staging = self.export_staging_dir(output_dir)
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)
        gather: contextlib.AbstractContextManager = contextlib.nullcontext()
        if is_deepspeed_zero3_enabled():
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
        with gather:
            merged = model.merge_and_unload()
            if self.args.should_save:
                merged.save_pretrained(staging)
        if self.args.should_save:
            if self.processing_class is not None:
                self.processing_class.save_pretrained(staging)
            if self.norm_stats is not None:
                self.norm_stats.save(staging)
            self.publish_export(staging, output_dir)
        self.accelerator.wait_for_everyone()
        return output_dir


__all__ = [
    "NON_LORA_MODULES",
    "AtomicCheckpointMixin",
    "NonFiniteLossError",
    "QWen2VLATrainer",
    "non_finite_loss_report",
    "non_lora_module_keywords",
    "publish_files_into",
    "replace_directory",
    "resume_arg",
]
