"""GRPO rollouts on Ray actors (``rollout.engine: ray``): two actors, each with its own MuJoCo envs and its
own copy of the policy, give the local rollouts' samples (ids, log-probs, rewards, in order) step after
step, so the updated weights reach them; an actor killed during a rollout is replaced and the step's
records are the same; a share that keeps losing its actor fails the step with one error. Underneath: each
episode samples with its own generator, whatever batch it runs in."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.config_files import ConfigError
from magma.actions import ActionStatistics
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.rl.config import RLConfig, load_rl_config
from magma.rl.generation import sample_completions
from magma.rl.robot_task import GRIPPER_MASK, RobotTask
from magma.rl.rollout import RolloutResult, Sample, collate_samples, completion_log_probs
from magma.rl.trainer import GRPOTrainer
from magma.sampling import allowed_tokens

ROBOT = [
    "sampling.group_size=2",
    "robot.states=[0,1]",
    "robot.states_per_step=2",
    "robot.max_episode_steps=3",
    "robot.eval_states=[0]",
    "robot.eval_samples=0",
    "max_steps=2",
    "micro_batch_size=16",
    "rollout.workers=2",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny VLA with action statistics: its sampled actions move the arm, rewards vary."""
    directory = tmp_path_factory.mktemp("ray-grpo") / "policy"
    torch.manual_seed(0)
    model = MagmaForCausalLM.from_config("magma-tiny", ["image.base_size=64"])
    actions = np.random.default_rng(0).uniform(-1, 1, (64, 7))
    statistics = ActionStatistics.compute(actions, mask=GRIPPER_MASK)
    tokenizer = MagmaProcessor.from_config(model.config).tokenizer
    model.save_pretrained(directory, tokenizer=tokenizer, action_statistics={"reach": statistics})
    return directory


def robot_config(checkpoint: Path, run_dir: Path, *extra: str) -> RLConfig:
    config = load_rl_config("robot-reach", [f"model={checkpoint}", f"run_dir={run_dir}", *ROBOT, *extra])
    config.logging.progress = False
    return config


