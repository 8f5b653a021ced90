"""The rollout layer on the real tiny model: sampled log-probs agree with the trainer's scoring pass
(left padding, position ids, completion-only logits), and episodes become step-level samples."""

from __future__ import annotations

import math

import pytest
import torch

from magma.processor import EncodedSample
from magma.rl.generation import InverseCdfSampler, sample_completions
from magma.rl.rollout import (
    EpisodeStep,
    Sample,
    SkipCounter,
    assign_advantages,
    collate_samples,
    completion_log_probs,
    drop_empty_completions,
    drop_singleton_groups,
    drop_zero_variance_groups,
    episode_samples,
    valid_reward,
)
from magma.sampling import allowed_tokens


def prompt_ids(processor, text: str) -> list[int]:
    return processor.encode([{"role": "user", "content": text}], add_generation_prompt=True).input_ids


def test_sampling_log_probs_match_the_scoring_pass(tiny_model, tiny_processor, image_files):
    encoded = [
        tiny_processor.encode([{"role": "user", "content": "<image>\nWhere is the cup?"}], [image_files[0]], True),
        tiny_processor.encode([{"role": "user", "content": "Count to three, slowly please."}], [], True),
    ]
    assert len(encoded[0].input_ids) != len(encoded[1].input_ids)  # the shorter prompt gets left padding
    allowed = allowed_tokens(tiny_model.config)
    generator = torch.Generator().manual_seed(3)
    completions = sample_completions(
        tiny_model, tiny_processor.collate(encoded, padding_side="left"), 6, temperature=0.8, generator=generator
    )
    samples = [
        Sample(e.input_ids, c.token_ids, c.log_probs, group_id=0, trajectory_id=i, crops=e.crops, grids=e.grids)
        for i, (e, c) in enumerate(zip(encoded, completions, strict=True))
    ]
    assert all(c.token_ids and not set(c.token_ids) & {1029, 1030, 1032, 1033} for c in completions)
    batch = collate_samples(samples, tiny_model.config.tokens.pad_token_id)
    with torch.no_grad():
        scored, entropy = completion_log_probs(tiny_model, batch, allowed, temperature=0.8, with_entropy=True)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(scored[mask], batch.sampling_log_probs[mask], atol=2e-4, rtol=1e-4)
    assert bool((entropy[mask] > 0).all())
    # each sample scored alone (no padding at all) gives the same log-probs
    for row, sample in enumerate(samples):
        alone = collate_samples([sample], tiny_model.config.tokens.pad_token_id)
        with torch.no_grad():
            single, _ = completion_log_probs(tiny_model, alone, allowed, temperature=0.8)
        n = len(sample.completion_ids)
        torch.testing.assert_close(single[0, :n], scored[row, :n], atol=2e-4, rtol=1e-4)
    # layout: [left-padded prompt | right-padded completion], positions count attended tokens only
    short = 1
    first = int(batch.attention_mask[short].argmax())
    assert first > 0 and batch.position_ids[short, first] == 0
    prompt_length = batch.input_ids.shape[1] - batch.completion_length
    assert batch.position_ids[short, prompt_length] == len(samples[short].prompt_ids)


