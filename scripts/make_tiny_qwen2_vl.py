#!/usr/bin/env python
"""Build a tiny, randomly initialised Qwen2-VL checkpoint for offline tests.

Usage::

    python scripts/make_tiny_qwen2_vl.py OUT_DIR [--seed N] [--real-width]

The output directory is a *stock* Qwen2-VL directory (config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, chat_template.jinja, processor_config.json). It loads offline
with ``AutoProcessor``, ``AutoTokenizer``, ``AutoModelForImageTextToText`` and
``Qwen2VLForConditionalGeneration`` without ``trust_remote_code``, so code written against it also accepts a real
Qwen2-VL-2B-Instruct download unchanged.

Everything is built locally -- nothing is fetched from the Hub:

* a byte-level BPE tokenizer trained on the spot (``tokenizers``) on a small embedded robot-instruction corpus,
  using Qwen2's normaliser / pre-tokeniser / decoder, followed by Qwen2-VL's 14 special tokens at fixed ids in
  the same order as the real model;
* Qwen2-VL-2B-Instruct's chat format (re-written Jinja, see ``CHAT_TEMPLATE``);
* a ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` with small pixel budgets for tiny camera images;
* a ~0.23M parameter ``Qwen2VLForConditionalGeneration`` initialised from ``seed`` (float32, safetensors).

``--real-width`` builds the fixture that dtype, memory and shape bugs show up on: Qwen2-VL-2B-Instruct's
widths (text 1536/8960 with 12 query and 2 key/value heads; vision 1280 with 16 heads; merger to 1536) and the
real processor's pixel budget, but 2 text and 2 vision layers and the small vocabulary (~170M parameters), saved
in bfloat16 with ``"dtype": "bfloat16"`` in config.json exactly as the download is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Constants mirroring Qwen2-VL-2B-Instruct
# ---------------------------------------------------------------------------------------------------------------

# Order matters: the real model assigns consecutive ids right after the BPE vocab in exactly this order
# (151643 .. 151656), so ids here are ``bpe_vocab_size + index``.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

SYSTEM_PROMPT = "You are a helpful assistant."

# Same rendered output as Qwen2-VL-2B-Instruct's template: default system turn when the first message is not a
# system message, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image (video analogous), optional
# "Picture N: " prefixes via ``add_vision_id``, and ``<|im_start|>assistant\n`` as generation prompt.
# No whitespace-control dashes and never a newline right after a ``%}``: transformers renders chat templates with
# trim_blocks=True, which would silently drop such newlines.
def build_chat_template(system_prompt: str | None = SYSTEM_PROMPT) -> str:
    """The Qwen-VL chat format; ``system_prompt`` is the default system turn (Qwen3-VL has none: ``None``)."""
    default_system = (
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\n" + system_prompt + "<|im_end|>\n"
        "{% endif %}"
        if system_prompt is not None
        else ""
    )
    return (
        "{% set image_count = namespace(value=0) %}"
        "{% set video_count = namespace(value=0) %}"
        "{% for message in messages %}" + default_system + "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}"
        "{% else %}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        "{% set image_count.value = image_count.value + 1 %}"
        "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif content['type'] == 'video' or 'video' in content %}"
        "{% set video_count.value = video_count.value + 1 %}"
        "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
        "<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif 'text' in content %}"
        "{{ content['text'] }}"
        "{% endif %}"
        "{% endfor %}"
        "{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


CHAT_TEMPLATE = build_chat_template(SYSTEM_PROMPT)

# Pixel budget of the image processor. smart_resize rounds each side to a multiple of patch*merge = 28, so a
# 56x56 .. 69x69 camera image becomes 56x56 -> grid 4x4 patches -> 4 image tokens after the 2x2 merge; the cap of
# 112*112 (grid 8x8, 16 tokens) keeps larger test images cheap. The real model uses 56*56 .. 28*28*1280.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

DEFAULT_BPE_VOCAB_SIZE = 1024

# Qwen2-VL-2B-Instruct's pixel budget (preprocessor_config.json of the download).
REAL_MIN_PIXELS = 56 * 56
REAL_MAX_PIXELS = 28 * 28 * 1280
# Qwen2-VL-2B-Instruct's widths with 2 text and 2 vision layers: ``build_config`` keyword arguments.
REAL_WIDTH_CONFIG: dict[str, Any] = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 2,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "mrope_section": (16, 24, 24),
    "vision_depth": 2,
    "vision_embed_dim": 1280,
    "vision_num_heads": 16,
}

# ---------------------------------------------------------------------------------------------------------------
# Tokenizer corpus (robot-instruction-like English). Generated deterministically from these lists.
# ---------------------------------------------------------------------------------------------------------------

# "|"-separated so multi-word verbs/places stay intact and the lists stay compact under ruff format.
_VERBS = tuple(
    (
        "pick up|put down|place|put|fold|unfold|open|close|push|pull|move|lift|lower|grasp|grab|release|"
        "hand over|stack|unstack|wipe|pour|insert|remove|rotate|turn|twist|flip|slide|reach|approach|align|press|"
        "drop|carry|transfer|hang|sort|clean|tidy|scoop|stir|shake|squeeze|cut|zip|unzip|plug in|unplug|hold|"
        "retrieve|fetch|bring|throw away|flatten|smooth|straighten|tuck|roll|spread|cover"
    ).split("|")
)
_ADJECTIVES = tuple(
    (
        "red|blue|green|yellow|white|black|orange|purple|pink|brown|gray|small|large|big|tiny|empty|full|wet|dry|"
        "soft|heavy|light|striped|wooden|metal|plastic|glass|paper|folded|crumpled|dirty|clean|round|square|long|"
        "short|tall|flat"
    ).split("|")
)
_OBJECTS = tuple(
    (
        "cube|block|shirt|towel|cup|mug|bowl|plate|drawer|lid|bottle|sponge|box|bag|marker|pen|pencil|spoon|fork|"
        "knife|napkin|cloth|sock|pants|jacket|hat|glove|book|laptop|keyboard|mouse|phone|tape|scissors|battery|"
        "screw|bolt|nut|tray|basket|bin|container|jar|can|apple|banana|carrot|lemon|bread|egg|tomato|potato|"
        "cable|charger|remote|toy|ball|doll|brush|comb|mirror|shelf|door|handle|cabinet|microwave|oven|fridge|"
        "sink|faucet|kettle|pot|pan|cereal|chips|candy|wrench|hammer|dress|skirt|sweater|blanket|pillow|sheet|"
        "bucket"
    ).split("|")
)
_PLACES = tuple(
    (
        "on the table|into the box|to the left|to the right|next to the bowl|in the basket|onto the plate|"
        "on the shelf|in the drawer|on the counter|in the sink|on the tray|into the bin|behind the cup|"
        "in front of the robot|under the table|above the plate|at the center|near the edge|in the corner|"
        "on top of the block|beside the laptop|inside the container"
    ).split("|")
)
_REASONING = (
    "The task is to {v} the {a} {o} {p}.",
    "First, reach the {o}. Then grasp the {o} with the left gripper. Next, lift the {o}.",
    "Hand over the {o} from the left arm to the right arm, then {v} it {p}.",
    "The {a} {o} is {p}, so the robot should {v} it carefully.",
    "Subtask: {v} the {o}. Next action: move the right arm toward the {o}.",
    "I see a {a} {o}. The gripper is open. Next action: grasp.",
    "Because the {o} is {a}, I will {v} it slowly and then release it {p}.",
    "Step {n}: {v} the {o}; step {m}: lift it; step {k}: place it {p}.",
)
_EXTRA_TEXT = (
    "reach the cube",
    "grasp the cube",
    "lift the cube",
    "hand over the cube",
    "Next action:",
    "Next action: stop.",
    "The shirt is folded. The task is complete.",
    "Failed to grasp; retry from the top camera view.",
    "Use both arms. Keep the wrist camera pointing down. Avoid collisions with the table.",
    "left arm, right arm, gripper, wrist camera, top camera, base, joint, pose, trajectory, velocity, torque.",
    "yes no ok done success failure stop wait continue repeat finish begin start end again",
    "What should the robot do next? Answer: fold the towel in half, then fold it again.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 0.5 1.25 -3.0 +7 45% #1 (x, y, z) [0.1, 0.2] {a: 1}",
    "! \" # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~",
    "It's done. Don't drop it. We'll stack them. You're close. I'm moving. They've finished. She'd wait.",
)


def build_corpus() -> list[str]:
    """Return the embedded tokenizer training corpus (deterministic, ~15k short lines)."""
    lines: list[str] = list(_EXTRA_TEXT)
    for i, verb in enumerate(_VERBS):
        for j, obj in enumerate(_OBJECTS):
            adj = _ADJECTIVES[(i + j) % len(_ADJECTIVES)]
            place = _PLACES[(i * 7 + j) % len(_PLACES)]
            lines.append(f"{verb} the {obj}")
            lines.append(f"{verb.capitalize()} the {adj} {obj} {place}.")
            template = _REASONING[(i + 3 * j) % len(_REASONING)]
            n = (i + j) % 9 + 1
            lines.append(template.format(v=verb, a=adj, o=obj, p=place, n=n, m=n + 1, k=n + 2))
    return lines


def train_bpe(corpus: Sequence[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's normaliser and pre-tokeniser; return (vocab, merges) without specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Same normaliser / pre-tokeniser / decoder that Qwen2Tokenizer.__init__ rebuilds around the saved vocab+merges
    # at load time (it ignores the pipeline stored in tokenizer.json), so the merges stay valid after loading.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # All 256 byte symbols -> any UTF-8 text is encodable (no unknown tokens), like the real tokenizer.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    if len(model["vocab"]) != vocab_size:
        # min_frequency=1 lets BPE merge up to whole words; past that the embedded corpus has nothing left to merge.
        raise ValueError(f"the embedded corpus supports at most {len(model['vocab'])} BPE tokens, not {vocab_size}")
    vocab: dict[str, int] = dict(model["vocab"])
    merges: list[tuple[str, str]] = []
    for merge in model["merges"]:
        # Serialised as ["a", "b"] (current tokenizers) or "a b" (older); byte-level symbols never contain spaces.
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merges.append((left, right))
    return vocab, merges


def build_tokenizer(
    bpe_vocab_size: int = DEFAULT_BPE_VOCAB_SIZE,
    added_tokens: Sequence[str] = (),
    chat_template: str = CHAT_TEMPLATE,
) -> Any:
    """Train the BPE and wrap it in a stock ``Qwen2Tokenizer`` with Qwen2-VL's special tokens and chat template.

    ``added_tokens``: later Qwen tokenizers' extra (non-special) tokens, at the ids right after the special ones
    (Qwen2.5-VL's ``<tool_call>`` .. ``<|file_sep|>``, Qwen3-VL's ``<think>`` ...).
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe(build_corpus(), bpe_vocab_size)
    n_bpe = len(vocab)
    # Special tokens go *into* the BPE vocab at fixed ids; otherwise Qwen2Tokenizer hands eos/pad the first free
    # ids at construction time and the order would differ from the real model.
    for offset, token in enumerate((*SPECIAL_TOKENS, *added_tokens)):
        vocab[token] = n_bpe + offset

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        errors="replace",
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    if added_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    tokenizer.chat_template = chat_template
    for offset, token in enumerate((*SPECIAL_TOKENS, *added_tokens)):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != n_bpe + offset:
            raise RuntimeError(f"special token {token} got id {got}, expected {n_bpe + offset}")
    return tokenizer


