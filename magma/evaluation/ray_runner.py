"""``agent run ... --engine ray``: a suite run's units spread over Ray actors, on this machine or a cluster.

Each actor is one worker of the run: it builds its own environment with the suite's ``make_worker(index)``
(a Chromium with its own bundled sites, a simulator) and runs one unit at a time, writing the unit's
trajectory into the run directory itself (the run directory is on storage every node sees). The driver keeps
everything else of the local runner (``magma.evaluation.runner``): the run directory, ``ResultLog`` with its
failure streak, the progress bar, the summary and report, ``--resume``. An actor whose process dies during a
unit (killed, out of memory, a crash in native code) is replaced and the unit retried; after ``max_tries``
deaths on it the unit is recorded as an error of kind ``worker_died`` (rerun by ``--resume --retry-errors``)
and the run goes on. ``make_worker`` failing in an actor stops the run, as it does on the local engine.

Per run, Ray costs one ``ray.put`` of the suite's factory and one actor start per worker (a Python process,
then the environment); per unit, one actor call and its result coming back.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError
from data_tools.ray_cluster import RayEngineError, connect, import_ray, worker_death_errors
from magma.evaluation.results import EpisodeResult
from magma.evaluation.runner import ResultLog, RunOptions, RunUnit, SuiteWorker, run_unit
from magma.evaluation.task_failures import failure_reason

WORKER_DIED = "worker_died"  # error_kind of a unit whose worker process died max_tries times
ACTOR_CPUS = 1  # each actor holds one CPU, so N workers spread over the cluster's CPUs
CLOSE_TIMEOUT_S = 120.0  # for the actors to close their environments at the end of a run

_log = logging.getLogger(__name__)


class SuiteActor:
    """One worker of a run, as a Ray actor: the environment built by the suite's factory, then units one at
    a time. The factory comes as an object reference inside a list, so that its unpickling (and any error
    there) happens in ``start``, where the error comes back as the run's stopping error."""

    def __init__(self, factory: list[Any], index: int, out_dir: str) -> None:
        self.factory, self.index, self.out_dir = factory, index, Path(out_dir)
        self.worker: SuiteWorker | None = None

    def start(self) -> int:
        """Build this worker's environment; returns the actor's process id."""
        make_worker: Callable[[int], SuiteWorker] = import_ray().get(self.factory[0])
        self.worker = make_worker(self.index)
        return os.getpid()

    def run(self, unit: RunUnit) -> EpisodeResult:
        assert self.worker is not None, "start() builds the environment first"
        return run_unit(self.worker, unit, self.out_dir, self.index)

    def close(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()


@dataclass
class ShippedFactory:
    """A suite's ``make_worker``, put into Ray's object store once for every actor of the run."""

    ray: Any
    reference: Any


def ship_worker_factory(make_worker: Callable[[int], SuiteWorker], options: RunOptions) -> ShippedFactory:
    """Join (or start) the Ray cluster and put ``make_worker`` into its object store: Ray missing, a cluster
    that does not answer, or a factory that cannot travel to other processes are each one error, before
    anything of the run is written."""
    if options.max_tries < 1:
        raise UserFacingError(f"--max-tries must be at least 1, got {options.max_tries}")
    ray = connect(options.address)
    try:
        reference = ray.put(make_worker)
    except Exception as error:  # a lock, an open socket, a loaded model held by the policy factory
        innermost: BaseException = error
        while innermost.__cause__ is not None:  # Ray's own wrapper says less than what it wraps
            innermost = innermost.__cause__
        raise RayEngineError(
            f"--engine ray cannot send this run's environment and policy to its actors ({failure_reason(innermost)}); "
            "run it with --engine local, or serve the model (`agent serve`) and let the actors call it "
            "(--policy openai for UI runs, --policy remote for robots)"
        ) from None
    return ShippedFactory(ray, reference)


class _ActorPool:
    """The run's actors by worker index (a dead one is replaced under the same index), which of them have their
    environment built, and the closing of those environments."""

    def __init__(self, shipped: ShippedFactory, out_dir: Path) -> None:
        self.ray = shipped.ray
        self.actor_class = self.ray.remote(num_cpus=ACTOR_CPUS, max_restarts=0, max_task_retries=0)(SuiteActor)
        self.factory, self.out_dir = [shipped.reference], str(out_dir)
        self.actors: dict[int, Any] = {}
        self.started: set[int] = set()
        self.closing: list[Any] = []  # close calls already sent

    def start(self, index: int) -> Any:
        """A fresh actor for worker ``index``; returns the reference of its start call."""
        self.actors[index] = self.actor_class.remote(self.factory, index, self.out_dir)
        return self.actors[index].start.remote()

    def retire(self, index: int) -> None:
        """Close worker ``index``'s environment now that no unit is left for it, as a local worker does."""
        if index in self.started:
            self.started.discard(index)
            self.closing.append(self.actors[index].close.remote())

    def drop(self, index: int) -> None:
        self.started.discard(index)
        actor = self.actors.pop(index, None)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)

    def close_all(self, graceful: bool) -> None:
        """Close the environments still open (``graceful``: waiting for every close, as the local engine waits
        for its threads), then end every actor, those Ray never placed included."""
        for index in list(self.started):
            self.retire(index)
        if graceful and self.closing:
            self.ray.wait(self.closing, num_returns=len(self.closing), timeout=CLOSE_TIMEOUT_S)  # a dead one's: at once
        for index in list(self.actors):
            self.drop(index)


