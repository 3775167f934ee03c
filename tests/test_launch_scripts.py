"""The launch scripts' environment flags reach the launcher and train_vla.py, and the recipe clips nothing.

Each GPU script runs with a fake ``deepspeed`` first on ``PATH`` that records its argv; the
recorded command line must carry the documented flags (the reference's values when the
environment sets nothing), and its train_vla.py part must parse with the four argument
dataclasses. The DeepSpeed config the run would get is filled in the way transformers does it
and read back with DeepSpeed's own reader: no gradient clipping unless ``MAX_GRAD_NORM`` is set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from deepspeed.runtime.config import get_gradient_clipping

from qwen2_vla.arguments import ActionHeadArguments, DataArguments, ModelArguments, TrainingArguments

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_SCRIPTS = ["train_dexvla_stage2.sh", "train_dexvla_stage3.sh", "train_divla.sh"]
# The scripts' own environment flags; none may leak in from the environment running the tests.
SCRIPT_ENV = ("HOSTFILE", "NUM_GPUS", "MASTER_PORT", "ZERO", "BF16", "FLASH_ATTN", "MAX_GRAD_NORM", "ACTION_HEAD")
# What the reference's scripts hard-code (seed notes: scripts/train_dexvla_stage2.sh).
REFERENCE_LAUNCH = ["--master_port", "29604", "--num_gpus=8", "--num_nodes=1", "./train_vla.py"]


def _fake_program(bin_dir: Path, name: str) -> Path:
    """An executable ``name`` that appends its argv (one JSON list per call) to ``$ARGV_FILE``."""
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['ARGV_FILE'], 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    return fake


def _run_script(script: str, tmp_path: Path, env: dict[str, str], *extra: str) -> list[list[str]]:
    """Run ``scripts/<script>``; return the argv of each call of the faked programs."""
    argv_file = tmp_path / "argv.jsonl"
    argv_file.unlink(missing_ok=True)
    bin_dir = tmp_path / "bin"
    _fake_program(bin_dir, "deepspeed")
    base = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    full_env = {
        **base,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ARGV_FILE": str(argv_file),
        "MNOP": "/path/to/model",
        "DIT_PRETRAIN": "/path/to/dit.ckpt",
        "OUTPUT": str(tmp_path / "out"),
        **env,
    }
    subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / script), *extra], env=full_env, check=True, capture_output=True, text=True
    )
    return [json.loads(line) for line in argv_file.read_text().splitlines()]


def _launch(script: str, tmp_path: Path, env: dict[str, str] | None = None, *extra: str) -> tuple[list[str], list[str]]:
    """``(launcher options up to ./train_vla.py, train_vla.py arguments)`` of one script run."""
    (argv,) = _run_script(script, tmp_path, env or {}, *extra)
    split = argv.index("./train_vla.py") + 1
    return argv[:split], argv[split:]


def _flag(argv: list[str], name: str) -> str:
    """The value of the last ``--name`` (argparse keeps the last one)."""
    positions = [i for i, arg in enumerate(argv) if arg == f"--{name}"]
    assert positions, f"--{name} missing from {argv}"
    return argv[positions[-1] + 1]


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Parse a train_vla.py command line as train_vla.py does (relative paths from the repository)."""
    monkeypatch.chdir(REPO_ROOT)
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, ActionHeadArguments))
    return parser.parse_args_into_dataclasses(args=argv)


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_unset_flags_take_the_reference_values(script: str, tmp_path: Path) -> None:
    launcher, train_args = _launch(script, tmp_path)
    assert launcher == REFERENCE_LAUNCH
    expected = {"deepspeed": "scripts/zero2.json", "bf16": "True", "flash_attn": "True", "max_grad_norm": "0"}
    assert {name: _flag(train_args, name) for name in expected} == expected
    assert (tmp_path / "out" / "log.log").is_file()  # the run's output is tee'd, as the reference


