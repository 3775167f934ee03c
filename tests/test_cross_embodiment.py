"""Several embodiments in one run: a 14-D bimanual set with three cameras and a 7-D single-arm set with two.

Unit level: task entries, the statistics file of one and of several embodiments, the masked loss (padded
dimensions do not move it; an all-real mask is exactly the mask-free single-embodiment path). End to end (one
module-scoped tiny run shared by the tests below it): train, save, reload each embodiment and replay it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from aloha_scripts.constants import TASK_CONFIGS, get_task_configs, task_embodiments
from data_utils.hdf5_io import find_all_hdf5
from data_utils.normalization import (
    DEFAULT_EMBODIMENT,
    MULTI_STATS_FORMAT_VERSION,
    STATS_FILE_NAME,
    EmbodimentStats,
    NormStats,
    load_embodiment_stats,
)
from data_utils.utils import get_norm_stats
from policy_heads import build_policy_head_config
from policy_heads.losses import masked_noise_mse
from scripts.make_example_episodes import make_example_episodes
from tests.test_train_vla import tiny_argv, train_logs

transformers.logging.set_verbosity_error()

BIMANUAL, ARM = "pytest_bimanual", "pytest_arm"
ARM_CAMERAS = ["cam_high", "cam_right_wrist"]
CHUNK = 8
STEPS = 20  # per episode


@pytest.fixture(scope="module")
def bimanual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bimanual")
    make_example_episodes(out, num_episodes=2, episode_len=STEPS, height=56, width=56, seed=3)
    return out


@pytest.fixture(scope="module")
def arm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single_arm")
    make_example_episodes(
        out, num_episodes=2, episode_len=STEPS, height=56, width=56, seed=4, camera_names=ARM_CAMERAS, state_dim=7
    )
    return out


def mixed_configs(bimanual_dir: Path, arm_dir: Path) -> dict[str, dict]:
    return {
        # No embodiment key: named after the task; dims from the command line (14).
        BIMANUAL: {"dataset_dir": [str(bimanual_dir)], "episode_len": STEPS, "camera_names": list(CAMERAS_3),
                   "train_ratio": 1.0},
        ARM: {"dataset_dir": [str(arm_dir)], "episode_len": STEPS, "camera_names": ARM_CAMERAS, "train_ratio": 1.0,
              "embodiment": "arm7", "state_dim": 7, "action_dim": 7},
    }


CAMERAS_3 = ("cam_high", "cam_left_wrist", "cam_right_wrist")


# ---- task entries and the statistics file ----------------------------------------------------------------------
def test_task_entries_default_and_conflicts(bimanual_dir, arm_dir):
    configs = get_task_configs(f"{BIMANUAL}, {ARM}", 14, 14, mixed_configs(bimanual_dir, arm_dir))
    embodiments = task_embodiments(configs)
    assert list(embodiments) == [BIMANUAL, "arm7"]
    assert (embodiments[BIMANUAL]["state_dim"], embodiments[BIMANUAL]["action_dim"]) == (14, 14)
    assert (embodiments["arm7"]["state_dim"], embodiments["arm7"]["camera_names"]) == (7, ARM_CAMERAS)
    # One embodiment named by two tasks must agree on its layout.
    clash = mixed_configs(bimanual_dir, arm_dir)
    clash[ARM]["embodiment"] = BIMANUAL
    with pytest.raises(ValueError, match="share embodiment 'pytest_bimanual' but differ in camera_names"):
        get_task_configs(f"{BIMANUAL},{ARM}", 14, 14, clash)
    with pytest.raises(ValueError, match="empty one"):
        get_task_configs(f"{BIMANUAL},", 14, 14, clash)


def test_stats_file_one_and_several_embodiments(bimanual_dir, arm_dir, tmp_path):
    bimanual, _ = get_norm_stats(find_all_hdf5(bimanual_dir), camera_names=list(CAMERAS_3), chunk_size=CHUNK)
    arm, _ = get_norm_stats(find_all_hdf5(arm_dir), camera_names=ARM_CAMERAS, chunk_size=CHUNK)
    # One embodiment: byte for byte the flat file NormStats writes.
    single = EmbodimentStats({"aloha": bimanual})
    assert single.save(tmp_path / "one").read_text() == bimanual.save(tmp_path / "flat").read_text()
    loaded = load_embodiment_stats(tmp_path / "flat")
    assert list(loaded) == [DEFAULT_EMBODIMENT] and loaded.select(None)[1].to_dict() == bimanual.to_dict()
    # Several: keyed by embodiment, each block with its cameras, dims and action semantics.
    path = EmbodimentStats({"aloha": bimanual, "arm7": arm}).save(tmp_path / "two")
    data = json.loads(path.read_text())
    assert data["format_version"] == MULTI_STATS_FORMAT_VERSION and list(data["embodiments"]) == ["aloha", "arm7"]
    block = data["embodiments"]["arm7"]
    assert (block["state_dim"], block["action_dim"], block["camera_names"]) == (7, 7, ARM_CAMERAS)
    assert block["action_semantics"] == "absolute"
    both = load_embodiment_stats(path)
    assert (both.state_dim, both.action_dim) == (14, 14)
    np.testing.assert_array_equal(both["arm7"].action_min, arm.action_min)
    with pytest.raises(ValueError, match="several embodiments"):
        NormStats.load(path)  # the single-embodiment reader says what to use instead
    with pytest.raises(ValueError, match="choose one"):
        both.select(None)
    with pytest.raises(ValueError, match="no embodiment 'ur5'"):
        both.select("ur5")
    # Resuming checks every embodiment's statistics against the ones recomputed now.
    from train_vla import check_resumed_stats

    check_resumed_stats(str(tmp_path / "two"), EmbodimentStats({"aloha": bimanual, "arm7": arm}))
    changed = NormStats.from_dict({**arm.to_dict(), "num_steps": arm.num_steps + 1})
    with pytest.raises(ValueError, match="embodiment arm7: num_steps"):
        check_resumed_stats(str(tmp_path / "two"), EmbodimentStats({"aloha": bimanual, "arm7": changed}))
    with pytest.raises(ValueError, match="embodiments"):
        check_resumed_stats(str(tmp_path / "two"), EmbodimentStats({"aloha": bimanual, "ur5": arm}))


# ---- the masked loss -------------------------------------------------------------------------------------------
HEADS = {
    "scale_dp_policy": {"model_size": "ScaleDP_tiny"},
    "unet_diffusion_policy": {"down_dims": [16, 32], "diffusion_step_embed_dim": 16, "n_groups": 4},
}


def tiny_head(kind: str, state_mask_input: bool) -> torch.nn.Module:
    from transformers import AutoModel

    extra = dict(HEADS[kind])
    model_size = extra.pop("model_size", None)
    config = build_policy_head_config(
        kind, cond_dim=32, state_dim=14, action_dim=14, chunk_size=CHUNK, model_size=model_size,
        state_mask_input=state_mask_input, **extra,
    )
    torch.manual_seed(0)
    head = AutoModel.from_config(config).eval()
    with torch.no_grad():  # off the adaLN-Zero start, so the prediction depends on the inputs
        for param in head.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape) * 0.1)
    return head


def head_loss(head, actions, cond, states, is_pad, **masks) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return head(actions=actions, hidden_states=cond, states=states, is_pad=is_pad, generator=generator, **masks).loss


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_padded_dimensions_do_not_move_the_loss(kind):
    head = tiny_head(kind, state_mask_input=True)
    batch = 3
    gen = torch.Generator().manual_seed(1)
    actions = torch.rand(batch, CHUNK, 14, generator=gen) * 2 - 1
    states, cond = torch.randn(batch, 14, generator=gen), torch.randn(batch, 1, 32, generator=gen)
    is_pad = torch.zeros(batch, CHUNK, dtype=torch.bool)
    is_pad[0, -3:] = True
    action_mask = torch.ones(batch, 14, dtype=torch.bool)
    action_mask[1:, 7:] = False  # rows 1 and 2: a 7-D arm padded to 14
    state_mask = action_mask.clone()
    states[1:, 7:] = 0.0
    base = head_loss(head, actions, cond, states, is_pad, action_mask=action_mask, state_mask=state_mask)
    moved = actions.clone()
    moved[1:, :, 7:] = torch.rand(batch - 1, CHUNK, 7, generator=gen) * 10 - 5
    assert head_loss(head, moved, cond, states, is_pad, action_mask=action_mask, state_mask=state_mask) == base
    # A real dimension does move it (the comparison above could fail).
    moved[1, :, 0] += 1.0
    assert head_loss(head, moved, cond, states, is_pad, action_mask=action_mask, state_mask=state_mask) != base
    # The mask is the loss's: padded predictions' errors are out of it, the mean is over real elements only.
    pred, noise = torch.zeros(batch, CHUNK, 14), torch.ones(batch, CHUNK, 14)
    pred[1:, :, 7:] = 100.0
    assert masked_noise_mse(pred, noise, is_pad, action_mask) == 1.0
    # The state projection sees the mask: the same padded state with another mask conditions differently.
    other = state_mask.clone()
    other[1:, 7:] = True
    assert head_loss(head, actions, cond, states, is_pad, action_mask=action_mask, state_mask=other) != base


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_all_real_mask_is_the_single_embodiment_path(kind):
    """Same seed, same loss: no mask (a single-embodiment run) == an all-ones mask, bit for bit; and a head built
    for one embodiment keeps its parameter shapes."""
    head = tiny_head(kind, state_mask_input=False)
    gen = torch.Generator().manual_seed(2)
    actions = torch.rand(2, CHUNK, 14, generator=gen) * 2 - 1
    states, cond = torch.randn(2, 14, generator=gen), torch.randn(2, 1, 32, generator=gen)
    is_pad = torch.zeros(2, CHUNK, dtype=torch.bool)
    is_pad[1, -2:] = True
    plain = head_loss(head, actions, cond, states, is_pad)
    ones = torch.ones(2, 14, dtype=torch.bool)
    assert torch.equal(head_loss(head, actions, cond, states, is_pad, action_mask=ones), plain)
    first = head.combine if kind == "unet_diffusion_policy" else head.combine[0]
    assert first.in_features == 32 + 14
    assert tiny_head(kind, state_mask_input=True).state_dict()[
        "combine.weight" if kind == "unet_diffusion_policy" else "combine.0.weight"
    ].shape[1] == 32 + 28


def test_single_task_builds_the_head_as_before(tiny_model_dir, tmp_path):
    """One task is one embodiment: its tasks are not even looked up (an unregistered name is fine here), the head
    has the command-line widths and no mask input, and its saved config lists exactly the fields it had."""
    import train_vla

    *_, model_config, _ = train_vla.parse_param(tiny_argv(tiny_model_dir, tmp_path, task_name="pytest_unregistered"))
    head = model_config.policy_head_config
    assert (head.state_dim, head.action_dim, head.state_mask_input) == (14, 14, False)
    assert "state_mask_input" not in model_config.to_dict()["policy_head_config"]


# ---- one mixed run, end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tiny_model_dir, bimanual_dir, arm_dir):
    """6 steps over both sets; ``output_dir`` holds the final model and its statistics."""
    import train_vla

    out = tmp_path_factory.mktemp("mixed_run")
    with pytest.MonkeyPatch.context() as mp:
        for name, config in mixed_configs(bimanual_dir, arm_dir).items():
            mp.setitem(TASK_CONFIGS, name, config)
        trainer = train_vla.run(
            tiny_argv(tiny_model_dir, out, task_name=f"{BIMANUAL},{ARM}", chunk_size=CHUNK, max_steps=6, save_steps=6,
                      use_reasoning=False)
        )
    return trainer, out


def test_mixed_run_pads_masks_and_saves_its_embodiments(mixed_run):
    trainer, out = mixed_run
    losses = [entry["loss"] for entry in train_logs(trainer)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    dataset = trainer.train_dataset
    bimanual, arm = dataset.datasets
    for part, dims, cams in ((bimanual, 14, 3), (arm, 7, 2)):
        item = part[0]
        assert item["state"].shape == (14,) and item["action"].shape == (CHUNK, 14)
        assert int(item["state_mask"].sum()) == dims and int(item["action_mask"].sum()) == dims
        assert not item["action"][:, dims:].any() and not item["state"][dims:].any()
        assert item["image_grid_thw"].shape[0] == cams  # its own cameras: as many images as it has
    prompt = trainer.processing_class.tokenizer.decode(arm[0]["input_ids"])
    assert "Robot: arm7. " in prompt and f"Robot: {BIMANUAL}. " in trainer.processing_class.tokenizer.decode(
        bimanual[0]["input_ids"]
    )
    stats = json.loads((out / STATS_FILE_NAME).read_text())
    assert list(stats["embodiments"]) == [BIMANUAL, "arm7"]
    assert stats["embodiments"]["arm7"]["camera_names"] == ARM_CAMERAS
    assert stats["embodiments"][BIMANUAL]["camera_names"] == list(CAMERAS_3)
    head = json.loads((out / "config.json").read_text())["policy_head_config"]
    assert (head["state_dim"], head["action_dim"], head["state_mask_input"]) == (14, 14, True)


@pytest.fixture(scope="module")
def replays(mixed_run, bimanual_dir, arm_dir, tmp_path_factory):
    """Open-loop replay of one episode of each embodiment: ``{embodiment: summary}``."""
    from evaluate.eval_dexvla import build_parser, evaluate

    _, ckpt = mixed_run
    out = {}
    for name, directory in ((BIMANUAL, bimanual_dir), ("arm7", arm_dir)):
        args = build_parser().parse_args([
            "--ckpt", str(ckpt), "--robot", "replay", "--episodes", str(find_all_hdf5(directory)[0]),
            "--out", str(tmp_path_factory.mktemp(f"replay_{name}")), "--embodiment", name,
            "--strategy", "chunk", "--exec_horizon", str(CHUNK), "--max_new_tokens", "0", "--warmup", "0",
            "--device", "cpu",
        ])
        out[name] = evaluate(args)
    return out


def test_each_embodiment_reloads_and_replays_with_its_dims(mixed_run, replays, arm_dir):
    from evaluate.policy import DexVLAPolicy

    _, ckpt = mixed_run
    for name, dims in ((BIMANUAL, 14), ("arm7", 7)):
        summary = replays[name]
        assert summary["embodiment"] == name and summary["policy"]["action_dim"] == dims
        record = summary["episodes"][0]
        assert record["steps"] == STEPS
        assert len(record["executed"]["per_dim"]["mse_raw"]) == dims
        assert np.isfinite(summary["executed_mse_raw"]) and np.isfinite(summary["chunk_mse_norm"])
        print(f"{name}: executed mse raw {summary['executed_mse_raw']:.4g} norm {summary['executed_mse_norm']:.4g}, "
              f"chunk mse norm {summary['chunk_mse_norm']:.4g}")
    policy = DexVLAPolicy(ckpt, embodiment="arm7", max_new_tokens=0)
    assert policy.camera_names == ARM_CAMERAS and policy.process.embodiment == "arm7"
    from data_utils.episode_source import open_episode

    with open_episode(find_all_hdf5(arm_dir)[0]) as episode:
        obs = {"images": {c: episode.frame(c, 0) for c in ARM_CAMERAS}, "state": episode.qpos(0, 1)[0],
               "prompt": "pick"}
    actions = policy.infer(obs)["actions"]
    assert actions.shape == (CHUNK, 7) and np.isfinite(actions).all()
    prompt = policy.tokenizer.decode(policy.prompt_features([obs["images"][c] for c in ARM_CAMERAS], "pick")["input_ids"])
    assert "Robot: arm7. pick" in prompt
    with pytest.raises(ValueError, match="several embodiments"):
        DexVLAPolicy(ckpt, max_new_tokens=0)
