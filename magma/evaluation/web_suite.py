"""``agent run web``: a policy over a VisualWebArena task suite, in parallel browser contexts, resumable,
with results.jsonl, a summary by site and eval type and a trajectory report (``magma.evaluation.runner``).

Each worker owns a Chromium and, for bundled tasks, its own copy of the bundled sites (reset before every
task, a fresh login written into the worker's auth folder), so workers never see each other's state.
Official tasks run against the sites named by VWA's environment variables (``SHOPPING=...``).
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from data_tools.ray_cluster import DEFAULT_MAX_TRIES
from envs.web.task_selection import SelectedTask, select_tasks
from magma.evaluation.results import EpisodeResult
from magma.evaluation.runner import Attempt, RunOptions, RunUnit, refuse_search_on_ray, run_suite
from magma.evaluation.ui_episode import EarlyStopRules, run_ui_episode, save_step_image, write_steps
from magma.policies import Policy
from magma.search.episode import SearchRun, SearchSettings

WEB_POLICIES = ("oracle", "openai", "magma", "random")

PolicyFactory = Callable[[Any, SelectedTask, dict[str, str]], Policy]
# a searched run's: (env, task key, the task's oracle steps or None, site URLs) -> a candidate-proposing policy
CandidateFactory = Callable[[Any, str, list[dict[str, Any]] | None, dict[str, str]], Any]


@dataclass
class WebRunSettings:
    """Everything that decides a run's results; ``--resume`` refuses a directory made with other settings."""

    tasks: list[str] = field(default_factory=lambda: ["bundled"])
    policy: str = "oracle"
    model: str | None = None
    max_steps: int = 30
    grading_mode: str = "fixed"
    judge_model: str | None = None  # a chat model for fuzzy_match and eval_vqa (else those stay undecided)
    parse_failures: int = 3
    repeated_actions: int = 5
    oracle_noise: float | None = None  # the oracle takes a random action with this probability (a weak policy)
    search: SearchSettings | None = None  # test-time search (Reflective MCTS); None: the policy acts alone


@dataclass
class WebRunOptions:
    """How to run (not part of the results): parallelism, paths, trajectory images."""

    workers: int = 1
    auth_dir: str | None = None
    images_root: str | None = None
    save_images: bool = True
    retry_errors: bool = False  # --resume also reruns tasks that failed for a reason of their own
    max_consecutive_errors: int = 5  # this many tasks in a row failing the same way stop the run (0: never)
    engine: str = "local"  # local: worker threads; ray: Ray actors (magma.evaluation.ray_runner)
    address: str | None = None  # the Ray cluster (default RAY_ADDRESS, else a local instance)
    max_tries: int = DEFAULT_MAX_TRIES  # ray: a task whose worker process dies this many times is recorded failed


def _site_login_states(sites: Any, auth_dir: Path) -> None:
    auth_dir.mkdir(parents=True, exist_ok=True)
    for name in sites:
        (auth_dir / f"{name}_state.json").write_text(json.dumps(sites.storage_state(name)), encoding="utf-8")


