"""``agent run android``: a policy over Android tasks on one device, through the one suite runner.

The run directory is the runner's (``magma.evaluation.runner``): ``run.json`` (settings; ``--resume``
refuses others), ``results.jsonl`` (a flushed line per task), ``trajectories/<task>/`` (Set-of-Mark
screenshots and ``steps.jsonl``), ``summary.json`` (by task group and by check type) and ``report.html``.
Episodes run through the same loop as web episodes, with VisualWebArena's early stops. A task that fails
is recorded with its reason and the run goes on (``magma.evaluation.task_failures``). A device that goes away
mid-run makes the remaining tasks errors with one message each, and the run ends with its summary;
``--resume`` reruns them once the device is back (and, with ``--retry-errors``, the tasks that failed for a
reason of their own). ``--device simulated`` starts the simulated phone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from data_tools.ray_cluster import RayEngineError, check_engine
from envs.android.actions import described_action
from envs.android.adb_client import (
    AdbServerUnreachableError,
    DeviceLostError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceUnauthorizedError,
)
from envs.android.env import AndroidEnv, AndroidEnvConfig
from envs.android.tasks import BUNDLED_TASKS, AndroidTask, load_tasks
from magma.evaluation.android_recording import AndroidRecorder, write_android_shards
from magma.evaluation.results import EpisodeResult
from magma.evaluation.runner import Attempt, RunOptions, RunUnit, run_suite
from magma.evaluation.ui_episode import EarlyStopRules, run_ui_episode, write_steps
from magma.policies import Policy
from magma.search.episode import SearchRun, SearchSettings

ANDROID_POLICIES = ("scripted", "openai", "magma", "random")
SIMULATED = "simulated"
EARLY_STOP_ACTION = json.dumps({"SET_TASK_STATUS": "IMPOSSIBLE"})

AndroidPolicyFactory = Callable[[Any, AndroidTask], Policy]  # a candidate policy when the run searches
# the phone, not the task: such failures are rerun by --resume once the device is back
DEVICE_GONE_ERRORS = (
    AdbServerUnreachableError,
    DeviceLostError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceUnauthorizedError,
)


@dataclass
class AndroidRunSettings:
    """Everything that decides a run's results; ``--resume`` refuses a directory made with other settings."""

    tasks: str = str(BUNDLED_TASKS)
    policy: str = "scripted"
    model: str | None = None
    max_steps: int = 20
    device: str | None = None  # a serial, "simulated", or None for the only attached device
    parse_failures: int = 3
    repeated_actions: int = 5
    scripted_noise: float | None = None  # the scripted demo takes a random action with this probability
    search: SearchSettings | None = None  # test-time search (Reflective MCTS); None: the policy acts alone


@dataclass
class AndroidRunOptions:
    """How to reach the device and what to keep (not part of the results)."""

    adb_host: str = "127.0.0.1"
    adb_port: int = 5037
    client: str = "adbutils"
    record_dir: str | None = None  # write the episodes as training shards here
    save_images: bool = True
    engine: str = "local"  # the one device is driven from this machine: ray is refused (check_android_engine)


class AndroidWorker:
    """The one device (a run has one worker) and, with ``--record``, the recorder that keeps its episodes."""

    device_errors = DEVICE_GONE_ERRORS  # the phone, not the task: rerun by --resume once it is back

    def __init__(
        self,
        env: AndroidEnv,
        settings: AndroidRunSettings,
        options: AndroidRunOptions,
        make_policy: AndroidPolicyFactory,
        search: SearchRun | None = None,
    ) -> None:
        self.env, self.options, self.make_policy, self.search = env, options, make_policy, search
        self.rules = EarlyStopRules(settings.parse_failures, settings.repeated_actions)
        self.recorder = AndroidRecorder(env) if options.record_dir else None

    def run(self, attempt: Attempt) -> EpisodeResult:
        task: AndroidTask = attempt.unit.payload
        attempt.phase = "start_page"
        episode_env = self.recorder if self.recorder is not None else self.env
        observation, _ = episode_env.reset(options={"task": task})
        attempt.phase = "policy"
        policy = self.make_policy(self.env, task)
        task_info = {"instruction": task.goal, "task_id": task.task_id, "images": [], "observation": observation}
        if self.search is not None:
            from magma.search.environments import AndroidSearchEnvironment

            result, records = self.search.episode(
                AndroidSearchEnvironment(self.env, task), episode_env, policy, task_info, attempt.result, self.rules,
                attempt.trajectory_dir, self.options.save_images, described_action, EARLY_STOP_ACTION,
                restart_record=lambda: episode_env.reset(options={"task": task})[0],
            )  # fmt: skip
            write_steps(records, attempt.trajectory_dir)
            return result
        saved = attempt.trajectory_dir if self.options.save_images else None
        result, records = run_ui_episode(
            episode_env,
            policy,
            task_info,
            attempt.result,
            self.rules,
            saved,
            parse_action=described_action,
            stop_action=EARLY_STOP_ACTION,
        )
        write_steps(records, attempt.trajectory_dir)
        return result

    def close(self) -> None:
        if self.recorder is not None and self.recorder.episodes:
            write_android_shards(self.recorder.episodes, self.options.record_dir)


def check_android_engine(engine: str) -> None:
    """An Android run drives its one device through this machine's adb server: there is nothing to spread over
    Ray actors on other processes or nodes, so ``--engine ray`` is refused in one line."""
    if check_engine(engine) == "ray":
        raise RayEngineError(
            "agent run android drives its one device through this machine's adb server, so --engine ray has "
            "nothing to spread; run it with --engine local (the default)"
        )


