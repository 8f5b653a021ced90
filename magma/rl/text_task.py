"""Text with a verifiable reward: each step draws prompts, samples ``group_size`` completions of each
(a group is one prompt) and scores the decoded text with the reward function.

A reward function that raises or returns NaN/inf costs that one sample (counted as ``reward_error`` /
``reward_nan``), never the run.
"""

from __future__ import annotations

import random

import torch

from magma.model import IGNORE_INDEX, MagmaForCausalLM
from magma.processor import EncodedSample, MagmaProcessor
from magma.rl.config import RLConfig
from magma.rl.generation import sample_completions
from magma.rl.rewards import RewardFunction, TextPrompt, default_prompts, resolve_reward
from magma.rl.rollout import RolloutResult, Sample, SkipCounter, valid_reward
from magma.sampling import allowed_tokens


class TextTask:
    def __init__(
        self,
        config: RLConfig,
        processor: MagmaProcessor,
        reward: RewardFunction | None = None,
        prompts: list[TextPrompt] | None = None,
    ) -> None:
        self.config = config
        self.processor = processor
        self.reward = reward or resolve_reward(config.text.reward)
        if prompts is None:
            prompts = [TextPrompt(text) for text in config.text.prompts] or default_prompts(config.text.reward)
        self.prompts = prompts
        self.encoded = [self.encode(prompt.text) for prompt in prompts]
        self.allowed = allowed_tokens(processor.config)

    def encode(self, text: str) -> list[int]:
        turns = [{"role": "user", "content": text}]
        return self.processor.encode(turns, add_generation_prompt=True).input_ids

    def score(self, prompt: TextPrompt, completion_ids: list[int], skipped: SkipCounter) -> float | None:
        """The reward of one completion, or None (counted in ``skipped``) when the function fails."""
        text = self.processor.decode(completion_ids)
        try:
            value = self.reward(prompt.text, text, prompt.meta)
        except Exception:  # a user's reward function may fail in any way; the sample is skipped
            skipped["reward_error"] += 1
            return None
        reward = valid_reward(value)
        if reward is None:
            skipped["reward_nan"] += 1
        return reward

    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult:
        text, sampling = self.config.text, self.config.sampling
        rng = random.Random(self.config.seed * 1_000_003 + step)
        chosen = rng.sample(range(len(self.prompts)), min(text.prompts_per_step, len(self.prompts)))
        rows = [index for index in chosen for _ in range(sampling.group_size)]
        generator = torch.Generator(device=model.device).manual_seed(self.config.seed * 1_000_003 + step)
        completions = sample_completions(
            model,
            self.processor.collate([_prompt_only(self.encoded[i]) for i in rows], padding_side="left"),
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            generator=generator,
            allowed=self.allowed,
        )
        result = RolloutResult(samples=[])
        for row, (index, completion) in enumerate(zip(rows, completions, strict=True)):
            reward = self.score(self.prompts[index], completion.token_ids, result.skipped)
            if reward is None:
                continue
            result.samples.append(
                Sample(
                    prompt_ids=self.encoded[index],
                    completion_ids=completion.token_ids,
                    sampling_log_probs=completion.log_probs,
                    group_id=step * len(self.prompts) + index,
                    trajectory_id=step * len(rows) + row,
                    reward=reward,
                )
            )
        lengths = [len(c.token_ids) for c in completions]
        result.metrics = {"completion_length": sum(lengths) / max(len(lengths), 1)}
        return result

    @torch.no_grad()
    def evaluate(self, model: MagmaForCausalLM) -> dict[str, float]:
        """Mean reward of greedy completions of the first ``eval_prompts`` prompts."""
        prompts = list(range(min(self.config.text.eval_prompts, len(self.prompts))))
        completions = sample_completions(
            model,
            self.processor.collate([_prompt_only(self.encoded[i]) for i in prompts], padding_side="left"),
            max_new_tokens=self.config.sampling.max_new_tokens,
            temperature=0.0,
            allowed=self.allowed,
        )
        skipped = SkipCounter()
        rewards = [self.score(self.prompts[i], c.token_ids, skipped) for i, c in zip(prompts, completions, strict=True)]
        scored = [r for r in rewards if r is not None]
        return {"eval/greedy_reward": sum(scored) / len(scored) if scored else float("nan")}

    def close(self) -> None:
        pass


def _prompt_only(ids: list[int]):

    return EncodedSample(input_ids=ids, labels=[IGNORE_INDEX] * len(ids))
