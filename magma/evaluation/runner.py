"""The one suite runner under ``agent run``, for every environment (web, MiniWoB++, Android, MuJoCo,
Meta-World): work units (a task, or one episode of a robot task) spread over worker threads, each worker
holding its own environment; a run directory that ``--resume`` finishes; a progress bar with the unit count
and ETA; and the summary and HTML report at the end.

A run directory holds ``run.json`` (the settings; ``--resume`` refuses others), ``results.jsonl`` (one
flushed line per finished unit, ``magma.evaluation.results``), ``trajectories/<unit>/`` (screenshots and
``steps.jsonl``, or the episode's mp4), ``summary.json`` and ``report.html``. A unit that fails is recorded
with its category and reason and the run goes on (``magma.evaluation.task_failures``); a streak of units
failing the same way stops the run, its summary and report written first.

An environment plugs in with a ``SuiteWorker`` factory: ``make_worker(index)`` builds worker ``index``'s
environment (an error there stops the run: every unit needs it) and ``worker.run(attempt)`` runs one unit.
With ``engine="ray"`` the workers are Ray actors, on this machine or a cluster
(``magma.evaluation.ray_runner``); everything else here (the run directory, results, resume) is the same.
"""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from data_tools.atomic_files import write_json_atomically
from data_tools.config_files import nested_differences
from data_tools.errors import UserFacingError
from data_tools.ray_cluster import DEFAULT_MAX_TRIES, RayEngineError, check_engine
from magma.evaluation.results import (
    REPORT_FILE,
    RESULTS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    EpisodeResult,
    RunDirectoryError,
    describe_result,
    holds_file,
    read_results,
    read_run_settings,
    summarize,
)
from magma.evaluation.task_failures import (
    FailureStreak,
    RunStoppedError,
    failure_category,
    failure_reason,
    should_run,
)


def trajectory_name(key: str) -> str:
    """A unit key as a folder and link name (``shopping:3`` -> ``shopping_3``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


@dataclass(frozen=True)
class RunUnit:
    """One unit of work: its results.jsonl key, what the summary groups it by, its check types, and what the
    environment's worker needs to run it (a web task, an Android task, a robot task and episode index)."""

    key: str
    group: str
    eval_types: tuple[str, ...] = ()
    intent: str = ""
    payload: Any = None


def episode_key(task: str, index: int) -> str:
    """The results.jsonl key of episode ``index`` of ``task`` (``reach:003``)."""
    return f"{task}:{index:03d}"


def episode_units(tasks: Sequence[str], episodes: int, eval_type: str) -> list[RunUnit]:
    """``episodes`` units per task (episode ``i``: start state or seed ``i``), grouped by task, in task order."""
    if not tasks:
        raise UserFacingError("the run names no task; pass --tasks")
    if episodes < 1:
        raise UserFacingError(f"--episodes must be at least 1, got {episodes}")
    return [
        RunUnit(episode_key(task, index), task, (eval_type,), payload=(task, index))
        for task in tasks
        for index in range(episodes)
    ]


@dataclass
class Attempt:
    """One unit being run: its result (filled by the worker), its trajectory folder, and the phase the worker
    is in (``task``, ``start_page``, ``policy``, ``environment``), which names a failure's category."""

    unit: RunUnit
    result: EpisodeResult
    trajectory_dir: Path
    phase: str = "task"


class SuiteWorker(Protocol):
    """One worker's environment. ``run`` fills and returns ``attempt.result`` (status ``done``) or raises:
    the error becomes the unit's recorded failure. ``close`` frees the environment."""

    device_errors: tuple[type[BaseException], ...]  # errors of a lost device: rerun by --resume

    def run(self, attempt: Attempt) -> EpisodeResult: ...

    def close(self) -> None: ...


@dataclass
class RunOptions:
    """How to run (not part of the results)."""

    workers: int = 1
    resume: bool = False
    retry_errors: bool = False  # --resume also reruns units that failed for a reason of their own
    max_consecutive_errors: int = 5  # this many units in a row failing the same way stop the run (0: never)
    progress: bool = False  # a progress bar (units, ETA) and a line per unit on stderr
    title: str = "Run report"
    group_name: str = "group"  # what a group is called in the summary (site, task)
    on_result: Callable[[EpisodeResult], None] | None = field(default=None, repr=False)
    engine: str = "local"  # local: worker threads here; ray: Ray actors (magma.evaluation.ray_runner)
    address: str | None = None  # the Ray cluster (default RAY_ADDRESS, else a local instance)
    max_tries: int = DEFAULT_MAX_TRIES  # ray: a unit whose worker process dies this many times is recorded failed


