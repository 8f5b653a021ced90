"""GRPO rollouts of the web agent on the bundled sites: real Chromium, the real reddit site served
locally, the prompt of `build_web_prompt` and the task's own grader as the reward, which an untrained
model never earns and a model that gives the task's oracle answer always does."""

from __future__ import annotations

import pytest
import torch

from envs.web.oracle import WebOracle, oracle_steps
from magma.config import load_config
from magma.model import IGNORE_INDEX, MagmaForCausalLM
from magma.policies.web import build_web_prompt
from magma.processor import MagmaProcessor, ModelInputs
from magma.rl.config import load_rl_config
from magma.rl.rollout import SkipCounter, drop_zero_variance_groups
from magma.rl.web_task import BUNDLED_TASKS, WebAgentTask

TASK = "reddit:1"  # "Who submitted the post ...?", answered by one `stop [pixelpusher]`


@pytest.fixture(scope="module")
def web_task(tmp_path_factory: pytest.TempPathFactory) -> WebAgentTask:
    """The sites and the browser, started once for the module. 16 new tokens hold the oracle's answer."""
    overrides = ["model=magma-tiny", f"run_dir={tmp_path_factory.mktemp('rl')}", f"web.tasks=[{TASK}]"]
    overrides += ["web.tasks_per_step=1", "sampling.group_size=2", "web.max_episode_steps=2"]
    overrides += ["sampling.max_new_tokens=16"]
    config = load_rl_config("web-bundled", overrides)
    task = WebAgentTask(config, MagmaProcessor.from_config(load_config("magma-tiny")))
    yield task
    task.close()


def untrained_model() -> MagmaForCausalLM:
    torch.manual_seed(0)
    return MagmaForCausalLM.from_config("magma-tiny").eval()


def test_web_rollout_groups_graded_multi_turn_episodes(web_task: WebAgentTask):
    model, processor = untrained_model(), web_task.processor
    result = web_task.rollout(model, step=0)
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


def fit_output_layer(model: MagmaForCausalLM, inputs: ModelInputs, target_logit: float = 20.0) -> None:
    """Teach ``model`` the labelled reply of ``inputs`` through its output layer alone (the network below
    frozen): the least-squares weights that give each reply token logit ``target_logit`` and every other
    token 0 at the position before it. (Gradient steps would need many iterations: in a random model
    the two ``p`` of "[pixelpusher" have nearly the same hidden state.)"""
    captured = []
    hook = model.language_model.lm_head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    with torch.no_grad():
        model(**{name: value for name, value in inputs.as_kwargs().items() if name != "labels"})
    hook.remove()
    targets = inputs.labels[0, 1:]
    hidden = captured[0][0, :-1][targets != IGNORE_INDEX].double()  # the position before each labelled token
    targets = targets[targets != IGNORE_INDEX]
    logits = torch.zeros(len(targets), model.config.text.vocab_size, dtype=torch.float64)
    logits[torch.arange(len(targets)), targets] = target_logit
    with torch.no_grad():
        model.language_model.lm_head.weight.copy_((torch.linalg.pinv(hidden) @ logits).T)


def test_a_model_giving_the_oracle_answer_earns_reward_one(web_task: WebAgentTask):
    """The reward path GRPO uses can pay: a model taught the oracle's reply to the task's first observation
    samples it in the rollout, the grader passes the episode, and every sample carries reward 1."""
    processor = web_task.processor
    observation, task_info = web_task.start(TASK)
    oracle = WebOracle(web_task.env, oracle_steps(BUNDLED_TASKS / "reddit.json")[TASK], {})
    answer = oracle.act(observation)
    assert answer == "stop [pixelpusher]"
    text, images = build_web_prompt(observation, task_info, [])
    reply = [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    encoded = processor.encode(reply, images)
    prompt = processor.encode(reply[:1], images, add_generation_prompt=True)
    assert encoded.input_ids[: len(prompt.input_ids)] == prompt.input_ids  # the rollout's prompt, then the reply
    model, inputs = untrained_model(), processor.collate([encoded])
    fit_output_layer(model, inputs)

    result = web_task.rollout(model, step=0)
    samples = result.samples
    # two one-turn episodes (stop ends an episode), both passed by the task's grader
    assert [processor.decode(s.completion_ids) for s in samples] == [answer, answer]
    assert [s.reward for s in samples] == [1.0, 1.0] and result.metrics["success_rate"] == 1.0
    assert len({s.trajectory_id for s in samples}) == 2 and "ungraded" not in result.skipped
