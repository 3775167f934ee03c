"""Train DexVLA (stage 2 and stage 3; DiVLA with LoRA) -- seed notes: 训练 Overview.

    parse_param()  command line -> four argument dataclasses + the VLA config (of the checkpoint's backbone)
    main()         task config -> tokenizer/processor -> load_model -> Qwen2VLAProcess -> load_data
    train_bc()     collator -> QWen2VLATrainer -> train (resume) -> final save (+ merged LoRA export)

Runs as ``python train_vla.py ...``, under ``torchrun`` and under the ``deepspeed`` launcher
(``--local_rank``); see ``scripts/train_*.sh``. On CPU pass ``--use_cpu True`` (and, with DeepSpeed,
``DS_ACCELERATOR=cpu``).
"""

from __future__ import annotations

import atexit
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedConfig
from transformers.trainer_utils import get_last_checkpoint

import qwen2_vla  # noqa: F401  (registers the VLA model types with the Auto classes)
from aloha_scripts.constants import get_task_config, get_task_configs, split_task_names, task_embodiments
from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
from data_utils.dataset import training_crop_ratio
from data_utils.normalization import QUANTILE_FIELDS, STATS_FILE_NAME, EmbodimentStats, NormStats, load_embodiment_stats
from data_utils.utils import load_data, load_embodiment_data
from policy_heads import build_policy_head_config
from policy_heads.configuration_common import OPTIONAL_FIELDS
from qwen2_vla.arguments import (
    SCALE_DP_POLICY,
    ActionHeadArguments,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    check_argument_combinations,
)
from qwen2_vla.configuration_qwen2_vla import VLA_CONFIG_CLASSES, VLAConfigMixin, vla_config_from_vlm
from qwen2_vla.model_load_utils import load_model
from qwen2_vla.robot_data_processor import Qwen2VLAProcess
from qwen2_vla.trainer import QWen2VLATrainer, resume_arg

MERGED_DIR_NAME = "merged"
EMA_DIR_NAME = "ema"


def make_rank0_print(training_args: TrainingArguments) -> Callable[..., None]:
    def rank0_print(*args: Any) -> None:
        if training_args.process_index == 0:
            print(*args, flush=True)

    return rank0_print


def model_widths(data_args: DataArguments, head_args: ActionHeadArguments) -> tuple[int, int, bool]:
    """``(state_dim, action_dim, several embodiments)`` of the model ``--task_name`` trains.

    One task is one embodiment: the command-line widths, and the tasks are not looked up here (exactly the path
    of a run before embodiments existed). Several tasks (comma separated) may be several embodiments: then the
    widest state and action of all of them, and the head's state projection also sees the state mask.
    """
    if len(split_task_names(data_args.task_name)) == 1:
        return head_args.state_dim, head_args.action_dim, False
    embodiments = task_embodiments(get_task_configs(data_args.task_name, head_args.state_dim, head_args.action_dim))
    if len(embodiments) == 1:
        only = next(iter(embodiments.values()))
        return only["state_dim"], only["action_dim"], False
    state_dim = max(e["state_dim"] for e in embodiments.values())
    return state_dim, max(e["action_dim"] for e in embodiments.values()), True


