"""GRPO rollouts of the web agent on the bundled sites: real Chromium, the real reddit site served
locally, the prompt of `build_web_prompt` and the task's own grader as the reward."""

from __future__ import annotations

import torch

from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.rl.config import load_rl_config
from magma.rl.rollout import SkipCounter, drop_zero_variance_groups
from magma.rl.web_task import WebAgentTask


def test_web_rollout_groups_graded_multi_turn_episodes(tmp_path):
    overrides = ["model=magma-tiny", f"run_dir={tmp_path}", "web.tasks=[reddit:1]", "web.tasks_per_step=1"]
    overrides += ["sampling.group_size=2", "web.max_episode_steps=2", "sampling.max_new_tokens=8"]
    config = load_rl_config("web-bundled", overrides)
    torch.manual_seed(0)
    model = MagmaForCausalLM.from_config("magma-tiny").eval()
    processor = MagmaProcessor.from_config(model.config)
    task = WebAgentTask(config, processor)
    try:
        result = task.rollout(model, step=0)
    finally:
        task.close()
    samples = result.samples
    # two episodes of two turns each; every turn is a sample carrying its episode's graded reward
    assert len(samples) == 4 and "ungraded" not in result.skipped
    assert len({s.trajectory_id for s in samples}) == 2 and len({s.group_id for s in samples}) == 1
    assert {s.reward for s in samples} == {0.0}  # the untrained model does not answer "pixelpusher"
    assert result.metrics["success_rate"] == 0.0
    for sample in samples:
        assert len(sample.crops) == 1 and sample.completion_ids  # the screenshot is in the prompt
        assert model.config.tokens.image_token_id in sample.prompt_ids
    first, second = (processor.decode(s.prompt_ids) for s in samples[:2])
    assert "OBJECTIVE: Who submitted the post" in first and "PREVIOUS ACTIONS:\nNone" in first
    assert "PREVIOUS ACTIONS:\n1. " in second  # the second turn's observation holds the first action
    skipped = SkipCounter()
    assert drop_zero_variance_groups(samples, skipped) == [] and skipped["zero_variance_group"] == 4
