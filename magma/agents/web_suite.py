"""``agent run --env visualwebarena``: a policy over a VisualWebArena task suite, in parallel browser
contexts, resumable, with results.jsonl, a summary by site and eval type and a trajectory report.

Each worker thread owns a Chromium and, for bundled tasks, its own copy of the bundled sites (reset before
every task, a fresh login written into the worker's auth folder), so workers never see each other's
state. Official tasks run against the sites named by VWA's environment variables (``SHOPPING=...``).
A run directory holds ``run.json`` (the settings), ``results.jsonl`` (a line per finished task, flushed as
it ends), ``trajectories/<task>/`` (screenshots and ``steps.jsonl``), ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_tools.atomic_files import write_json_atomically
from data_tools.errors import UserFacingError
from envs.web.task_selection import SelectedTask, select_tasks
from magma.agents.task_failures import (
    FailureStreak,
    RunStoppedError,
    failure_category,
    failure_reason,
    should_run,
)
from magma.agents.web_episode import EarlyStopRules, WebEpisodeResult, run_web_episode, save_step_image
from magma.policies import Policy

RUN_FILE = "run.json"
RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
WEB_POLICIES = ("oracle", "openai", "magma")

PolicyFactory = Callable[[Any, SelectedTask, dict[str, str]], Policy]
_log = logging.getLogger(__name__)


class RunDirectoryError(UserFacingError):
    """An output directory that holds another run, or a ``--resume`` with different settings."""


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


@dataclass
class WebRunOptions:
    """How to run (not part of the results): parallelism, paths, trajectory images."""

    workers: int = 1
    auth_dir: str | None = None
    images_root: str | None = None
    save_images: bool = True
    retry_errors: bool = False  # --resume also reruns tasks that failed for a reason of their own
    max_consecutive_errors: int = 5  # this many tasks in a row failing the same way stop the run (0: never)


def trajectory_name(key: str) -> str:
    """A task key as a folder and link name (``shopping:3`` -> ``shopping_3``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


# the type each field of a results.jsonl line must have (a line with another is treated as not there)
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "key": _TEXT,
    "intent": _TEXT,
    "site": _TEXT,
    "eval_types": (list,),
    "status": _TEXT,
    "success": (bool, type(None)),
    "reward": (int, float),
    "eval_status": _TEXT,
    "eval_notes": (list,),
    "answer": _TEXT,
    "steps": (int,),
    "failed_steps": (int,),
    "early_stop": _OPTIONAL_TEXT,
    "seconds": (int, float),
    "policy_seconds": (int, float),
    "error": _OPTIONAL_TEXT,
    "error_kind": _OPTIONAL_TEXT,
    "worker": (int,),
}
# what a line that lacks a field reads as (an old or hand-written line); ``key`` and ``status`` have none
_RECORD_DEFAULTS: dict[str, Any] = {
    "intent": "",
    "site": "?",
    "eval_types": [],
    "success": None,
    "reward": 0.0,
    "eval_status": "",
    "eval_notes": [],
    "answer": "",
    "steps": 0,
    "failed_steps": 0,
    "early_stop": None,
    "seconds": 0.0,
    "policy_seconds": 0.0,
    "error": None,
    "error_kind": None,
    "worker": 0,
}
RECORD_STATUSES = ("done", "error")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _field_ok(name: str, value: Any) -> bool:
    types = _RECORD_TYPES.get(name)
    if types is None:
        return True  # a field this version does not know: kept as it is, never read
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not a step count
    if not isinstance(value, types):
        return False
    if isinstance(value, list):
        return all(isinstance(item, str) for item in value)
    return True


