"""The tiny offline Qwen2-VL checkpoint built by scripts/make_tiny_qwen2_vl.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

# Must be set before huggingface_hub is imported: it reads HF_HUB_OFFLINE once, at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Qwen2Tokenizer,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)

from scripts.make_tiny_qwen2_vl import (  # noqa: E402
    DEFAULT_BPE_VOCAB_SIZE,
    SPECIAL_TOKENS,
    SYSTEM_PROMPT,
    build_tiny_qwen2_vl,
    main,
)

VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "processor_config.json",
}


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    # Belt and braces: if another module imported huggingface_hub before our env var was set, force the flag too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def ckpt(_offline: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"), seed=0)


@pytest.fixture(scope="module")
def processor(ckpt: Path) -> Qwen2VLProcessor:
    return AutoProcessor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def tokenizer(ckpt: Path) -> Qwen2Tokenizer:
    return AutoTokenizer.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def model(ckpt: Path) -> Qwen2VLForConditionalGeneration:
    return AutoModelForImageTextToText.from_pretrained(ckpt).eval()


def _images(n: int = 3, size: tuple[int, int] = (56, 56)) -> list[Image.Image]:
    return [Image.new("RGB", size, (40 * i, 120, 200 - 30 * i)) for i in range(n)]


def _messages(n_images: int, text: str = "fold the shirt") -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def _state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_offline_mode_is_on() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.is_offline_mode()


def test_directory_is_a_stock_qwen2_vl_checkpoint(ckpt: Path) -> None:
    assert EXPECTED_FILES <= {p.name for p in ckpt.iterdir()}
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert config["dtype"] == "float32"
    assert "auto_map" not in config  # nothing custom: no trust_remote_code needed
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    with safe_open(ckpt / "model.safetensors", framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}


def test_loads_offline_with_auto_classes(
    ckpt: Path, processor: Qwen2VLProcessor, tokenizer: Qwen2Tokenizer, model: Qwen2VLForConditionalGeneration
) -> None:
    assert isinstance(processor, Qwen2VLProcessor)
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    assert isinstance(tokenizer, Qwen2Tokenizer)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    assert model.dtype == torch.float32
    # transformers 5.x module layout relied on by the policy code.
    assert model.model.visual is not None and model.model.language_model is not None
    direct = Qwen2VLForConditionalGeneration.from_pretrained(ckpt)
    assert _state_dicts_equal(direct.state_dict(), model.state_dict())


def test_parameter_count(model: Qwen2VLForConditionalGeneration) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 1_000_000, n_params


def test_special_token_ids_match_config(tokenizer: Qwen2Tokenizer, model: Qwen2VLForConditionalGeneration) -> None:
    ids = {tok: DEFAULT_BPE_VOCAB_SIZE + i for i, tok in enumerate(SPECIAL_TOKENS)}
    for tok, expected in ids.items():
        assert tokenizer.convert_tokens_to_ids(tok) == expected
        assert tokenizer.encode(tok, add_special_tokens=False) == [expected], tok
    assert len(tokenizer) == DEFAULT_BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)

    cfg = model.config
    assert cfg.text_config.vocab_size == len(tokenizer)
    assert cfg.image_token_id == ids["<|image_pad|>"]
    assert cfg.video_token_id == ids["<|video_pad|>"]
    assert cfg.vision_start_token_id == ids["<|vision_start|>"]
    assert cfg.vision_end_token_id == ids["<|vision_end|>"]
    assert cfg.text_config.bos_token_id == ids["<|endoftext|>"]
    assert cfg.text_config.eos_token_id == ids["<|im_end|>"]
    assert cfg.text_config.pad_token_id == ids["<|endoftext|>"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == ids["<|im_end|>"]
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == ids["<|endoftext|>"]
    assert tokenizer.bos_token is None  # like the real Qwen2-VL tokenizer: no BOS is prepended
    gen = model.generation_config
    assert gen.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert gen.pad_token_id == ids["<|endoftext|>"]


@pytest.mark.parametrize(
    "text",
    [
        "Pick up the red cube and hand over it to the right arm.",
        "Reach the cube, grasp, lift. Next action: 12, 3.5!",
        "  odd   spacing\n\nnew lines\ttabs ",
        "Grüße, 你好 🤖 (unseen text falls back to bytes)",
    ],
)
def test_tokenizer_round_trip(tokenizer: Qwen2Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer(text)["input_ids"] == ids  # no BOS/EOS added implicitly
    assert tokenizer.decode(ids) == text


def test_tokenizer_learned_robot_vocabulary(tokenizer: Qwen2Tokenizer) -> None:
    for word in ["cube", "shirt", "grasp", "lift", "reach"]:
        assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word


def test_chat_template(processor: Qwen2VLProcessor, tokenizer: Qwen2Tokenizer) -> None:
    for n_images in (1, 3):
        messages = _messages(n_images)
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert text == (
            f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
            f"<|im_start|>user\n{VISION_BLOCK * n_images}fold the shirt<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert text.count(VISION_BLOCK) == n_images
    # An explicit system turn replaces the default one; plain-string content and multi-turn work too.
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "fold the towel"},
        {"role": "assistant", "content": "Next action: grasp."},
    ]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nfold the towel<|im_end|>\n"
        "<|im_start|>assistant\nNext action: grasp.<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("size", "tokens_per_image"), [((56, 56), 4), ((64, 64), 4), ((112, 112), 16), ((224, 160), 12)]
)
def test_image_token_budget(processor: Qwen2VLProcessor, size: tuple[int, int], tokens_per_image: int) -> None:
    inputs = processor(text=[VISION_BLOCK], images=_images(1, size), return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == tokens_per_image


def _three_image_inputs(processor: Qwen2VLProcessor) -> dict[str, torch.Tensor]:
    text = processor.apply_chat_template(_messages(3), tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=_images(3), return_tensors="pt")


def test_processor_outputs_for_three_images(
    processor: Qwen2VLProcessor, model: Qwen2VLForConditionalGeneration
) -> None:
    inputs = _three_image_inputs(processor)
    assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    # 56x56 -> 4x4 patches of 14px; 3 images * 16 patches, each 3 channels * 2 frames * 14 * 14 = 1176 values.
    assert tuple(inputs["pixel_values"].shape) == (48, 1176)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    assert inputs["mm_token_type_ids"].shape == inputs["input_ids"].shape
    image_mask = inputs["input_ids"] == model.config.image_token_id
    assert int(image_mask.sum()) == 12  # 2x2 merge -> 4 tokens per image
    assert torch.equal(inputs["mm_token_type_ids"].bool(), image_mask)

    # Same result when the images travel inside the messages.
    content = [{"type": "image", "image": im} for im in _images(3)] + [{"type": "text", "text": "fold the shirt"}]
    packed = processor.apply_chat_template(
        [{"role": "user", "content": content}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    assert torch.equal(packed["input_ids"], inputs["input_ids"])
    assert torch.equal(packed["pixel_values"], inputs["pixel_values"])


def test_forward_with_three_images(processor: Qwen2VLProcessor, model: Qwen2VLForConditionalGeneration) -> None:
    inputs = _three_image_inputs(processor)
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"].bool(), -100)
    with torch.no_grad():
        out = model(**inputs, labels=labels, output_hidden_states=True)
    seq_len = inputs["input_ids"].shape[1]
    assert out.logits.shape == (1, seq_len, model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert out.loss is not None and torch.isfinite(out.loss)
    # Embedding output + one per decoder layer, each (batch, seq, text hidden size).
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert out.hidden_states[-1].shape == (1, seq_len, model.config.text_config.hidden_size)

    # transformers 5.x: images without mm_token_type_ids are rejected (M-RoPE needs them).
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"), torch.no_grad():
        model(**without)


def test_generate_greedy(processor: Qwen2VLProcessor, model: Qwen2VLForConditionalGeneration) -> None:
    inputs = _three_image_inputs(processor)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert first.shape == (1, prompt_len + 4)
    assert torch.equal(first[:, :prompt_len], inputs["input_ids"])
    assert torch.equal(first, second)
    assert isinstance(processor.batch_decode(first[:, prompt_len:], skip_special_tokens=True)[0], str)


def test_save_load_round_trip(model: Qwen2VLForConditionalGeneration, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    reloaded = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path)
    assert _state_dicts_equal(model.state_dict(), reloaded.state_dict())
    if model.config.tie_word_embeddings:
        assert reloaded.lm_head.weight is reloaded.model.language_model.embed_tokens.weight


def test_build_is_deterministic(ckpt: Path, tmp_path: Path) -> None:
    again = build_tiny_qwen2_vl(tmp_path / "same", seed=0)
    for name in EXPECTED_FILES:
        assert (again / name).read_bytes() == (ckpt / name).read_bytes(), name

    # The CLI entry point with another seed: same tokenizer, different weights.
    assert main([str(tmp_path / "other"), "--seed", "1"]) == 0
    other = tmp_path / "other"
    assert (other / "tokenizer.json").read_bytes() == (ckpt / "tokenizer.json").read_bytes()
    sd0 = Qwen2VLForConditionalGeneration.from_pretrained(ckpt).state_dict()
    sd1 = Qwen2VLForConditionalGeneration.from_pretrained(other).state_dict()
    assert sd0.keys() == sd1.keys()
    assert not _state_dicts_equal(sd0, sd1)
    assert _state_dicts_equal(sd0, Qwen2VLForConditionalGeneration.from_pretrained(again).state_dict())


def test_build_leaves_global_rng_untouched(tmp_path: Path) -> None:
    state = torch.random.get_rng_state()
    build_tiny_qwen2_vl(tmp_path, seed=123)
    assert torch.equal(torch.random.get_rng_state(), state)
