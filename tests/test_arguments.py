"""No flag of train_vla.py is a silent no-op: each field changes what a run does, or is rejected by name.

``test_field`` runs once per field of the four argument dataclasses (for ``TrainingArguments`` the
fields this project adds to transformers'): an implemented field shows its effect on what the run
builds (model config, model, datasets, trainer); a legacy field (``LEGACY_FIELDS``) shows that a
value other than its accepted one is rejected with the field's name and what to use instead.
``test_every_field_has_a_decision`` fails when a field is added without either.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from transformers.integrations import TensorBoardCallback

import qwen2_vla.model_load_utils as model_load_utils
import train_vla
from aloha_scripts.constants import TASK_CONFIGS
from qwen2_vla import Qwen2VLAForConditionalGeneration
from qwen2_vla.arguments import (
    LEGACY_FIELDS,
    ActionHeadArguments,
    DataArguments,
    ModelArguments,
    TrainingArguments,
    check_argument_combinations,
)
from qwen2_vla.trainer import QWen2VLATrainer
from tests import test_train_vla as shared
from tests.conftest import CAMERAS
from tests.test_train_vla import tiny_argv

tiny_task = shared.tiny_task

ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments)
TRANSFORMERS_FIELDS = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
# A LoRA run on the tiny model (LoRA needs a frozen backbone and vision tower).
LORA = {"lora_enable": True, "freeze_backbone": True, "freeze_vision_tower": True, "lora_r": 4, "lora_alpha": 8}
VISION, LANGUAGE = model_load_utils.VISION_PREFIX, model_load_utils.LANGUAGE_PREFIX


def project_fields() -> list[str]:
    """Every field of the four dataclasses, less the ones ``TrainingArguments`` inherits from transformers."""
    names = []
    for cls in ARGUMENT_CLASSES:
        names += [
            f.name for f in dataclasses.fields(cls) if cls is not TrainingArguments or f.name not in TRANSFORMERS_FIELDS
        ]
    return names


class _Captured(Exception):
    """Raised by a spy to stop a run at the call it captured."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


# Models are loaded once per distinct set of flags (module-wide): several fields check the same LoRA model.
_MODELS: dict[tuple, torch.nn.Module] = {}