def run_android_suite(
    settings: AndroidRunSettings,
    options: AndroidRunOptions,
    out_dir: str | Path,
    make_policy: AndroidPolicyFactory,
    resume: bool = False,
    on_result: Callable[[EpisodeResult], None] | None = None,
    retry_errors: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every task of ``settings.tasks`` not finished yet (``retry_errors``: and those that failed for a
    reason of their own); returns all results of the run, in task order."""
    check_android_engine(options.engine)
    out_dir = Path(out_dir)
    tasks = load_tasks(settings.tasks)
    if settings.policy == "scripted":
        without = [task.task_id for task in tasks if not task.demo]
        if without:
            raise UserFacingError(f"--policy scripted needs tasks with a demo; {without[:3]} have none")
    server = None
    serial, host, port = settings.device, options.adb_host, options.adb_port
    if settings.device == SIMULATED:
        from envs.android.simulated_device import SimulatedAdbServer

        server = SimulatedAdbServer().start()
        serial, host, port = server.add_device().serial, "127.0.0.1", server.port
    config = AndroidEnvConfig(
        serial=serial, adb_host=host, adb_port=port, client=options.client, max_steps=settings.max_steps
    )
    env = AndroidEnv(config)
    units = [
        RunUnit(task.task_id, task.group, tuple(sorted({str(check["type"]) for check in task.checks}) or ["none"]),
                task.goal, task)
        for task in tasks
    ]  # fmt: skip
    run_options = RunOptions(
        resume=resume,
        retry_errors=retry_errors,
        max_consecutive_errors=0,
        progress=progress,
        title="Android run report",
        group_name="group",
        on_result=on_result,
    )
    try:
        env.connect()  # no device, unauthorised, offline: one message, before anything is written
        search = SearchRun(settings.search, out_dir) if settings.search is not None else None
        return run_suite(units, settings, out_dir,
                         lambda index: AndroidWorker(env, settings, options, make_policy, search),
                         run_options)  # fmt: skip
    finally:
        env.close()
        if server is not None:
            server.stop()


def android_candidate_factory(
    policy: str, model: str | None, search: SearchSettings, scripted_noise: float | None = None
) -> AndroidPolicyFactory:
    """Candidate-proposing policies for a searched run, in the Android action grammar."""
    from magma.evaluation.android_prompt import ANDROID_SYSTEM_PROMPT, android_prompt
    from magma.evaluation.web_suite import LoadedMagma, chat_model_name, task_seed
    from magma.search import candidates

    if policy == "scripted":
        from envs.android.scripted import ScriptedAndroidPolicy

        noise = scripted_noise or 0.0
        return lambda env, task: candidates.NoisyOracle(
            ScriptedAndroidPolicy(env, task.demo), noise, task_seed(search.seed, task.task_id), grammar="android"
        )
    if policy == "random":
        return lambda env, task: candidates.RandomUIPolicy(task_seed(search.seed, task.task_id), grammar="android")
    if policy == "openai":
        from magma.policies.openai_chat import ChatClient

        client = ChatClient(chat_model_name(model), temperature=search.temperature)
        return lambda env, task: candidates.ChatCandidates(client, android_prompt, ANDROID_SYSTEM_PROMPT)
    if policy == "magma":
        loaded = LoadedMagma(model)
        return lambda env, task: candidates.MagmaCandidates(
            loaded.model, loaded.processor, search.temperature, seed=task_seed(search.seed, task.task_id),
            generation_lock=loaded.lock, prompt=android_prompt,
        )  # fmt: skip
    raise UserFacingError(f"--policy {policy!r} is not an Android policy; use one of {', '.join(ANDROID_POLICIES)}")


def android_policy_factory(
    policy: str, model: str | None, scripted_noise: float | None = None, seed: int = 0
) -> AndroidPolicyFactory:
    """Fresh per-episode policies that share what is expensive (a loaded model, an HTTP client). ``random``
    and the scripted demo with ``scripted_noise`` act on one draw of their candidate policy per step."""
    if policy == "random" or (policy == "scripted" and scripted_noise is not None):
        from magma.search.candidates import SampledPolicy

        make_candidates = android_candidate_factory(policy, model, SearchSettings(seed=seed), scripted_noise)
        return lambda env, task: SampledPolicy(make_candidates(env, task))
    if policy == "scripted":
        from envs.android.scripted import ScriptedAndroidPolicy

        return lambda env, task: ScriptedAndroidPolicy(env, task.demo)
    from magma.evaluation.android_prompt import ANDROID_SYSTEM_PROMPT, android_prompt
    from magma.evaluation.web_suite import chat_model_name, shared_magma_policy

    if policy == "openai":
        from magma.policies.openai_chat import ChatClient, OpenAIChatPolicy

        client = ChatClient(chat_model_name(model))
        return lambda env, task: OpenAIChatPolicy(client, system=ANDROID_SYSTEM_PROMPT, prompt=android_prompt)
    if policy == "magma":
        from magma.policies.web import MagmaWebPolicy

        shared = shared_magma_policy(model)
        return lambda env, task: MagmaWebPolicy(shared.model, shared.processor, prompt=android_prompt)
    raise UserFacingError(f"--policy {policy!r} is not an Android policy; use one of {', '.join(ANDROID_POLICIES)}")
