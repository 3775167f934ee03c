"""Two processes on CPU (gloo): torchrun DDP and the deepspeed launcher with ZeRO-2 train the same run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_vla import REPO_ROOT, tiny_argv, train_logs

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def launch_env(episodes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of the launched processes: the test episodes as the `example_tasks` task, CPU DeepSpeed."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    (artifacts / "example_episodes").symlink_to(episodes_dir, target_is_directory=True)
    return {
        **os.environ,
        "DEXVLA_ARTIFACTS": str(artifacts),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        # DeepSpeed compiles its CPU communication op once (~40 s); keep it in the ignored build folder.
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / "build" / "torch_extensions")),
        "PYTHONPATH": str(REPO_ROOT),
    }


def _train(launcher: list[str], model_dir: Path, output_dir: Path, env: dict[str, str], **overrides) -> dict:
    argv = tiny_argv(model_dir, output_dir, task_name="example_tasks", max_steps=STEPS, save_steps=STEPS, **overrides)
    done = subprocess.run(
        [*launcher, str(REPO_ROOT / "train_vla.py"), *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((output_dir / "trainer_state.json").read_text())


def test_zero2_matches_ddp_on_two_processes(tiny_model_dir: Path, launch_env: dict[str, str], tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    deepspeed = [str(bin_dir / "deepspeed"), "--num_gpus", "2", "--master_port", str(_free_port())]

    ddp = _train(torchrun, tiny_model_dir, tmp_path / "ddp", launch_env, llm_loss_weight=0.5)
    zero2 = _train(
        deepspeed,
        tiny_model_dir,
        tmp_path / "zero2",
        launch_env,
        llm_loss_weight=0.5,
        deepspeed=str(REPO_ROOT / "scripts" / "zero2.json"),
    )

    ddp_logs, zero2_logs = train_logs(ddp["log_history"]), train_logs(zero2["log_history"])
    assert [e["step"] for e in ddp_logs] == [e["step"] for e in zero2_logs] == list(range(1, STEPS + 1))
    for a, b in zip(ddp_logs, zero2_logs, strict=True):
        for key in ("loss", "llm_loss", "action_loss", "learning_rate"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
        # Component losses are averaged over both processes the way the loss is.
        assert a["loss"] == pytest.approx(a["action_loss"] + 0.5 * a["llm_loss"], rel=1e-5)

    # Same optimisation: the final weights agree.
    ddp_weights = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    zero2_weights = load_file(str(tmp_path / "zero2" / "model.safetensors"))
    # DeepSpeed's consolidated state dict holds the tied lm_head as a separate copy of the embeddings.
    assert ddp_weights.keys() <= zero2_weights.keys() and len(zero2_weights.keys() - ddp_weights.keys()) <= 1
    for name, value in ddp_weights.items():
        torch.testing.assert_close(zero2_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)

    # Each process left its RNG state in the (atomically published) checkpoint; ZeRO-2 its shards.
    for run, extra in (("ddp", "optimizer.pt"), ("zero2", "latest")):
        files = {p.name for p in (tmp_path / run / f"checkpoint-{STEPS}").iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", "dataset_stats.json", "model.safetensors", extra} <= files
        assert not list((tmp_path / run).glob(".staging-*"))