class Run:
    """Builds the pieces of a tiny run from ``tiny_argv`` plus overrides, up to the part a field affects."""

    def __init__(self, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.model_dir, self.tmp_path, self.monkeypatch = model_dir, tmp_path, monkeypatch
        self._count = 0

    def argv(self, **overrides: Any) -> list[str]:
        self._count += 1
        return tiny_argv(self.model_dir, self.tmp_path / f"out{self._count}", **overrides)

    def parse(self, **overrides: Any) -> tuple[dict[str, Any], Any]:
        """``(all_config, model_config)`` as train_vla.py parses them."""
        return train_vla.parse_config(self.argv(**overrides))

    def prepare(self, **overrides: Any) -> dict[str, Any]:
        """``train_vla.prepare`` (tokenizer, processor, datasets, statistics) with a placeholder model."""
        all_config, model_config = self.parse(**overrides)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train_vla, "load_model", lambda config, **_: (torch.nn.Linear(1, 1), config["data_args"]))
            return train_vla.prepare(all_config, model_config)

    def sample(self, **overrides: Any) -> dict[str, torch.Tensor]:
        return self.prepare(**overrides)["train_dataset"][0]

    def load(self, **overrides: Any) -> torch.nn.Module:
        """The model ``load_model`` builds (cached per set of flags; do not modify it)."""
        key = tuple(sorted((k, str(v)) for k, v in overrides.items()))
        if key not in _MODELS:
            all_config, model_config = self.parse(**overrides)
            _MODELS[key] = model_load_utils.load_model(all_config, model_config, rank0_print=lambda *a: None)[0]
        return _MODELS[key]

    def load_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments ``load_model`` gives ``from_pretrained`` (the load itself is skipped)."""
        all_config, model_config = self.parse(**overrides)

        def spy(path, config=None, **kwargs):
            raise _Captured(kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(model_load_utils, "from_pretrained_vla", spy)
            with pytest.raises(_Captured) as captured:
                model_load_utils.load_model(all_config, model_config, rank0_print=lambda *a: None)
        return captured.value.kwargs

    def trainer(self, model: torch.nn.Module | None = None, **overrides: Any) -> QWen2VLATrainer:
        """A ``QWen2VLATrainer`` over ``model`` (default: the loaded model for these flags), not trained."""
        all_config, _ = self.parse(**overrides)
        model = self.load(**overrides) if model is None else model
        return QWen2VLATrainer(model=model, args=all_config["training_args"])

    def fake_cuda_bitsandbytes(self) -> None:
        """Let ``quantization_config`` build its ``BitsAndBytesConfig`` on this CPU-only machine."""
        module = types.ModuleType("bitsandbytes")
        module.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
        self.monkeypatch.setitem(sys.modules, "bitsandbytes", module)
        self.monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def task(self, name: str, episodes: list[Path]) -> str:
        """Register a task over copies of ``episodes`` (file names kept) for this test."""
        directory = self.tmp_path / name
        directory.mkdir()
        for path in episodes:
            shutil.copy(path, directory / path.name)
        self.monkeypatch.setitem(
            TASK_CONFIGS, name, {"dataset_dir": [str(directory)], "episode_len": 30, "camera_names": CAMERAS}
        )
        return name


def _steps(prepared: dict[str, Any]) -> int:
    return sum(len(prepared[k]) for k in ("train_dataset", "val_dataset") if prepared[k] is not None)


def _lora_layer(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for n, m in model.named_modules() if hasattr(m, "lora_A") and LANGUAGE in n and "q_proj" in n)


# ---- effects of the implemented fields -------------------------------------------------------------
EFFECTS: dict[str, Callable[[Run], None]] = {}


def effect(*names: str) -> Callable[[Callable[[Run], None]], Callable[[Run], None]]:
    def register(check: Callable[[Run], None]) -> Callable[[Run], None]:
        for name in names:
            EFFECTS[name] = check
        return check

    return register


@effect("policy_head_type")
def _policy_head_type(run: Run) -> None:
    _, config = run.parse(policy_head_type="unet_diffusion_policy", policy_head_size=None)
    assert config.policy_head_type == config.policy_head_config.model_type == "unet_diffusion_policy"
    assert run.parse()[1].policy_head_config.model_type == "scale_dp_policy"


@effect("policy_head_size")
def _policy_head_size(run: Run) -> None:
    tiny, larger = (run.parse(policy_head_size=size)[1].policy_head_config for size in ("ScaleDP_tiny", "ScaleDP_Ti"))
    assert (tiny.depth, tiny.n_emb) == (2, 64) and (larger.depth, larger.n_emb) == (8, 256)


@effect("state_dim")
def _state_dim(run: Run) -> None:
    assert run.parse(state_dim=5)[1].policy_head_config.state_dim == 5


@effect("action_dim")
def _action_dim(run: Run) -> None:
    assert run.parse(action_dim=5)[1].policy_head_config.action_dim == 5


@effect("state_dropout")
def _state_dropout(run: Run) -> None:
    assert run.parse(state_dropout=1.0)[1].policy_head_config.state_dropout == 1.0
    assert run.parse()[1].policy_head_config.state_dropout == 0.0


@effect("condition_norm")
def _condition_norm(run: Run) -> None:
    assert run.parse(condition_norm=True)[1].policy_head_config.condition_norm
    assert not run.parse()[1].policy_head_config.condition_norm


@effect("prediction_type")
def _prediction_type(run: Run) -> None:
    assert run.parse(prediction_type="sample")[1].policy_head_config.prediction_type == "sample"
    assert run.parse()[1].policy_head_config.prediction_type == "epsilon"


@effect("cross_attention")
def _cross_attention(run: Run) -> None:
    head = run.parse(cross_attention=True, model_max_length=700)[1].policy_head_config
    assert head.cross_attention and head.max_condition_tokens == 700  # a position for every token a sample can have
    assert not run.parse()[1].policy_head_config.cross_attention


@effect("condition_tokens_from")
def _condition_tokens_from(run: Run) -> None:
    head = run.parse(cross_attention=True, condition_tokens_from="input_embeddings")[1].policy_head_config
    assert head.condition_tokens_from == "input_embeddings"
    assert run.parse(cross_attention=True)[1].policy_head_config.condition_tokens_from == "last_hidden_state"


@effect("condition_token_norm")
def _condition_token_norm(run: Run) -> None:
    assert run.parse(cross_attention=True, condition_token_norm=True)[1].policy_head_config.condition_token_norm
    assert not run.parse(cross_attention=True)[1].policy_head_config.condition_token_norm


@effect("model_name_or_path")
def _model_name_or_path(run: Run) -> None:
    base = transformers.AutoConfig.from_pretrained(run.model_dir)
    assert run.parse()[1].text_config.hidden_size == base.text_config.hidden_size
    with pytest.raises(SystemExit):  # the parser's error: it is required
        train_vla.parse_param(run.argv(model_name_or_path=None))


@effect("using_film")
def _using_film(run: Run) -> None:
    without = run.parse(using_film=False)[1]
    assert not without.using_film and Qwen2VLAForConditionalGeneration(without).fusion is None
    assert Qwen2VLAForConditionalGeneration(run.parse()[1]).fusion is not None


def _saved_expert(run: Run, name: str, seed: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """A stage-1 expert for the tiny run's head, with weights drawn from ``seed``, saved with save_pretrained."""
    head = Qwen2VLAForConditionalGeneration(run.parse()[1]).policy_head
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    head.save_pretrained(run.tmp_path / name)
    return run.tmp_path / name, {k: v.clone() for k, v in head.state_dict().items()}


