"""Qwen2VLA config/model/processor/collator on the tiny offline Qwen2-VL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, Qwen2VLConfig

import qwen2_vla  # noqa: F401  (registers the Auto classes)
from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
from data_utils.utils import load_data
from policy_heads import build_policy_head_config
from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration
from qwen2_vla.fusion import split_prompt_answer
from qwen2_vla.robot_data_processor import IGNORE_INDEX, Qwen2VLAProcess
from tests.conftest import CAMERAS

transformers.logging.set_verbosity_error()
CHUNK = 8


class DataArgs:
    image_size_stable = "(56,56)"
    image_size_wrist = "(56,56)"


def vla_config(model_dir, using_film: bool = True, head: str = "scale_dp_policy") -> Qwen2VLAConfig:
    base = AutoConfig.from_pretrained(model_dir)
    size = "ScaleDP_tiny" if head == "scale_dp_policy" else None
    extra = {} if head == "scale_dp_policy" else {"down_dims": [32, 64], "diffusion_step_embed_dim": 32}
    head_config = build_policy_head_config(head, base.text_config.hidden_size, 14, 14, CHUNK, size, **extra)
    return Qwen2VLAConfig.from_qwen2_vl_config(base, head_config, using_film=using_film)


@pytest.fixture(scope="module")
def parts(tiny_model_dir, episodes_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    process = Qwen2VLAProcess(tokenizer, processor, DataArgs(), CAMERAS)
    train, *_ = load_data(
        [str(episodes_dir)], None, CAMERAS, 2, 2, CHUNK, llava_pythia_process=process, train_ratio=1.0,
        rank0_print=lambda *a: None,
    )
    collator = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)
    return tokenizer, processor, process, train, collator


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return Qwen2VLAForConditionalGeneration.from_pretrained(tiny_model_dir, config=vla_config(tiny_model_dir))


# ---- config ----------------------------------------------------------------------------------------
def test_config_round_trip_and_validation(tiny_model_dir, tmp_path):
    config = vla_config(tiny_model_dir)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2_vla"
    loaded = AutoConfig.from_pretrained(tmp_path)
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert isinstance(loaded, Qwen2VLAConfig) and strip(loaded) == strip(config)
    base = AutoConfig.from_pretrained(tiny_model_dir)
    wrong_width = build_policy_head_config("scale_dp_policy", 32, 14, 14, CHUNK, "ScaleDP_tiny")
    with pytest.raises(ValueError, match="cond_dim=32 must equal text_config.hidden_size=64"):
        Qwen2VLAConfig.from_qwen2_vl_config(base, wrong_width)
    head = build_policy_head_config("scale_dp_policy", 64, 14, 14, CHUNK, "ScaleDP_tiny")
    with pytest.raises(ValueError, match="policy_head_type='unet_diffusion_policy' but policy_head_config.model_type"):
        Qwen2VLAConfig.from_qwen2_vl_config(base, head, policy_head_type="unet_diffusion_policy")


# ---- loading a stock checkpoint --------------------------------------------------------------------
def test_stock_checkpoint_loads_without_edits(tiny_model_dir, model):
    assert json.loads((tiny_model_dir / "config.json").read_text())["model_type"] == "qwen2_vl"
    stock = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    stock_state = stock.state_dict()
    for name, tensor in model.state_dict().items():
        if name in stock_state:
            assert torch.equal(tensor, stock_state[name]), name
    assert set(stock_state) <= set(model.state_dict())
    # New modules start where they should: FiLM as the identity, the head's output at zero.
    film = model.fusion.reasoning_film
    assert film.scale_fc.weight.abs().max() == 0 and film.shift_fc.bias.abs().max() == 0
    assert model.policy_head.final_layer.linear.weight.abs().max() == 0


def test_legacy_key_layout_of_downloaded_checkpoints_loads(tiny_model_dir, model):
    # Qwen2-VL-2B-Instruct as downloaded (and as transformers saves it) names its weights
    # `visual.*` and `model.layers.*`; the VLA class must map them like the stock class does.
    on_disk = load_file(tiny_model_dir / "model.safetensors")
    assert any(k.startswith("visual.") for k in on_disk) and any(k.startswith("model.layers.") for k in on_disk)
    state = model.state_dict()
    for key, value in on_disk.items():
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model."):
            key = key.replace("model.", "model.language_model.", 1)
        assert torch.equal(state[key], value), key


def test_save_load_round_trip_is_exact(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(loaded, Qwen2VLAForConditionalGeneration)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert set(original) == set(reloaded)
    for key in original:
        assert torch.equal(original[key], reloaded[key]), key


# ---- processing and batching -----------------------------------------------------------------------
def test_forward_process_answer_and_labels(parts):
    tokenizer, _, process, train, _ = parts
    features = train[0]
    labels, ids = features["labels"], features["input_ids"]
    assert labels.shape == ids.shape == features["attention_mask"].shape == features["mm_token_type_ids"].shape
    answer = ids[labels != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "reach toward the red squareNext action:<|im_end|>"
    prompt = tokenizer.decode(ids[labels == IGNORE_INDEX])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert prompt.count("<|vision_start|>") == len(CAMERAS) and prompt.endswith("<|im_start|>assistant\n")
    assert features["image_grid_thw"].shape == (len(CAMERAS), 3)
    sample = train.llava_pythia_process  # the same processor, without reasoning:
    raw = dict(train.load_raw_step(0, 0))
    no_reasoning = sample.forward_process(
        {"image": torch.from_numpy(raw["images"]), "raw_lang": raw["raw_lang"], "reasoning": "x"}, use_reasoning=False
    )
    assert tokenizer.decode(no_reasoning["input_ids"][no_reasoning["labels"] != IGNORE_INDEX]) == "<|im_end|>"


def expected_grid(processor, size: tuple[int, int]) -> list[int]:
    """``[t, h, w]`` patches of one frame resized to ``size = (width, height)`` under ``processor``'s pixel budget."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    image = processor.image_processor
    height, width = smart_resize(
        size[1], size[0], factor=image.patch_size * image.merge_size,
        min_pixels=image.size["shortest_edge"], max_pixels=image.size["longest_edge"],
    )
    return [1, height // image.patch_size, width // image.patch_size]


def test_camera_frames_get_per_camera_non_square_grids(camera_vla_ckpt, camera_episodes_dir):
    """480x640 frames, stable and wrist cameras trained at different sizes, Qwen2-VL-2B's pixel budget: training
    and inference (``prompt_inputs``) give every camera the patch grid of its own training size."""
    from tests.conftest import CAMERA_HW, STABLE_SIZE, WRIST_SIZE

    tokenizer = AutoTokenizer.from_pretrained(camera_vla_ckpt)
    processor = AutoProcessor.from_pretrained(camera_vla_ckpt)

    class CameraArgs:
        image_size_stable, image_size_wrist = str(STABLE_SIZE), str(WRIST_SIZE)

    process = Qwen2VLAProcess(tokenizer, processor, CameraArgs(), CAMERAS)
    train, *_ = load_data(
        [str(camera_episodes_dir)], None, CAMERAS, 2, 2, CHUNK, llava_pythia_process=process, train_ratio=1.0,
        rank0_print=lambda *a: None,
    )
    raw = train.load_raw_step(0, 5)
    frames = raw["images"]
    assert frames.shape == (len(CAMERAS), *CAMERA_HW, 3)  # as recorded
    stable, wrist = expected_grid(processor, STABLE_SIZE), expected_grid(processor, WRIST_SIZE)
    assert stable != wrist and stable[1] != stable[2] and wrist[1] != wrist[2]  # non-square, per camera
    grids = [stable if "wrist" not in cam else wrist for cam in CAMERAS]
    merge = processor.image_processor.merge_size**2
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert stable[1] * stable[2] // merge == 99  # Qwen2-VL-2B's token count for a (320, 240) frame
    for features in (train[5], process.prompt_inputs(raw["images"], raw["raw_lang"])):
        assert features["image_grid_thw"].tolist() == grids
        assert features["pixel_values"].shape[0] == sum(t * h * w for t, h, w in grids)
        assert (features["input_ids"] == image_pad).sum().item() == sum(t * h * w // merge for t, h, w in grids)
    # Channel-first frames give the same features.
    last = process.prompt_inputs(frames, raw["raw_lang"])
    first = process.prompt_inputs(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), raw["raw_lang"])
    for key in last:
        assert torch.equal(first[key], last[key]), key


def test_too_long_sample_is_an_error(parts):
    tokenizer, processor, _, train, _ = parts
    short = Qwen2VLAProcess(tokenizer, processor, DataArgs(), CAMERAS, model_max_length=20)
    raw = train.load_raw_step(0, 0)
    sample = {"image": torch.from_numpy(raw["images"]), "raw_lang": raw["raw_lang"], "reasoning": raw["reasoning"]}
    with pytest.raises(ValueError, match="model_max_length=20"):
        short.forward_process(sample)


def test_collator_left_pads_and_stacks(parts):
    tokenizer, _, _, train, collator = parts
    short = dict(train[0])
    short["input_ids"], short["attention_mask"] = short["input_ids"][2:], short["attention_mask"][2:]
    short["labels"], short["mm_token_type_ids"] = short["labels"][2:], short["mm_token_type_ids"][2:]
    batch = collator([short, train[1]])
    assert batch["input_ids"].shape == (2, train[1]["input_ids"].shape[0])
    assert batch["input_ids"][0, :2].tolist() == [tokenizer.pad_token_id] * 2
    assert batch["attention_mask"][0, :2].tolist() == [0, 0] and batch["labels"][0, :2].tolist() == [-100, -100]
    assert batch["pixel_values"].shape[0] == 2 * train[0]["pixel_values"].shape[0]
    assert batch["states"].shape == (2, 14) and batch["actions"].shape == (2, CHUNK, 14)
    assert batch["is_pad"].dtype == torch.bool


# ---- forward ---------------------------------------------------------------------------------------
def test_loss_is_action_plus_weighted_llm_loss(parts, model, tiny_model_dir):
    _, _, _, train, collator = parts
    batch = collator([train[0], train[7]])
    before = {k: v.clone() for k, v in batch.items()}
    torch.manual_seed(3)
    out = model(**batch)
    assert torch.allclose(out.loss, out.action_loss + model.config.llm_loss_weight * out.llm_loss)
    assert all(torch.equal(before[k], batch[k]) for k in batch)  # inputs are not mutated
    stock = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    lm_only = {k: v for k, v in batch.items() if k not in ("states", "actions", "is_pad")}
    assert torch.allclose(stock(**lm_only).loss, out.llm_loss, atol=1e-6)
    out.loss.backward()
    assert model.policy_head.x_embedder.weight.grad is not None
    assert model.fusion.reasoning_film.scale_fc.weight.grad is not None
    model.zero_grad()


def test_prompt_answer_split_ignores_padding_side():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, -100, -100, 7]])
    # Same two sequences, left padded and right padded by one token.
    left_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    right_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    right_labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, -100, 7]])
    p_left, a_left = split_prompt_answer(left_mask, labels)
    p_right, a_right = split_prompt_answer(right_mask, right_labels)
    assert p_left.sum(1).tolist() == p_right.sum(1).tolist() == [1, 3]
    assert a_left.sum(1).tolist() == a_right.sum(1).tolist() == [2, 1]