def build_processor(tokenizer: Any, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Any:
    """Wrap ``tokenizer`` with Qwen2-VL image/video processors into a ``Qwen2VLProcessor``.

    The default pixel budget is small (tiny camera images); the real-width fixture passes the real one.
    """
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    vision_kwargs = {
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
    }
    image_processor = Qwen2VLImageProcessor(**vision_kwargs)
    # A video processor is saved too so AutoProcessor never has to fall back to defaults sized for the real model.
    video_processor = Qwen2VLVideoProcessor(**vision_kwargs)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    mrope_section: Sequence[int] = (2, 3, 3),
    vision_depth: int = 2,
    vision_embed_dim: int = 32,
    vision_num_heads: int = 2,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    dtype: str = "float32",
) -> Any:
    """Return a tiny ``Qwen2VLConfig`` whose token ids point at ``tokenizer``'s special tokens."""
    from transformers import Qwen2VLConfig

    head_dim = hidden_size // num_attention_heads
    if 2 * sum(mrope_section) != head_dim:
        # M-RoPE splits the head_dim/2 rotary frequencies into (temporal, height, width) sections.
        raise ValueError(f"sum(mrope_section)={sum(mrope_section)} must equal head_dim/2={head_dim // 2}")

    def tid(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_hidden_layers,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(mrope_section)},
        # Same convention as Qwen2-VL-2B-Instruct: bos = pad = <|endoftext|>, eos = <|im_end|>.
        "bos_token_id": tid("<|endoftext|>"),
        "eos_token_id": tid("<|im_end|>"),
        "pad_token_id": tid("<|endoftext|>"),
        "tie_word_embeddings": tie_word_embeddings,
    }
    vision_config = {
        "depth": vision_depth,
        "embed_dim": vision_embed_dim,
        # Merger output must equal the LM hidden size: image features replace <|image_pad|> embeddings.
        "hidden_size": hidden_size,
        "num_heads": vision_num_heads,
        "mlp_ratio": 4,
        "in_channels": 3,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=tie_word_embeddings,
        dtype=dtype,
    )