def _head_matches(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    state = model.policy_head.state_dict()
    return all(torch.equal(state[k].float(), v.float()) for k, v in weights.items())


@effect("load_pretrain_dit")
def _load_pretrain_dit(run: Run) -> None:
    path, weights = _saved_expert(run, "expert", seed=1)
    assert _head_matches(run.load(load_pretrain_dit=True, pretrain_dit_path=str(path)), weights)
    assert not _head_matches(run.load(), weights)


@effect("pretrain_dit_path")
def _pretrain_dit_path(run: Run) -> None:
    first, first_weights = _saved_expert(run, "first", seed=1)
    second, second_weights = _saved_expert(run, "second", seed=2)
    assert _head_matches(run.load(load_pretrain_dit=True, pretrain_dit_path=str(first)), first_weights)
    assert _head_matches(run.load(load_pretrain_dit=True, pretrain_dit_path=str(second)), second_weights)
    with pytest.raises(ValueError, match="pretrain_dit_path.*load_pretrain_dit"):
        ModelArguments(pretrain_dit_path=str(first))


@effect("task_name")
def _task_name(run: Run) -> None:
    episodes = sorted(Path(TASK_CONFIGS[shared.TASK]["dataset_dir"][0]).glob("*.hdf5"))
    assert _steps(run.prepare()) == 30 * len(episodes)
    assert _steps(run.prepare(task_name=run.task("two_episodes", episodes[:2]))) == 60
    with pytest.raises(KeyError, match="no_such_task"):
        run.prepare(task_name="no_such_task")


@effect("chunk_size")
def _chunk_size(run: Run) -> None:
    assert run.sample(chunk_size=4)["action"].shape[0] == 4
    assert run.sample(chunk_size=6)["action"].shape[0] == 6


@effect("image_size_stable", "image_size_wrist")
def _image_sizes(run: Run) -> None:
    # Qwen2-VL grids are (t, h/14, w/14); CAMERAS[0] is the stable camera, the others are wrist cameras.
    assert run.sample()["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    assert run.sample(image_size_stable="(112,56)")["image_grid_thw"].tolist() == [[1, 4, 8], [1, 4, 4], [1, 4, 4]]
    assert run.sample(image_size_wrist="(112,56)")["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 8], [1, 4, 8]]
    config = run.parse(image_size_stable="(112,56)", image_size_wrist="(84,56)")[1]
    assert (config.image_size_stable, config.image_size_wrist) == ("(112,56)", "(84,56)")  # inference resizes alike


@effect("use_reasoning")
def _use_reasoning(run: Run) -> None:
    supervised = {flag: int((run.sample(use_reasoning=flag)["labels"] != -100).sum()) for flag in (True, False)}
    assert supervised[True] > supervised[False] > 0
    assert run.parse(use_reasoning=False)[1].use_reasoning is False


@effect("delta_control")
def _delta_control(run: Run) -> None:
    delta, absolute = run.prepare(delta_control=True), run.prepare()
    assert delta["norm_stats"].delta_control and not absolute["norm_stats"].delta_control
    assert not torch.equal(delta["train_dataset"][0]["action"], absolute["train_dataset"][0]["action"])


@effect("action_normalization")
def _action_normalization(run: Run) -> None:
    quantile, minmax = run.prepare(action_normalization="quantile"), run.prepare()
    stats = quantile["norm_stats"]
    assert (stats.action_normalization, stats.state_normalization) == ("quantile", "zscore")
    assert minmax["norm_stats"].action_normalization == "minmax" and minmax["norm_stats"].action_q01 is None
    sample, reference = quantile["train_dataset"][0], minmax["train_dataset"][0]
    assert not torch.equal(sample["action"], reference["action"]) and torch.equal(sample["state"], reference["state"])
    with pytest.raises(ValueError, match="action_normalization='robust' is not one of"):
        DataArguments(action_normalization="robust")


@effect("state_normalization")
def _state_normalization(run: Run) -> None:
    quantile, zscore = run.prepare(state_normalization="quantile"), run.prepare()
    assert quantile["norm_stats"].state_normalization == "quantile" and quantile["norm_stats"].qpos_q99 is not None
    sample, reference = quantile["train_dataset"][0], zscore["train_dataset"][0]
    assert not torch.equal(sample["state"], reference["state"]) and torch.equal(sample["action"], reference["action"])


@effect("norm_stats_source")
def _norm_stats_source(run: Run) -> None:
    fixture = Path(__file__).parent / "data" / "lerobot_fixture"
    run.monkeypatch.setitem(
        TASK_CONFIGS, "lerobot_meta", {"dataset_dir": [str(fixture)], "episode_len": 30, "camera_names": CAMERAS}
    )
    meta = run.prepare(task_name="lerobot_meta", norm_stats_source="dataset_meta")["norm_stats"]
    data = run.prepare(task_name="lerobot_meta")["norm_stats"]
    assert (meta.stats_source, data.stats_source) == ("dataset_meta", "data")
    # The fixture's meta/stats.json std is LeRobot's population std; the data pass's is unbiased.
    assert not np.allclose(meta.action_std, data.action_std, rtol=1e-6)
    np.testing.assert_allclose(meta.action_std, data.action_std * np.sqrt(74 / 75), rtol=1e-5)
    with pytest.raises(ValueError, match="is not a LeRobot dataset root"):
        run.prepare(norm_stats_source="dataset_meta")  # the tiny task is HDF5


@effect("episode_first")
def _episode_first(run: Run) -> None:
    assert run.prepare(episode_first=True)["sampler_params"]["train"]["episode_first"] is True
    assert run.prepare()["sampler_params"]["train"]["episode_first"] is False


@effect("augment_images")
def _augment_images(run: Run) -> None:
    assert run.prepare(augment_images=True)["train_dataset"].augment_images
    assert not run.prepare(augment_images=False)["train_dataset"].augment_images
    assert run.prepare(augment_images=None)["train_dataset"].augment_images  # default: on for diffusion heads


@effect("skip_mirrored_data")
def _skip_mirrored_data(run: Run) -> None:
    episodes = sorted(Path(TASK_CONFIGS[shared.TASK]["dataset_dir"][0]).glob("*.hdf5"))
    mirrored = run.tmp_path / "episode_9_mirror.hdf5"
    shutil.copy(episodes[0], mirrored)
    task = run.task("with_mirror", [*episodes[:2], mirrored])
    assert _steps(run.prepare(task_name=task)) == 90
    assert _steps(run.prepare(task_name=task, skip_mirrored_data=True)) == 60


@effect("logging_dir")
def _logging_dir(run: Run) -> None:
    target = str(run.tmp_path / "tensorboard")
    trainer = run.trainer(run.load(), report_to="tensorboard", logging_dir=target)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback))
    assert callback.logging_dir == target


@effect("warmup_ratio")
def _warmup_ratio(run: Run) -> None:
    trainer = run.trainer(run.load(), warmup_ratio=0.1, lr_scheduler_type="linear", max_steps=50)
    trainer.create_optimizer_and_scheduler(num_training_steps=50)
    factors = [trainer.lr_scheduler.lr_lambdas[0](step) for step in (0, 2, 5, 50)]
    assert factors == [0.0, 0.4, 1.0, 0.0]  # 5 warm-up steps, then linear decay


@effect("cache_dir")
def _cache_dir(run: Run) -> None:
    assert run.load_kwargs(cache_dir=str(run.tmp_path / "hub"))["cache_dir"] == str(run.tmp_path / "hub")
    assert run.load_kwargs()["cache_dir"] is None


@effect("flash_attn")
def _flash_attn(run: Run) -> None:
    assert run.load_kwargs(flash_attn=True)["attn_implementation"] == "flash_attention_2"
    assert "attn_implementation" not in run.load_kwargs()


@effect("model_max_length")
def _model_max_length(run: Run) -> None:
    length = run.sample(model_max_length=4096)["input_ids"].shape[0]
    with pytest.raises(ValueError, match="model_max_length"):
        run.sample(model_max_length=length - 1)


@effect("freeze_vision_tower")
def _freeze_vision_tower(run: Run) -> None:
    for flag in (True, False):
        params = run.load(freeze_vision_tower=flag).named_parameters()
        assert {p.requires_grad for n, p in params if n.startswith(VISION)} == {not flag}


@effect("freeze_backbone")
def _freeze_backbone(run: Run) -> None:
    for flag in (True, False):
        params = run.load(freeze_backbone=flag).named_parameters()
        assert {p.requires_grad for n, p in params if n.startswith(LANGUAGE)} == {not flag}


@effect("load_pretrain")
def _load_pretrain(run: Run) -> None:
    # Stage 3 insists on a trained VLA; a stock Qwen2-VL would silently start a new head.
    with pytest.raises(ValueError, match="load_pretrain=True"):
        run.parse(load_pretrain=True)
    checkpoint = run.tmp_path / "vla"
    run.parse()[1].save_pretrained(checkpoint)
    assert run.parse(model_name_or_path=checkpoint, load_pretrain=True)[0]["training_args"].load_pretrain


@effect("llm_loss_weight")
def _llm_loss_weight(run: Run) -> None:
    # The model computes loss = action_loss + config.llm_loss_weight * llm_loss (tests/test_vla_model.py).
    assert run.parse(llm_loss_weight=0.25)[1].llm_loss_weight == 0.25


@effect("using_ema", "ema_decay")
def _ema(run: Run) -> None:
    trainer = run.trainer(run.load(), using_ema=True, ema_decay=0.5)
    assert trainer.ema in trainer.callback_handler.callbacks and trainer.ema.decay == 0.5
    assert run.trainer(run.load()).ema is None


@effect("non_finite_loss")
def _non_finite_loss(run: Run) -> None:
    from qwen2_vla.trainer import NonFiniteLossError

    nan = torch.tensor(float("nan"))
    outputs = types.SimpleNamespace(action_loss=nan, llm_loss=torch.tensor(0.5))
    with pytest.raises(NonFiniteLossError, match="action_loss = nan"):
        run.trainer(run.load())._loss_is_non_finite(nan, outputs)
    skipper = run.trainer(run.load(), non_finite_loss="skip")
    assert skipper._loss_is_non_finite(nan, outputs) and skipper.skipped_batches == 1


@effect("lora_enable")
def _lora_enable(run: Run) -> None:
    assert any("lora_" in n for n, _ in run.load(**LORA).named_parameters())
    assert not any("lora_" in n for n, _ in run.load().named_parameters())


@effect("lora_module")
def _lora_module(run: Run) -> None:
    def adapted(model: torch.nn.Module) -> set[str]:
        names = [n.removeprefix("base_model.model.") for n, _ in model.named_parameters() if "lora_" in n]
        return {prefix for prefix in (VISION, LANGUAGE, "policy_head.") if any(n.startswith(prefix) for n in names)}

    assert adapted(run.load(**LORA, lora_module="llm")) == {LANGUAGE}
    assert adapted(run.load(**LORA)) == {VISION, LANGUAGE}  # default "vit llm"


@effect("lora_r", "lora_alpha")
def _lora_rank_alpha(run: Run) -> None:
    layer = _lora_layer(run.load(**LORA))
    assert layer.lora_A["default"].weight.shape[0] == 4 and layer.scaling["default"] == 8 / 4


@effect("lora_dropout")
def _lora_dropout(run: Run) -> None:
    assert _lora_layer(run.load(**LORA, lora_dropout=0.25)).lora_dropout["default"].p == 0.25


@effect("non_lora_lr")
def _non_lora_lr(run: Run) -> None:
    trainer = run.trainer(run.load(**LORA), **LORA, non_lora_lr=1e-2)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    lrs = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert {lr for n, lr in lrs.items() if "fusion" in n} == {1e-2}
    assert {lr for n, lr in lrs.items() if "lora_" in n} == {trainer.args.learning_rate}


@effect("bits", "double_quant", "quant_type")
def _quantisation(run: Run) -> None:
    assert "quantization_config" not in run.load_kwargs(**LORA)  # bits 16: not quantised
    with pytest.raises(RuntimeError, match="needs CUDA"):  # this machine: the request is real, so it fails
        run.load_kwargs(**LORA, bits=4)
    run.fake_cuda_bitsandbytes()
    quant = run.load_kwargs(**LORA, bits=4, double_quant=False, quant_type="fp4")["quantization_config"]
    assert quant.load_in_4bit and not quant.bnb_4bit_use_double_quant and quant.bnb_4bit_quant_type == "fp4"
    quant = run.load_kwargs(**LORA, bits=8)["quantization_config"]
    assert quant.load_in_8bit and not quant.load_in_4bit


# ---- legacy fields: a value other than the accepted one, and where the accepted one goes ------------
REJECTED_EXAMPLES: dict[str, str] = {
    "version": "v1",
    "model_pretrain": "/path/to/lora_checkpoint",
    "mm_use_im_start_end": "True",
    "mm_use_im_patch_token": "True",
    "concat": "None",
    "is_tinyvla": "True",
    "history_images_length": "2",
    "lazy_preprocess": "False",
    "select_seg_token_mask": "True",
    "is_multimodal": "False",
    "image_aspect_ratio": "square",
    "tune_mm_mlp_adapter": "False",
    "group_by_modality_length": "True",
    "lora_task_type": "CAUSAL_LM",
    "lora_bias": "all",
    "lora_weight_path": "/path/to/adapter",
    "max_new_tokens": "64",
}


def _parse_only(argv: list[str], tmp_path: Path) -> tuple:
    parser = transformers.HfArgumentParser(ARGUMENT_CLASSES)
    return parser.parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--use_cpu", "True", "--report_to", "none", *argv]
    )


