"""Fast inference (issue 10): one VLM pass in ``predict_action``, the DDIM loop, reasoning reuse in the policy."""

from __future__ import annotations

import contextlib
import copy

import h5py
import numpy as np
import pytest
import torch
import transformers

from data_utils.hdf5_io import find_all_hdf5, read_frame, read_language
from evaluate.policy import DexVLAPolicy
from policy_heads.scheduling import ddim_step_fp32

transformers.logging.set_verbosity_error()
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def policy(tiny_vla_ckpt):
    # The shared checkpoint's head is off its zero start: actions depend on the fused hidden states.
    return DexVLAPolicy(tiny_vla_ckpt, device="cpu", max_new_tokens=MAX_NEW_TOKENS, seed=0)


@pytest.fixture(scope="module")
def episode(episodes_dir):
    return find_all_hdf5(episodes_dir)[0]


def observation(path, t: int, prompt: str | None = None) -> dict:
    with h5py.File(path, "r") as root:
        cameras = [name for name in root["/observations/images"]]
        return {
            "images": {cam: read_frame(root, cam, t) for cam in cameras},
            "state": root["/observations/qpos"][t],
            "prompt": read_language(root) if prompt is None else prompt,
        }


# Prompts of different lengths: the batch is left padded by different amounts per row.
PROMPTS = ("pick", "move both arms to the red square now", None)


@pytest.fixture(scope="module")
def batch(policy, episode):
    """A left-padded batch of three observations (model inputs), their normalised states and noise."""
    prepared = [policy.prepare(observation(episode, 3 * row, prompt)) for row, prompt in enumerate(PROMPTS)]
    inputs = policy.collator([p.features for p in prepared])
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == len(PROMPTS)  # three different prompt lengths
    states = torch.as_tensor(policy.stats.normalize_state(np.stack([p.state for p in prepared])), dtype=torch.float32)
    return inputs, states, policy.noise(len(PROMPTS))


def predict(policy, batch, **kwargs):
    inputs, states, noise = batch
    kwargs.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    return policy.model.predict_action(
        inputs["input_ids"], inputs["attention_mask"], states, inputs["pixel_values"], inputs["image_grid_thw"],
        inputs["mm_token_type_ids"], tokenizer=policy.tokenizer, noise=noise, **kwargs,
    )


@contextlib.contextmanager
def scripted_generation(model, answers: list[list[int]]):
    """Make greedy decoding emit ``answers[row][step]`` (the last token repeats once a script runs out).

    A forward hook on the LM head rewrites the logits, so rows stop on their EOS at the steps the script says;
    hidden states (what the fusion reads) are the model's own for whatever tokens are fed back.
    """
    step = [0]

    def force(module, args, logits):
        forced = torch.full_like(logits, -1e4)
        for row, answer in enumerate(answers):
            forced[row, -1, answer[min(step[0], len(answer) - 1)]] = 0.0
        step[0] += 1
        return forced

    handle = model.lm_head.register_forward_hook(force)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def fusion_inputs(model):
    """The ``(hidden_states (B, L, H), prompt_mask, answer_mask)`` each fusion call receives."""
    seen = []
    handle = model.fusion.register_forward_hook(lambda module, args, output: seen.append(args))
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def count_calls(model):
    """Counts of vision-tower forwards and of language-model forwards over more than one token (prefills)."""
    counts = {"vision": 0, "prefill": 0, "single_token": 0}

    def vision(module, args, kwargs):
        counts["vision"] += 1

    def language(module, args, kwargs):
        length = kwargs["inputs_embeds"].shape[1]
        counts["prefill" if length > 1 else "single_token"] += 1

    hooks = [
        model.model.visual.register_forward_pre_hook(vision, with_kwargs=True),
        model.model.language_model.register_forward_pre_hook(language, with_kwargs=True),
    ]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def _scripts(policy, all_stop: bool) -> tuple[list[list[int]], list[int]]:
    eos = policy.model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    a, b, c = policy.tokenizer("reach red square", add_special_tokens=False)["input_ids"][:3]
    if all_stop:  # every row stops by itself: generate() ends on the slowest row's EOS, before the budget
        return [[a, b, eos], [c, a, b, c, eos], [b, eos]], [3, 5, 2]
    return [[a, b, eos], [c, a, b, c, eos], [a, c, b, a, c, b, a]], [3, 5, MAX_NEW_TOKENS]  # row 2 hits the budget


