"""DexVLA model: a stock Qwen-VL + fusion + diffusion expert, as a subclass (no copied modeling file).

One code path for every backbone: ``VLAMixin`` holds the head, the fusion, the training forward and
``predict_action``, and only reads what all of Qwen2-VL, Qwen2.5-VL and Qwen3-VL share (``self.model`` with
``visual`` and ``language_model.norm``, ``lm_head``, the last layer's hidden states, the processor's
``pixel_values``/``image_grid_thw``/``mm_token_type_ids``); each backbone is a one-line subclass of the stock
``...ForConditionalGeneration`` (``Qwen2VLAForConditionalGeneration``, ``Qwen2_5_VLAForConditionalGeneration``,
``Qwen3VLAForConditionalGeneration``), whose own forward keeps its vision tower (window attention, deepstack),
rope index and generation.

Training: ``forward(..., actions, states, is_pad)`` -> ``Qwen2VLAOutput(loss, llm_loss, action_loss, ...)``
with ``loss = action_loss + llm_loss_weight * llm_loss``.
Inference: ``predict_action(...)`` generates the reasoning greedily, fuses the hidden states generation
computed (one pass through the VLM), and samples an action chunk ``(B, chunk, action_dim)`` with DDIM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import (
    AutoModel,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from qwen2_vla.configuration_qwen2_vla import Qwen2_5_VLAConfig, Qwen2VLAConfig, Qwen3VLAConfig, VLAConfigMixin
from qwen2_vla.fusion import ReasoningFusion, ZeroInitLinear, masked_mean, split_prompt_answer

IGNORE_INDEX = -100


@dataclass
class Qwen2VLAOutput(ModelOutput):
    """
    Args:
        loss: ``action_loss + llm_loss_weight * llm_loss`` (only the parts that were computed).
        llm_loss: next-token cross-entropy on the answer tokens (when ``labels`` are given).
        action_loss: the diffusion expert's masked noise-prediction loss (when ``actions`` are given).
        logits: ``(B, L, vocab)`` language-model logits.
        cache: key/value cache (generation).
    """

    loss: torch.FloatTensor | None = None
    llm_loss: torch.FloatTensor | None = None
    action_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None


@dataclass
class Qwen2VLAActionOutput(ModelOutput):
    """
    Args:
        actions: ``(B, chunk, action_dim)`` sampled action chunks, in normalised units.
        sequences: ``(B, L + G)`` prompt followed by the generated answer tokens.
        answer_mask: ``(B, L + G)`` true on the generated answer tokens that were fused.
        reasoning: decoded answers (when a tokenizer was given).
    """

    actions: torch.FloatTensor | None = None
    sequences: torch.LongTensor | None = None
    answer_mask: torch.BoolTensor | None = None
    reasoning: list[str] | None = None


class VLAMixin:
    """A Qwen-VL ``...ForConditionalGeneration`` with a diffusion-expert action head (``policy_head``) fed by
    ``fusion``; listed before the stock class: ``class XVLA(VLAMixin, XForConditionalGeneration)``."""

    def __init__(self, config: VLAConfigMixin) -> None:
        super().__init__(config)
        if config.policy_head_config is None:
            raise ValueError(
                f"{type(config).__name__}.policy_head_config is None: build one with "
                "policy_heads.build_policy_head_config (or vla_config_from_vlm for a stock checkpoint)"
            )
        hidden_size = config.text_config.hidden_size
        self.policy_head = AutoModel.from_config(config.policy_head_config)
        self.fusion = ReasoningFusion(hidden_size) if config.using_film else None
        # A second post_init initialises only the modules added here: the backbone is already
        # flagged as initialised, and the head dispatches to its own _init_weights (adaLN-Zero).
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if isinstance(module, ZeroInitLinear):
            # FiLM starts as the identity; the generic Linear init must not undo that.
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        super()._init_weights(module)

    # ---- training -----------------------------------------------------------------------------
    def action_condition(
        self, hidden_states: torch.Tensor, prompt_mask: torch.Tensor, answer_mask: torch.Tensor
    ) -> torch.Tensor:
        """The policy head's condition ``(B, 1, H)``: FiLM fusion, or without it the mean hidden state.

        Without FiLM the reference handed all ``(B, L, H)`` states to the head, which averaged them
        padding included, so a sample's condition depended on its batch; here padding is left out.
        """
        if self.fusion is None:
            return masked_mean(hidden_states, prompt_mask | answer_mask).unsqueeze(1)
        return self.fusion(hidden_states, prompt_mask, answer_mask)

    def condition_token_inputs(
        self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None, input_embeddings: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The head's token inputs when it attends to the VLM's tokens (ScaleDP ``cross_attention``), else none:
        the token states ``(B, L, H)`` its ``condition_tokens_from`` names (``hidden_states``, the last layer, or
        ``input_embeddings``, the language model's inputs as ``_capture_input_embeddings`` kept them) and the
        attended-token mask ``(B, L)`` (prompt and answer, padding left out; None: all attended)."""
        if not getattr(self.config.policy_head_config, "cross_attention", False):
            return {}
        tokens = hidden_states
        if self._reads_input_embeddings():
            # The latest forwards that together cover the sequence: generate()'s prefill and steps, or the one
            # forward after it (``two_pass``), or the training forward.
            covering, length = [], 0
            for chunk in reversed(input_embeddings):
                if length >= hidden_states.shape[1]:
                    break
                covering.insert(0, chunk)
                length += chunk.shape[1]
            if length != hidden_states.shape[1]:
                raise RuntimeError(
                    f"condition_tokens_from='input_embeddings': the language model's captured inputs cover {length} "
                    f"tokens but its last layer {hidden_states.shape[1]}; was the language model called outside "
                    "the training forward and predict_action?"
                )
            tokens = torch.cat(covering, dim=1).to(hidden_states.device)
        if token_mask is None:
            token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return {"condition_tokens": tokens, "condition_token_mask": token_mask.bool()}

    def _reads_input_embeddings(self) -> bool:
        head = self.config.policy_head_config
        return getattr(head, "cross_attention", False) and getattr(head, "condition_tokens_from", None) == (
            "input_embeddings"
        )

    @contextmanager
    def _capture_input_embeddings(self) -> Iterator[list[torch.Tensor]]:
        """Keeps the language model's ``inputs_embeds`` ``(B, l, H)`` of every forward inside the block, in call
        order (a prefill, then one per generated token), when the head reads them (``condition_tokens_from``);
        image tokens there are the vision tower's merged patches (Qwen3-VL adds its deepstack features to the
        image tokens inside the language model, after this point). A forward pre-hook, so the stock forward runs
        as it is."""
        captured: list[torch.Tensor] = []
        if not self._reads_input_embeddings():
            yield captured
            return

        def keep(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if kwargs.get("inputs_embeds") is None:
                raise RuntimeError(
                    "condition_tokens_from='input_embeddings' needs the backbone to call its language model with "
                    f"inputs_embeds=...; {type(self).__name__} did not"
                )
            captured.append(kwargs["inputs_embeds"])

        hook = self.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield captured
        finally:
            hook.remove()

    def film_forward(
        self, labels: torch.Tensor, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The reference's ``film_forward``: prompt/answer split from labels and mask -> ``(B, 1, H)``."""
        prompt_mask, answer_mask = split_prompt_answer(attention_mask, labels, IGNORE_INDEX)
        return self.action_condition(hidden_states, prompt_mask, answer_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        is_pad: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: object | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> Qwen2VLAOutput:
        """Without ``actions`` this is the stock language model (``generate`` uses that path).

        Args:
            input_ids: ``(B, L)``; attention_mask: ``(B, L)``; labels: ``(B, L)`` with -100 on the prompt.
            actions: ``(B, T, action_dim)`` normalised target chunk; states: ``(B, state_dim)``;
            is_pad: ``(B, T)`` true on padded steps; action_mask ``(B, action_dim)`` / state_mask ``(B, state_dim)``:
            true on the dimensions each sample's embodiment has (a model over several embodiments; padded
            dimensions do not enter the action loss). Other keyword arguments go to the backbone
            (``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``, ``cache``, ...).
        """
        # Named (not **kwargs) because generate() inspects this signature to decide what it passes,
        # position_ids above all: without them left-padded batches broke with the KV cache.
        kwargs.update(
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            mm_encoder_outputs=mm_encoder_outputs,
        )
        if actions is None:
            out = super().forward(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, logits_to_keep=logits_to_keep, **kwargs
            )
            return Qwen2VLAOutput(loss=out.loss, llm_loss=out.loss, logits=out.logits, cache=out.cache)

        # Training needs every position's logits, so logits_to_keep does not apply here.
        with self._capture_input_embeddings() as input_embeddings:
            backbone = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden_states = backbone.last_hidden_state
        logits = self.lm_head(hidden_states)
        llm_loss = None
        if labels is not None:
            llm_loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
            condition = self.film_forward(labels, hidden_states, attention_mask)
        else:
            prompt_mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            condition = self.action_condition(hidden_states, prompt_mask, torch.zeros_like(prompt_mask))
        masks = {"action_mask": action_mask, "state_mask": state_mask}
        action_loss = self.policy_head(
            actions=actions, hidden_states=condition, states=states, is_pad=is_pad,
            **{k: v for k, v in masks.items() if v is not None},  # absent: the single-embodiment path as it was
            **self.condition_token_inputs(hidden_states, attention_mask, input_embeddings),
        ).loss
        loss = action_loss if llm_loss is None else action_loss + self.config.llm_loss_weight * llm_loss
        return Qwen2VLAOutput(loss=loss, llm_loss=llm_loss, action_loss=action_loss, logits=logits)

    # ---- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_action(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        states: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        generate_reasoning: bool = True,
        tokenizer: PreTrainedTokenizerBase | None = None,
        generator: torch.Generator | None = None,
        num_inference_timesteps: int | None = None,
        answer_ids: torch.LongTensor | None = None,
        noise: torch.Tensor | None = None,
        answer_ids_mask: torch.Tensor | None = None,
        two_pass: bool = False,
        action_mask: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> Qwen2VLAActionOutput:
        """Sample action chunks for a (left-padded) batch of prompts.

        One pass through the VLM: with reasoning, the fusion takes the last layer's states that ``generate()``
        computed (the prompt's at the prefill, each answer token's as it is fed back) plus one single-token step
        on the KV cache for the final generated token, which ``generate()`` never feeds back; without reasoning,
        one forward over prompt + fixed answer. The vision tower runs once per call either way.

        Args:
            input_ids, attention_mask, mm_token_type_ids: ``(B, L)`` prompt ending in the generation
                prompt (``<|im_start|>assistant\\n``), left padded.
            states: ``(B, state_dim)`` normalised robot state.
            pixel_values, image_grid_thw: the processor's image tensors.
            max_new_tokens: budget for the reasoning; ``generate_reasoning=False`` skips generation.
            tokenizer: when given, the generated reasoning is decoded into ``reasoning``.
            generator: random source of the DDIM noise.
            answer_ids: fixed answer appended instead of generating (e.g. the ids of ``"<|im_end|>"`` for a
                model trained without reasoning, or an earlier query's answer being reused), so the fusion sees
                an answer span as in training; ``(G,)`` for every row or ``(B, G)`` per row; ignored when
                generating.
            answer_ids_mask: ``(B, G)`` true on the real tokens of a per-row ``answer_ids`` whose rows are right
                padded to a common length (default: all real).
            noise: ``(B, chunk, action_dim)`` initial DDIM noise, one row per observation (so a batch
                gives the same actions as its rows one by one); drawn from ``generator`` when None.
            two_pass: after ``generate()``, run images + prompt + answer through the VLM a second time for the
                fusion's states (the former path, kept to compare against; same result, slower).
            action_mask, state_mask: ``(B, action_dim)`` / ``(B, state_dim)`` true on the dimensions of each row's
                embodiment (a model over several embodiments, states zero-padded); the sampled chunk is zero on the
                others.

        Returns:
            ``Qwen2VLAActionOutput`` with ``actions (B, chunk, action_dim)``.
        """
        if pixel_values is not None and mm_token_type_ids is None:
            raise ValueError("pixel_values were given without mm_token_type_ids: pass the processor's output as is")
        device = self.device
        input_ids, attention_mask, states = input_ids.to(device), attention_mask.to(device), states.to(device)
        mm_token_type_ids = torch.zeros_like(input_ids) if mm_token_type_ids is None else mm_token_type_ids.to(device)
        image_kwargs = {
            "pixel_values": None if pixel_values is None else pixel_values.to(device, self.dtype),
            "image_grid_thw": None if image_grid_thw is None else image_grid_thw.to(device),
        }
        prompt_len = input_ids.shape[1]
        with self._capture_input_embeddings() as input_embeddings:
            if generate_reasoning and max_new_tokens > 0:
                sequences, full_mask, hidden_states = self._generate_answer(
                    input_ids, attention_mask, mm_token_type_ids, image_kwargs, max_new_tokens, two_pass
                )
            else:
                sequences, full_mask = _append_answer(input_ids, attention_mask, answer_ids, answer_ids_mask)
                hidden_states = self._last_hidden_states(sequences, full_mask, mm_token_type_ids, image_kwargs)
        answer_mask = torch.zeros_like(full_mask, dtype=torch.bool)
        answer_mask[:, prompt_len:] = full_mask[:, prompt_len:].bool()
        prompt_mask = full_mask.bool() & ~answer_mask
        condition = self.action_condition(hidden_states, prompt_mask, answer_mask)
        actions = self.policy_head(
            hidden_states=condition,
            states=states.to(condition.dtype),
            generator=generator,
            num_inference_timesteps=num_inference_timesteps,
            noise=noise,
            **{k: v.to(device) for k, v in (("action_mask", action_mask), ("state_mask", state_mask)) if v is not None},
            **self.condition_token_inputs(hidden_states, full_mask, input_embeddings),
        ).actions
        reasoning = None
        if tokenizer is not None:
            reasoning = [
                tokenizer.decode(seq[prompt_len:][mask[prompt_len:]], skip_special_tokens=True)
                for seq, mask in zip(sequences, answer_mask, strict=True)
            ]
        return Qwen2VLAActionOutput(
            actions=actions, sequences=sequences, answer_mask=answer_mask, reasoning=reasoning
        )

    def _last_hidden_states(
        self,
        sequences: torch.LongTensor,
        full_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_kwargs: dict[str, torch.Tensor | None],
    ) -> torch.Tensor:
        """One forward of images + ``sequences (B, L + G)`` (prompt + answer): last layer ``(B, L + G, H)``."""
        answer_len = sequences.shape[1] - mm_token_type_ids.shape[1]
        mm_types = torch.cat([mm_token_type_ids, mm_token_type_ids.new_zeros(sequences.shape[0], answer_len)], dim=1)
        return self.model(
            input_ids=sequences, attention_mask=full_mask, mm_token_type_ids=mm_types, **image_kwargs
        ).last_hidden_state

    def _generate_answer(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        image_kwargs: dict[str, torch.Tensor | None],
        max_new_tokens: int,
        two_pass: bool = False,
    ) -> tuple[torch.LongTensor, torch.Tensor, torch.Tensor]:
        """Greedy reasoning: ``sequences (B, L + G)``, ``full_mask (B, L + G)`` (prompt mask, then true on each
        row's answer up to its first EOS) and the last layer's states ``(B, L + G, H)`` over ``sequences``.

        The states are captured from the final norm of the language model at each step of ``generate()``
        (a forward hook, so nothing of the library is copied), and the positions it fed, to continue them
        for the final token exactly as ``generate()`` would have. Not re-entrant: one call per model at a time.
        """
        eos_ids = self.generation_config.eos_token_id
        generate_kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_ids,
            pad_token_id=self.generation_config.pad_token_id,
            **image_kwargs,
        )
        prompt_len = input_ids.shape[1]
        if two_pass:
            sequences = self.generate(**generate_kwargs)
            full_mask = _full_mask(attention_mask, sequences[:, prompt_len:], eos_ids)
            return sequences, full_mask, self._last_hidden_states(sequences, full_mask, mm_token_type_ids, image_kwargs)

        states: list[torch.Tensor] = []
        positions: list[torch.Tensor | None] = []

        def keep_states(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            states.append(output)

        def keep_positions(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            positions.append(kwargs.get("position_ids"))

        hooks = [
            self.model.language_model.norm.register_forward_hook(keep_states),
            self.model.register_forward_pre_hook(keep_positions, with_kwargs=True),
        ]
        try:
            out = self.generate(**generate_kwargs, return_dict_in_generate=True)
        finally:
            for hook in hooks:
                hook.remove()
        sequences = out.sequences
        generated = sequences.shape[1] - prompt_len
        if (
            out.cache is None
            or not positions
            or positions[-1] is None
            or sum(s.shape[1] for s in states) != sequences.shape[1] - 1
        ):
            raise RuntimeError(
                "generate() did not run the steps predict_action expects (a KV cache, one step per token but the "
                "last, with position_ids); is use_cache off in the generation config? Otherwise pass "
                "predict_action(..., two_pass=True)"
            )
        # The final token was sampled but never fed back: one step on the KV cache gives its state, at the
        # position generate() would have given it (the last one it fed, plus one).
        last = self.model(
            input_ids=sequences[:, -1:],
            attention_mask=torch.cat([attention_mask, attention_mask.new_ones(sequences.shape[0], generated)], dim=1),
            position_ids=positions[-1][..., -1:] + 1,
            cache=out.cache,
        ).last_hidden_state
        hidden_states = torch.cat([*states, last], dim=1)
        return sequences, _full_mask(attention_mask, sequences[:, prompt_len:], eos_ids), hidden_states


class Qwen2VLAForConditionalGeneration(VLAMixin, Qwen2VLForConditionalGeneration):
    """Qwen2-VL with the VLA's head and fusion (see ``VLAMixin``)."""

    config_class = Qwen2VLAConfig


class Qwen2_5_VLAForConditionalGeneration(VLAMixin, Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with the VLA's head and fusion (see ``VLAMixin``)."""

    config_class = Qwen2_5_VLAConfig


class Qwen3VLAForConditionalGeneration(VLAMixin, Qwen3VLForConditionalGeneration):
    """Qwen3-VL with the VLA's head and fusion (see ``VLAMixin``)."""

    config_class = Qwen3VLAConfig


# VLA config class -> VLA model class; with ``VLA_CONFIG_CLASSES`` this is the whole backbone registry.
VLA_MODEL_CLASSES: dict[type[VLAConfigMixin], type[VLAMixin]] = {
    Qwen2VLAConfig: Qwen2VLAForConditionalGeneration,
    Qwen2_5_VLAConfig: Qwen2_5_VLAForConditionalGeneration,
    Qwen3VLAConfig: Qwen3VLAForConditionalGeneration,
}


def vla_model_class(config: PreTrainedConfig) -> type[VLAMixin]:
    """The VLA model class of a VLA config (``qwen2_vla``, ``qwen2_5_vla`` or ``qwen3_vla``)."""
    for config_class, model_class in VLA_MODEL_CLASSES.items():
        if type(config) is config_class:
            return model_class
    raise ValueError(
        f"{type(config).__name__} (model_type={config.model_type!r}) is not a VLA config; expected one of "
        f"{sorted(c.model_type for c in VLA_MODEL_CLASSES)}"
    )


def _full_mask(attention_mask: torch.Tensor, generated: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """``(B, L + G)``: the prompt's attention mask, then true on each row's answer (up to its first EOS)."""
    return torch.cat([attention_mask, _answer_mask(generated, eos_token_id).to(attention_mask.dtype)], dim=1)


def _append_answer(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    answer_ids: torch.LongTensor | None,
    answer_ids_mask: torch.Tensor | None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Prompt ``(B, L)`` + fixed answer -> ``sequences, full_mask (B, L + G)`` (unchanged when there is none)."""
    if answer_ids is None:
        return input_ids, attention_mask
    batch = input_ids.shape[0]
    answer_ids = answer_ids.to(input_ids.device)
    if answer_ids.ndim == 1:
        answer_ids = answer_ids.reshape(1, -1).expand(batch, -1)
    if answer_ids.ndim != 2 or answer_ids.shape[0] != batch:
        raise ValueError(f"answer_ids must be (G,) or (B={batch}, G), got shape {tuple(answer_ids.shape)}")
    if answer_ids_mask is None:
        answer_ids_mask = torch.ones_like(answer_ids, dtype=torch.bool)
    elif tuple(answer_ids_mask.shape) != tuple(answer_ids.shape):
        raise ValueError(
            f"answer_ids_mask must have answer_ids' shape {tuple(answer_ids.shape)}, got {tuple(answer_ids_mask.shape)}"
        )
    answer_ids_mask = answer_ids_mask.to(input_ids.device, attention_mask.dtype)
    return torch.cat([input_ids, answer_ids], dim=1), torch.cat([attention_mask, answer_ids_mask], dim=1)


def _answer_mask(generated: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """True on generated tokens up to and including the first end-of-sequence token."""
    if eos_token_id is None:
        return torch.ones_like(generated, dtype=torch.bool)
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=generated.device)
    is_eos = torch.isin(generated, eos_ids)
    # Tokens after the first EOS are padding that generate() appended for finished rows.
    after_eos = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    return ~after_eos


__all__ = [
    "VLA_MODEL_CLASSES",
    "Qwen2VLAActionOutput",
    "Qwen2VLAForConditionalGeneration",
    "Qwen2VLAOutput",
    "Qwen2_5_VLAForConditionalGeneration",
    "Qwen3VLAForConditionalGeneration",
    "VLAMixin",
    "vla_model_class",
]