def refuse_search_on_ray(options: RunOptions, searching: bool) -> None:
    """Test-time search shares one reflection store (and its file) across a run's workers, which Ray's
    separate processes cannot: a searched run stays on the local engine."""
    if searching and options.engine == "ray":
        raise RayEngineError(
            "--search shares its reflections between a run's workers, which --engine ray cannot; "
            "run a searched run with --engine local (the default)"
        )


def _end_last_line(path: Path) -> None:
    """A line cut by a crash gets its newline, so the next result is a line of its own, not glued to it."""
    if path.is_file() and path.stat().st_size:
        with path.open("rb+") as file:
            file.seek(-1, 2)
            if file.read(1) != b"\n":
                file.write(b"\n")


def prepare_run_directory(out_dir: Path, settings: Any, resume: bool) -> dict[str, dict[str, Any]]:
    """Create the run directory for ``settings`` (a dataclass), or check a resumed one; returns the results
    already there."""
    run_file = out_dir / RUN_FILE
    wanted = json.loads(json.dumps(asdict(settings)))  # tuples as lists, as run.json reads back
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirectoryError(f"--out {out_dir} is a file, not a directory; pass a new or empty directory")
    if run_file.exists() or run_file.is_symlink():
        if not resume:
            raise RunDirectoryError(f"{out_dir} already holds a run; pass --resume to continue it or another --out")
        recorded = read_run_settings(out_dir)
        recorded = {key: recorded.get(key) for key in wanted}  # a field this version no longer has is not compared
        changed = [dotted for dotted, _, _ in nested_differences(recorded, wanted)]
        if changed:
            raise RunDirectoryError(
                f"--resume with other settings than the run in {out_dir} ({', '.join(changed)} differ); "
                "rerun with the same options or use another --out"
            )
        for name, what in ((SUMMARY_FILE, "the run's summary"), (REPORT_FILE, "the run's report")):
            holds_file(out_dir / name, what)  # written at the end: fail now, not after every unit ran
        done = read_results(out_dir)
        _end_last_line(out_dir / RESULTS_FILE)
        return done
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RunDirectoryError(f"{out_dir} is not empty and holds no run; pass an empty or new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "trajectories").mkdir(exist_ok=True)
    write_json_atomically(run_file, wanted)
    return {}


class ResultLog:
    """Appends finished units to results.jsonl from any worker, one flushed line each; a streak of units that
    failed the same way (``FailureStreak``) stops the run, and those units are marked to be rerun."""

    def __init__(
        self,
        path: Path,
        on_result: Callable[[EpisodeResult], None] | None = None,
        max_consecutive_errors: int = 0,
    ) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.on_result = on_result
        self.streak = FailureStreak(max_consecutive_errors)
        self.stopped: RunStoppedError | None = None

    def write(self, result: EpisodeResult) -> None:
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
    """A unit's last line rewritten as ``run_stopped`` (rerun by --resume), keeping what identified it."""
    record = read_results(out_dir, warn=False).get(key, {})
    return {**record, "key": key, "status": "error", "error_kind": "run_stopped"}


class _Progress:
    """The bar (units done of the units to run, rate, ETA) with a line per finished unit above it."""

    def __init__(self, total: int, title: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=title, unit="task", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, result: EpisodeResult) -> None:
        if self.bar is not None:
            self.bar.write(describe_result(result), file=sys.stderr)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_unit(worker: SuiteWorker, unit: RunUnit, out_dir: Path, index: int) -> EpisodeResult:
    """``unit`` run by ``worker`` (number ``index``): its result, or its recorded failure when it raised."""
    result = EpisodeResult(unit.key, unit.intent, unit.group, list(unit.eval_types), "error", worker=index)
    attempt = Attempt(unit, result, out_dir / "trajectories" / trajectory_name(unit.key))
    attempt.trajectory_dir.mkdir(parents=True, exist_ok=True)
    try:  # anything this one unit raises is its recorded error; the run goes on with the next one
        return worker.run(attempt)
    except Exception as error:
        result = attempt.result
        result.status, result.error = "error", failure_reason(error)
        result.error_kind = failure_category(error, attempt.phase, worker.device_errors)
        return result


def _run_worker(
    index: int,
    pending: queue.Queue[RunUnit],
    out_dir: Path,
    make_worker: Callable[[int], SuiteWorker],
    log: ResultLog,
    fatal: list[BaseException],
) -> None:
    """Take units from ``pending`` until it is empty. The worker's environment failing to start stops the run
    (every unit needs it); a failure of one unit is recorded and the worker goes on."""
    worker = None
    try:
        worker = make_worker(index)
        while not fatal:
            try:
                unit = pending.get_nowait()
            except queue.Empty:
                return
            log.write(run_unit(worker, unit, out_dir, index))
            if log.stopped is not None:
                fatal.append(log.stopped)
                return
    except BaseException as error:
        fatal.append(error)
    finally:
        if worker is not None:
            worker.close()


def _run_on_threads(
    pending: list[RunUnit],
    out_dir: Path,
    make_worker: Callable[[int], SuiteWorker],
    log: ResultLog,
    workers: int,
) -> list[BaseException]:
    """The local engine: ``workers`` threads of this process share ``pending``; returns what stopped the run."""
    shared: queue.Queue[RunUnit] = queue.Queue()
    for unit in pending:
        shared.put(unit)
    fatal: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_run_worker,
            args=(index, shared, out_dir, make_worker, log, fatal),
            name=f"suite-worker-{index}",
            daemon=True,
        )
        for index in range(max(1, min(workers, len(pending))))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return fatal


