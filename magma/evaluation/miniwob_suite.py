"""``agent run miniwob``: a policy over MiniWoB++ tasks through the Playwright web env (``envs.miniwob``),
one episode per (task, seed), through the one suite runner (``magma.evaluation.runner``): resumable, parallel
over workers (each with its own Chromium), a success table per task and the trajectory report. Reward and
success are the page's own (``WOB_RAW_REWARD_GLOBAL``), never recomputed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from magma.evaluation.results import EpisodeResult
from magma.evaluation.runner import Attempt, RunOptions, episode_units, refuse_search_on_ray, run_suite
from magma.evaluation.ui_episode import EarlyStopRules, run_ui_episode, write_steps
from magma.policies import Policy
from magma.search.episode import SearchRun, SearchSettings

MINIWOB_POLICIES = ("openai", "magma", "random")

MiniWoBPolicyFactory = Callable[[Any, str], Policy]  # (env, episode key); a candidate policy when searching


@dataclass
class MiniWoBRunSettings:
    """Everything that decides a run's results; ``--resume`` refuses a directory made with other settings."""

    tasks: list[str] = field(default_factory=list)
    episodes: int = 3
    policy: str = "openai"
    model: str | None = None
    max_steps: int = 10
    time_limit_ms: int | None = None  # None: each page's own limit (10 s by default), counted in real time
    parse_failures: int = 3
    repeated_actions: int = 5
    search: SearchSettings | None = None  # test-time search (Reflective MCTS); None: the policy acts alone


class MiniWoBWorker:
    """One worker's Chromium and MiniWoB++ env (the task pages are served once per process)."""

    device_errors: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        settings: MiniWoBRunSettings,
        make_policy: MiniWoBPolicyFactory,
        save_images: bool,
        search: SearchRun | None = None,
    ) -> None:
        from envs.miniwob.env import MiniWoBEnv
        from envs.web.browser import ChromiumBrowser

        self.make_policy, self.save_images, self.search = make_policy, save_images, search
        self.rules = EarlyStopRules(settings.parse_failures, settings.repeated_actions)
        self.browser = ChromiumBrowser()
        self.env = MiniWoBEnv(browser=self.browser, max_steps=settings.max_steps, time_limit_ms=settings.time_limit_ms)

    def run(self, attempt: Attempt) -> EpisodeResult:
        task, seed = attempt.unit.payload
        attempt.phase = "start_page"
        observation, _ = self.env.reset(seed=seed, options={"task": task})
        attempt.result.intent = str(observation["instruction"])
        attempt.phase = "policy"
        policy = self.make_policy(self.env, attempt.unit.key)
        task_info = {"instruction": observation["instruction"], "task_id": attempt.unit.key, "images": []}
        task_info["observation"] = observation
        if self.search is not None:
            from magma.search.environments import MiniWoBSearchEnvironment

            environment = MiniWoBSearchEnvironment(self.env, task, seed)
            result, records = self.search.episode(
                environment, self.env, policy, task_info, attempt.result, self.rules, attempt.trajectory_dir,
                self.save_images,
            )  # fmt: skip
        else:
            saved = attempt.trajectory_dir if self.save_images else None
            result, records = run_ui_episode(self.env, policy, task_info, attempt.result, self.rules, saved)
        write_steps(records, attempt.trajectory_dir)
        return result

    def close(self) -> None:
        self.env.close()
        self.browser.close()


def run_miniwob_suite(
    settings: MiniWoBRunSettings,
    out_dir: str | Path,
    make_policy: MiniWoBPolicyFactory,
    options: RunOptions | None = None,
    save_images: bool = True,
) -> list[dict[str, Any]]:
    """``settings.episodes`` episodes (seeds 0..N-1) of every task not finished yet in ``out_dir``; returns all
    results of the run, in task and seed order."""
    units = episode_units(settings.tasks, settings.episodes, "page_reward")
    options = options or RunOptions()
    options.title, options.group_name = "MiniWoB++ run report", "task"
    refuse_search_on_ray(options, settings.search is not None)
    search = SearchRun(settings.search, out_dir) if settings.search is not None else None
    return run_suite(
        units, settings, out_dir, lambda index: MiniWoBWorker(settings, make_policy, save_images, search), options
    )


def miniwob_policy_factory(
    policy: str, model: str | None, search: SearchSettings | None = None, seed: int = 0
) -> MiniWoBPolicyFactory:
    """Fresh per-episode policies (``(env, episode key) -> policy``) that share what is expensive (a loaded model,
    an HTTP client): the web policies, which read the same observation and answer in the same action grammar.
    With ``search``, candidate-proposing policies for the search."""
    if policy not in MINIWOB_POLICIES:
        raise UserFacingError(
            f"--policy {policy!r} is not a MiniWoB++ policy; use one of {', '.join(MINIWOB_POLICIES)}"
        )
    from magma.evaluation.web_suite import web_candidate_factory, web_policy_factory

    if search is not None:
        make_candidates = web_candidate_factory(policy, model, search)
        return lambda env, key: make_candidates(env, key, None, {})
    if policy == "random":
        from magma.search.candidates import SampledPolicy

        make_random = web_candidate_factory(policy, model, SearchSettings(seed=seed))
        return lambda env, key: SampledPolicy(make_random(env, key, None, {}))
    make_web_policy = web_policy_factory(policy, model)
    return lambda env, key: make_web_policy(env, None, {})
