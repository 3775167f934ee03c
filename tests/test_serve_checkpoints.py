"""Checkpoints the trainer writes (full, EMA, LoRA adapter, merged LoRA, ``use_reasoning False``), loaded through
``DexVLAPolicy`` and served to the stock openpi client; and a merged LoRA model computing what its adapter does.

The training runs are conftest's session fixtures ``full_ema_run`` and ``lora_run`` (2 steps each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from data_utils.hdf5_io import find_all_hdf5
from evaluate.policy import DexVLAPolicy
from evaluate.serve_policy import PolicyServer
from tests.conftest import CAMERAS
from tests.test_eval_policy import observation

transformers.logging.set_verbosity_error()
TRAIN_CHUNK = 8  # tests/test_train_vla.py's tiny_argv


@contextmanager
def serving(policy: DexVLAPolicy) -> Iterator[WebsocketClientPolicy]:
    """A server for ``policy`` on a free loopback port, and a connected openpi client."""
    server = PolicyServer(policy, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    try:
        yield client
    finally:
        client._ws.close()
        server.shutdown()
        thread.join(timeout=10)


def run_dir(trainer) -> Path:
    return Path(trainer.args.output_dir)


# Each kind of directory the trainer leaves, and whether its run trained with reasoning.
KINDS: dict[str, tuple[str, Callable[[Path], Path], bool]] = {
    "full_final": ("full_ema_run", lambda run: run, False),
    "full_checkpoint": ("full_ema_run", lambda run: run / "checkpoint-2", False),
    "ema": ("full_ema_run", lambda run: run / "ema", False),
    "lora_adapter_final": ("lora_run", lambda run: run, True),
    "lora_adapter_checkpoint": ("lora_run", lambda run: run / "checkpoint-2", True),
    "lora_merged": ("lora_run", lambda run: run / "merged", True),
}


def assert_same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_trainer_checkpoint_is_served(kind, request, episodes_dir):
    fixture, locate, with_reasoning = KINDS[kind]
    trainer = request.getfixturevalue(fixture)
    ckpt = locate(run_dir(trainer))
    policy = DexVLAPolicy(ckpt, device="cpu", max_new_tokens=6, seed=0)

    # The weights the run meant this directory to hold.
    if kind in ("full_final", "full_checkpoint"):  # step 2 is the last step: checkpoint-2 is the final model
        assert_same_state(policy.model, trainer.model.state_dict())
    elif kind == "ema":
        state = policy.model.state_dict()
        assert trainer.ema.shadow and all(torch.equal(state[n], v) for n, v in trainer.ema.shadow.items())
        assert any(not torch.equal(state[n], trainer.model.state_dict()[n]) for n in trainer.ema.shadow)
    elif kind.startswith("lora_adapter"):  # merged on load: what the run's merged export holds
        merged = DexVLAPolicy(run_dir(trainer) / "merged", device="cpu").model.state_dict()
        assert_same_state(policy.model, merged, atol=1e-6)
    assert policy.generate_reasoning is with_reasoning
    meta = policy.metadata
    assert meta["camera_names"] == CAMERAS and meta["chunk_size"] == TRAIN_CHUNK and meta["image_size_stable"] == [56, 56]

    obs = observation(find_all_hdf5(episodes_dir)[0], 4)
    local = policy.infer(obs)
    with serving(policy) as client:
        assert client.get_server_metadata() == meta
        reply = client.infer(obs)
    assert reply["actions"].shape == (TRAIN_CHUNK, 14) and reply["actions"].dtype == np.float32
    np.testing.assert_array_equal(reply["actions"], local["actions"])
    assert reply["reasoning"] == local["reasoning"]
    if not with_reasoning:
        assert reply["reasoning"] == ""  # trained without reasoning: nothing generated, the fixed answer appended


def test_lora_adapter_policy_acts_like_the_merged_export(lora_run, episodes_dir):
    adapter = DexVLAPolicy(run_dir(lora_run) / "checkpoint-2", device="cpu", max_new_tokens=6, seed=0)
    merged = DexVLAPolicy(run_dir(lora_run) / "merged", device="cpu", max_new_tokens=6, seed=0)
    path = find_all_hdf5(episodes_dir)[1]
    observations = [observation(path, t) for t in (0, 15)]
    for a, b in zip(adapter.infer_batch(observations), merged.infer_batch(observations), strict=True):
        np.testing.assert_allclose(a["actions"], b["actions"], rtol=0, atol=1e-5)
        assert a["reasoning"] == b["reasoning"]


# ---- LoRA merge -------------------------------------------------------------------------------------
def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training forward (loss parts and logits) with the diffusion noise and timesteps fixed."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**batch)
    return {"logits": out.logits, "action_loss": out.action_loss, "llm_loss": out.llm_loss}


def _actions(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sampled chunks ``(B, chunk, action_dim)`` from fixed DDIM noise, answer included (no generation)."""
    noise = torch.randn(batch["input_ids"].shape[0], TRAIN_CHUNK, 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.predict_action(
            batch["input_ids"], batch["attention_mask"], batch["states"], batch["pixel_values"],
            batch["image_grid_thw"], batch["mm_token_type_ids"], generate_reasoning=False, noise=noise,
        ).actions


def _unmerged(run: Path, adapter_dir: Path):
    """The PEFT model of ``adapter_dir`` on the run's frozen base, LoRA layers kept apart (not merged)."""
    from peft import PeftModel

    from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration

    config = Qwen2VLAConfig.from_pretrained(adapter_dir)
    base = Qwen2VLAForConditionalGeneration.from_pretrained(run / "lora_base", config=config)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def test_merged_lora_forward_equals_the_unmerged_adapter(lora_run, tmp_path):
    """The trainer's merged export, and ``from_pretrained_vla``'s merge on load of an adapter whose LoRA weights
    are far from zero, compute what the unmerged PEFT model computes; the adapter itself changes the outputs
    by orders of magnitude more than the tolerance (so a merge that dropped it could not pass)."""
    from qwen2_vla import Qwen2VLAForConditionalGeneration
    from qwen2_vla.model_load_utils import from_pretrained_vla

    run = run_dir(lora_run)
    batch = lora_run.data_collator([lora_run.train_dataset[i] for i in (0, 7)])
    base = Qwen2VLAForConditionalGeneration.from_pretrained(run / "lora_base").eval()

    # 1. The trainer's merged export vs its last adapter checkpoint (the same step).
    unmerged = _unmerged(run, run / "checkpoint-2")
    exported = Qwen2VLAForConditionalGeneration.from_pretrained(run / "merged").eval()
    expected, got = _forward(unmerged, batch), _forward(exported, batch)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)
    torch.testing.assert_close(_actions(exported, batch), _actions(unmerged, batch), rtol=1e-5, atol=1e-5)

    # 2. An adapter with large LoRA weights and retrained full modules, merged on load.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unmerged.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    perturbed = tmp_path / "adapter"
    unmerged.peft_config["default"].base_model_name_or_path = str(run / "lora_base")
    unmerged.save_pretrained(perturbed)
    unmerged.get_base_model().config.save_pretrained(perturbed)
    merged = from_pretrained_vla(perturbed).eval()
    assert not any("lora_" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    expected, got, plain = _forward(unmerged, batch), _forward(merged, batch), _forward(base, batch)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)
        assert (plain[key] - value).abs().max() > 1e-2, key  # the adapter matters
    adapted = _actions(unmerged, batch)
    torch.testing.assert_close(_actions(merged, batch), adapted, rtol=1e-5, atol=1e-5)
    assert (_actions(base, batch) - adapted).abs().max() > 1e-2