class WebWorker:
    """One worker's Chromium, its copy of the bundled sites (started at its first bundled task) and one
    ``WebEnv`` for bundled tasks and one for official ones."""

    device_errors: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        index: int,
        settings: WebRunSettings,
        options: WebRunOptions,
        out_dir: Path,
        make_policy: PolicyFactory | CandidateFactory,
        search: SearchRun | None = None,
    ) -> None:
        from envs.web.browser import ChromiumBrowser
        from envs.web.tasks import site_urls_from_environment

        self.settings, self.options, self.make_policy, self.search = settings, options, make_policy, search
        self.rules = EarlyStopRules(settings.parse_failures, settings.repeated_actions)
        self.sites: Any = None
        self.environments: dict[bool, Any] = {}
        self.official_urls = site_urls_from_environment()
        self.bundled_auth = out_dir / ".auth" / f"worker-{index}"
        self.browser = ChromiumBrowser()

    def _urls(self, selected: SelectedTask) -> dict[str, str]:
        from envs.web.sites.server import start_sites
        from envs.web.tasks import site_urls_from_environment

        if not selected.bundled:
            return self.official_urls
        if self.sites is None:
            self.sites = start_sites()
        self._reset_sites()
        return site_urls_from_environment({name.upper(): url for name, url in self.sites.items()})

    def _reset_sites(self) -> None:
        """The bundled sites' data as shipped, and fresh logins (before a task, and a search's backtrack)."""
        self.sites.reset()
        _site_login_states(self.sites, self.bundled_auth)

    def _environment(self, bundled: bool) -> Any:
        from envs.web.env import WebEnv
        from envs.web.grading import GradingConfig
        from envs.web.sites.images import bundled_site_vqa

        if bundled not in self.environments:
            settings = self.settings
            grading = GradingConfig(mode=settings.grading_mode, vqa_model=bundled_site_vqa if bundled else None)
            if settings.judge_model:
                from magma.evaluation.web_judges import chat_fuzzy_judge, chat_vqa_model
                from magma.policies.openai_chat import ChatClient

                judge_client = ChatClient(settings.judge_model)
                grading.fuzzy_judge = chat_fuzzy_judge(judge_client)
                if not bundled:  # the bundled sites' images carry their own answers
                    grading.vqa_model = chat_vqa_model(judge_client)
            auth = str(self.bundled_auth) if bundled else self.options.auth_dir
            self.environments[bundled] = WebEnv(
                max_steps=settings.max_steps, grading=grading, auth_dir=auth, browser=self.browser
            )
        return self.environments[bundled]

    def run(self, attempt: Attempt) -> EpisodeResult:
        from envs.web.tasks import load_task_images

        selected: SelectedTask = attempt.unit.payload
        urls = self._urls(selected)
        env = self._environment(selected.bundled)
        task = selected.web_task(urls)
        attempt.result.intent = task.intent
        images = load_task_images(task, self.options.images_root)
        for number, image in enumerate(images):
            save_step_image(image, attempt.trajectory_dir / f"input-{number}.jpg")
        attempt.phase = "start_page"
        observation, _ = env.reset(options={"task": task})
        attempt.phase = "policy"
        task_info = {"instruction": task.intent, "task_id": selected.key, "images": images}
        task_info["observation"] = observation
        if self.search is not None:
            from magma.search.environments import WebSearchEnvironment

            candidates = self.make_policy(env, selected.key, selected.oracle, urls)
            environment = WebSearchEnvironment(env, task, self._reset_sites if selected.bundled else None)
            result, records = self.search.episode(
                environment, env, candidates, task_info, attempt.result, self.rules, attempt.trajectory_dir,
                self.options.save_images,
            )  # fmt: skip
        else:
            policy = self.make_policy(env, selected, urls)
            saved = attempt.trajectory_dir if self.options.save_images else None
            result, records = run_ui_episode(env, policy, task_info, attempt.result, self.rules, saved)
        write_steps(records, attempt.trajectory_dir)
        return result

    def close(self) -> None:
        for environment in self.environments.values():
            environment.close()
        if self.sites is not None:
            self.sites.stop()
        self.browser.close()