def build_generation_config(tokenizer: Any) -> Any:
    """The ``GenerationConfig`` saved with the model, its token ids from ``tokenizer``.

    Mirrors Qwen2-VL-2B-Instruct's generation_config (stop on <|im_end|> or <|endoftext|>), but greedy so that
    tests are deterministic; the real one samples with top_k=1, which is greedy in effect as well.
    """
    from transformers import GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(
        bos_token_id=endoftext,
        pad_token_id=endoftext,
        eos_token_id=[im_end, endoftext],
        do_sample=False,
    )


def build_tiny_qwen2_vl(
    out_dir: str | Path,
    seed: int = 0,
    *,
    bpe_vocab_size: int = DEFAULT_BPE_VOCAB_SIZE,
    tie_word_embeddings: bool = True,
    dtype: str = "float32",
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    **config_kwargs: Any,
) -> Path:
    """Write a tiny random Qwen2-VL checkpoint (model + tokenizer + processor) to ``out_dir`` and return its path.

    Weights depend only on ``seed`` (two builds with the same seed give byte-identical safetensors); the tokenizer
    does not depend on the seed at all. ``config_kwargs`` are forwarded to :func:`build_config`. ``dtype``
    (``"float32"`` or ``"bfloat16"``) is the dtype the weights are saved in and the one config.json names.
    """
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer(bpe_vocab_size)
    processor = build_processor(tokenizer, min_pixels=min_pixels, max_pixels=max_pixels)
    config = build_config(tokenizer, tie_word_embeddings=tie_word_embeddings, dtype=dtype, **config_kwargs)
    return save_tiny_checkpoint(out_dir, Qwen2VLForConditionalGeneration, config, tokenizer, processor, seed, dtype)


