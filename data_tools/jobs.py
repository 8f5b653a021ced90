"""Corpus jobs: run one per-input function (Trace-of-Mark over a video, Set-of-Mark over an
annotated screenshot) over a whole corpus, into WebDataset shards.

- Inputs are listed once, sorted, and cut into work units of ``inputs_per_unit`` inputs; unit ``u``
  belongs to machine ``u % world_size`` (rank and world size from the command line or from the
  torchrun / accelerate / SLURM variables), so machines share a corpus without talking.
- Each unit is processed by one of ``workers`` processes and writes its own shards
  (``{kind}-u000042-000000.tar``, ``samples_per_shard`` samples each, written under a temporary name
  and renamed when complete). When a unit is done the main process records it in the manifest
  (``manifest-rank{r}-of-{w}.json``, replaced atomically): a restarted job skips recorded units and
  deletes whatever an unrecorded unit left behind, so nothing is half-written and nothing is done twice.
- An input that fails (unreadable video, no texture to track, bad annotation, a hostile line that is
  too long or nested too deeply, or any other error raised while processing it) is recorded with its
  reason and the job goes on; the summary counts inputs ok / failed by reason, samples, shards, frames/s.
- Worker processes end with the job: each asks Linux to kill it when its parent dies (SIGKILL, SIGTERM and
  SIGINT alike; a watcher thread polls the parent elsewhere), and an interrupted parent stops them first.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError
from data_tools.jsonl_lines import non_blank_line_numbers
from data_tools.sample_format import SampleFormatError, validate_sample
from data_tools.shards import ShardWriter

MANIFEST_PATTERN = "manifest-rank{rank}-of-{world}.json"


class CorpusJobError(UserFacingError, ValueError):
    """A corpus job that cannot start as asked (no inputs, an output directory of another job)."""


@dataclass
class InputResult:
    """What the per-input function gives back: samples (record, images) and how many frames it decoded."""

    samples: list[tuple[dict[str, Any], list[Any]]] = field(default_factory=list)
    frames: int = 0


# input identifier (a path, or "file.jsonl:12" for one line), options, a per-input seeded RNG
InputFunction = Callable[[str, dict[str, Any], np.random.Generator], InputResult]


@dataclass
class JobSpec:
    """Everything that defines a job's output; two runs with the same spec may share an output directory."""

    kind: str  # "tom" | "som"
    inputs: list[str]
    out_dir: str
    options: dict[str, Any] = field(default_factory=dict)
    samples_per_shard: int = 1000
    inputs_per_unit: int = 8
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in ("samples_per_shard", "inputs_per_unit"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                option = "--" + name.replace("_", "-")
                raise CorpusJobError(f"{option} is {value!r}; give a whole number of 1 or more")

    def fingerprint(self) -> str:
        """Identifies the job's output: kind, options, the input list, the unit and shard sizes, the seed."""
        defining = {
            "kind": self.kind,
            "options": self.options,
            "inputs": hashlib.sha1("\n".join(self.inputs).encode()).hexdigest(),
            "samples_per_shard": self.samples_per_shard,
            "inputs_per_unit": self.inputs_per_unit,
            "seed": self.seed,
        }
        return hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:16]

    def units(self) -> list[int]:
        """The work units of this machine (rank)."""
        count = -(-len(self.inputs) // self.inputs_per_unit)
        return [unit for unit in range(count) if unit % self.world_size == self.rank]

    def unit_inputs(self, unit: int) -> list[str]:
        return self.inputs[unit * self.inputs_per_unit : (unit + 1) * self.inputs_per_unit]

    def shard_prefix(self, unit: int) -> str:
        return f"{self.kind}-u{unit:06d}"


@dataclass
class UnitResult:
    unit: int
    shards: list[str]
    samples: int
    frames: int
    seconds: float
    failed: list[dict[str, str]]  # {"input", "reason", "detail"}
    ok: int


def list_inputs(source: str | Path, extensions: tuple[str, ...], expand_jsonl: bool = False) -> list[str]:
    """A directory (searched recursively for ``extensions``) or a list file (one path per line; ``#`` comments).
    With ``expand_jsonl`` every line of a ``.jsonl`` file is one input, named ``file.jsonl:LINE``."""
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
    elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
        base = path.parent
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise CorpusJobError(f"cannot read the list file '{source}' ({error}); give a UTF-8 text file") from None
        files = [
            str(base / line) if not Path(line).is_absolute() else line
            for line in lines
            if line and not line.startswith("#")
        ]
    elif path.is_file() and path.suffix.lower() in extensions:
        files = [str(path)]
    else:
        raise CorpusJobError(
            f"input '{source}' is neither a directory nor a list file (.txt, one path per line) nor a "
            f"{'/'.join(extensions)} file; give one of those"
        )
    if not expand_jsonl:
        return files
    expanded = []
    for file in files:
        if not file.endswith(".jsonl"):
            expanded.append(file)
            continue
        try:
            expanded += [f"{file}:{number}" for number in non_blank_line_numbers(file)]
        except OSError as error:
            raise CorpusJobError(f"cannot read '{file}' ({error.strerror or error}); check the path") from None
    return expanded


def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torchrun/accelerate (RANK, WORLD_SIZE) or SLURM (SLURM_PROCID, SLURM_NTASKS)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_PROCID", "0")))
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")))
    if world_size < 1 or not 0 <= rank < world_size:
        raise CorpusJobError(f"rank {rank} does not fit world size {world_size}; give 0 <= rank < world size")
    return rank, world_size


def input_rng(seed: int, identifier: str) -> np.random.Generator:
    """The same draws for an input whichever machine or worker processes it."""
    digest = int.from_bytes(hashlib.sha1(identifier.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def failure_reason(error: Exception) -> str:
    """A short, stable key for the summary: the error's ``reason`` if it has one, else its class name."""
    return str(getattr(error, "reason", "") or type(error).__name__)


def input_outcome(spec: JobSpec, identifier: str, function: InputFunction) -> InputResult | dict[str, str]:
    """``function`` over one input: its samples, or its failure (``{"input", "reason", "detail"}``), which a
    hostile or broken input becomes instead of ending the job."""
    try:
        result = function(identifier, spec.options, input_rng(spec.seed, identifier))
    except UserFacingError as error:
        return {"input": identifier, "reason": failure_reason(error), "detail": str(error)}
    except Exception as error:  # a hostile input must not end the job: it is counted by reason
        detail = f"{type(error).__name__}: {str(error)[:500]}"
        return {"input": identifier, "reason": failure_reason(error), "detail": detail}
    invalid = _first_invalid_sample(result)
    if invalid is not None:  # checked before writing any, so an input is written whole or not at all
        return {"input": identifier, "reason": "invalid_sample", "detail": invalid}
    return result


def write_unit(
    spec: JobSpec, unit: int, outcomes: Iterable[InputResult | dict[str, str]], started: float
) -> UnitResult:
    """The unit's shards from its inputs' outcomes, in input order (``outcomes`` may be computed lazily)."""
    failed, ok, frames = [], 0, 0
    with ShardWriter(
        spec.out_dir, prefix=spec.shard_prefix(unit), max_samples_per_shard=spec.samples_per_shard
    ) as writer:
        for outcome in outcomes:
            if isinstance(outcome, dict):
                failed.append(outcome)
                continue
            for record, images in outcome.samples:
                writer.write(record, images)
            frames += outcome.frames
            ok += 1
    return UnitResult(
        unit=unit,
        shards=[path.name for path in writer.shards],
        samples=writer.samples_written,
        frames=frames,
        seconds=time.perf_counter() - started,
        failed=failed,
        ok=ok,
    )


def process_unit(spec: JobSpec, unit: int, function: InputFunction) -> UnitResult:
    """Run ``function`` over one unit's inputs and write their samples into the unit's shards."""
    started = time.perf_counter()
    outcomes = (input_outcome(spec, identifier, function) for identifier in spec.unit_inputs(unit))
    return write_unit(spec, unit, outcomes, started)


def _first_invalid_sample(result: InputResult) -> str | None:
    """What is wrong with the first sample of ``result`` that breaks the sample format, or None."""
    for record, images in result.samples:
        try:
            validate_sample(record, len(images))
        except SampleFormatError as error:
            return str(error)
    return None


class Manifest:
    """The record of finished units of one machine's share of a job (``manifest-rank{r}-of-{w}.json``)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.path = Path(spec.out_dir) / MANIFEST_PATTERN.format(rank=spec.rank, world=spec.world_size)
        self.units: dict[int, dict[str, Any]] = {}
        self._unwritten = 0
        self._written_at = 0.0
        self._write_seconds = 0.0

    def load_or_create(self) -> None:
        """Read this job's manifest; refuse a directory that holds another job's output."""
        out_dir = Path(self.spec.out_dir)
        fingerprint = self.spec.fingerprint()
        for other in out_dir.glob("manifest-rank*-of-*.json"):
            saved = _read_manifest(other)
            if saved.get("job") != fingerprint:
                raise CorpusJobError(
                    f"'{out_dir}' holds shards of another job ({other.name}: {saved.get('kind')} job "
                    f"{saved.get('job')}, this one is {fingerprint}); write to an empty directory, or rerun "
                    "with the same inputs and options to resume that job"
                )
        if not any(out_dir.glob("manifest-rank*-of-*.json")) and any(out_dir.glob("*.tar")):
            raise CorpusJobError(
                f"'{out_dir}' already holds shards that no job manifest describes; write to an empty directory"
            )
        if self.path.exists():
            self.units = {int(unit): entry for unit, entry in _read_manifest(self.path)["units"].items()}

    def record(self, result: UnitResult) -> None:
        """Add a finished unit; the file is rewritten when :meth:`flush` finds it due, so a job of millions of
        units does not rewrite a growing file after every one of them."""
        self.units[result.unit] = {key: value for key, value in asdict(result).items() if key != "unit"}
        self._unwritten += 1
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        """Replace the file with every recorded unit: at once with ``force`` or while a write takes under 10 ms
        (a manifest of up to about a thousand units), else once the time since the last write is 20x what that
        write took (at most 5 % of the job). Units finished but not yet written when a job is killed are redone
        by the next run."""
        paced = self._write_seconds >= 0.01 and time.perf_counter() - self._written_at < 20 * self._write_seconds
        if not self._unwritten or (paced and not force):
            return
        started = time.perf_counter()
        payload = {
            "job": self.spec.fingerprint(),
            "kind": self.spec.kind,
            "rank": self.spec.rank,
            "world_size": self.spec.world_size,
            "options": self.spec.options,
            "units": {str(unit): entry for unit, entry in sorted(self.units.items())},
        }
        staging = self.path.with_name(f".{self.path.name}.tmp")
        staging.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(staging, self.path)
        self._written_at = time.perf_counter()
        self._write_seconds = self._written_at - started
        self._unwritten = 0


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("units"), dict):
            raise ValueError("not a manifest object")
        return saved
    except (OSError, ValueError, RecursionError) as error:
        raise CorpusJobError(
            f"the job manifest '{path}' is unreadable ({error}); it is only ever replaced whole, so something "
            "else wrote it: restore it, or delete the directory's shards and manifests and rerun"
        ) from None


def remove_unfinished_output(spec: JobSpec, pending: list[int]) -> int:
    """Delete shards and temporary files of units that no manifest records (left by a killed run)."""
    removed = 0
    out_dir = Path(spec.out_dir)
    for unit in pending:
        for path in out_dir.glob(f"{spec.shard_prefix(unit)}-*"):
            path.unlink()
            removed += 1
    return removed


@dataclass
class JobSummary:
    inputs_ok: int
    inputs_failed: dict[str, int]
    samples: int
    shards: int
    frames: int  # decoded by this run
    seconds: float  # this run
    units_done: int
    units_skipped: int  # already recorded by an earlier run

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def format(self, kind: str, out_dir: str) -> str:
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(self.inputs_failed.items())) or "none"
        return "\n".join(
            [
                f"job      : {kind} -> {out_dir}",
                f"inputs   : {self.inputs_ok} ok, {sum(self.inputs_failed.values())} failed ({failed})",
                f"units    : {self.units_done} done now, {self.units_skipped} done before (skipped)",
                f"output   : {self.samples} samples in {self.shards} shards",
                f"speed    : {self.frames} frames in {self.seconds:.1f} s ({self.frames_per_s:.1f} frames/s)",
            ]
        )


def max_workers(engine: str = "local") -> int:
    """The most workers a job may start: on this machine 4 per CPU core, between 4 and 256; on Ray, units in
    flight on the cluster, at most 65536."""
    if engine == "ray":
        return 65536
    return min(max(4 * (os.cpu_count() or 1), 4), 256)


def check_workers(workers: int, engine: str = "local") -> int:
    """``workers`` if it is a usable count for ``engine``, else a CorpusJobError naming the allowed range."""
    limit = max_workers(engine)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= limit:
        where = "units in flight on the Ray cluster"
        if engine != "ray":
            where = "4 per CPU core of this machine, at most 256"
        raise CorpusJobError(f"--workers is {workers!r}; give 1 to {limit} ({where})")
    return workers


def run_corpus_job(
    spec: JobSpec,
    function: InputFunction,
    workers: int = 1,
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
    max_tries: int | None = None,
) -> JobSummary:
    """Process this machine's pending units with ``workers`` processes (``engine="local"``) or Ray tasks in
    flight (``"ray"``, on the cluster at ``address``); returns the whole share's summary (units recorded by
    earlier runs included)."""
    from data_tools.ray_cluster import DEFAULT_MAX_TRIES, check_engine

    check_engine(engine)
    check_workers(workers, engine)
    if not spec.inputs:
        raise CorpusJobError(f"the {spec.kind} job has no inputs; give a directory or a list file that names some")
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    manifest = Manifest(spec)
    manifest.load_or_create()
    mine = spec.units()
    pending = [unit for unit in mine if unit not in manifest.units]
    remove_unfinished_output(spec, pending)
    if engine == "ray":
        from data_tools.ray_jobs import ray_unit_results

        source = ray_unit_results(spec, pending, function, workers, address, max_tries or DEFAULT_MAX_TRIES)
    elif workers <= 1:
        source = (process_unit(spec, unit, function) for unit in pending)
    else:
        source = _pool_results(spec, pending, function, workers)
    started = time.perf_counter()
    try:
        for result in _with_progress(source, spec.kind, len(pending), progress):
            manifest.record(result)
    finally:  # an interrupted or failing job keeps every unit it finished
        manifest.flush()
    seconds = time.perf_counter() - started
    return summarise(manifest, mine, done_now=pending, seconds=seconds)


def _with_progress(results: Iterator[UnitResult], kind: str, total: int, progress: bool) -> Iterator[UnitResult]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"{kind} units", unit="unit", disable=not progress)
    try:
        for result in results:
            bar.update(1)
            bar.set_postfix(samples=result.samples, failed=len(result.failed))
            yield result
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:  # a generator's own cleanup (its workers stopped) runs now, not at collection
            close()


def _pool_results(spec: JobSpec, pending: list[int], function: InputFunction, workers: int) -> Iterator[UnitResult]:
    pool = ProcessPoolExecutor(max_workers=workers, initializer=end_with_parent, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(process_unit, spec, unit, function) for unit in pending]
        for future in as_completed(futures):
            yield future.result()
    except BaseException as error:  # Ctrl-C, a unit that raised, a dead worker: stop the others now
        _stop_workers(pool)
        if isinstance(error, BrokenProcessPool):
            raise CorpusJobError(
                "a worker process died (killed by the system, for instance when memory ran out); the units "
                "finished so far are recorded: rerun the same command to resume, with fewer --workers if "
                "memory is short, or run on --engine ray, which retries a unit whose worker died"
            ) from None
        raise
    pool.shutdown(wait=True)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent(parent_pid: int) -> None:
    """Worker initializer: leave Ctrl-C to the parent, and die when the parent dies, however it ends
    (on Linux the kernel sends SIGKILL; elsewhere a thread polls the parent's pid)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    bound = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            bound = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)
    if not bound:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers now (``shutdown`` alone would let every queued unit finish first), and wait for
    the pool's management thread to end: Python 3.11's exit hook would otherwise wake it through a pipe it may
    be closing at that moment, and print a traceback ("Bad file descriptor") after the job's own message."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before Python 3.14
    manager = getattr(pool, "_executor_manager_thread", None)
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(timeout=60)
    if manager is not None:
        manager.join(timeout=60)


def summarise(manifest: Manifest, units: list[int], done_now: list[int], seconds: float) -> JobSummary:
    """Totals over this machine's units (earlier runs included); frames and time of this run only."""
    failed: Counter = Counter()
    ok = samples = shards = 0
    for unit in units:
        entry = manifest.units.get(unit)
        if entry is None:
            continue
        ok += entry["ok"]
        samples += entry["samples"]
        shards += len(entry["shards"])
        failed.update(failure["reason"] for failure in entry["failed"])
    frames = sum(manifest.units[unit]["frames"] for unit in done_now if unit in manifest.units)
    return JobSummary(
        inputs_ok=ok,
        inputs_failed=dict(failed),
        samples=samples,
        shards=shards,
        frames=frames,
        seconds=seconds,
        units_done=len(done_now),
        units_skipped=len(units) - len(done_now),
    )