def run_suite(
    units: Sequence[RunUnit],
    settings: Any,
    out_dir: str | Path,
    make_worker: Callable[[int], SuiteWorker],
    options: RunOptions | None = None,
) -> list[dict[str, Any]]:
    """Run every unit not finished yet in ``out_dir`` (made for ``settings``, a dataclass of what decides the
    results) over ``options.workers`` threads, or Ray actors with ``options.engine == "ray"``; returns all
    results of the run directory, in unit order."""
    options = options or RunOptions()
    check_engine(options.engine)
    out_dir = Path(out_dir)
    keys = [unit.key for unit in units]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise RunDirectoryError(f"the run lists {repeated[:3]} more than once; name each task once")
    shipped = None
    if options.engine == "ray":  # Ray missing, its cluster silent, a factory that cannot travel: before any file
        from magma.evaluation.ray_runner import ship_worker_factory

        shipped = ship_worker_factory(make_worker, options)
    done = prepare_run_directory(out_dir, settings, options.resume)
    pending = [unit for unit in units if should_run(done.get(unit.key), options.retry_errors)]
    progress = _Progress(len(pending), options.title, options.progress)

    def on_result(result: EpisodeResult) -> None:
        progress(result)
        if options.on_result is not None:
            options.on_result(result)

    log = ResultLog(out_dir / RESULTS_FILE, on_result, options.max_consecutive_errors)
    try:
        if shipped is not None:
            from magma.evaluation.ray_runner import run_on_ray_actors

            fatal = run_on_ray_actors(pending, out_dir, shipped, log, options)
        else:
            fatal = _run_on_threads(pending, out_dir, make_worker, log, options.workers)
    finally:
        progress.close()
    if fatal and not isinstance(fatal[0], RunStoppedError):
        raise fatal[0]
    ordered = finish_run(out_dir, keys, title=options.title, group_name=options.group_name)
    if fatal:
        raise fatal[0]  # a streak of failures: the summary and report of what ran are written first
    return ordered


def finish_run(
    out_dir: Path, keys: list[str], title: str = "Run report", group_name: str = "group"
) -> list[dict[str, Any]]:
    """The run's results in unit order, with summary.json and report.html written from them."""
    from magma.evaluation.report import write_report

    results = read_results(out_dir, warn=False)  # prepare_run_directory warned once
    ordered = [results[key] for key in keys if key in results]
    summary = summarize(ordered, group_name)
    try:
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        write_report(out_dir, ordered, summary, title=title)
    except OSError as error:  # summary.json or a report page turned into a folder, a full disk, a read-only copy
        raise RunDirectoryError(
            f"cannot write the summary or report of {out_dir}: {error.strerror} ({error.filename}); "
            "fix that path and run again with --resume (finished tasks are kept)"
        ) from None
    return ordered