def _check_legacy(name: str, tmp_path: Path) -> None:
    legacy = LEGACY_FIELDS[name]
    with pytest.raises(ValueError) as err:
        _parse_only([f"--{name}", REJECTED_EXAMPLES[name]], tmp_path)
    assert name in str(err.value) and legacy.instead in str(err.value)
    # The accepted value is the default, and passing it explicitly (as the reference's scripts do) parses.
    owner = next(cls for cls in ARGUMENT_CLASSES if name in {f.name for f in dataclasses.fields(cls)})
    assert {f.name: f.default for f in dataclasses.fields(owner)}[name] == legacy.accepted
    if legacy.accepted is not None:
        parsed = _parse_only([f"--{name}", str(legacy.accepted)], tmp_path)
        assert getattr(parsed[ARGUMENT_CLASSES.index(owner)], name) == legacy.accepted


def _check_policy_class(run: Run) -> None:
    """Informative (the reference's scripts pass the head type again): it must agree with the head."""
    all_config, _ = run.parse(policy_class="scale_dp_policy")
    assert all_config["model_args"].policy_class == "scale_dp_policy"
    assert run.parse()[0]["model_args"].policy_class == "scale_dp_policy"  # filled in from the head
    with pytest.raises(ValueError) as err:
        run.parse(policy_class="unet_diffusion_policy")
    assert "policy_class" in str(err.value) and "policy_head_type" in str(err.value)