@pytest.fixture(scope="module")
def local_task(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> RobotTask:
    config = robot_config(checkpoint, tmp_path_factory.mktemp("local"))
    model = MagmaForCausalLM.from_pretrained(checkpoint)
    task = RobotTask(config, MagmaProcessor.from_config(model.config))
    yield task
    task.close()


@pytest.fixture(scope="module")
def engine(ray_instance, local_task: RobotTask, checkpoint: Path):
    """Two rollout actors for the module (their start is the costly part); closed at its end."""
    from magma.rl.ray_rollouts import RayRollouts

    settings = replace(local_task.config.rollout, engine="ray")
    rollouts = RayRollouts(local_task, MagmaForCausalLM.from_pretrained(checkpoint), settings)
    yield rollouts
    rollouts.close()


class RecordedRollouts:
    """The trainer's rollout engine, keeping each step's rollout and the policy's weights it rolled out."""

    def __init__(self, inner) -> None:
        self.inner, self.results, self.weights = inner, [], []

    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult:
        self.weights.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
        result = self.inner.rollout(model, step)
        self.results.append(result)
        return result


def assert_same_records(local: RolloutResult, remote: RolloutResult) -> None:
    assert len(remote.samples) == len(local.samples) > 0
    for ours, theirs in zip(local.samples, remote.samples, strict=True):
        assert (theirs.group_id, theirs.trajectory_id, theirs.reward) == (
            ours.group_id,
            ours.trajectory_id,
            ours.reward,
        )
        assert theirs.prompt_ids == ours.prompt_ids and theirs.completion_ids == ours.completion_ids
        np.testing.assert_allclose(theirs.sampling_log_probs, ours.sampling_log_probs, rtol=0, atol=1e-4)
        assert all(torch.equal(a, b) for a, b in zip(theirs.crops, ours.crops, strict=True))
    task_metrics = {key: value for key, value in remote.metrics.items() if not key.startswith("ray/")}
    assert task_metrics == pytest.approx(local.metrics)


def test_grpo_steps_on_two_ray_actors_roll_out_what_the_local_path_does(engine, local_task, checkpoint, tmp_path):
    """Two GRPO steps with the rollouts on the actors: each step's samples are those the local rollout draws
    from the same weights; the second step's come from the updated policy, so the update reached the actors."""
    recorded = RecordedRollouts(engine)
    trainer = GRPOTrainer(robot_config(checkpoint, tmp_path, "rollout.engine=ray"), rollouts=recorded)
    trainer.train()

    assert len(recorded.results) == 2
    assert any(not torch.equal(recorded.weights[1][name], tensor) for name, tensor in recorded.weights[0].items())
    policy = MagmaForCausalLM.from_pretrained(checkpoint).eval()
    for step, (weights, result) in enumerate(zip(recorded.weights, recorded.results, strict=True)):
        policy.load_state_dict(weights)
        assert_same_records(local_task.rollout(policy, step), result)
    assert len({s.reward for s in recorded.results[0].samples}) > 1  # rewards vary: the first step updates
    steps = [record for record in trainer.run.read_metrics() if "reward_mean" in record]
    assert [record["trained_samples"] > 0 for record in steps] == [True, True]
    assert all(record["ray/actors_replaced"] == 0 for record in steps)


def test_an_actor_killed_during_a_rollout_is_replaced_and_the_step_completes(engine, local_task, checkpoint):
    model = MagmaForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():  # weights the actors have not seen yet: they load them in this step
        model.language_model.lm_head.weight.mul_(1.5)
    expected = local_task.rollout(model, step=7)
    engine.ready(0)
    victim = engine.process_ids[0]
    pending = engine.submit(model, step=7)
    os.kill(victim, signal.SIGKILL)
    result = engine.collect(pending)
    assert result.metrics["ray/actors_replaced"] == 1.0
    assert_same_records(expected, result)
    engine.ready(0)
    assert engine.process_ids[0] != victim


def test_a_share_that_keeps_losing_its_actor_fails_the_step(engine, checkpoint):
    from magma.rl.ray_rollouts import RolloutWorkerError

    model = MagmaForCausalLM.from_pretrained(checkpoint).eval()
    engine.settings = replace(engine.settings, max_tries=1)
    engine.ready(1)
    pending = engine.submit(model, step=8)
    os.kill(engine.process_ids[1], signal.SIGKILL)
    with pytest.raises(RolloutWorkerError, match=r"died 1 times \(rollout.max_tries=1.*not trained on a partial"):
        engine.collect(pending)


def test_a_row_with_its_own_generator_draws_the_same_completion_in_any_batch(tiny_model, tiny_processor):
    """What lets actors split a step's groups: a row's draws depend on its generator and its logits only,
    alone or in a padded batch with other rows, and their log-probs are the scoring pass's."""
    texts = ["Count to three, slowly please.", "Hi", "Where is the red cube on the table?"]
    encoded = [tiny_processor.encode([{"role": "user", "content": text}], [], True) for text in texts]

    def draw(rows: list[int]) -> list:
        generators = [torch.Generator().manual_seed(100 + row) for row in rows]
        inputs = tiny_processor.collate([encoded[row] for row in rows], padding_side="left")
        return sample_completions(tiny_model, inputs, 6, temperature=0.8, row_generators=generators)

    together = draw([0, 1, 2])
    assert len({tuple(c.token_ids) for c in together}) == 3
    for row in range(3):
        [alone] = draw([row])
        assert alone.token_ids == together[row].token_ids
        np.testing.assert_allclose(alone.log_probs, together[row].log_probs, rtol=0, atol=1e-4)
    samples = [
        Sample(e.input_ids, c.token_ids, c.log_probs, group_id=0, trajectory_id=row)
        for row, (e, c) in enumerate(zip(encoded, together, strict=True))
    ]
    batch = collate_samples(samples, tiny_model.config.tokens.pad_token_id)
    with torch.no_grad():
        scored, _ = completion_log_probs(tiny_model, batch, allowed_tokens(tiny_model.config), temperature=0.8)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(scored[mask], batch.sampling_log_probs[mask], atol=2e-4, rtol=1e-4)


def test_the_text_task_refuses_the_ray_engine(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"rollout\.engine=ray .* text task"):
        load_rl_config("text-digits", [f"run_dir={tmp_path}", "rollout.engine=ray"])
