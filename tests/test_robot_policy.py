"""MagmaRobotPolicy on a real tiny checkpoint: constrained decoding gives an action at every step,
free decoding counts the steps whose output is not one, and a batch decodes as its items do."""

from __future__ import annotations

import numpy as np
import pytest

from magma.actions import ActionStatistics
from magma.policies.robot import MagmaRobotPolicy


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tiny_processor):
    stats = ActionStatistics.compute(np.random.default_rng(0).normal(size=(64, 7)), mask=[True] * 6 + [False])
    tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer, action_statistics={"sim": stats})
    return tmp_path / "ckpt"


def observations(count: int) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)} for _ in range(count)]


def test_constrained_decoding_always_gives_an_action_free_decoding_counts_the_failures(checkpoint):
    constrained = MagmaRobotPolicy.from_pretrained(checkpoint)
    free = MagmaRobotPolicy.from_pretrained(checkpoint, constrained=False)
    for policy in (constrained, free):
        policy.reset({"instruction": "push the cube"})
    stats = constrained.codec.stats
    for observation in observations(4):
        action = constrained.act(observation)
        assert action.shape == (7,) and np.all(np.isfinite(action))
        assert np.all(action[:6] >= stats.q01[:6] - 1e-6) and np.all(action[:6] <= stats.q99[:6] + 1e-6)
        free.act(observation)
    assert constrained.invalid_outputs == 0
    # the untrained model's free choice falls outside the 256 action-bin tokens: counted, fallback sent
    assert free.invalid_outputs == 4


def test_a_batch_decodes_as_its_items_one_by_one(checkpoint):
    policy = MagmaRobotPolicy.from_pretrained(checkpoint)
    batch = observations(3)
    instructions = ["push the cube", "open the drawer", "reach the ball"]
    together = policy.act_batch(batch, instructions)
    for observation, instruction, action in zip(batch, instructions, together, strict=True):
        policy.reset({"instruction": instruction})
        np.testing.assert_allclose(policy.act(observation), action, atol=1e-6)
