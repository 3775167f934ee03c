"""The tiny VLA learns from its inputs: it overfits one example episode, a constant guess can't.

Processing is done once up front (cached features); the loop is a plain optimiser loop so the
test measures the model, not the Trainer (the Trainer has its own tests).
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

import qwen2_vla  # noqa: F401
from data_utils.data_collator import Qwen2VLADataCollatorForSupervisedDataset
from data_utils.utils import load_data
from policy_heads import build_policy_head_config
from qwen2_vla import Qwen2VLAConfig, Qwen2VLAForConditionalGeneration
from qwen2_vla.robot_data_processor import Qwen2VLAProcess
from scripts.make_example_episodes import make_example_episodes

transformers.logging.set_verbosity_error()

CAMERAS = ["cam_high"]  # one camera keeps the vision tower cheap; the signal is in cam_high
CHUNK = 16
STEPS = 1000
BATCH = 16
LR = 1e-3


class DataArgs:
    image_size_stable = "(56,56)"
    image_size_wrist = "(56,56)"


@pytest.mark.slow
def test_tiny_vla_overfits_one_episode(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    make_example_episodes(tmp_path, num_episodes=1, episode_len=50, height=56, width=56, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    process = Qwen2VLAProcess(tokenizer, processor, DataArgs(), CAMERAS)
    train, *_ = load_data(
        [str(tmp_path)], None, CAMERAS, BATCH, BATCH, CHUNK, llava_pythia_process=process, train_ratio=1.0,
        rank0_print=lambda *a: None,
    )
    features = [train[i] for i in range(len(train))]
    collator = Qwen2VLADataCollatorForSupervisedDataset(processor, None, tokenizer)

    base = AutoConfig.from_pretrained(tiny_model_dir)
    head = build_policy_head_config("scale_dp_policy", base.text_config.hidden_size, 14, 14, CHUNK, "ScaleDP_tiny")
    model = Qwen2VLAForConditionalGeneration.from_pretrained(
        tiny_model_dir, config=Qwen2VLAConfig.from_qwen2_vl_config(base, head)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, foreach=True)
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / STEPS))
    )
    generator = torch.Generator().manual_seed(0)
    first_loss = last_loss = None
    model.train()
    for _ in range(STEPS):
        batch = collator([features[i] for i in torch.randint(0, len(features), (BATCH,), generator=generator)])
        loss = model(**batch).action_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        first_loss = loss.item() if first_loss is None else first_loss
        last_loss = loss.item()

    model.eval()
    prompts = collator(
        [process.prompt_inputs(train.load_raw_step(0, t)["images"], train.load_raw_step(0, t)["raw_lang"])
         for t in range(len(train))]
    )
    targets = collator(features)
    predicted = model.predict_action(
        prompts["input_ids"], prompts["attention_mask"], targets["states"], prompts["pixel_values"],
        prompts["image_grid_thw"], prompts["mm_token_type_ids"], max_new_tokens=12,
        generator=torch.Generator().manual_seed(1),
    ).actions
    valid = ~targets["is_pad"]
    mae = (predicted - targets["actions"]).abs()[valid].mean().item()
    mean_chunk = (targets["actions"] * valid[..., None]).sum(0) / valid.sum(0)[:, None]
    mean_chunk_mae = (mean_chunk[None] - targets["actions"]).abs()[valid].mean().item()
    print(f"overfit: loss {first_loss:.3f} -> {last_loss:.3f}, MAE {mae:.3f}, mean-chunk MAE {mean_chunk_mae:.3f}")
    assert mean_chunk_mae > 0.4  # a model that ignores its inputs can't score well on this episode
    assert mae < 0.2
    assert last_loss < 0.2 * first_loss
