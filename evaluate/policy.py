"""``DexVLAPolicy``: a checkpoint directory -> raw observation in, raw action chunk (+ reasoning) out.

An observation uses openpi's key names::

    {"images": {camera: (H, W, 3) or (3, H, W) uint8}, "state": (state_dim,) raw qpos, "prompt": str}

and :meth:`DexVLAPolicy.infer` returns ``{"actions": (chunk, action_dim) float32 in robot units,
"reasoning": str, "policy_timing": {"infer_ms": float}}``.

Pre-processing is the training code's own: cameras are taken in the checkpoint's camera order
(``dataset_stats.json``'s ``camera_names``), go through training's ``CameraImageTransform`` in its
deterministic form (resize to the training size, then training's 95% crop as a centre crop when training
augmented) and ``Qwen2VLAProcess.prompt_inputs`` (per-camera resize, chat template, image processor) with
the sizes of training (:mod:`evaluate.inference_config`); the state is z-scored and the actions
un-normalised by the same ``NormStats`` that training used.

``delta_control`` checkpoints predict per-step action deltas; they are integrated onto the state
measured at the query: ``action[k] = state + sum(delta[0..k])`` (:func:`postprocess_actions`). Training
takes its first delta from that same state (``data_utils.dataset.chunk_action_deltas``), so the recorded
deltas integrate back to exactly the recorded actions; this needs ``action_dim == state_dim`` (joint-
position control such as ALOHA's).

The DDIM noise is the same for every observation: each row of a batch gets noise drawn from a generator
seeded with ``seed``, so a batch of observations gives exactly the actions of the same observations
one by one, and a run can be repeated. ``seed=None`` draws fresh noise for every query instead.

A checkpoint trained over several embodiments serves one of them per policy (``embodiment=...``): that
embodiment's cameras, statistics and prompt name; its state is zero-padded to the model's width with a mask,
and the sampled chunk is cut to its own action width before un-normalising, so ``actions`` is
``(chunk, that embodiment's action_dim)`` in its raw units.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from data_utils.dataset import integrate_action_deltas
from data_utils.image_utils import CameraImageTransform
from data_utils.normalization import NormStats, load_embodiment_stats

OBSERVATION_KEYS = ("images", "state", "prompt")


@dataclass(frozen=True)
class ObservationLimits:
    """Caps on one observation, checked before any pre-processing (a policy server takes requests from the network).

    Args:
        max_prompt_chars: longest accepted prompt; task instructions are a sentence or two.
        max_image_side: largest accepted image height and width (each; 4096 admits 4K cameras). A zero-size
            image is always refused.
    """

    max_prompt_chars: int = 1024
    max_image_side: int = 4096


def postprocess_actions(normalized: np.ndarray, raw_states: np.ndarray, stats: NormStats) -> np.ndarray:
    """Model output ``(B, T, action_dim)`` in [-1, 1] -> ``(B, T, action_dim)`` float32 robot actions.

    ``raw_states (B, state_dim)``: the measured states of the queries; ``delta_control`` chunks are
    integrated from them (``integrate_action_deltas``, the inverse of what training takes).
    """
    actions = stats.unnormalize_action(np.asarray(normalized, dtype=np.float32))
    if stats.delta_control:
        actions = integrate_action_deltas(actions, raw_states)
    return np.asarray(actions, dtype=np.float32)


class ObservationError(ValueError):
    """A malformed observation; ``field`` names the offending entry (e.g. ``"images.cam_high"``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"observation field {field!r}: {message}")
        self.field = field


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device (use --device cpu)")
    return device


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on GPU, float32 on CPU; else one of float32/bfloat16/float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _frame_hwc(image: Any, field: str, limits: ObservationLimits) -> np.ndarray:
    """One camera frame as ``(H, W, 3)`` uint8 (accepts ``(3, H, W)`` too, as openpi's ALOHA clients send)."""
    if not isinstance(image, np.ndarray):
        raise ObservationError(field, f"must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ObservationError(field, f"must be uint8, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 3:
        frame = image
    elif image.ndim == 3 and image.shape[0] == 3:
        frame = image.transpose(1, 2, 0)
    else:
        raise ObservationError(field, f"must be (H, W, 3) or (3, H, W), got shape {image.shape}")
    height, width = frame.shape[:2]
    if height == 0 or width == 0:
        raise ObservationError(field, f"is empty (shape {image.shape}); expected a camera frame")
    if max(height, width) > limits.max_image_side:
        raise ObservationError(
            field, f"is {height}x{width} (HxW), over the limit of {limits.max_image_side} pixels a side"
        )
    return frame


def validate_observation(
    obs: Any,
    camera_names: Sequence[str],
    state_dim: int,
    default_prompt: str | None = None,
    limits: ObservationLimits | None = None,
) -> tuple[list[np.ndarray], np.ndarray, str]:
    """Check ``obs`` and return ``frames`` (one ``(H, W, 3)`` uint8 per camera, in ``camera_names`` order; their
    resolutions may differ, as training accepts), ``state (state_dim,) float32`` and ``prompt``.

    Raises :class:`ObservationError` naming the first bad field (``limits``: default :class:`ObservationLimits`).
    """
    limits = ObservationLimits() if limits is None else limits
    if not isinstance(obs, Mapping):
        raise ObservationError("<root>", f"must be a dict with keys {list(OBSERVATION_KEYS)}, got {type(obs).__name__}")
    images = obs.get("images")
    if not isinstance(images, Mapping):
        raise ObservationError("images", f"must be a dict {{camera: image}} with cameras {list(camera_names)}")
    frames = []
    for camera in camera_names:
        if camera not in images:
            raise ObservationError(
                f"images.{camera}", f"camera missing; this policy needs {list(camera_names)}, got {sorted(images)}"
            )
        frames.append(_frame_hwc(images[camera], f"images.{camera}", limits))

    state = obs.get("state")
    if state is None:
        raise ObservationError("state", f"missing; expected ({state_dim},) joint positions")
    state = np.asarray(state)
    if state.dtype.kind not in "fiu":
        raise ObservationError("state", f"must be numeric, got dtype {state.dtype}")
    if state.shape != (state_dim,):
        raise ObservationError("state", f"must have shape ({state_dim},), got {state.shape}")
    if not np.isfinite(state).all():
        raise ObservationError("state", "contains NaN or inf")

    prompt = obs.get("prompt", default_prompt)
    if prompt is None:
        raise ObservationError("prompt", "missing (and the policy has no default prompt)")
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ObservationError("prompt", f"is not UTF-8 ({err.reason} at byte {err.start})") from None
    if not isinstance(prompt, str):
        raise ObservationError("prompt", f"must be a string, got {type(prompt).__name__}")
    if len(prompt) > limits.max_prompt_chars:
        raise ObservationError("prompt", f"has {len(prompt)} characters, over the limit of {limits.max_prompt_chars}")
    return frames, state.astype(np.float32), prompt


@dataclass
class PreparedObservation:
    """One validated, pre-processed observation (:meth:`DexVLAPolicy.prepare`), ready for the model.

    ``features``: :meth:`DexVLAPolicy.prompt_features`' output; ``state``: the raw ``(state_dim,)`` float32 state;
    ``prepare_ms``: the time validation and pre-processing took; ``prompt``: the instruction (the key under which
    reasoning is reused, see ``reasoning_every``).
    """

    features: dict[str, torch.Tensor]
    state: np.ndarray
    prepare_ms: float
    prompt: str | None = None


@dataclass
class _RememberedReasoning:
    """An answer generated for a prompt: ``answer_ids (G,)`` (up to and including its EOS), its text, and how
    many queries it has served (the one that generated it included)."""

    answer_ids: torch.Tensor
    text: str
    uses: int = 1


# Distinct prompts whose last reasoning is remembered (oldest forgotten first): bounded for a long-running server.
_REASONING_MEMORY_SIZE = 256


class DexVLAPolicy:
    """A DexVLA checkpoint (full, or LoRA merged on load) wrapped for robot control.

    Args:
        ckpt_dir: directory with ``config.json``, weights, processor files and ``dataset_stats.json``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"auto"`` (bfloat16 on GPU, float32 on CPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        max_new_tokens: budget for the generated reasoning.
        seed: seed of the DDIM noise (see the module docstring); ``None`` for fresh noise per query.
        num_inference_timesteps: DDIM steps (default: the head's config).
        image_size_stable, image_size_wrist: override the checkpoint's image sizes (old checkpoints).
        image_crop_ratio: training's crop, for checkpoints that do not record it (``config.json``'s
            ``image_crop_ratio``; e.g. 0.95 for a diffusion head trained with augmentation).
        default_prompt: used when an observation has no ``"prompt"``.
        limits: caps on each observation (prompt length, image size); default :class:`ObservationLimits`.
        reasoning_every: generate the reasoning on one query in ``k`` per prompt and reuse the last generated
            answer on the others (then the answer is fixed: one VLM forward, no decoding), since sub-step
            reasoning changes slowly. ``1`` (default): generate on every query. A batch generates for all its rows
            as soon as one of them is due. Reuse is keyed by the prompt: robots that share a prompt share it;
            :meth:`reset_reasoning` forgets it (e.g. at an episode start).
        compile_head: compile the policy head's denoiser with ``torch.compile`` (GPU serving); a string is
            torch.compile's ``mode`` (e.g. ``"reduce-overhead"`` for CUDA graphs). Compiles at the first query.
        embodiment: which embodiment of a checkpoint trained over several to control (its name in
            ``dataset_stats.json``); may be left out when the checkpoint has one.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | None = "auto",
        max_new_tokens: int = 64,
        seed: int | None = 0,
        num_inference_timesteps: int | None = None,
        image_size_stable: Any | None = None,
        image_size_wrist: Any | None = None,
        default_prompt: str | None = None,
        image_crop_ratio: float | None = None,
        limits: ObservationLimits | None = None,
        reasoning_every: int = 1,
        compile_head: bool | str = False,
        embodiment: str | None = None,
    ) -> None:
        from transformers import AutoProcessor, AutoTokenizer

        import qwen2_vla  # noqa: F401  (registers the VLA with the Auto classes)
        from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
        from evaluate.inference_config import load_inference_config
        from qwen2_vla.model_load_utils import from_pretrained_vla
        from qwen2_vla.robot_data_processor import Qwen2VLAProcess, answer_text

        self.ckpt_dir = Path(ckpt_dir)
        if not (self.ckpt_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.ckpt_dir} is not a checkpoint directory (no config.json)")
        self.embodiments = load_embodiment_stats(self.ckpt_dir)
        self.multi_embodiment = self.embodiments.multi
        self.embodiment, self.stats = self.embodiments.select(embodiment, str(self.ckpt_dir))
        if not self.stats.camera_names:
            raise ValueError(f"{self.ckpt_dir}/dataset_stats.json lists no camera_names; the camera order is unknown")
        self.camera_names = list(self.stats.camera_names)
        self.inference_config = load_inference_config(
            self.ckpt_dir, image_size_stable, image_size_wrist, image_crop_ratio
        )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_new_tokens = int(max_new_tokens)
        self.seed = seed
        self.num_inference_timesteps = num_inference_timesteps
        self.default_prompt = default_prompt
        self.limits = ObservationLimits() if limits is None else limits
        # The processor's fast tokenizer is not safe to call from two threads at once (a server prepares
        # requests of several connections in parallel), so pre-processing takes turns.
        self._prepare_lock = threading.Lock()
        if int(reasoning_every) < 1:
            raise ValueError(f"reasoning_every must be >= 1 (1: generate on every query), got {reasoning_every}")
        self.reasoning_every = int(reasoning_every)
        self._reasoning_memory: dict[str, _RememberedReasoning] = {}

        self.model = from_pretrained_vla(self.ckpt_dir, dtype=self.dtype).to(self.device).eval()
        head = self.model.config.policy_head_config
        self.state_dim, self.action_dim = self.stats.state_dim, self.stats.action_dim
        # The model's widths: the widest embodiment's (this embodiment's own with a single one).
        model_state, model_action = self.embodiments.state_dim, self.embodiments.action_dim
        if head.action_dim != model_action or head.state_dim not in (0, model_state):
            raise ValueError(
                f"{self.ckpt_dir}: the head predicts action_dim={head.action_dim} from state_dim={head.state_dim}, "
                f"but dataset_stats.json has action_dim={model_action}, state_dim={model_state}"
            )
        if self.multi_embodiment and not getattr(head, "state_mask_input", False):
            raise ValueError(
                f"{self.ckpt_dir}: dataset_stats.json lists several embodiments {list(self.embodiments)} but the head "
                "was not built for them (policy_head_config.state_mask_input is false)"
            )
        self.model_state_dim, self.model_action_dim = int(head.state_dim), int(head.action_dim)
        if self.stats.delta_control and self.action_dim != self.state_dim:
            raise ValueError("delta_control checkpoints integrate deltas onto the state: needs action_dim == state_dim")
        self.horizon = int(head.prediction_horizon)
        # Steps beyond the training chunk were always padding in training: never execute them.
        self.chunk_size = min(self.horizon, int(self.stats.chunk_size or self.horizon))

        self.tokenizer = AutoTokenizer.from_pretrained(self.ckpt_dir)
        processor = AutoProcessor.from_pretrained(self.ckpt_dir)
        data_args = SimpleNamespace(
            image_size_stable=self.inference_config.image_size_stable,
            image_size_wrist=self.inference_config.image_size_wrist,
        )
        self.process = Qwen2VLAProcess(
            self.tokenizer, processor, data_args, self.camera_names,
            embodiment=self.embodiment if self.multi_embodiment else None,
        )
        self.image_transform = CameraImageTransform(
            self.inference_config.image_size_stable, self.inference_config.image_crop_ratio
        )
        self.collator = Qwen2VLADataCollatorForSupervisedDataset(processor, self.dtype, self.tokenizer)
        # Answer as in training: generate "reasoning Next action:<|im_end|>" when the model was trained
        # with reasoning (and a token budget is given), else append the fixed answer it was trained on.
        trained_with_reasoning = getattr(self.model.config, "use_reasoning", None) is not False
        self.generate_reasoning = trained_with_reasoning and self.max_new_tokens > 0
        fixed = answer_text("", trained_with_reasoning)
        self.fixed_answer_ids = torch.as_tensor(self.tokenizer(fixed, add_special_tokens=False)["input_ids"])
        if compile_head:
            self.model.policy_head.compile_denoiser(mode=compile_head if isinstance(compile_head, str) else None)

    # ---- description ------------------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """What a client needs to know to build observations (sent by the policy server on connect)."""
        stable, wrist = self.inference_config.image_size_stable, self.inference_config.image_size_wrist
        return {
            "policy": "dexvla",
            # The directory's name only: the metadata goes to every client, the server's file layout does not.
            "checkpoint": self.ckpt_dir.resolve().name,
            "camera_names": list(self.camera_names),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "delta_control": bool(self.stats.delta_control),
            "image_size_stable": list(stable),
            "image_size_wrist": list(wrist),
            "image_crop_ratio": self.inference_config.image_crop_ratio,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            # Only for a checkpoint over several embodiments: a single-embodiment server's metadata is unchanged.
            **({"embodiment": self.embodiment, "embodiments": list(self.embodiments)} if self.multi_embodiment else {}),
        }

    # ---- inference --------------------------------------------------------------------------------
    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One observation -> ``{"actions": (chunk, action_dim), "reasoning": str, "policy_timing": {...}}``."""
        return self.infer_batch([obs])[0]

    def infer_batch(self, observations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """A list of observations -> one result per observation (as :meth:`infer`), computed as one batch."""
        return self.infer_prepared_batch([self.prepare(obs) for obs in observations])

    def prepare(self, obs: Mapping[str, Any]) -> PreparedObservation:
        """Validate and pre-process one observation, without touching the model.

        Safe to call from several threads, also while another thread runs :meth:`infer_prepared`: a server
        does this outside its inference lock. Raises :class:`ObservationError` for a malformed observation.
        """
        start = time.perf_counter()
        frames, state, prompt = validate_observation(
            obs, self.camera_names, self.state_dim, self.default_prompt, self.limits
        )
        with self._prepare_lock:
            features = self.prompt_features(frames, prompt)
        return PreparedObservation(features, state, 1000.0 * (time.perf_counter() - start), prompt)

    def infer_prepared(self, prepared: PreparedObservation) -> dict[str, Any]:
        """:meth:`infer` of an observation that went through :meth:`prepare`."""
        return self.infer_prepared_batch([prepared])[0]

    def infer_prepared_batch(self, prepared: Sequence[PreparedObservation]) -> list[dict[str, Any]]:
        """:meth:`infer_batch` of observations that went through :meth:`prepare`, computed as one batch.

        ``policy_timing``: ``infer_ms`` (pre-processing + model + post-processing of the batch), ``prepare_ms``
        (the pre-processing part) and ``batch_size``.
        """
        if not prepared:
            return []
        start = time.perf_counter()
        raw_states = np.stack([p.state for p in prepared])  # (B, state_dim)
        states = torch.as_tensor(self.stats.normalize_state(raw_states), dtype=torch.float32)
        if self.multi_embodiment:  # zero-padded to the model's width, as training padded it
            states = torch.nn.functional.pad(states, (0, self.model_state_dim - self.state_dim))
        normalized, reasoning = self._predict(  # (B, horizon, model action_dim)
            [p.features for p in prepared], states, [p.prompt for p in prepared]
        )
        # This embodiment's own dimensions, un-normalised with its statistics.
        actions = self.postprocess_actions(normalized[:, : self.chunk_size, : self.action_dim], raw_states)
        prepare_ms = sum(p.prepare_ms for p in prepared)
        elapsed_ms = 1000.0 * (time.perf_counter() - start) + prepare_ms
        return [
            {
                "actions": actions[i],
                "reasoning": reasoning[i],
                "policy_timing": {"infer_ms": elapsed_ms, "prepare_ms": prepare_ms, "batch_size": len(prepared)},
            }
            for i in range(len(prepared))
        ]

    def prompt_features(self, frames: Sequence[np.ndarray], prompt: str) -> dict[str, torch.Tensor]:
        """One observation's model inputs: ``frames`` (one ``(H, W, 3)`` uint8 per camera) and the prompt.

        The training transform in its deterministic form (resize, then training's crop as a centre crop),
        then the training processor: a training sample of the same frame gets identical ``pixel_values``.
        """
        return self.process.prompt_inputs(self.image_transform(frames), prompt)

    def postprocess_actions(self, normalized: np.ndarray, raw_states: np.ndarray) -> np.ndarray:
        """``(B, T, action_dim)`` model output in [-1, 1] -> ``(B, T, action_dim)`` float32 robot actions."""
        return postprocess_actions(normalized, raw_states, self.stats)

    def noise(self, batch_size: int) -> torch.Tensor | None:
        """``(B, horizon, action_dim)`` float32 initial DDIM noise, the same for every row (``None`` if unseeded)."""
        if self.seed is None:
            return None
        generator = torch.Generator(device="cpu").manual_seed(int(self.seed))
        row = torch.randn((1, self.horizon, self.model_action_dim), generator=generator, dtype=torch.float32)
        return row.expand(batch_size, -1, -1).contiguous()

    def reset_reasoning(self) -> None:
        """Forget the remembered reasoning (``reasoning_every``): the next query of every prompt generates."""
        self._reasoning_memory.clear()

    def _reusable_reasoning(self, prompts: Sequence[str | None] | None) -> list[_RememberedReasoning] | None:
        """The remembered answers this batch reuses, one per row, or None when it must generate."""
        if not self.generate_reasoning or self.reasoning_every == 1 or prompts is None:
            return None
        memory = [None if p is None else self._reasoning_memory.get(p) for p in prompts]
        if any(m is None or m.uses >= self.reasoning_every for m in memory):
            return None
        return memory

    def _remember_reasoning(self, prompts: Sequence[str | None] | None, out: Any) -> None:
        """Keep each row's generated answer (``out``: ``predict_action``'s output) under its prompt."""
        if self.reasoning_every == 1 or prompts is None:
            return
        for row, prompt in enumerate(prompts):
            if prompt is None:
                continue
            answer = out.sequences[row][out.answer_mask[row]].cpu()
            self._reasoning_memory.pop(prompt, None)
            self._reasoning_memory[prompt] = _RememberedReasoning(answer, out.reasoning[row] if out.reasoning else "")
            while len(self._reasoning_memory) > _REASONING_MEMORY_SIZE:
                self._reasoning_memory.pop(next(iter(self._reasoning_memory)))

    def _predict(
        self,
        features: list[dict[str, torch.Tensor]],
        states: torch.Tensor,
        prompts: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Model output ``(B, horizon, action_dim)`` in [-1, 1] and the reasoning of each row.

        ``prompts``: each row's instruction, the key of reasoning reuse (``reasoning_every``); None: no reuse.
        """
        batch = {k: v.to(self.device) for k, v in self.collator(features).items()}
        noise = self.noise(len(features))
        reused = self._reusable_reasoning(prompts)
        kwargs: dict[str, Any] = dict(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            states=states.to(self.device, self.dtype),
            pixel_values=batch.get("pixel_values"),
            image_grid_thw=batch.get("image_grid_thw"),
            mm_token_type_ids=batch.get("mm_token_type_ids"),
            max_new_tokens=self.max_new_tokens,
            generate_reasoning=self.generate_reasoning and reused is None,
            answer_ids=self.fixed_answer_ids,
            tokenizer=self.tokenizer,
            num_inference_timesteps=self.num_inference_timesteps,
            # Per-row noise: a batch gives each observation what it would get alone.
            noise=None if noise is None else noise.to(self.device),
            **self._masks(len(features)),
        )
        if reused is not None:
            # The answer is fixed: prompt + the remembered answer in one forward, rows right padded to one length.
            answers = [m.answer_ids for m in reused]
            width = max(len(a) for a in answers)
            kwargs["answer_ids"] = torch.stack([torch.cat([a, a[-1:].expand(width - len(a))]) for a in answers])
            kwargs["answer_ids_mask"] = torch.arange(width)[None, :] < torch.tensor([len(a) for a in answers])[:, None]
            kwargs["tokenizer"] = None
        with torch.inference_mode():
            out = self.model.predict_action(**kwargs)
        actions = out.actions.float().cpu().numpy()
        if reused is not None:
            for memory in reused:
                memory.uses += 1
            return actions, [m.text for m in reused]
        if kwargs["generate_reasoning"]:
            self._remember_reasoning(prompts, out)
        reasoning = out.reasoning or [""] * len(features)
        return actions, list(reasoning)

    def _masks(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``predict_action``'s ``action_mask``/``state_mask`` ``(B, D)`` of this embodiment (none for one embodiment)."""
        if not self.multi_embodiment:
            return {}
        state_mask = torch.arange(self.model_state_dim) < self.state_dim
        action_mask = torch.arange(self.model_action_dim) < self.action_dim
        return {
            "state_mask": state_mask.expand(batch_size, -1).to(self.device),
            "action_mask": action_mask.expand(batch_size, -1).to(self.device),
        }

    # ---- helpers ------------------------------------------------------------------------------------
    def warmup(self, obs: Mapping[str, Any], passes: int = 2) -> list[float]:
        """Run ``passes`` untimed-by-the-loop inferences (allocator, kernels, caches); returns their ms."""
        times = []
        for _ in range(max(0, passes)):
            start = time.perf_counter()
            self.infer(obs)
            times.append(1000.0 * (time.perf_counter() - start))
        return times


__all__ = [
    "DexVLAPolicy",
    "ObservationError",
    "ObservationLimits",
    "PreparedObservation",
    "postprocess_actions",
    "resolve_device",
    "resolve_dtype",
    "validate_observation",
]
