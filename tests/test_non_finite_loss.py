"""A non-finite training loss stops the run on every process before anything is saved (or is skipped on request)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import TrainerCallback

from qwen2_vla.trainer import NonFiniteLossError, non_finite_loss_report
from tests.conftest import _train_tiny_run
from tests.test_train_vla import train_logs


class PoisonLoss(TrainerCallback):
    """Makes ``name`` (and so ``loss``) NaN in the forward pass of optimizer step ``step`` (1-based)."""

    def __init__(self, step: int, name: str) -> None:
        self.step, self.name = step, name
        self.fingerprints: dict[int, torch.Tensor] = {}  # global_step -> the trainable weights after it

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def poison(module, inputs, output):
            if module.training and state.global_step + 1 == self.step:
                output[self.name] = output[self.name] * float("nan")
                output["loss"] = output["loss"] * float("nan")
            return output

        model.register_forward_hook(poison)
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        trainable = [p.detach().flatten() for p in self.model.parameters() if p.requires_grad]
        self.fingerprints[state.global_step] = torch.cat(trainable).clone()


@pytest.mark.parametrize("name", ["action_loss", "llm_loss"])
def test_non_finite_loss_stops_before_anything_is_saved(name, tiny_model_dir, episodes_dir, tmp_path) -> None:
    out = tmp_path / "run"
    poison = PoisonLoss(step=3, name=name)
    # Before the fix the Trainer's logging_nan_inf_filter hid the NaN and the run finished with NaN weights.
    with pytest.raises(NonFiniteLossError, match=rf"at step 3: loss = nan on process 0; {name} = nan on process 0"):
        _train_tiny_run(
            tiny_model_dir, episodes_dir, out, max_steps=4, save_steps=2, use_reasoning=True,
            callbacks=[poison],
        )
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()  # no final export of a broken model
    assert sorted(poison.fingerprints) == [1, 2]
    assert all(torch.isfinite(f).all() for f in poison.fingerprints.values())


def test_skip_option_leaves_the_weights_of_a_non_finite_step_untouched(tiny_model_dir, episodes_dir, tmp_path):
    poison = PoisonLoss(step=3, name="action_loss")
    trainer = _train_tiny_run(
        tiny_model_dir, episodes_dir, tmp_path / "run", max_steps=4, save_steps=4, non_finite_loss="skip",
        callbacks=[poison],
    )
    prints = poison.fingerprints
    assert sorted(prints) == [1, 2, 3, 4]
    assert all(torch.isfinite(f).all() for f in prints.values())
    assert torch.equal(prints[3], prints[2])  # step 3 moved nothing (no moments, no weight decay)
    assert not torch.equal(prints[4], prints[3]) and not torch.equal(prints[2], prints[1])
    assert [log["skipped_batches"] for log in train_logs(trainer)] == [0, 0, 1, 1]
    assert trainer.skipped_batches == 1


def test_reports_name_the_loss_and_the_process() -> None:
    finite = torch.tensor([[0.5, 0.1, 0.4], [0.6, 0.2, 0.4]])
    assert non_finite_loss_report(finite, ("loss", "llm_loss", "action_loss")) is None
    bad = finite.clone()
    bad[1, 2], bad[1, 0] = float("inf"), float("inf")
    assert non_finite_loss_report(bad, ("loss", "llm_loss", "action_loss")) == (
        "loss = inf on process 1; action_loss = inf on process 1"
    )


def _gathered_report(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # Only process 1 sees NaN; both must learn it from the same gather the trainer does.
        local = torch.tensor([float("nan") if rank == 1 else 0.3, 0.1, float("nan") if rank == 1 else 0.2])
        gathered = [torch.empty(3) for _ in range(world)]
        dist.all_gather(gathered, local)
        results[rank] = non_finite_loss_report(torch.stack(gathered), ("loss", "llm_loss", "action_loss"))
    finally:
        dist.destroy_process_group()


def test_every_process_sees_another_process_non_finite_loss() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_gathered_report, args=(2, port, results), nprocs=2, join=True)
    expected = "loss = nan on process 1; action_loss = nan on process 1"
    assert dict(results) == {0: expected, 1: expected}


def test_non_finite_loss_value_is_checked() -> None:
    from qwen2_vla.arguments import TrainingArguments

    with pytest.raises(ValueError, match="non_finite_loss='ignore' is not one of"):
        TrainingArguments(output_dir=str(Path("/tmp") / "unused"), non_finite_loss="ignore", use_cpu=True)