def test_film_condition_same_for_left_and_right_padding(parts, model):
    _, _, _, train, collator = parts
    left = collator([train[0], train[9]])
    hidden = torch.randn(*left["input_ids"].shape, model.config.text_config.hidden_size)
    right_order = left["attention_mask"].argsort(dim=1, descending=True, stable=True)  # move padding to the end
    gather = lambda t: torch.gather(t, 1, right_order)  # noqa: E731
    hidden_right = torch.gather(hidden, 1, right_order[..., None].expand_as(hidden))
    cond_left = model.film_forward(left["labels"], hidden, left["attention_mask"])
    cond_right = model.film_forward(gather(left["labels"]), hidden_right, gather(left["attention_mask"]))
    assert cond_left.shape == (2, 1, hidden.shape[-1])
    assert torch.allclose(cond_left, cond_right, atol=1e-6)


def test_without_film_the_head_gets_hidden_states(parts, tiny_model_dir):
    _, _, _, train, collator = parts
    model = Qwen2VLAForConditionalGeneration.from_pretrained(tiny_model_dir, config=vla_config(tiny_model_dir, False))
    assert model.fusion is None
    batch = collator([train[0], train[1]])
    hidden = torch.randn(2, 5, 64)
    prompt = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    answer = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    condition = model.action_condition(hidden, prompt, answer)
    # The attended tokens' mean: padding (row 0 token 0, row 1 token 4) leaves no trace.
    assert torch.allclose(condition[0, 0], hidden[0, 1:].mean(0)) and torch.allclose(condition[1, 0], hidden[1, :4].mean(0))
    assert torch.isfinite(model(**batch).loss)


