"""Stage-1 weight loading: the reference checkpoint layout and this project's safetensors output."""

from __future__ import annotations

import logging
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from policy_heads import ScaleDP, ScaleDPPolicyConfig, load_pretrained_dit


def tiny_head(seed: int, **overrides) -> ScaleDP:
    kwargs = dict(model_size="ScaleDP_tiny", cond_dim=16, state_dim=4, action_dim=6, prediction_horizon=8)
    kwargs.update(combine_hidden_dim=32)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    head = ScaleDP(ScaleDPPolicyConfig(**kwargs))
    with torch.no_grad():  # every tensor distinct from a fresh head's
        for param in head.parameters():
            param.add_(torch.randn_like(param))
    return head


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    for key in a:
        if not any(s in key for s in skip):
            assert torch.equal(a[key], b[key]), key


def test_reference_checkpoint_layout(tmp_path, caplog) -> None:
    source = tiny_head(seed=1)
    nets = {f"policy.noise_pred_net.{k}": v for k, v in source.state_dict().items()}
    nets["policy.backbones.0.conv1.weight"] = torch.zeros(3)  # stage-1 image encoder: not part of the head
    path = tmp_path / "policy_step_100000.ckpt"
    torch.save({"nets": {"nets": nets}, "optimizer": {"step": torch.tensor(3)}}, path)

    target = tiny_head(seed=2)
    kept_cond_emb = target.cond_obs_emb.weight.clone()
    with caplog.at_level(logging.INFO, logger="policy_heads.pretrained_dit"):
        report = load_pretrained_dit(target, path)
    assert_same(source.state_dict(), target.state_dict(), skip=("cond_obs_emb",))
    assert torch.equal(target.cond_obs_emb.weight, kept_cond_emb)  # dropped on purpose, left as initialised
    assert report.missing == ["cond_obs_emb.bias", "cond_obs_emb.weight"]
    assert report.dropped == ["cond_obs_emb.bias", "cond_obs_emb.weight"]
    assert report.unexpected == []
    records = [r for r in caplog.records if "stage-1" in r.getMessage()]
    assert len(records) == 1 and "\n" not in records[0].getMessage()
    assert "missing (2): cond_obs_emb.bias, cond_obs_emb.weight" in records[0].getMessage()


@pytest.mark.parametrize("layout", ["directory", "file", "prefixed_file"])
def test_project_safetensors_layouts(tmp_path, layout: str) -> None:
    source = tiny_head(seed=1)
    if layout == "directory":
        source.save_pretrained(tmp_path / "stage1")
        path = tmp_path / "stage1"
    else:
        prefix = "policy_head." if layout == "prefixed_file" else ""
        tensors = {prefix + k: v.contiguous() for k, v in source.state_dict().items()}
        if prefix:  # a checkpoint of a model holding the head, e.g. the stage-1 wrapper with its encoder
            tensors["image_encoder.conv1.weight"] = torch.zeros(4, 3, 3, 3)
        path = tmp_path / "head.safetensors"
        save_file(tensors, path)
    target = tiny_head(seed=2)
    report = load_pretrained_dit(target, path)
    assert report.missing == [] and report.unexpected == []
    assert report.dropped == (["image_encoder.conv1.weight"] if layout == "prefixed_file" else [])
    assert "missing 0" in str(report) and len(str(report).splitlines()) == 1
    assert_same(source.state_dict(), target.state_dict())
    cond, states = torch.randn(2, 1, 16), torch.randn(2, 4)
    a = source(hidden_states=cond, states=states, generator=torch.Generator().manual_seed(0)).actions
    b = target(hidden_states=cond, states=states, generator=torch.Generator().manual_seed(0)).actions
    assert torch.equal(a, b)


def test_missing_and_unexpected_keys_reported_in_one_line(tmp_path, caplog) -> None:
    source = tiny_head(seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.1.")}
    state["extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "partial.safetensors"
    save_file(state, path)
    with caplog.at_level(logging.INFO, logger="policy_heads.pretrained_dit"):
        report = load_pretrained_dit(tiny_head(seed=2), path)
    assert report.unexpected == ["extra_head.weight"]
    assert len(report.missing) == 10 and all(k.startswith("blocks.1.") for k in report.missing)
    (record,) = [r for r in caplog.records if "stage-1" in r.getMessage()]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in message
    assert "missing (10): blocks.{1}.* (10 keys)" in message and "unexpected (1): extra_head.weight" in message


def test_shape_mismatch_is_refused(tmp_path) -> None:
    source = tiny_head(seed=1, action_dim=14)
    source.save_pretrained(tmp_path / "stage1")
    target = tiny_head(seed=2, action_dim=6)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_pretrained_dit(target, tmp_path / "stage1")
    match = re.search(r"'(\S+)' has shape \(([\d, ]*)\).* expects \(([\d, ]*)\)", str(err.value))
    assert match is not None, str(err.value)
    key = match.group(1)
    assert tuple(source.state_dict()[key].shape) == _shape(match.group(2))
    assert tuple(target.state_dict()[key].shape) == _shape(match.group(3))
    assert _shape(match.group(2)) != _shape(match.group(3))
    assert_same(before, target.state_dict())  # nothing was half-loaded


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(" ", "").split(",") if x)


class _NotATensor:
    pass


def test_pickled_objects_are_never_unpickled(tmp_path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"nets": {"nets": {"policy.noise_pred_net.x": _NotATensor()}}}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pretrained_dit(tiny_head(seed=0), path)


def test_missing_path_is_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained_dit(tiny_head(seed=0), tmp_path / "nowhere.ckpt")


@pytest.mark.parametrize("source", ["other_model", "unet_head"])
def test_checkpoint_matching_no_tensor_is_an_error(tmp_path, source: str) -> None:
    # Before: a warning, and stage 2 started from a random head believing it had stage-1 weights.
    if source == "other_model":
        tensors = {"encoder.layers.0.weight": torch.zeros(4, 4), "encoder.layers.0.bias": torch.zeros(4)}
    else:  # a head of the other type: none of its names exist in ScaleDP
        tensors = {"diffusion_step_encoder.1.weight": torch.zeros(8, 4), "final_conv.1.bias": torch.zeros(6)}
    path = tmp_path / "stage1.safetensors"
    save_file(tensors, path)
    target = tiny_head(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"no tensor of the stage-1 checkpoint .*stage1\.safetensors matches"):
        load_pretrained_dit(target, path)
    assert_same(before, target.state_dict())