@pytest.mark.parametrize("all_stop", [True, False], ids=["all-rows-stop", "budget-reached"])
def test_one_pass_equals_two_pass_with_reasoning(policy, batch, all_stop):
    """Rows that stop at different steps, prompts of different lengths: the fused states taken from generate()
    (+ one cached step for the final token) give the actions of a second full pass, with one vision pass."""
    scripts, lengths = _scripts(policy, all_stop)
    model = policy.model
    with scripted_generation(model, scripts), count_calls(model) as one_calls, fusion_inputs(model) as fused:
        one = predict(policy, batch)
    with scripted_generation(model, scripts), count_calls(model) as two_calls, fusion_inputs(model) as fused_twice:
        two = predict(policy, batch, two_pass=True)
    assert one.answer_mask.sum(1).tolist() == lengths
    assert torch.equal(one.sequences, two.sequences) and torch.equal(one.answer_mask, two.answer_mask)
    # The fusion's inputs token by token (an action averages them, so a wrong position or state of one token,
    # e.g. the final one, shifts the actions by less than their tolerance but its state by ~1e-3).
    (states, prompt_mask, answer_mask), (states_twice, prompt_twice, answer_twice) = fused[0], fused_twice[0]
    assert torch.equal(prompt_mask, prompt_twice) and torch.equal(answer_mask, answer_twice)
    used = prompt_mask | answer_mask
    torch.testing.assert_close(states[used], states_twice[used], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.actions, two.actions, rtol=1e-4, atol=1e-5)
    # Same noise for every row: only the fused inputs tell the rows apart, far beyond the tolerance above.
    assert (one.actions[0] - one.actions[1]).abs().mean() > 1e-3
    # One vision pass and one prefill per query; the two-pass path ran both twice.
    assert one_calls["vision"] == 1 and one_calls["prefill"] == 1
    assert one_calls["single_token"] == max(lengths)  # G - 1 decode steps + the final token's
    assert two_calls["vision"] == 2 and two_calls["prefill"] == 2


def test_fixed_answer_path_equals_generated_answer(policy, batch):
    """Without reasoning (answer given) one forward: per-row answers, right padded, give the generated run's
    actions when they are the tokens it generated (what reasoning reuse relies on)."""
    scripts, lengths = _scripts(policy, all_stop=True)
    with scripted_generation(policy.model, scripts):
        generated = predict(policy, batch)
    prompt_len = batch[0]["input_ids"].shape[1]
    with count_calls(policy.model) as calls:
        fixed = predict(
            policy, batch, generate_reasoning=False, answer_ids=generated.sequences[:, prompt_len:],
            answer_ids_mask=generated.answer_mask[:, prompt_len:],
        )
    assert calls == {"vision": 1, "prefill": 1, "single_token": 0}
    assert fixed.answer_mask.sum(1).tolist() == lengths and fixed.reasoning == generated.reasoning
    torch.testing.assert_close(fixed.actions, generated.actions, rtol=1e-4, atol=1e-5)
    # A different fixed answer changes the actions: the answer span really reaches the fusion.
    other = predict(policy, batch, generate_reasoning=False, answer_ids=policy.fixed_answer_ids)
    assert (other.actions - generated.actions).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="answer_ids_mask must have"):
        predict(policy, batch, generate_reasoning=False, answer_ids=policy.fixed_answer_ids[None].repeat(3, 1),
                answer_ids_mask=torch.ones(3, 1, dtype=torch.bool))


# ---- the DDIM loop -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def head_inputs(policy):
    head = policy.model.policy_head
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 1, head.config.cond_dim, generator=generator)
    states = torch.randn(3, head.config.state_dim, generator=generator)
    noise = torch.randn(3, head.config.prediction_horizon, head.config.action_dim, generator=generator)
    return head, cond, states, noise