def _check_checkpoint_head(config: VLAConfigMixin, data_args: DataArguments, head_args: ActionHeadArguments) -> None:
    """A VLA checkpoint fixes the head's shape; the command line must agree with it."""
    head = config.policy_head_config
    state_dim, action_dim, multi = model_widths(data_args, head_args)
    expected = {
        "policy_head_type": (config.policy_head_type, head_args.policy_head_type),
        "state_dim": (head.state_dim, state_dim),
        "action_dim": (head.action_dim, action_dim),
        "chunk_size": (head.prediction_horizon, data_args.chunk_size),
        # The head learnt with (or without) the state; training it on with another rate changes what it reads.
        "state_dropout": (float(getattr(head, "state_dropout", 0.0)), float(head_args.state_dropout)),
        "condition_norm": (bool(getattr(head, "condition_norm", False)), head_args.condition_norm),
        "cross_attention": (bool(getattr(head, "cross_attention", False)), head_args.cross_attention),
        "condition_tokens_from": (
            getattr(head, "condition_tokens_from", OPTIONAL_FIELDS["condition_tokens_from"]), head_args.condition_tokens_from
        ),
        "condition_token_norm": (bool(getattr(head, "condition_token_norm", False)), head_args.condition_token_norm),
        "prediction_type": (getattr(head, "prediction_type", "epsilon"), head_args.prediction_type),
    }
    if getattr(head, "state_mask_input", False) != multi:
        expected["several embodiments (state mask input)"] = (getattr(head, "state_mask_input", False), multi)
    if config.policy_head_type == SCALE_DP_POLICY and getattr(head, "model_size", None) is not None:
        expected["policy_head_size"] = (head.model_size, head_args.policy_head_size)
    wrong = [f"--{k} {arg} (checkpoint: {ckpt})" for k, (ckpt, arg) in expected.items() if ckpt != arg]
    if wrong:
        raise ValueError(f"the checkpoint's policy head does not match the arguments: {', '.join(wrong)}")


def build_model_config(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    head_args: ActionHeadArguments,
) -> VLAConfigMixin:
    """The VLA config: from a VLA checkpoint as saved, or a stock backbone config (Qwen2-VL, Qwen2.5-VL or
    Qwen3-VL, by its model_type) plus a new policy head."""
    base = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    if model_args.load_pretrain_dit and (training_args.load_pretrain or isinstance(base, VLAConfigMixin)):
        raise ValueError(
            "load_pretrain_dit=True would overwrite the trained policy head of the VLA checkpoint in "
            f"model_name_or_path ({model_args.model_name_or_path}, load_pretrain={training_args.load_pretrain}); "
            "stage-1 weights belong to stage 2 only"
        )
    if isinstance(base, VLAConfigMixin):
        _check_checkpoint_head(base, data_args, head_args)
        if base.using_film != model_args.using_film:
            raise ValueError(
                f"--using_film {model_args.using_film} but the checkpoint was trained with using_film={base.using_film}"
            )
        base.llm_loss_weight = training_args.llm_loss_weight
        base.image_size_stable, base.image_size_wrist = data_args.image_size_stable, data_args.image_size_wrist
        base.image_crop_ratio = training_crop_ratio(data_args.augment_images, head_args.policy_head_type)
        base.use_reasoning = data_args.use_reasoning
        return base
    if training_args.load_pretrain:
        raise ValueError(
            f"load_pretrain=True (stage 3) needs a trained VLA in model_name_or_path, but "
            f"{model_args.model_name_or_path} is a {base.model_type!r} model"
        )
    if base.model_type not in VLA_CONFIG_CLASSES:
        raise ValueError(
            f"model_name_or_path must be a stock {' / '.join(VLA_CONFIG_CLASSES)} model or a VLA checkpoint of one, "
            f"got model_type={base.model_type!r} ({model_args.model_name_or_path})"
        )
    state_dim, action_dim, multi = model_widths(data_args, head_args)
    head_config: PreTrainedConfig = build_policy_head_config(
        head_args.policy_head_type,
        cond_dim=base.text_config.hidden_size,
        state_dim=state_dim,
        action_dim=action_dim,
        chunk_size=data_args.chunk_size,
        model_size=head_args.policy_head_size,
        # Only a model over several embodiments: a single-embodiment head keeps its parameter shapes.
        **({"state_mask_input": True} if multi else {}),
        **({"state_dropout": head_args.state_dropout} if head_args.state_dropout else {}),
        **({"condition_norm": True} if head_args.condition_norm else {}),
        **({"prediction_type": head_args.prediction_type} if head_args.prediction_type != "epsilon" else {}),
        # Positions for every token a sample can have: the processor's length limit bounds it.
        **(
            {
                "cross_attention": True,
                "max_condition_tokens": training_args.model_max_length,
                "condition_tokens_from": head_args.condition_tokens_from,
                "condition_token_norm": head_args.condition_token_norm,
            }
            if head_args.cross_attention else {}
        ),
    )
    return vla_config_from_vlm(
        base,
        head_config,
        using_film=model_args.using_film,
        llm_loss_weight=training_args.llm_loss_weight,
        # Inference resizes as training did: the sizes travel in every checkpoint's config.json.
        image_size_stable=data_args.image_size_stable,
        image_size_wrist=data_args.image_size_wrist,
        image_crop_ratio=training_crop_ratio(data_args.augment_images, head_args.policy_head_type),
        use_reasoning=data_args.use_reasoning,
    )


