"""The VLA on the MuJoCo tabletop suite: episodes from fixed initial states, action tokens sampled with
their log-probs, episode success as the reward. A group is one initial state (an evaluation-state
index of the task) played ``group_size`` times; every step of an episode becomes a step-level sample
(prompt: the camera image and the instruction; completion: the action's tokens) with the episode's
reward. The episodes of one rollout run in lockstep, so each control step is one batched sampling call.

Also here, for tiny-scale experiments and tests: :func:`record_expert_demos` (the scripted experts'
steps) and :func:`clone_behaviour` (a small supervised loop on them). At scale, behaviour cloning goes
through ``agent data record-sim`` / ``lerobot-shards`` and ``agent train``; GRPO then starts from that
checkpoint (``model: runs/NAME/final``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data_tools.sample_format import ACTION_PLACEHOLDER
from magma.actions import ActionParseError, ActionStatistics, RobotActionCodec, select_statistics
from magma.checkpoint import load_checkpoint_action_statistics
from magma.model import MagmaForCausalLM
from magma.processor import EncodedSample, MagmaProcessor
from magma.rl.config import RLConfig, RobotTaskConfig
from magma.rl.generation import sample_completions
from magma.rl.rollout import EpisodeStep, RolloutResult, SkipCounter, episode_generator, episode_samples
from magma.sampling import allowed_tokens

GRIPPER_MASK = [True] * 6 + [False]  # the gripper (-1 / +1) passes through un-normalised


@dataclass
class RobotEpisode:
    state_index: int
    success: bool
    steps: list[EpisodeStep] = field(default_factory=list)
    invalid_actions: int = 0
    start_distance: float = 0.0  # hand to the task's object, at the start and at the end (metres)
    end_distance: float = 0.0

    def progress(self) -> float:
        """The share of the start distance to the object the hand closed, in [-1, 1]."""
        if self.start_distance <= 0:
            return 0.0
        return float(np.clip((self.start_distance - self.end_distance) / self.start_distance, -1.0, 1.0))


def object_distance(env: Any) -> float:
    """Hand to the object the instruction names (0 for a task without one, e.g. the drawer)."""
    truth = env.unwrapped.privileged_state()
    name = truth["task_state"].roles.get("object")
    return 0.0 if name is None else float(np.linalg.norm(truth["ee_position"] - truth["objects"][name][0]))


def make_envs(robot: RobotTaskConfig, count: int) -> list[Any]:
    from envs.mujoco.env import TabletopEnv

    return [
        TabletopEnv(
            task=robot.task,
            image_size=robot.image_size,
            cameras=("third_person",),
            control_hz=robot.control_hz,
            max_steps=robot.max_episode_steps,
        )
        for _ in range(count)
    ]


def run_episodes(
    model: MagmaForCausalLM,
    processor: MagmaProcessor,
    codec: RobotActionCodec,
    envs: list[Any],
    state_indices: list[int],
    prompt: str,
    temperature: float,
    generator: torch.Generator | None = None,
    keep_steps: bool = True,
    episode_generators: list[torch.Generator] | None = None,
) -> list[RobotEpisode]:
    """One episode per entry of ``state_indices`` (one env each), all advanced in lockstep; an output
    that is not a valid action block sends a zero action and is counted in ``invalid_actions``.
    ``episode_generators`` (one per episode, instead of ``generator``) makes each episode's draws its own,
    whatever else runs in the batch."""
    allowed = allowed_tokens(processor.config, codec.token_range)
    episodes = [RobotEpisode(state_index=index, success=False) for index in state_indices]
    observations = [
        env.reset(seed=index, options={"state_index": index})[0]
        for env, index in zip(envs, state_indices, strict=False)
    ]
    for env, episode in zip(envs, episodes, strict=False):
        episode.start_distance = object_distance(env)
    active = list(range(len(state_indices)))
    while active:
        encoded = [
            processor.encode(
                [{"role": "user", "content": prompt.format(instruction=observations[row]["instruction"])}],
                [observations[row]["image"]],
                add_generation_prompt=True,
            )
            for row in active
        ]
        completions = sample_completions(
            model,
            processor.collate(encoded, padding_side="left"),
            max_new_tokens=codec.action_dim,
            temperature=temperature,
            stop_token_ids=[],
            generator=generator,
            allowed=allowed,
            row_generators=None if episode_generators is None else [episode_generators[row] for row in active],
        )
        still_active = []
        for row, sample, completion in zip(active, encoded, completions, strict=True):
            episode = episodes[row]
            try:
                action = codec.decode(completion.token_ids)
            except ActionParseError:
                episode.invalid_actions += 1
                action = np.zeros(codec.action_dim)
            if keep_steps:
                ids, log_probs = completion.token_ids, completion.log_probs
                episode.steps.append(EpisodeStep(sample.input_ids, ids, log_probs, sample.crops, sample.grids))
            observations[row], _, terminated, truncated, info = envs[row].step(action)
            if terminated or truncated:
                episode.success = bool(info.get("success", False))
                episode.end_distance = object_distance(envs[row])
            else:
                still_active.append(row)
        active = still_active
    return episodes


class RobotTask:
    def __init__(self, config: RLConfig, processor: MagmaProcessor, codec: RobotActionCodec | None = None) -> None:
        self.config = config
        self.robot = config.robot
        self.processor = processor
        if codec is None:
            statistics = select_statistics(load_checkpoint_action_statistics(config.model), self.robot.statistics_key)
            codec = RobotActionCodec(statistics, processor.config.tokens.base_vocab_size)
        self.codec = codec
        self.allowed = allowed_tokens(processor.config, codec.token_range)
        self.envs: list[Any] = []  # built when first needed, then reused (a rollout worker needs only its share)

    @property
    def eval_states(self) -> list[int]:
        return list(self.robot.eval_states or self.robot.states)

    @property
    def eval_width(self) -> int:
        return max(1, self.robot.eval_samples)

    def envs_for(self, count: int) -> list[Any]:
        """At least ``count`` environments (the pool grows, never shrinks)."""
        if len(self.envs) < count:
            self.envs += make_envs(self.robot, count - len(self.envs))
        return self.envs

    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult:
        return self.gather(step, self.play_groups(model, step, list(enumerate(self.plan_groups(step)))))

    def plan_groups(self, step: int) -> list[int]:
        """The initial states (evaluation-state indices) of rollout ``step``, one per group."""
        rng = random.Random(self.config.seed * 1_000_003 + step)
        return rng.sample(self.robot.states, min(self.robot.states_per_step, len(self.robot.states)))

    def play_groups(
        self, model: MagmaForCausalLM, step: int, groups: list[tuple[int, int]]
    ) -> list[list[RobotEpisode]]:
        """``group_size`` episodes from each ``(position, state)``, all in lockstep, each sampling with its
        own generator (seeded by the step, the group's position in the plan and the repeat): the episodes of
        each group, in order."""
        group_size = self.config.sampling.group_size
        indices = [state for _, state in groups for _ in range(group_size)]
        generators = [
            episode_generator(self.config.seed, step, position, repeat, model.device)
            for position, _ in groups
            for repeat in range(group_size)
        ]
        episodes = run_episodes(
            model,
            self.processor,
            self.codec,
            self.envs_for(len(indices)),
            indices,
            self.robot.prompt,
            self.config.sampling.temperature,
            episode_generators=generators,
        )
        return [episodes[start : start + group_size] for start in range(0, len(episodes), group_size)]

    def gather(self, step: int, outcomes: list[list[RobotEpisode]]) -> RolloutResult:
        """The step's samples (ids numbered over every episode of the plan) and its metrics."""
        episodes = [episode for group in outcomes for episode in group]
        result = RolloutResult(samples=[], skipped=SkipCounter())
        for number, episode in enumerate(episodes):
            result.samples += episode_samples(
                episode.steps,
                reward=float(episode.success) + self.robot.progress_weight * episode.progress(),
                group_id=step * 10_000 + episode.state_index,
                trajectory_id=step * len(episodes) + number,
                meta={"state_index": episode.state_index},
            )
        steps = sum(len(e.steps) for e in episodes)
        result.metrics = {
            "success_rate": float(np.mean([e.success for e in episodes])),
            "progress": float(np.mean([e.progress() for e in episodes])),
            "episode_steps": steps / len(episodes),
            "invalid_action_share": sum(e.invalid_actions for e in episodes) / max(steps, 1),
        }
        return result

    def replica_factory(self) -> Callable[[], RobotTask]:
        return functools.partial(RobotTask, self.config, self.processor, self.codec)

    @torch.no_grad()
    def evaluate(self, model: MagmaForCausalLM) -> dict[str, float]:
        """Greedy success on each evaluation state, and the success of ``eval_samples`` sampled episodes
        per state (the stochastic policy GRPO optimises), from a fixed seed."""
        states = self.eval_states
        envs = self.envs_for(len(states) * self.eval_width)
        greedy = run_episodes(model, self.processor, self.codec, envs, states, self.robot.prompt, 0.0, keep_steps=False)
        generator = torch.Generator(device=model.device).manual_seed(self.config.seed + 123_457)
        sampled = run_episodes(
            model,
            self.processor,
            self.codec,
            envs,
            [state for state in states for _ in range(self.eval_width)],
            self.robot.prompt,
            self.config.sampling.temperature,
            generator,
            keep_steps=False,
        )
        return {
            "eval/greedy_success": float(np.mean([e.success for e in greedy])),
            "eval/sampled_success": float(np.mean([e.success for e in sampled])),
        }

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ---- behaviour cloning at tiny scale ----------------------------------------------------------------
@dataclass
class ExpertStep:
    image: np.ndarray
    instruction: str
    action: np.ndarray


def record_expert_demos(
    robot: RobotTaskConfig, state_indices: list[int], repeats: int = 1, noise: float = 0.0, seed: int = 0
) -> list[ExpertStep]:
    """The scripted expert's steps from each initial state (observations at the RL image size).
    With ``noise`` > 0, repeats after the first execute the expert's translation plus Gaussian noise
    (metres) while recording the expert's own action, so the data also covers states off the expert's
    path (DART-style), where a cloned policy drifts to."""
    from envs.mujoco.experts import ScriptedExpert

    env = make_envs(robot, 1)[0]
    rng = np.random.default_rng(seed)
    steps: list[ExpertStep] = []
    try:
        for index in state_indices:
            for repeat in range(repeats):
                observation, _ = env.reset(seed=index, options={"state_index": index})
                expert = ScriptedExpert(env)
                expert.reset({})
                while True:
                    action = expert.act(observation)
                    steps.append(ExpertStep(observation["image"], observation["instruction"], action))
                    executed = action.copy()
                    if repeat and noise:
                        executed[:3] += rng.normal(0.0, noise, 3)
                    observation, _, terminated, truncated, _ = env.step(executed)
                    if terminated or truncated:
                        break
    finally:
        env.close()
    return steps


def demo_statistics(demos: list[ExpertStep]) -> ActionStatistics:
    return ActionStatistics.compute(np.stack([step.action for step in demos]), mask=GRIPPER_MASK)


def clone_behaviour(
    model: MagmaForCausalLM,
    processor: MagmaProcessor,
    codec: RobotActionCodec,
    demos: list[ExpertStep],
    prompt: str,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> list[float]:
    """Supervised next-token training on the experts' action tokens; returns the loss per step."""
    encoded: list[EncodedSample] = [
        processor.encode(
            [
                {"role": "user", "content": prompt.format(instruction=demo.instruction)},
                {"role": "assistant", "content": ACTION_PLACEHOLDER},
            ],
            [demo.image],
            action_token_ids=codec.encode(demo.action).tolist(),
        )
        for demo in demos
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in range(steps):
        batch = processor.collate(rng.sample(encoded, min(batch_size, len(encoded))))
        loss = model(**batch.to(model.device).as_kwargs()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