def parse_result_line(line: bytes | str) -> dict[str, Any] | None:
    """One results.jsonl line as a record with every field of the right type (missing ones at their
    defaults), or None when it is not one: cut by a crash, not UTF-8, not an object with a str ``key`` and a
    known ``status``, a field of another type, NaN or a nesting too deep to read."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        record = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    if record.get("status") not in RECORD_STATUSES:
        return None
    if not all(_field_ok(name, value) for name, value in record.items()):
        return None
    return {**_RECORD_DEFAULTS, **record}


def _regular_file(path: Path, what: str) -> bool:
    """Does ``path`` hold a file (False: nothing there); anything else there is a RunDirectoryError."""
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_file():
        raise RunDirectoryError(
            f"{path} ({what}) is not a regular file; move the run directory aside or pass another --out"
        )
    return True


def read_results(out_dir: Path, warn: bool = True) -> dict[str, dict[str, Any]]:
    """The last valid line per task of results.jsonl. Lines that are not a result (cut by a crash, edited,
    damaged) are skipped with one warning; their tasks count as not finished, so --resume runs them again."""
    results: dict[str, dict[str, Any]] = {}
    path = out_dir / RESULTS_FILE
    if not _regular_file(path, "the run's results"):
        return results
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RunDirectoryError(
            f"cannot read {path} ({error.strerror}); fix its permissions or pass another --out"
        ) from None
    skipped = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        record = parse_result_line(line)
        if record is None:
            skipped += 1
            continue
        results[record["key"]] = record
    if skipped and warn:
        _log.warning(
            "%s: skipped %d line(s) that are not task results; those tasks count as not finished", path, skipped
        )
    return results


def read_run_settings(out_dir: Path) -> dict[str, Any]:
    """run.json of a run directory as a dict; a damaged one is one RunDirectoryError naming the fix."""
    path = out_dir / RUN_FILE
    fix = "move the run directory aside (or delete it) and start again, or pass another --out"
    if not _regular_file(path, "the run's settings"):
        raise RunDirectoryError(f"{path} is missing; {fix}")
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except OSError as error:
        raise RunDirectoryError(f"cannot read {path} ({error.strerror}); {fix}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RunDirectoryError(f"{path} is damaged (not a JSON object of run settings); {fix}") from None
    if not isinstance(settings, dict):
        raise RunDirectoryError(
            f"{path} is damaged (a JSON {type(settings).__name__}, not an object of settings); {fix}"
        )
    return settings


def _end_last_line(path: Path) -> None:
    """A line cut by a crash gets its newline, so the next result is a line of its own, not glued to it."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as file:
            file.seek(-1, 2)
            if file.read(1) != b"\n":
                file.write(b"\n")


def prepare_run_directory(out_dir: Path, settings: WebRunSettings, resume: bool) -> dict[str, dict[str, Any]]:
    """Create the run directory, or check a resumed one; returns the results already there."""
    run_file = out_dir / RUN_FILE
    wanted = asdict(settings)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirectoryError(f"--out {out_dir} is a file, not a directory; pass a new or empty directory")
    if run_file.exists() or run_file.is_symlink():
        if not resume:
            raise RunDirectoryError(f"{out_dir} already holds a run; pass --resume to continue it or another --out")
        recorded = read_run_settings(out_dir)
        changed = sorted(key for key in wanted if recorded.get(key) != wanted[key])
        if changed:
            raise RunDirectoryError(
                f"--resume with other settings than the run in {out_dir} ({', '.join(changed)} differ); "
                "rerun with the same options or use another --out"
            )
        for name, what in ((SUMMARY_FILE, "the run's summary"), (REPORT_FILE, "the run's report")):
            _regular_file(out_dir / name, what)  # written at the end: fail now, not after every task ran
        done = read_results(out_dir)
        _end_last_line(out_dir / RESULTS_FILE)
        return done
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunDirectoryError(f"{out_dir} is not empty and holds no run; pass an empty or new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trajectories").mkdir(exist_ok=True)
    write_json_atomically(run_file, wanted)
    return {}


