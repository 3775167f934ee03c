"""Both diffusion experts can memorise a small fixed set of (condition, state) -> action chunk pairs.

The strongest cheap end-to-end check of the training loss, the scheduler and DDIM sampling together: a broken
noise schedule, a wrong mask or a mis-wired condition keeps the 10-step samples far from the targets.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from policy_heads import ConditionalUnet1D, ScaleDP, ScaleDPPolicyConfig, UnetDiffusionPolicyConfig

NUM_PAIRS, COND, STATE, ACT, HORIZON = 40, 32, 8, 4, 8
STEPS, BATCH = 2000, 16


def fixed_pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(40, 1, COND)` conditions, `(40, STATE)` states, `(40, HORIZON, ACT)` smooth chunks in [-0.9, 0.9]."""
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(NUM_PAIRS, 1, COND, generator=gen)
    state = torch.randn(NUM_PAIRS, STATE, generator=gen)
    time_axis = torch.linspace(0, 1, HORIZON)[None, :, None]
    freq = torch.rand(NUM_PAIRS, 1, ACT, generator=gen) * 2 + 0.5
    phase = torch.rand(NUM_PAIRS, 1, ACT, generator=gen) * 2 * math.pi
    amp = torch.rand(NUM_PAIRS, 1, ACT, generator=gen) * 0.6 + 0.3
    return cond, state, amp * torch.sin(2 * math.pi * freq * time_axis + phase)


def overfit(head: torch.nn.Module, lr: float) -> tuple[float, float, float]:
    """Train for STEPS steps; return (loss drop fraction, 10-step DDIM sample MAE, seconds)."""
    cond, state, actions = fixed_pairs()
    gen = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    # Short warm-up then cosine decay: the usual diffusion-policy recipe, and it lets the last steps settle.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / STEPS))
    )
    losses = []
    start = time.perf_counter()
    head.train()
    for _ in range(STEPS):
        idx = torch.randint(0, NUM_PAIRS, (BATCH,), generator=gen)
        loss = head(actions=actions[idx], hidden_states=cond[idx], states=state[idx], generator=gen).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    head.eval()
    sampled = head(hidden_states=cond, states=state, generator=torch.Generator().manual_seed(2)).actions
    seconds = time.perf_counter() - start
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    return 1 - last / first, (sampled - actions).abs().mean().item(), seconds


@pytest.mark.slow
def test_scaledp_overfits() -> None:
    torch.manual_seed(0)
    cfg = ScaleDPPolicyConfig(
        model_size="ScaleDP_tiny",
        cond_dim=COND,
        state_dim=STATE,
        action_dim=ACT,
        prediction_horizon=HORIZON,
        combine_hidden_dim=128,
        num_inference_timesteps=10,
    )
    drop, mae, seconds = overfit(ScaleDP(cfg), lr=1e-3)
    print(f"ScaleDP_tiny overfit: loss drop {drop:.1%}, sample MAE {mae:.4f}, {STEPS} steps in {seconds:.1f}s")
    assert drop >= 0.90 and mae < 0.1


@pytest.mark.slow
def test_unet_overfits() -> None:
    torch.manual_seed(0)
    cfg = UnetDiffusionPolicyConfig(
        global_cond_dim=COND,
        state_dim=STATE,
        action_dim=ACT,
        prediction_horizon=HORIZON,
        down_dims=[32, 64],
        diffusion_step_embed_dim=64,
        num_inference_timesteps=10,
    )
    drop, mae, seconds = overfit(ConditionalUnet1D(cfg), lr=3e-3)
    print(f"UNet tiny overfit: loss drop {drop:.1%}, sample MAE {mae:.4f}, {STEPS} steps in {seconds:.1f}s")
    assert drop >= 0.90 and mae < 0.1