def use_single_process_rendezvous() -> None:
    """Let ``python train_vla.py --deepspeed ...`` run without a launcher.

    Without the launcher's RANK/WORLD_SIZE, DeepSpeed falls back to MPI discovery (and fails where
    mpi4py is missing); a world of one process needs no discovery.
    """
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# Where Linux keeps the names ``shm_open`` creates (DeepSpeed's C++ backend uses shm_open).
POSIX_SHM_DIR = Path("/dev/shm")


def release_cpu_allreduce_buffer() -> None:
    """Remove this process's DeepSpeed CPU all-reduce buffer from ``/dev/shm`` (registered to run at exit).

    DeepSpeed's CPU communication creates one shared-memory file per rank (about 69 MB,
    ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{RANK}``) and never unlinks it, so every CPU
    run under DeepSpeed left them in RAM-backed ``/dev/shm`` until the machine ran out of memory. Unlinking at
    exit is safe: the other ranks keep their mappings.
    """
    env = os.environ
    if not all(k in env for k in ("MASTER_ADDR", "MASTER_PORT", "RANK")):
        return
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_{env['RANK']}"
    (POSIX_SHM_DIR / name).unlink(missing_ok=True)


def parse_param(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments, VLAConfigMixin, dict[str, Any]]:
    """Parse the command line (``argv`` or ``sys.argv``) into the reference's six values.

    Returns ``(model_args, data_args, training_args, action_head_args, model_config,
    bnb_model_from_pretrained_args)``; quantisation itself is configured by ``load_model``, so the
    last one only carries the requested bit width.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv):
        use_single_process_rendezvous()
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments))
    model_args, data_args, training_args, head_args = parser.parse_args_into_dataclasses(args=argv)
    if not model_args.model_name_or_path:
        parser.error(
            "--model_name_or_path is required (a stock Qwen2-VL, Qwen2.5-VL or Qwen3-VL directory, or a VLA checkpoint)"
        )
    check_argument_combinations(model_args, data_args, training_args, head_args)
    model_config = build_model_config(model_args, data_args, training_args, head_args)
    bnb_args = {"bits": training_args.bits} if training_args.bits in (4, 8) else {}
    return model_args, data_args, training_args, head_args, model_config, bnb_args


def collator_dtype(training_args: TrainingArguments) -> torch.dtype | None:
    """Dtype of the floating batch tensors.

    DeepSpeed casts the model itself to bf16/fp16, so inputs must match; otherwise the model stays
    float32 under autocast and float32 inputs are right.
    """
    if not training_args.deepspeed:
        return None
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return None


def build_trainer(
    config: dict[str, Any],
    train_dataset: torch.utils.data.Dataset,
    val_dataset: torch.utils.data.Dataset | None,
    model: torch.nn.Module,
    sampler_params: dict[str, dict[str, Any]],
    tokenizer: Any,
    processor: Any,
    norm_stats: NormStats,
    callbacks: list[transformers.TrainerCallback] | None = None,
) -> QWen2VLATrainer:
    """The collator and the ``QWen2VLATrainer`` over the prepared pieces (nothing trained yet)."""
    training_args: TrainingArguments = config["training_args"]
    collator = Qwen2VLADataCollatorForSupervisedDataset(
        multimodal_processor=processor, computed_type=collator_dtype(training_args), tokenizer=tokenizer
    )
    return QWen2VLATrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=val_dataset if training_args.do_eval else None,
        data_collator=collator,
        processing_class=processor,
        sampler_params=sampler_params,
        norm_stats=norm_stats,
        callbacks=callbacks,
    )


def train_bc(
    train_dataset: torch.utils.data.Dataset,
    val_dataset: torch.utils.data.Dataset | None,
    model: torch.nn.Module,
    config: dict[str, Any],
    sampler_params: dict[str, dict[str, Any]],
    tokenizer: Any,
    processor: Any,
    norm_stats: NormStats,
    callbacks: list[transformers.TrainerCallback] | None = None,
) -> QWen2VLATrainer:
    """Train (behaviour cloning with reasoning), then save the final model; returns the trainer."""
    training_args: TrainingArguments = config["training_args"]
    rank0_print = make_rank0_print(training_args)
    trainer = build_trainer(
        config, train_dataset, val_dataset, model, sampler_params, tokenizer, processor, norm_stats, callbacks
    )
    trainer.train(resume_from_checkpoint=resume_arg(training_args.resume_from_checkpoint))
    trainer.save_state()
    # The final model at output_dir's root: weights (an adapter for LoRA) + config + processor + stats.
    trainer.save_model(training_args.output_dir)
    if training_args.lora_enable:
        merged = trainer.save_merged_model(os.path.join(training_args.output_dir, MERGED_DIR_NAME))
        rank0_print(f"train_bc: merged LoRA model -> {merged}")
    elif trainer.ema is not None and trainer.ema.shadow:
        ema_dir = os.path.join(training_args.output_dir, EMA_DIR_NAME)
        save_ema_model(trainer, ema_dir)
        rank0_print(f"train_bc: EMA model -> {ema_dir}")
    return trainer


def save_ema_model(trainer: QWen2VLATrainer, output_dir: str) -> None:
    """Save a self-contained model with the EMA weights swapped in, then restore the trained weights."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = dict(model.named_parameters())
    trained = {name: params[name].detach().clone() for name in trainer.ema.shadow}
    trainer.ema.copy_to(model)
    try:
        trainer.save_model(output_dir)
    finally:
        with torch.no_grad():
            for name, value in trained.items():
                params[name].copy_(value)