def reference_ddim(head, cond, states, noise, steps: int) -> torch.Tensor:
    """The former loop: diffusers' ``scheduler.step`` at every timestep."""
    head.noise_scheduler.set_timesteps(steps)
    sample = noise.clone()
    for t in head.noise_scheduler.timesteps:
        sample = ddim_step_fp32(head.noise_scheduler, head.model_forward(sample, t, cond, states), t, sample)
    return sample


@pytest.mark.parametrize("steps", [10, 7, 1])
def test_ddim_loop_equals_scheduler_steps(head_inputs, steps):
    head, cond, states, noise = head_inputs
    fast = head.sample(cond, states, noise=noise, num_inference_timesteps=steps)
    expected = reference_ddim(head, cond, states, noise, steps)
    torch.testing.assert_close(fast, expected, rtol=1e-6, atol=1e-6)
    assert fast.abs().max() > 0.1  # the head moves the sample: a loop that skipped steps would not match


def test_ddim_loop_reads_nothing_back_from_the_device(head_inputs, monkeypatch):
    """No ``.item()``, ``bool(tensor)``, ``float(tensor)``... inside the loop (each is a host sync on a GPU)."""
    head, cond, states, noise = head_inputs
    expected = head.sample(cond, states, noise=noise, num_inference_timesteps=10)  # builds the cached tables

    def sync(self, *args):
        raise AssertionError("a tensor was read back to the host inside the DDIM loop")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    again = head.sample(cond, states, noise=noise, num_inference_timesteps=10)
    monkeypatch.undo()
    assert torch.equal(again, expected)


def test_compiled_head_gives_the_same_actions(head_inputs):
    """The ``compile_head`` path on CPU with torch.compile's eager backend (graph capture, no code generation)."""
    head, cond, states, noise = head_inputs
    if not hasattr(torch, "compile"):
        pytest.skip("this torch has no torch.compile")
    compiled = copy.deepcopy(head)
    compiled.compile_denoiser(backend="eager")
    try:
        actions = compiled.sample(cond, states, noise=noise, num_inference_timesteps=4)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(actions, head.sample(cond, states, noise=noise, num_inference_timesteps=4))


# ---- reasoning reuse -------------------------------------------------------------------------------------
def test_reasoning_is_generated_once_every_k_queries_per_prompt(tiny_vla_ckpt, episode, monkeypatch):
    with pytest.raises(ValueError, match="reasoning_every must be >= 1"):
        DexVLAPolicy(tiny_vla_ckpt, device="cpu", reasoning_every=0)
    policy = DexVLAPolicy(tiny_vla_ckpt, device="cpu", max_new_tokens=4, seed=0, reasoning_every=3)
    generate = policy.model.generate
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(policy.model, "generate", spy)
    first, other = observation(episode, 0), observation(episode, 5, "move both arms")
    results = [policy.infer(first) for _ in range(4)]
    assert calls == [1, 1]  # queries 1 and 4 of the prompt generate, 2 and 3 reuse
    # A reused answer is the generated one: same text, and (same observation) the same actions.
    assert all(r["reasoning"] == results[0]["reasoning"] for r in results)
    np.testing.assert_allclose(results[1]["actions"], results[0]["actions"], rtol=0, atol=1e-5)
    # Another prompt has nothing to reuse; then a batch of both reuses, with one forward for the two rows.
    policy.infer(other)
    assert calls == [1, 1, 1]
    batched = policy.infer_batch([first, other])
    assert calls == [1, 1, 1]
    np.testing.assert_allclose(batched[0]["actions"], results[0]["actions"], rtol=0, atol=1e-5)
    policy.infer(first)  # its third use
    assert calls == [1, 1, 1]
    # The first prompt is now due: the batch generates for both rows.
    policy.infer_batch([first, other])
    assert calls == [1, 1, 1, 2]
    policy.reset_reasoning()
    policy.infer(other)
    assert calls == [1, 1, 1, 2, 1]