@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_environment_flags_reach_launcher_and_train_vla(script: str, tmp_path: Path) -> None:
    env = {
        "NUM_GPUS": "2",
        "MASTER_PORT": "12345",
        "ZERO": "scripts/zero3.json",
        "BF16": "False",
        "FLASH_ATTN": "False",
        "MAX_GRAD_NORM": "1.0",
    }
    launcher, train_args = _launch(script, tmp_path, env, "--max_steps", "10")
    assert launcher == ["--master_port", "12345", "--num_gpus=2", "--num_nodes=1", "./train_vla.py"]
    expected = {
        "deepspeed": "scripts/zero3.json",
        "bf16": "False",
        "flash_attn": "False",
        "max_grad_norm": "1.0",
        "max_steps": "10",
    }  # extra arguments come last, so they override the script's
    assert {name: _flag(train_args, name) for name in expected} == expected

    # Several nodes: the hostfile replaces the single-node placement (NUM_GPUS then does not apply).
    launcher, _ = _launch(script, tmp_path, {**env, "HOSTFILE": "/etc/dexvla/hostfile"})
    assert launcher == ["--master_port", "12345", "--hostfile", "/etc/dexvla/hostfile", "./train_vla.py"]


@pytest.mark.parametrize("script", GPU_SCRIPTS)
@pytest.mark.parametrize(
    ("env", "clipping"),
    [({}, 0.0), ({"MAX_GRAD_NORM": "1.0"}, 1.0), ({"ZERO": "scripts/zero3.json"}, 0.0)],
    ids=["default", "clip", "zero3"],
)
def test_deepspeed_config_clips_only_on_request(
    script: str, env: dict[str, str], clipping: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The published recipe does not clip (the reference's DeepSpeed config had no gradient_clipping)."""
    _, train_args = _launch(script, tmp_path, env, "--use_cpu", "True")
    # Every flag the script passes is accepted (none of them is a rejected legacy value).
    *_, training_args, _ = _parse(train_args, monkeypatch)
    assert training_args.max_grad_norm == clipping
    ds_config = training_args.hf_deepspeed_config.config  # "auto" values filled from the arguments
    assert ds_config["gradient_clipping"] == clipping
    assert get_gradient_clipping(ds_config) == clipping  # what the DeepSpeed engine will use
    expected_stage = 3 if "zero3" in env.get("ZERO", "") else 2
    assert ds_config["zero_optimization"]["stage"] == expected_stage


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_zero_configs_take_clipping_from_the_arguments(config: str) -> None:
    """The key must stay: without it this DeepSpeed clips at its own default, whatever --max_grad_norm says."""
    assert json.loads((REPO_ROOT / "scripts" / config).read_text())["gradient_clipping"] == "auto"
    assert get_gradient_clipping({}) > 0  # DeepSpeed >= 0.18 defaults to 1.0; 0.9 (the reference's) to 0


def test_tiny_cpu_script_passes_accepted_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make demo``'s script: both train_vla.py runs get flags the argument dataclasses accept."""
    art = tmp_path / "art"
    (art / "example_episodes").mkdir(parents=True)
    (art / "example_episodes" / "episode_0.hdf5").touch()  # present, so the script makes none
    (art / "tiny_qwen2_vl").mkdir()
    (art / "tiny_qwen2_vl" / "config.json").write_text("{}")
    fake_python = _fake_program(tmp_path / "bin", "python")
    runs = _run_script(
        "train_tiny_cpu.sh",
        tmp_path,
        {"PY": str(fake_python), "DEXVLA_ARTIFACTS": str(art), "OUTPUT": str(tmp_path / "tiny")},
    )
    assert [argv[0] for argv in runs] == ["train_vla.py", "train_vla.py"]
    stage2, stage3 = (_parse(argv[1:], monkeypatch) for argv in runs)
    assert stage2[0].model_name_or_path == str(art / "tiny_qwen2_vl")
    assert stage3[2].load_pretrain and stage3[0].model_name_or_path.endswith("stage2/checkpoint-1500")