def resume_checkpoint_dir(training_args: TrainingArguments) -> str | None:
    """The ``checkpoint-N`` directory ``--resume_from_checkpoint`` names (``True``: the last one), or None."""
    value = resume_arg(training_args.resume_from_checkpoint)
    if value is True:
        return get_last_checkpoint(training_args.output_dir)  # None: the Trainer raises its own error
    return str(value) if value else None


# Statistics recomputed from unchanged data agree to float32 rounding; different data does not.
STATS_RTOL, STATS_ATOL = 1e-5, 1e-6


def check_resumed_stats(checkpoint_dir: str, stats: NormStats | EmbodimentStats) -> None:
    """Stop when ``checkpoint_dir``'s ``dataset_stats.json`` differs from ``stats`` (recomputed from today's data).

    A run resumed on other data under the same ``output_dir`` would otherwise go on training with a
    normalisation its first steps never saw, and save checkpoints whose statistics match neither. With several
    embodiments each one's statistics are compared.
    """
    saved_path = os.path.join(checkpoint_dir, STATS_FILE_NAME)
    if not os.path.isfile(saved_path):
        raise FileNotFoundError(
            f"resuming from {checkpoint_dir}: it has no {STATS_FILE_NAME}, so the data it was trained on cannot be "
            "checked against the current data"
        )
    if isinstance(stats, EmbodimentStats) and stats.multi:
        saved_all = load_embodiment_stats(saved_path)
        if list(saved_all) != list(stats):
            _stats_changed(checkpoint_dir, [f"embodiments {list(saved_all)} in the checkpoint, {list(stats)} now"])
        for name, current in stats.items():
            _check_stats_equal(checkpoint_dir, saved_all[name], current, f"embodiment {name}: ")
        return
    if isinstance(stats, EmbodimentStats):
        stats = next(iter(stats.values()))
    _check_stats_equal(checkpoint_dir, NormStats.load(saved_path), stats)


