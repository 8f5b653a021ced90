"""Corpus jobs on Ray (``--engine ray``): the local engine's work units, run as Ray tasks on a cluster.

The driver (the machine that ran ``agent data ...``) keeps everything that decides the output: it lists
the inputs, skips the units its manifest records, records each finished unit, and prints the progress and
the summary. A Ray task runs one unit with :func:`data_tools.jobs.process_unit`, the local engine's own
function, so it writes the same shards under the same names, each under ``NAME.partial`` and renamed when
complete; the output directory is on storage every node sees, as with SLURM.

- At most ``workers`` units are in flight, one CPU each; results come back as units finish.
- A unit whose worker process dies (killed, out of memory, a crash in native code) is run again, by Ray,
  up to ``max_tries`` times in all; a retry writes the same shard names over the dead attempt's.
- A unit whose worker still dies is split: each of its inputs is run alone (up to ``max_tries`` times), the
  driver writes the unit's shards from the results in input order, and an input that kills its worker every
  time is counted failed (``worker_died``). The job goes on.
- Relative input paths mean what they meant on the driver: each task works in the driver's directory.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from data_tools.jobs import (
    InputFunction,
    InputResult,
    JobSpec,
    UnitResult,
    input_outcome,
    process_unit,
    remove_unfinished_output,
    write_unit,
)
from data_tools.ray_cluster import DEFAULT_MAX_TRIES, RayEngineError, connect, worker_death_errors

WORKER_DIED = "worker_died"


def _work_in(directory: str) -> None:
    """Resolve relative paths as the driver did (a Ray worker starts elsewhere on another node)."""
    if os.getcwd() != directory and os.path.isdir(directory):
        os.chdir(directory)


def _unit_task(spec: JobSpec, unit: int, function: InputFunction, directory: str) -> UnitResult:
    _work_in(directory)
    return process_unit(spec, unit, function)


def _input_task(spec: JobSpec, identifier: str, function: InputFunction, directory: str) -> InputResult | dict:
    _work_in(directory)
    return input_outcome(spec, identifier, function)


def check_max_tries(max_tries: int) -> int:
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise RayEngineError(f"--max-tries is {max_tries!r}; give a whole number of 1 or more")
    return max_tries


def ray_unit_results(
    spec: JobSpec,
    pending: list[int],
    function: InputFunction,
    workers: int,
    address: str | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> Iterator[UnitResult]:
    """Run ``pending`` units as Ray tasks, ``workers`` at a time; yields each unit's result as it finishes."""
    check_max_tries(max_tries)
    ray = connect(address)
    died = worker_death_errors(ray)
    directory = os.getcwd()
    unit_task = ray.remote(_unit_task).options(num_cpus=1, max_retries=max_tries - 1)
    spec_ref = ray.put(spec)  # the input list goes to the cluster once, not with every unit
    waiting = deque(pending)
    in_flight: dict[Any, int] = {}
    try:
        while waiting or in_flight:
            while waiting and len(in_flight) < workers:
                unit = waiting.popleft()
                in_flight[unit_task.remote(spec_ref, unit, function, directory)] = unit
            (finished,), _ = ray.wait(list(in_flight), num_returns=1)
            unit = in_flight.pop(finished)
            try:
                result = ray.get(finished)
            except died:
                result = _unit_input_by_input(ray, spec, spec_ref, unit, function, directory, max_tries)
            yield result
    finally:  # Ctrl-C, a unit that raised, the caller stopping: nothing keeps running on the cluster
        for reference in in_flight:
            ray.cancel(reference, force=True)


def _unit_input_by_input(
    ray: Any, spec: JobSpec, spec_ref: Any, unit: int, function: InputFunction, directory: str, max_tries: int
) -> UnitResult:
    """A unit whose worker died ``max_tries`` times: each input alone, the shards written here."""
    started = time.perf_counter()
    died = worker_death_errors(ray)
    input_task = ray.remote(_input_task).options(num_cpus=1, max_retries=max_tries - 1)
    identifiers = spec.unit_inputs(unit)
    references = [input_task.remote(spec_ref, identifier, function, directory) for identifier in identifiers]
    outcomes: list[InputResult | dict[str, str]] = []
    for identifier, reference in zip(identifiers, references, strict=True):
        try:
            outcomes.append(ray.get(reference))
        except died as error:
            detail = f"the worker processing it died {max_tries} times ({type(error).__name__})"
            outcomes.append({"input": identifier, "reason": WORKER_DIED, "detail": detail})
    remove_unfinished_output(spec, [unit])  # what the dead attempts left, which the results below may not cover
    return write_unit(spec, unit, outcomes, started)