class _ResultLog:
    """Appends finished tasks to results.jsonl from any worker, one flushed line each; a streak of tasks that
    failed the same way (``FailureStreak``) stops the run, and those tasks are marked to be rerun."""

    def __init__(
        self, path: Path, on_result: Callable[[WebEpisodeResult], None] | None, max_consecutive_errors: int = 0
    ) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.on_result = on_result
        self.streak = FailureStreak(max_consecutive_errors)
        self.stopped: RunStoppedError | None = None

    def write(self, result: WebEpisodeResult) -> None:
        with self.lock:
            self._append(result.to_json())
            if self.on_result is not None:
                self.on_result(result)
            if self.stopped is None and self.streak.add(result.key, result.status, result.error_kind):
                self.stopped = RunStoppedError(
                    f"the run stopped: {len(self.streak.keys)} tasks in a row failed ({self.streak.category}), "
                    f"the last with: {result.error}; fix that and continue with --resume (it reruns those tasks)"
                )
                for key in self.streak.keys:
                    self._append(_stopped_record(key, self.path.parent))

    def _append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
            file.flush()


def _stopped_record(key: str, out_dir: Path) -> dict[str, Any]:
    """A task's last line rewritten as ``run_stopped`` (rerun by --resume), keeping what identified it."""
    record = read_results(out_dir, warn=False).get(key, {})
    return {**record, "key": key, "status": "error", "error_kind": "run_stopped"}


def _site_login_states(sites: Any, auth_dir: Path) -> None:
    auth_dir.mkdir(parents=True, exist_ok=True)
    for name in sites:
        (auth_dir / f"{name}_state.json").write_text(json.dumps(sites.storage_state(name)), encoding="utf-8")


def _run_worker(
    index: int,
    pending: queue.Queue[SelectedTask],
    settings: WebRunSettings,
    options: WebRunOptions,
    out_dir: Path,
    make_policy: PolicyFactory,
    log: _ResultLog,
    fatal: list[BaseException],
) -> None:
    """Take tasks from ``pending`` until it is empty. Chromium or the bundled sites failing to start stops
    the run (every task needs them); a failure of one task is recorded and the worker goes on."""
    from envs.web.browser import ChromiumBrowser
    from envs.web.env import WebEnv
    from envs.web.grading import GradingConfig
    from envs.web.sites.images import bundled_site_vqa
    from envs.web.sites.server import start_sites
    from envs.web.tasks import load_task_images, site_urls_from_environment

    rules = EarlyStopRules(settings.parse_failures, settings.repeated_actions)
    browser = sites = None
    environments: dict[bool, Any] = {}  # one env for bundled tasks, one for official ones
    try:
        browser = ChromiumBrowser()
        official_urls = site_urls_from_environment()
        bundled_auth = out_dir / ".auth" / f"worker-{index}"
        while not fatal:
            try:
                selected = pending.get_nowait()
            except queue.Empty:
                return
            if selected.bundled:
                if sites is None:
                    sites = start_sites()
                sites.reset()
                _site_login_states(sites, bundled_auth)
                urls = site_urls_from_environment({name.upper(): url for name, url in sites.items()})
            else:
                urls = official_urls
            if selected.bundled not in environments:
                grading = GradingConfig(
                    mode=settings.grading_mode, vqa_model=bundled_site_vqa if selected.bundled else None
                )
                if settings.judge_model:
                    from magma.agents.web_judges import chat_fuzzy_judge, chat_vqa_model
                    from magma.policies.openai_chat import ChatClient

                    judge_client = ChatClient(settings.judge_model)
                    grading.fuzzy_judge = chat_fuzzy_judge(judge_client)
                    if not selected.bundled:  # the bundled sites' images carry their own answers
                        grading.vqa_model = chat_vqa_model(judge_client)
                auth = str(bundled_auth) if selected.bundled else options.auth_dir
                environments[selected.bundled] = WebEnv(
                    max_steps=settings.max_steps, grading=grading, auth_dir=auth, browser=browser
                )
            env = environments[selected.bundled]
            result = WebEpisodeResult(selected.key, "", selected.site, selected.eval_types, "error", worker=index)
            trajectory_dir = out_dir / "trajectories" / trajectory_name(selected.key)
            trajectory_dir.mkdir(parents=True, exist_ok=True)
            phase = "task"
            try:  # anything this one task raises is its recorded error; the run goes on with the next task
                task = selected.web_task(urls)
                result.intent = task.intent
                images = load_task_images(task, options.images_root)
                for number, image in enumerate(images):
                    save_step_image(image, trajectory_dir / f"input-{number}.jpg")
                phase = "start_page"
                observation, _ = env.reset(options={"task": task})
                phase = "policy"
                policy = make_policy(env, selected, urls)
                task_info = {"instruction": task.intent, "task_id": selected.key, "images": images}
                task_info["observation"] = observation
                result, records = run_web_episode(
                    env, policy, task_info, result, rules, trajectory_dir if options.save_images else None
                )
                with (trajectory_dir / "steps.jsonl").open("w", encoding="utf-8") as file:
                    for record in records:
                        file.write(json.dumps(asdict(record)) + "\n")
            except Exception as error:
                result.status, result.error = "error", failure_reason(error)
                result.error_kind = failure_category(error, phase)
            log.write(result)
            if log.stopped is not None:
                fatal.append(log.stopped)
                return
    except BaseException as error:
        fatal.append(error)
    finally:
        for environment in environments.values():
            environment.close()
        if sites is not None:
            sites.stop()
        if browser is not None:
            browser.close()