def test_inverse_cdf_sampler_draws_from_the_softmax_and_never_a_masked_token():
    logits = torch.tensor([[2.0, 0.0, float("-inf"), -1.0, 1.0], [float("-inf"), 5.0, float("-inf"), 5.0, -30.0]])
    rows = logits.repeat(20_000, 1)
    drawn = InverseCdfSampler(torch.Generator().manual_seed(0))(torch.zeros(len(rows), 1), rows).argmax(-1)
    counts = torch.stack([torch.bincount(drawn[row::2], minlength=5) for row in range(2)]).float()
    expected = torch.softmax(logits, -1) * (len(rows) // 2)
    assert counts[:, 2].sum() == 0 and counts[1, 0] == 0  # masked tokens are never drawn
    # within 5 standard deviations of a multinomial count, for every token of both rows
    assert bool(((counts - expected).abs() <= 5 * expected.mul(1 - expected / (len(rows) // 2)).sqrt() + 1).all())
    again = InverseCdfSampler(torch.Generator().manual_seed(0))(torch.zeros(len(rows), 1), rows).argmax(-1)
    assert torch.equal(drawn, again)  # the same generator state draws the same tokens
    broken = torch.tensor([[0.0, 1.0, float("inf"), 0.0], [0.0, float("nan"), 0.0, 0.0], [float("-inf")] * 4])
    picked = InverseCdfSampler(None)(torch.zeros(3, 1), broken).argmax(-1)
    assert picked[0] == 2 and 0 <= int(picked[1]) < 4 and 0 <= int(picked[2]) < 4  # the +inf token; in range


def test_a_tiny_temperature_scores_finite_log_probs(tiny_model, tiny_processor):
    """Sampling and scoring divide the logits by the same floor (1e-6), never by 1e-40 (it overflows them)."""
    prompts = [prompt_ids(tiny_processor, "Say hello"), prompt_ids(tiny_processor, "What is two plus two?")]
    inputs = tiny_processor.collate([EncodedSample(ids, [-100] * len(ids)) for ids in prompts], "left")
    generator = torch.Generator().manual_seed(1)
    completions = sample_completions(tiny_model, inputs, 4, temperature=1e-40, generator=generator)
    samples = [
        Sample(ids, c.token_ids, c.log_probs, group_id=0, trajectory_id=i)
        for i, (ids, c) in enumerate(zip(prompts, completions, strict=True))
    ]
    batch = collate_samples(samples, tiny_model.config.tokens.pad_token_id)
    with torch.no_grad():
        scored, _ = completion_log_probs(tiny_model, batch, allowed_tokens(tiny_model.config), temperature=1e-40)
    mask = batch.completion_mask.bool()
    assert bool(torch.isfinite(scored[mask]).all()) and bool(torch.isfinite(batch.sampling_log_probs[mask]).all())


def test_seeded_sampling_repeats_and_leaves_the_global_generator_alone(tiny_model, tiny_processor):
    inputs = tiny_processor(["Say hello", "What is two plus two?"])
    state = torch.get_rng_state()
    first = sample_completions(tiny_model, inputs, 6, generator=torch.Generator().manual_seed(4), stop_token_ids=[])
    assert torch.equal(torch.get_rng_state(), state)
    again = sample_completions(tiny_model, inputs, 6, generator=torch.Generator().manual_seed(4), stop_token_ids=[])
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    other = sample_completions(tiny_model, inputs, 6, generator=torch.Generator().manual_seed(5), stop_token_ids=[])
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_greedy_sampling_matches_generate(tiny_model, tiny_processor):
    inputs = tiny_processor(["Say hello", "What is two plus two?"])
    expected = tiny_model.generate(**inputs.generation_kwargs(), max_new_tokens=5, do_sample=False, eos_token_id=[])
    expected = expected[:, inputs.input_ids.shape[1] :]
    completions = sample_completions(tiny_model, inputs, 5, temperature=0.0, stop_token_ids=[])
    assert [c.token_ids for c in completions] == expected.tolist()


def test_episodes_become_step_samples_with_trajectory_advantages():
    def steps(count: int) -> list[EpisodeStep]:
        return [EpisodeStep([1, 2, 3], [900 + i], [-1.0]) for i in range(count)]

    samples = episode_samples(steps(3), reward=1.0, group_id=5, trajectory_id=0)
    samples += episode_samples(steps(1), reward=0.0, group_id=5, trajectory_id=1)
    assert [s.meta["step"] for s in samples] == [0, 1, 2, 0]
    assert [s.reward for s in samples] == [1.0, 1.0, 1.0, 0.0]
    # two trajectories in the group (not four samples): mean 0.5, std sqrt(0.5)
    assign_advantages(samples, "group", epsilon=0.0)
    assert [s.advantage for s in samples] == pytest.approx([1 / math.sqrt(2)] * 3 + [-1 / math.sqrt(2)])


def test_unusable_samples_are_counted_and_left_out():
    def sample(group: int, trajectory: int, reward: float, completion: list[int]) -> Sample:
        return Sample([1], completion, [-1.0] * len(completion), group, trajectory, reward)

    skipped = SkipCounter()
    samples = [
        sample(0, 0, 1.0, [5]),
        sample(0, 1, 0.0, []),  # an empty completion
        sample(0, 2, 0.0, [6]),
        sample(1, 3, 1.0, [7]),  # alone in its group once nothing else is there
        sample(2, 4, 1.0, [8]),
        sample(2, 5, 1.0, [9]),  # group 2 has no spread
    ]
    kept = drop_singleton_groups(drop_empty_completions(samples, skipped), skipped)
    assign_advantages(kept, "group")
    kept = drop_zero_variance_groups(kept, skipped)
    assert [s.trajectory_id for s in kept] == [0, 2]
    assert dict(skipped) == {"empty_completion": 1, "singleton_group": 1, "zero_variance_group": 2}
    assert [valid_reward(v) for v in (1, "0.5", float("nan"), float("inf"), None, "x")] == [1.0, 0.5] + [None] * 4


def test_collated_layout_and_loss_mask():
    samples = [Sample([5, 6, 7], [8, 9], [-0.1, -0.2], 0, 0), Sample([5], [10], [-0.3], 0, 1, loss_mask=[0])]
    batch = collate_samples(samples, pad_token_id=1029)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [1029, 1029, 5, 10, 1029]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 0]]
    assert batch.completion_mask.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert batch.position_ids[1, 2:4].tolist() == [0, 1]


def test_shared_prompts_run_once_with_the_same_log_probs_and_gradients(tiny_model, tiny_processor):
    """Rows of one group share their prompt's forward pass (keys and values repeated per row); the
    log-probs and the gradients are those of one plain pass over every row."""
    from magma.rl.rollout import completion_logits, shared_prompts

    prompts = [prompt_ids(tiny_processor, "Numbers please 7:"), prompt_ids(tiny_processor, "Say a long number")]
    completions = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19]]
    samples = [
        Sample(prompts[row // 2], ids, [0.0] * len(ids), group_id=row // 2, trajectory_id=row)
        for row, ids in enumerate(completions)
    ]
    batch = collate_samples(samples, tiny_model.config.tokens.pad_token_id)
    rows, inverse = shared_prompts(batch)
    assert len(rows) == 2 and inverse.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    allowed = allowed_tokens(tiny_model.config)

    def log_probs_and_gradients(logits_of):
        tiny_model.zero_grad(set_to_none=True)
        logits = logits_of()
        targets = batch.completion_ids.unsqueeze(-1)
        log_probs = torch.log_softmax(logits.masked_fill(~allowed, -1e9), -1).gather(-1, targets).squeeze(-1)
        (log_probs * batch.completion_mask).sum().backward()
        grads = {name: p.grad.clone() for name, p in tiny_model.named_parameters() if p.grad is not None}
        tiny_model.zero_grad(set_to_none=True)
        return log_probs.detach() * batch.completion_mask, grads

    plain = batch.model_kwargs("cpu")
    shared, shared_grads = log_probs_and_gradients(lambda: completion_logits(tiny_model, batch, torch.device("cpu")))
    once, once_grads = log_probs_and_gradients(
        lambda: tiny_model(**plain, logits_to_keep=batch.completion_length + 1).logits[:, :-1]
    )
    torch.testing.assert_close(shared, once, atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == once_grads.keys() and shared_grads
    for name, grad in once_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    # a batch whose prompts are all different (or that has images) takes the plain pass
    assert shared_prompts(collate_samples(samples[1:3], tiny_model.config.tokens.pad_token_id)) is None


def test_a_group_prefills_its_prompt_once_and_samples_what_each_row_alone_samples(tiny_model, tiny_processor):
    """Rows that share a prompt prefill it once (the language model's first pass has one row per distinct
    prompt); each row draws with its own generator the tokens and log-probs it draws alone in a batch of one."""
    prompts = [prompt_ids(tiny_processor, "Numbers please 7:"), prompt_ids(tiny_processor, "Say a long number now")]
    rows = [0, 0, 0, 1, 1, 1]
    inputs = tiny_processor.collate([EncodedSample(prompts[i], [-100] * len(prompts[i])) for i in rows], "left")
    passes: list[tuple[int, int]] = []
    hook = tiny_model.language_model.model.register_forward_pre_hook(
        lambda _module, _args, kwargs: passes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        batched = sample_completions(
            tiny_model, inputs, 6, row_generators=[torch.Generator().manual_seed(50 + r) for r in range(len(rows))]
        )
    finally:
        hook.remove()
    assert passes[0] == (2, inputs.input_ids.shape[1] - 1)  # the distinct prompts, but for their last token
    assert all(batch == len(rows) and length == 1 for batch, length in passes[1:])
    for row, index in enumerate(rows):
        alone = tiny_processor.collate([EncodedSample(prompts[index], [-100] * len(prompts[index]))], "left")
        single = sample_completions(tiny_model, alone, 6, row_generators=[torch.Generator().manual_seed(50 + row)])[0]
        assert batched[row].token_ids == single.token_ids
        torch.testing.assert_close(
            torch.tensor(batched[row].log_probs), torch.tensor(single.log_probs), atol=1e-5, rtol=1e-5
        )
