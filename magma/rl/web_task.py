"""The web agent on the bundled sites: a group is one task (its site restored to the seeded start
state) played ``group_size`` times in a real browser; the reward is the grader's episode success.

Each turn's prompt is :func:`magma.policies.web.build_web_prompt` (the one ``MagmaWebPolicy`` acts
with), so GRPO trains on what acting sees; every turn becomes a step-level sample with the episode's
reward, and the observation (screenshot, element listing, history) is prompt, never loss. An episode
whose grade is undecided (``info["success"] is None``) is left out and counted as ``ungraded``.
"""

from __future__ import annotations

import functools
import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_tools.config_files import ConfigError
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.rl.config import RLConfig
from magma.rl.generation import sample_completions
from magma.rl.rollout import EpisodeStep, RolloutResult, SkipCounter, episode_generator, episode_samples
from magma.sampling import allowed_tokens

WebGroup = tuple[str, list[tuple[list[EpisodeStep], Any]]]  # a task key and its episodes' (steps, success)
BUNDLED_TASKS = Path(__file__).resolve().parent.parent.parent / "envs" / "web" / "tasks" / "bundled"


def bundled_tasks(site_urls: dict[str, str], wanted: list[str]) -> dict[str, Any]:
    """``site:id`` -> task of the bundled task files (all, or the ``wanted`` keys)."""
    from envs.web.tasks import load_tasks

    tasks = {}
    for path in sorted(BUNDLED_TASKS.glob("*.json")):
        for task in load_tasks(path, site_urls):
            tasks[f"{path.stem}:{str(task.task_id).split(':')[-1]}"] = task
    if wanted:
        missing = [key for key in wanted if key not in tasks]
        if missing:
            raise ConfigError(f"web.tasks has unknown bundled task(s) {missing}; known: {sorted(tasks)[:12]} ...")
        tasks = {key: tasks[key] for key in wanted}
    return tasks


class WebAgentTask:
    def __init__(self, config: RLConfig, processor: MagmaProcessor) -> None:
        from envs.web.env import WebEnv
        from envs.web.grading import GradingConfig
        from envs.web.sites.images import bundled_site_vqa
        from envs.web.sites.server import start_sites
        from envs.web.tasks import site_urls_from_environment

        self.config = config
        self.processor = processor
        self.allowed = allowed_tokens(processor.config)
        self.sites = start_sites()
        self.auth_dir = Path(tempfile.mkdtemp(prefix="grpo-web-auth-"))
        urls = site_urls_from_environment({name.upper(): url for name, url in self.sites.items()})
        self.tasks = bundled_tasks(urls, list(config.web.tasks))
        self.keys = list(self.tasks)
        self.env = WebEnv(
            max_steps=config.web.max_episode_steps,
            grading=GradingConfig(vqa_model=bundled_site_vqa),
            auth_dir=str(self.auth_dir),
        )

    def start(self, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the sites and log in, open task ``key``: its first observation and the task dict."""
        from envs.web.tasks import load_task_images

        self.sites.reset()
        for name in self.sites:
            (self.auth_dir / f"{name}_state.json").write_text(json.dumps(self.sites.storage_state(name)))
        task = self.tasks[key]
        task_info = {"instruction": task.intent, "task_id": key, "images": load_task_images(task)}
        observation, _ = self.env.reset(options={"task": task})
        return observation, task_info

    def play(self, model: MagmaForCausalLM, key: str, temperature: float, generator: torch.Generator | None):
        """One episode of task ``key`` from its site's start state: (steps, success or None)."""
        from magma.actions.ui import extract_vwa_action
        from magma.policies.web import build_web_prompt

        observation, task_info = self.start(key)
        history: list[str] = []
        steps: list[EpisodeStep] = []
        while True:
            text, images = build_web_prompt(observation, task_info, history)
            encoded = self.processor.encode([{"role": "user", "content": text}], images, add_generation_prompt=True)
            completion = sample_completions(
                model,
                self.processor.collate([encoded], padding_side="left"),
                max_new_tokens=self.config.sampling.max_new_tokens,
                temperature=temperature,
                top_p=self.config.sampling.top_p,
                generator=generator,
                allowed=self.allowed,
            )[0]
            steps.append(
                EpisodeStep(encoded.input_ids, completion.token_ids, completion.log_probs, encoded.crops, encoded.grids)
            )
            reply = self.processor.decode(completion.token_ids)
            history.append(extract_vwa_action(reply) or "(no action)")
            observation, _, terminated, truncated, info = self.env.step(reply)
            if terminated or truncated:
                return steps, info.get("success")

    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult:
        return self.gather(step, self.play_groups(model, step, list(enumerate(self.plan_groups(step)))))

    def plan_groups(self, step: int) -> list[str]:
        """The task keys of rollout ``step``, one per group."""
        rng = random.Random(self.config.seed * 1_000_003 + step)
        return rng.sample(self.keys, min(self.config.web.tasks_per_step, len(self.keys)))

    def play_groups(self, model: MagmaForCausalLM, step: int, groups: list[tuple[int, str]]) -> list[WebGroup]:
        """``group_size`` episodes of each ``(position, key)``, each sampling with its own generator (seeded
        by the step, the group's position in the plan and the repeat)."""
        outcomes = []
        for position, key in groups:
            episodes = []
            for repeat in range(self.config.sampling.group_size):
                generator = episode_generator(self.config.seed, step, position, repeat, model.device)
                episodes.append(self.play(model, key, self.config.sampling.temperature, generator))
            outcomes.append((key, episodes))
        return outcomes

    def gather(self, step: int, outcomes: list[WebGroup]) -> RolloutResult:
        """The step's samples (ids numbered over every group of the plan) and its success rate; an
        ungraded episode is left out and counted."""
        result = RolloutResult(samples=[], skipped=SkipCounter())
        graded = []
        group_size = self.config.sampling.group_size
        for group, (key, episodes) in enumerate(outcomes):
            for repeat, (steps, success) in enumerate(episodes):
                if success is None:
                    result.skipped["ungraded"] += len(steps)
                    continue
                graded.append(bool(success))
                result.samples += episode_samples(
                    steps,
                    reward=float(success),
                    group_id=step * 1000 + self.keys.index(key),
                    trajectory_id=(step * len(outcomes) + group) * group_size + repeat,
                    meta={"task": key},
                )
        result.metrics = {"success_rate": float(np.mean(graded)) if graded else float("nan")}
        return result

    def replica_factory(self) -> Callable[[], WebAgentTask]:
        return functools.partial(WebAgentTask, self.config, self.processor)

    @torch.no_grad()
    def evaluate(self, model: MagmaForCausalLM) -> dict[str, float]:
        """Greedy success over the configured tasks."""
        outcomes = [self.play(model, key, 0.0, None)[1] for key in self.keys]
        decided = [bool(o) for o in outcomes if o is not None]
        return {"eval/greedy_success": float(np.mean(decided)) if decided else float("nan")}

    def close(self) -> None:
        self.env.close()
        self.sites.stop()