def _check_stats_equal(checkpoint_dir: str, saved: NormStats, stats: NormStats, prefix: str = "") -> None:
    differences = []
    if saved.action_dim != stats.action_dim or saved.state_dim != stats.state_dim:
        differences.append(
            f"action/state dims {saved.action_dim}/{saved.state_dim} in the checkpoint, {stats.action_dim}/"
            f"{stats.state_dim} now"
        )
    else:
        for name in ("action_mean", "action_std", "action_min", "action_max", "qpos_mean", "qpos_std", *QUANTILE_FIELDS):
            old, new = getattr(saved, name), getattr(stats, name)
            if old is None or new is None:  # quantiles absent on one side: the modes below differ
                continue
            if not np.allclose(old, new, rtol=STATS_RTOL, atol=STATS_ATOL):
                index = int(np.argmax(np.abs(old - new)))
                differences.append(f"{name}[{index}] {old[index]:.6g} in the checkpoint, {new[index]:.6g} now")
    for name in ("num_episodes", "num_steps", "chunk_size", "delta_control", "action_normalization",
                 "state_normalization", "stats_source"):
        if getattr(saved, name) != getattr(stats, name):
            differences.append(f"{name} {getattr(saved, name)} in the checkpoint, {getattr(stats, name)} now")
    if differences:
        _stats_changed(checkpoint_dir, [prefix + d for d in differences])


def _stats_changed(checkpoint_dir: str, differences: list[str]) -> None:
    if differences:
        raise ValueError(
            f"resuming from {checkpoint_dir}, but the dataset statistics recomputed from the current data differ "
            f"from its {STATS_FILE_NAME}: {'; '.join(differences)}. The data of task --task_name changed since that "
            "run started: restore it, or start a new run (a new --output_dir; stage 3 continues from a checkpoint "
            "with --load_pretrain True)."
        )