def test_unet_head_trains_inside_the_vla(parts, tiny_model_dir):
    _, _, _, train, collator = parts
    model = Qwen2VLAForConditionalGeneration.from_pretrained(
        tiny_model_dir, config=vla_config(tiny_model_dir, head="unet_diffusion_policy")
    )
    out = model(**collator([train[0], train[1]]))
    assert torch.isfinite(out.action_loss)


# ---- inference -------------------------------------------------------------------------------------
def _prompts(parts, steps):
    tokenizer, _, process, train, collator = parts
    features = []
    for step in steps:
        raw = train.load_raw_step(0, step)
        features.append(process.prompt_inputs(raw["images"], raw["raw_lang"]))
    return collator(features)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_predict_action_shapes_and_reasoning(parts, model, batch_size):
    tokenizer = parts[0]
    prompts = _prompts(parts, range(batch_size))
    states = torch.zeros(batch_size, 14)
    out = model.predict_action(
        prompts["input_ids"], prompts["attention_mask"], states, prompts["pixel_values"], prompts["image_grid_thw"],
        prompts["mm_token_type_ids"], max_new_tokens=5, tokenizer=tokenizer, generator=torch.Generator().manual_seed(0),
    )
    assert out.actions.shape == (batch_size, CHUNK, 14) and torch.isfinite(out.actions).all()
    assert len(out.reasoning) == batch_size and out.sequences.shape[1] <= prompts["input_ids"].shape[1] + 5
    again = model.predict_action(
        prompts["input_ids"], prompts["attention_mask"], states, prompts["pixel_values"], prompts["image_grid_thw"],
        prompts["mm_token_type_ids"], max_new_tokens=5, generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(out.actions, again.actions)
    skipped = model.predict_action(
        prompts["input_ids"], prompts["attention_mask"], states, prompts["pixel_values"], prompts["image_grid_thw"],
        prompts["mm_token_type_ids"], generate_reasoning=False,
    )
    assert skipped.actions.shape == (batch_size, CHUNK, 14) and not skipped.answer_mask.any()
    fixed = torch.tensor(tokenizer("Next action:<|im_end|>", add_special_tokens=False)["input_ids"])
    with_answer = model.predict_action(
        prompts["input_ids"], prompts["attention_mask"], states, prompts["pixel_values"], prompts["image_grid_thw"],
        prompts["mm_token_type_ids"], generate_reasoning=False, answer_ids=fixed,
    )
    assert with_answer.answer_mask.sum(1).tolist() == [len(fixed)] * batch_size
    assert torch.equal(with_answer.sequences[0, -len(fixed):], fixed)


def test_answer_mask_ends_each_row_at_its_own_first_eos(parts, tiny_model_dir):
    """Rows of a batch that finish generating at different steps: each answer runs up to and including its
    first end-of-sequence token; what generate() appends after it (padding, itself an EOS id here) is not answer."""
    from transformers import GenerationConfig

    from qwen2_vla.modeling_qwen2_vla import _answer_mask

    tokenizer = parts[0]
    generation = GenerationConfig.from_pretrained(tiny_model_dir)
    eos_ids, pad = generation.eos_token_id, generation.pad_token_id
    assert isinstance(eos_ids, list) and pad in eos_ids  # the real model's setup: padding is an EOS id too
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    a, b, c = tokenizer("reach red square", add_special_tokens=False)["input_ids"][:3]
    generated = torch.tensor(
        [
            [a, b, im_end, pad, pad, pad],  # stops after 3 tokens
            [a, im_end, pad, pad, pad, pad],  # stops after 2
            [a, b, c, a, b, c],  # never stops: the whole budget is answer
            [im_end, pad, pad, pad, pad, pad],  # stops at once
            [a, b, c, pad, pad, pad],  # stops on the other EOS id (the pad token)
        ]
    )
    expected = [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert _answer_mask(generated, eos_ids).int().tolist() == expected
    assert _answer_mask(generated, im_end).int().tolist()[:4] == expected[:4]  # a single id works alike
    assert _answer_mask(generated, None).all()  # no EOS known: everything generated counts


def test_stock_config_is_not_a_vla_config(tiny_model_dir):
    with pytest.raises(ValueError, match="policy_head_config is None"):
        base = Qwen2VLConfig.from_pretrained(tiny_model_dir).to_dict()
        base.pop("model_type")
        Qwen2VLAForConditionalGeneration(Qwen2VLAConfig(**base))


# ---- loading options -------------------------------------------------------------------------------
def test_lora_targets_only_the_chosen_parts(model):
    from qwen2_vla.model_load_utils import lora_target_modules

    vit = lora_target_modules(model, ["vit"])
    llm = lora_target_modules(model, ["llm"])
    head = lora_target_modules(model, ["di_head"])
    assert vit and all(name.startswith("model.visual.") for name in vit)
    assert llm and all(name.startswith("model.language_model.") for name in llm)
    assert head and all(name.startswith("policy_head.") for name in head)
    assert not any("x_embedder" in name or "cond_obs_emb" in name for name in head)
    assert not any(name.startswith(("lm_head", "fusion")) for name in vit + llm + head)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
@pytest.mark.parametrize("bits", [4, 8])
def test_quantisation_without_cuda_is_a_clear_error(bits):
    from qwen2_vla.model_load_utils import quantization_config

    class Args:
        double_quant, quant_type = True, "nf4"

    Args.bits = bits
    with pytest.raises(RuntimeError, match=f"--bits {bits} .*needs CUDA"):
        quantization_config(Args(), torch.float32)
    Args.bits = 16
    assert quantization_config(Args(), torch.float32) is None


@pytest.fixture(scope="module")
def live_model(tiny_vla_ckpt):
    """The evaluation tests' model: its head is off the adaLN-Zero start, so its actions depend on its inputs."""
    return Qwen2VLAForConditionalGeneration.from_pretrained(tiny_vla_ckpt).eval()


def test_batched_prediction_equals_one_by_one_with_different_prompt_lengths(parts, live_model):
    # Left-padded prompts of different lengths through generate() with the KV cache, then the head
    # with per-row noise: each row must come out as it would alone.
    model = live_model
    tokenizer, _, process, train, collator = parts
    raw = train.load_raw_step(0, 0)
    prompts = [process.prompt_inputs(raw["images"], text) for text in ("pick", "move both arms to the red square now")]
    noise = torch.randn(1, CHUNK, 14, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1)
    states = torch.randn(2, 14, generator=torch.Generator().manual_seed(1))

    def run(features, rows):
        batch = collator(features)
        return model.predict_action(
            batch["input_ids"], batch["attention_mask"], states[rows], batch["pixel_values"], batch["image_grid_thw"],
            batch["mm_token_type_ids"], max_new_tokens=6, tokenizer=tokenizer, noise=noise[rows],
        )

    together = run(prompts, [0, 1])
    for row in range(2):
        alone = run([prompts[row]], [row])
        assert alone.reasoning[0] == together.reasoning[row]
        torch.testing.assert_close(alone.actions[0], together.actions[row], rtol=1e-4, atol=1e-5)
    # Both rows start from the same noise: only their inputs tell them apart, far beyond the tolerance above.
    assert (together.actions[0] - together.actions[1]).abs().mean() > 1e-3