def _stopping_error(ray: Any, index: int, error: BaseException) -> BaseException:
    """What an actor's start raised, as the local engine would have raised it: the suite's own error (Ray
    wraps it in a RayTaskError), or one line for an error of Ray's own (the factory would not unpickle there)."""
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
            return cause
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return RayEngineError(
        f"worker {index} could not start its environment on Ray ({first_line[:300]}); every node needs this "
        "toolkit and the run's code installed, with the same Python and Ray versions as this machine"
    )


def _died_result(unit: RunUnit, index: int, tries: int, error: BaseException) -> EpisodeResult:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = (
        f"the worker process died {tries} times running this unit ({first_line[:200]}); "
        "rerun it with --resume --retry-errors"
    )
    return EpisodeResult(
        unit.key, unit.intent, unit.group, list(unit.eval_types), "error", error=reason, error_kind=WORKER_DIED,
        worker=index,
    )  # fmt: skip


class _RayRun:
    """The driver's side of one run on Ray: units handed to idle actors one at a time, results written as they
    come back, dead actors replaced, and what stops the run collected as the local engine's threads do."""

    def __init__(
        self, pending: list[RunUnit], out_dir: Path, shipped: ShippedFactory, log: ResultLog, options: RunOptions
    ) -> None:
        self.ray, self.log, self.options = shipped.ray, log, options
        self.deaths = worker_death_errors(self.ray)
        self.pool = _ActorPool(shipped, out_dir.absolute())
        self.queue: deque[RunUnit] = deque(pending)
        self.in_flight: dict[Any, tuple[int, RunUnit | None]] = {}  # a call -> (worker, its unit; None: start)
        self.idle: list[int] = []
        self.unit_deaths: dict[str, int] = {}
        self.start_deaths: dict[int, int] = {}
        self.fatal: list[BaseException] = []

    def run(self) -> list[BaseException]:
        workers = max(1, min(self.options.workers, len(self.queue))) if self.queue else 0  # as the local engine
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        if workers > cpus:
            _log.warning(
                "--workers %d, but the Ray cluster has %d CPUs: at most %d actors run at once (each holds %d CPU)",
                workers, cpus, cpus // ACTOR_CPUS, ACTOR_CPUS,
            )  # fmt: skip
        for index in range(workers):
            self.in_flight[self.pool.start(index)] = (index, None)
        graceful = False
        try:
            while self._busy():
                (reference,), _ = self.ray.wait(list(self.in_flight), num_returns=1)
                index, unit = self.in_flight.pop(reference)
                try:
                    value = self.ray.get(reference)
                except self.deaths as error:
                    self._worker_died(index, unit, error)
                except Exception as error:  # make_worker failed in the actor: the run stops, as on the local engine
                    self.fatal.append(_stopping_error(self.ray, index, error))
                else:
                    if unit is not None:
                        self._write(value)
                    self.pool.started.add(index)
                    self.idle.append(index)
                    self._dispatch()
                    if not self.queue or self.fatal:  # nothing left for the idle ones (a retry starts a fresh one)
                        for idle in self.idle:
                            self.pool.retire(idle)
                        self.idle.clear()
            graceful = True
        finally:
            self.pool.close_all(graceful)
        return self.fatal

    def _busy(self) -> bool:
        """Units still running, or still to run while nothing stopped the run. Actors that Ray could not
        place yet (more workers than free CPUs) are not waited for."""
        units_running = any(unit is not None for _, unit in self.in_flight.values())
        return units_running or (bool(self.queue) and not self.fatal)

    def _dispatch(self) -> None:
        while self.idle and self.queue and not self.fatal:
            index, unit = self.idle.pop(), self.queue.popleft()
            self.in_flight[self.pool.actors[index].run.remote(unit)] = (index, unit)

    def _write(self, result: EpisodeResult) -> None:
        self.log.write(result)
        if self.log.stopped is not None and not self.fatal:
            self.fatal.append(self.log.stopped)

    def _worker_died(self, index: int, unit: RunUnit | None, error: BaseException) -> None:
        """Worker ``index``'s process died, starting (``unit`` None) or running ``unit``: the unit goes back to
        the front of the queue, or is recorded ``worker_died`` after ``max_tries``; a fresh actor takes the
        worker's place while there is work for it."""
        self.pool.drop(index)
        tries = self.options.max_tries
        if unit is None:
            self.start_deaths[index] = self.start_deaths.get(index, 0) + 1
            if self.start_deaths[index] >= tries:
                self.fatal.append(
                    RayEngineError(
                        f"worker {index}'s process died {tries} times while its environment started; see the Ray "
                        "logs of that node (out of memory?), then continue with --resume"
                    )
                )
        else:
            self.unit_deaths[unit.key] = self.unit_deaths.get(unit.key, 0) + 1
            if self.unit_deaths[unit.key] >= tries:
                self._write(_died_result(unit, index, tries, error))
            else:
                self.queue.appendleft(unit)
        self._dispatch()
        if self.queue and not self.fatal:
            self.in_flight[self.pool.start(index)] = (index, None)


def run_on_ray_actors(
    pending: list[RunUnit], out_dir: Path, shipped: ShippedFactory, log: ResultLog, options: RunOptions
) -> list[BaseException]:
    """Run ``pending`` over ``options.workers`` actors, writing each result through ``log`` as it comes;
    returns what stopped the run (empty: every unit ran), as the local engine's threads do."""
    return _RayRun(pending, out_dir, shipped, log, options).run()