def run_web_suite(
    settings: WebRunSettings,
    options: WebRunOptions,
    out_dir: str | Path,
    make_policy: PolicyFactory | CandidateFactory,
    resume: bool = False,
    on_result: Callable[[EpisodeResult], None] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every selected task not finished yet; returns all results of the run directory, in task order.
    ``make_policy`` is a ``CandidateFactory`` (``web_candidate_factory``) when ``settings.search`` is set."""
    out_dir = Path(out_dir).absolute()  # the workers may be Ray actors on other nodes, in other folders
    selected = select_tasks(settings.tasks)
    check_tasks_runnable(selected, settings)
    units = [RunUnit(task.key, task.site, tuple(task.eval_types), payload=task) for task in selected]
    run_options = RunOptions(
        workers=options.workers,
        resume=resume,
        retry_errors=options.retry_errors,
        max_consecutive_errors=options.max_consecutive_errors,
        progress=progress,
        title="Web run report",
        group_name="site",
        on_result=on_result,
        engine=options.engine,
        address=options.address,
        max_tries=options.max_tries,
    )
    refuse_search_on_ray(run_options, settings.search is not None)
    search = SearchRun(settings.search, out_dir) if settings.search is not None else None
    return run_suite(
        units,
        settings,
        out_dir,
        lambda index: WebWorker(index, settings, options, out_dir, make_policy, search),
        run_options,
    )


def check_tasks_runnable(selected: list[SelectedTask], settings: WebRunSettings) -> None:
    """Fail before any browser starts: unknown policy, oracle without trajectories, missing site URLs."""
    from envs.web.tasks import SiteUrlMissingError, TaskConfigError, site_urls_from_environment

    if settings.policy not in WEB_POLICIES:
        raise UserFacingError(f"--policy {settings.policy!r} is not a web policy; use one of {', '.join(WEB_POLICIES)}")
    check_weak_policy(settings.policy, settings.oracle_noise)
    if settings.policy == "oracle":
        without = [task.key for task in selected if not task.oracle]
        if without:
            raise UserFacingError(
                f"--policy oracle needs tasks with an oracle trajectory; {without[:3]} have none "
                "(the bundled suite has them, VWA's official tasks do not)"
            )
    official_urls = site_urls_from_environment()
    for task in selected:
        if not task.bundled:
            try:
                task.web_task(official_urls)
            except SiteUrlMissingError:
                raise  # names the environment variable to set; every task of that site needs it
            except TaskConfigError:
                pass  # this one task's config: recorded as its error when it runs, the others go on


def check_weak_policy(policy: str, oracle_noise: float | None) -> None:
    if oracle_noise is not None and (policy != "oracle" or not 0.0 <= oracle_noise <= 1.0):
        raise UserFacingError(f"--oracle-noise {oracle_noise} goes with --policy oracle and is a probability in [0, 1]")


def task_seed(seed: int, key: str) -> int:
    """A task's own seed for a stochastic policy: the same task draws the same way in every run and worker."""
    return (seed * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % 2**31


def web_candidate_factory(
    policy: str, model: str | None, search: SearchSettings, oracle_noise: float | None = None
) -> CandidateFactory:
    """Candidate-proposing policies for a searched run (``magma.search.candidates``), sharing what is expensive."""
    from magma.search import candidates

    if policy == "oracle":
        noise = oracle_noise or 0.0
        from envs.web.oracle import WebOracle

        return lambda env, key, steps, urls: candidates.NoisyOracle(
            WebOracle(env, steps or [], urls), noise, task_seed(search.seed, key)
        )
    if policy == "random":
        return lambda env, key, steps, urls: candidates.RandomUIPolicy(task_seed(search.seed, key))
    if policy == "openai":
        from magma.policies.openai_chat import ChatClient

        client = ChatClient(chat_model_name(model), temperature=search.temperature)
        return lambda env, key, steps, urls: candidates.ChatCandidates(client)
    if policy == "magma":
        loaded = LoadedMagma(model)
        return lambda env, key, steps, urls: candidates.MagmaCandidates(
            loaded.model, loaded.processor, search.temperature, seed=task_seed(search.seed, key),
            generation_lock=loaded.lock,
        )  # fmt: skip
    raise UserFacingError(f"--policy {policy!r} is not a web policy; use one of {', '.join(WEB_POLICIES)}")


def chat_model_name(model: str | None) -> str:
    """``--model`` or ``OPENAI_MODEL``: the endpoint's model name for ``--policy openai``."""
    import os

    name = model or os.environ.get("OPENAI_MODEL")
    if not name:
        raise UserFacingError("--policy openai needs --model NAME (the endpoint's model name) or OPENAI_MODEL")
    return name


def shared_magma_policy(model: str | None) -> Any:
    """The ``--policy magma`` checkpoint, loaded once for every worker's policies."""
    if not model or not Path(model).is_dir():
        raise UserFacingError(f"--policy magma needs --model DIR, a Magma checkpoint directory (got {model!r})")
    import torch

    from magma.policies.web import MagmaWebPolicy

    return MagmaWebPolicy.from_pretrained(model, device="cuda" if torch.cuda.is_available() else "cpu")


class LoadedMagma:
    """A ``--policy magma`` checkpoint loaded once per process, with the lock its policies generate under.
    Sent to a Ray actor it carries only the checkpoint's path and loads again there, so every actor holds its
    own copy (a loaded model and a lock do not travel)."""

    def __init__(self, model: str | None) -> None:
        self.model_dir = model
        loaded = shared_magma_policy(model)
        self.model, self.processor = loaded.model, loaded.processor
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple[type, tuple[str | None]]:
        return (LoadedMagma, (self.model_dir,))


def web_policy_factory(
    policy: str, model: str | None, oracle_noise: float | None = None, seed: int = 0
) -> PolicyFactory:
    """A factory of fresh per-episode policies that share what is expensive (a loaded model, an HTTP client).
    ``random`` and the oracle with ``oracle_noise`` act on one draw of their candidate policy per step."""
    if policy == "random" or (policy == "oracle" and oracle_noise is not None):
        from magma.search.candidates import SampledPolicy

        make_candidates = web_candidate_factory(policy, model, SearchSettings(seed=seed), oracle_noise)
        return lambda env, selected, urls: SampledPolicy(make_candidates(env, selected.key, selected.oracle, urls))
    if policy == "oracle":
        from envs.web.oracle import WebOracle

        return lambda env, selected, urls: WebOracle(env, selected.oracle or [], urls)
    if policy == "openai":
        from magma.policies.openai_chat import ChatClient, OpenAIChatPolicy

        client = ChatClient(chat_model_name(model))
        return lambda env, selected, urls: OpenAIChatPolicy(client)
    if policy == "magma":
        from magma.policies.web import MagmaWebPolicy

        loaded = LoadedMagma(model)
        return lambda env, selected, urls: MagmaWebPolicy(loaded.model, loaded.processor, generation_lock=loaded.lock)
    raise UserFacingError(f"--policy {policy!r} is not a web policy; use one of {', '.join(WEB_POLICIES)}")