def save_tiny_checkpoint(
    out_dir: str | Path, model_class: type, config: Any, tokenizer: Any, processor: Any, seed: int, dtype: str
) -> Path:
    """Initialise ``model_class(config)`` from ``seed``, give it greedy Qwen-style generation settings, and save it
    with ``processor`` (tokenizer, chat template, image/video processors) into ``out_dir``."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # fork_rng: seed locally without clobbering the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    # Initialised in float32, then stored in the dtype the config names (the download: bfloat16).
    model = model.to(getattr(torch, dtype)).eval()
    model.generation_config = build_generation_config(tokenizer)

    model.save_pretrained(out)  # transformers 5.x always writes safetensors
    # Also writes tokenizer.json / tokenizer_config.json / chat_template.jinja (identical to tokenizer.save_pretrained),
    # so AutoTokenizer and AutoProcessor both find the chat template.
    processor.save_pretrained(out)
    return out


def build_real_width_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-VL-2B-Instruct's widths and processor, 2 + 2 layers, saved in bfloat16 as the download is."""
    return build_tiny_qwen2_vl(
        out_dir,
        seed,
        dtype="bfloat16",
        min_pixels=REAL_MIN_PIXELS,
        max_pixels=REAL_MAX_PIXELS,
        **REAL_WIDTH_CONFIG,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``make_tiny_qwen2_vl.py OUT_DIR [--seed N] [--real-width]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="directory to write the checkpoint into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default: 0)")
    parser.add_argument(
        "--real-width",
        action="store_true",
        help="Qwen2-VL-2B's widths (2+2 layers, small vocabulary), saved in bfloat16 as the download",
    )
    args = parser.parse_args(argv)
    build = build_real_width_qwen2_vl if args.real_width else build_tiny_qwen2_vl
    path = build(args.out_dir, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