def prepare(
    all_config: dict[str, Any], model_config: VLAConfigMixin, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """Everything ``train_bc`` needs: task, tokenizer, processor, model (``load_model``), datasets, statistics.

    ``model``: use this model instead of loading one (benchmarks with random real-size weights).
    Also writes ``dataset_stats.json`` into ``output_dir`` before training, so even an interrupted
    run's directory says how it normalised.
    """
    model_args: ModelArguments = all_config["model_args"]
    data_args: DataArguments = all_config["data_args"]
    training_args: TrainingArguments = all_config["training_args"]
    head_args: ActionHeadArguments = all_config["action_head_args"]
    rank0_print = make_rank0_print(training_args)
    # Before the model exists, so its random parts (new head, fusion) are the same on every process.
    transformers.set_seed(training_args.seed)

    several_tasks = len(split_task_names(data_args.task_name)) > 1
    if several_tasks:
        task_configs = get_task_configs(data_args.task_name, head_args.state_dim, head_args.action_dim)
        task_config = task_configs[0]
    else:
        task_config = get_task_config(data_args.task_name)
    camera_names = task_config["camera_names"]
    all_config["camera_names"] = camera_names
    all_config["episode_len"] = task_config["episode_len"]

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    if model is None:
        model, data_args = load_model(
            config=all_config, qwen2_vla_config=model_config, rank0_print=rank0_print, tokenizer=tokenizer
        )

    def make_process(embodiment: str | None, cameras: Sequence[str]) -> Qwen2VLAProcess:
        return Qwen2VLAProcess(
            tokenizer=tokenizer,
            multimodal_processor=processor,
            data_args=data_args,
            camera_names=cameras,
            model_max_length=training_args.model_max_length,
            embodiment=embodiment,
        )

    if several_tasks:
        train_dataset, val_dataset, stats, sampler_params = load_embodiment_data(
            task_configs,
            training_args.per_device_train_batch_size,
            training_args.per_device_eval_batch_size,
            data_args.chunk_size,
            make_process,
            config=all_config,
            rank0_print=rank0_print,
            skip_mirrored_data=data_args.skip_mirrored_data,
            policy_class=head_args.policy_head_type,
            seed=training_args.seed,
        )
        if not stats.multi:
            stats = next(iter(stats.values()))  # one embodiment: the flat statistics of a single-task run
        return _prepared(all_config, training_args, rank0_print, train_dataset, val_dataset, model, sampler_params,
                         tokenizer, processor, stats)
    vla_process = make_process(None, camera_names)
    train_dataset, val_dataset, stats, sampler_params = load_data(
        task_config["dataset_dir"],
        task_config["name_filter"],
        camera_names,
        training_args.per_device_train_batch_size,
        training_args.per_device_eval_batch_size,
        data_args.chunk_size,
        config=all_config,
        rank0_print=rank0_print,
        skip_mirrored_data=data_args.skip_mirrored_data,
        policy_class=head_args.policy_head_type,
        stats_dir_l=task_config["stats_dir"],
        sample_weights=task_config["sample_weights"],
        train_ratio=task_config["train_ratio"],
        llava_pythia_process=vla_process,
        seed=training_args.seed,
        state_dim=head_args.state_dim,
        action_dim=head_args.action_dim,
        lerobot_features=task_config["lerobot_features"],
    )
    return _prepared(all_config, training_args, rank0_print, train_dataset, val_dataset, model, sampler_params,
                     tokenizer, processor, stats)


def _prepared(
    all_config: dict[str, Any],
    training_args: TrainingArguments,
    rank0_print: Callable[..., None],
    train_dataset: torch.utils.data.Dataset,
    val_dataset: torch.utils.data.Dataset | None,
    model: torch.nn.Module,
    sampler_params: dict[str, dict[str, Any]],
    tokenizer: Any,
    processor: Any,
    stats: NormStats | EmbodimentStats,
) -> dict[str, Any]:
    """``prepare``'s result, after checking a resumed run's statistics and writing ``dataset_stats.json``."""
    resumed = resume_checkpoint_dir(training_args)
    if resumed is not None:
        check_resumed_stats(resumed, stats)  # before the run's own dataset_stats.json is overwritten
    if training_args.should_save:
        rank0_print(f"prepare: dataset statistics -> {stats.save(training_args.output_dir)}")
    return {
        "train_dataset": train_dataset,
        "val_dataset": val_dataset,
        "model": model,
        "sampler_params": sampler_params,
        "tokenizer": tokenizer,
        "processor": processor,
        "norm_stats": stats,
    }


def main(
    all_config: dict[str, Any],
    model_config: VLAConfigMixin,
    callbacks: list[transformers.TrainerCallback] | None = None,
) -> QWen2VLATrainer:
    """Load everything the task needs and train (the reference's ``main``); ``callbacks`` go to the Trainer."""
    return train_bc(config=all_config, callbacks=callbacks, **prepare(all_config, model_config))


def parse_config(argv: Sequence[str] | None = None) -> tuple[dict[str, Any], VLAConfigMixin]:
    """``parse_param`` packed as the reference's ``all_config`` dict plus the model config."""
    model_args, data_args, training_args, head_args, model_config, bnb_args = parse_param(argv)
    all_config = {
        "model_args": model_args,
        "data_args": data_args,
        "training_args": training_args,
        "action_head_args": head_args,
        "bnb_model_from_pretrained_args": bnb_args,
    }
    return all_config, model_config


def run(
    argv: Sequence[str] | None = None, callbacks: list[transformers.TrainerCallback] | None = None
) -> QWen2VLATrainer:
    """Parse ``argv`` and train; what ``python train_vla.py ...`` does."""
    all_config, model_config = parse_config(argv)
    if all_config["training_args"].deepspeed:
        atexit.register(release_cpu_allreduce_buffer)
    return main(all_config, model_config, callbacks=callbacks)


if __name__ == "__main__":
    run(sys.argv[1:])