def run_web_suite(
    settings: WebRunSettings,
    options: WebRunOptions,
    out_dir: str | Path,
    make_policy: PolicyFactory,
    resume: bool = False,
    on_result: Callable[[WebEpisodeResult], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every selected task not finished yet; returns all results of the run directory, in task order."""
    out_dir = Path(out_dir)
    selected = select_tasks(settings.tasks)
    check_tasks_runnable(selected, settings)
    done = prepare_run_directory(out_dir, settings, resume)
    pending: queue.Queue[SelectedTask] = queue.Queue()
    for task in selected:
        if should_run(done.get(task.key), options.retry_errors):
            pending.put(task)
    log = _ResultLog(out_dir / RESULTS_FILE, on_result, options.max_consecutive_errors)
    fatal: list[BaseException] = []
    workers = [
        threading.Thread(
            target=_run_worker,
            args=(index, pending, settings, options, out_dir, make_policy, log, fatal),
            name=f"web-worker-{index}",
            daemon=True,
        )
        for index in range(max(1, min(options.workers, pending.qsize())))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if fatal and not isinstance(fatal[0], RunStoppedError):
        raise fatal[0]
    ordered = finish_run(out_dir, [task.key for task in selected])
    if fatal:
        raise fatal[0]  # a streak of failures: the summary and report of what ran are written first
    return ordered


def finish_run(out_dir: Path, keys: list[str], title: str = "Web run report") -> list[dict[str, Any]]:
    """The run's results in task order, with summary.json and report.html written from them."""
    from magma.agents.web_report import write_report

    results = read_results(out_dir, warn=False)  # prepare_run_directory warned once
    ordered = [results[key] for key in keys if key in results]
    summary = summarize(ordered)
    try:
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        write_report(out_dir, ordered, summary, title=title)
    except OSError as error:  # summary.json or a report page turned into a folder, a full disk, a read-only copy
        raise RunDirectoryError(
            f"cannot write the summary or report of {out_dir}: {error.strerror} ({error.filename}); "
            "fix that path and run again with --resume (finished tasks are kept)"
        ) from None
    return ordered


def check_tasks_runnable(selected: list[SelectedTask], settings: WebRunSettings) -> None:
    """Fail before any browser starts: unknown policy, oracle without trajectories, missing site URLs."""
    from envs.web.tasks import SiteUrlMissingError, TaskConfigError, site_urls_from_environment

    if settings.policy not in WEB_POLICIES:
        raise UserFacingError(f"--policy {settings.policy!r} is not a web policy; use one of {', '.join(WEB_POLICIES)}")
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


def _rate(passed: int, decided: int) -> float | None:
    return round(passed / decided, 4) if decided else None


def _group_row(records: list[dict[str, Any]]) -> dict[str, Any]:
    passed = sum(record.get("success") is True for record in records)
    failed = sum(record.get("success") is False for record in records)
    errors = sum(record.get("status") == "error" for record in records)
    finished = [record for record in records if record.get("status") == "done"]
    return {
        "tasks": len(records),
        "passed": passed,
        "failed": failed,
        "undecided": len(finished) - passed - failed,
        "errors": errors,
        "success_rate": _rate(passed, passed + failed),
        "mean_steps": round(sum(r["steps"] for r in finished) / len(finished), 2) if finished else None,
        "mean_seconds": round(sum(r["seconds"] for r in finished) / len(finished), 2) if finished else None,
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Success by site and by eval type (a task with two eval types counts in both), and overall."""
    by_site: dict[str, list[dict[str, Any]]] = {}
    by_eval: dict[str, list[dict[str, Any]]] = {}
    for record in results:
        by_site.setdefault(record["site"], []).append(record)
        for eval_type in record.get("eval_types") or ["?"]:
            by_eval.setdefault(eval_type, []).append(record)
    kinds = sorted({str(record.get("error_kind")) for record in results if record.get("status") == "error"})
    return {
        "overall": _group_row(results),
        "errors_by_kind": {
            kind: sum(str(record.get("error_kind")) == kind and record.get("status") == "error" for record in results)
            for kind in kinds
        },
        "by_site": {name: _group_row(rows) for name, rows in sorted(by_site.items())},
        "by_eval_type": {name: _group_row(rows) for name, rows in sorted(by_eval.items())},
    }


def summary_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: passed/decided, undecided (needs a judge), errors, steps, seconds."""
    header = f"{'group':<28} {'tasks':>5} {'passed':>6} {'failed':>6} {'undec.':>6} {'errors':>6} {'success':>8} "
    header += f"{'steps':>6} {'sec':>7}"
    lines = [header, "-" * len(header)]

    def row(name: str, values: dict[str, Any]) -> str:
        rate = "-" if values["success_rate"] is None else f"{100 * values['success_rate']:.1f}%"
        steps = "-" if values["mean_steps"] is None else f"{values['mean_steps']:.1f}"
        seconds = "-" if values["mean_seconds"] is None else f"{values['mean_seconds']:.1f}"
        return (
            f"{name:<28} {values['tasks']:>5} {values['passed']:>6} {values['failed']:>6} {values['undecided']:>6} "
            f"{values['errors']:>6} {rate:>8} {steps:>6} {seconds:>7}"
        )

    for name, values in summary["by_site"].items():
        lines.append(row(f"site {name}", values))
    for name, values in summary["by_eval_type"].items():
        lines.append(row(f"eval {name}", values))
    lines.append(row("all", summary["overall"]))
    return "\n".join(lines)


def web_policy_factory(policy: str, model: str | None) -> PolicyFactory:
    """A factory of fresh per-episode policies that share what is expensive (a loaded model, an HTTP client)."""
    if policy == "oracle":
        from envs.web.oracle import WebOracle

        return lambda env, selected, urls: WebOracle(env, selected.oracle or [], urls)
    if policy == "openai":
        import os

        from magma.policies.openai_chat import ChatClient, OpenAIChatPolicy

        name = model or os.environ.get("OPENAI_MODEL")
        if not name:
            raise UserFacingError("--policy openai needs --model NAME (the endpoint's model name) or OPENAI_MODEL")
        client = ChatClient(name)
        return lambda env, selected, urls: OpenAIChatPolicy(client)
    if policy == "magma":
        if not model or not Path(model).is_dir():
            raise UserFacingError(f"--policy magma needs --model DIR, a Magma checkpoint directory (got {model!r})")
        import torch

        from magma.policies.web import MagmaWebPolicy

        shared = MagmaWebPolicy.from_pretrained(model, device="cuda" if torch.cuda.is_available() else "cpu")
        lock = threading.Lock()
        return lambda env, selected, urls: MagmaWebPolicy(shared.model, shared.processor, generation_lock=lock)
    raise UserFacingError(f"--policy {policy!r} is not a web policy; use one of {', '.join(WEB_POLICIES)}")