CROSS_CHECKED: dict[str, Callable[[Run], None]] = {"policy_class": _check_policy_class}


def test_every_field_has_a_decision() -> None:
    """A new field fails here until it gets an effect check, a LEGACY_FIELDS entry or a cross check."""
    fields = project_fields()
    assert len(fields) == len(set(fields)), "a field name is used by two dataclasses"
    decided = [set(EFFECTS), set(LEGACY_FIELDS), set(CROSS_CHECKED)]
    for i, first in enumerate(decided):
        for second in decided[i + 1 :]:
            assert not first & second, f"fields with two decisions: {first & second}"
    assert set(fields) == set().union(*decided), (
        f"no decision: {sorted(set(fields) - set().union(*decided))}; "
        f"decided but not a field: {sorted(set().union(*decided) - set(fields))}"
    )
    assert set(REJECTED_EXAMPLES) == set(LEGACY_FIELDS)


@pytest.mark.parametrize("name", project_fields())
def test_field(name: str, tiny_model_dir: Path, tiny_task: str, tmp_path: Path, monkeypatch) -> None:
    if name in LEGACY_FIELDS:
        _check_legacy(name, tmp_path)
        return
    run = Run(tiny_model_dir, tmp_path, monkeypatch)
    (EFFECTS.get(name) or CROSS_CHECKED[name])(run)


def test_combination_errors_name_both_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        ModelArguments(pretrain_dit_path="/x")
    assert "pretrain_dit_path" in str(err.value) and "load_pretrain_dit" in str(err.value)
    with pytest.raises(ValueError) as err:
        check_argument_combinations(
            ModelArguments(policy_class="scale_dp_policy"),
            DataArguments(),
            TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
            ActionHeadArguments(policy_head_type="unet_diffusion_policy"),
        )
    assert "policy_class" in str(err.value) and "policy_head_type" in str(err.value)
    with pytest.raises(ValueError, match="bits=32"):  # 16 already means "not quantised"
        TrainingArguments(output_dir=str(tmp_path), use_cpu=True, bits=32)
