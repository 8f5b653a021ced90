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
- An input that fails (unreadable video, no texture to track, bad annotation) is recorded with its
  reason and the job goes on; the summary counts inputs ok / failed by reason, samples, shards, frames/s.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError
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
        lines = [line.strip() for line in path.read_text().splitlines()]
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
        if file.endswith(".jsonl"):
            with open(file, encoding="utf-8") as handle:
                expanded += [f"{file}:{number}" for number, line in enumerate(handle, 1) if line.strip()]
        else:
            expanded.append(file)
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


def process_unit(spec: JobSpec, unit: int, function: InputFunction) -> UnitResult:
    """Run ``function`` over one unit's inputs and write their samples into the unit's shards."""
    started = time.perf_counter()
    failed, ok, frames = [], 0, 0
    with ShardWriter(
        spec.out_dir, prefix=spec.shard_prefix(unit), max_samples_per_shard=spec.samples_per_shard
    ) as writer:
        for identifier in spec.unit_inputs(unit):
            try:
                result = function(identifier, spec.options, input_rng(spec.seed, identifier))
            except UserFacingError as error:
                failed.append({"input": identifier, "reason": failure_reason(error), "detail": str(error)})
                continue
            for record, images in result.samples:
                writer.write(record, images)
            frames += result.frames
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


class Manifest:
    """The record of finished units of one machine's share of a job (``manifest-rank{r}-of-{w}.json``)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.path = Path(spec.out_dir) / MANIFEST_PATTERN.format(rank=spec.rank, world=spec.world_size)
        self.units: dict[int, dict[str, Any]] = {}

    def load_or_create(self) -> None:
        """Read this job's manifest; refuse a directory that holds another job's output."""
        out_dir = Path(self.spec.out_dir)
        fingerprint = self.spec.fingerprint()
        for other in out_dir.glob("manifest-rank*-of-*.json"):
            saved = json.loads(other.read_text())
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
            self.units = {int(unit): entry for unit, entry in json.loads(self.path.read_text())["units"].items()}

    def record(self, result: UnitResult) -> None:
        self.units[result.unit] = {key: value for key, value in asdict(result).items() if key != "unit"}
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


def run_corpus_job(spec: JobSpec, function: InputFunction, workers: int = 1, progress: bool = True) -> JobSummary:
    """Process this machine's pending units with ``workers`` processes; returns the whole share's summary
    (units recorded by earlier runs included)."""
    if not spec.inputs:
        raise CorpusJobError(f"the {spec.kind} job has no inputs; give a directory or a list file that names some")
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    manifest = Manifest(spec)
    manifest.load_or_create()
    mine = spec.units()
    pending = [unit for unit in mine if unit not in manifest.units]
    remove_unfinished_output(spec, pending)
    started = time.perf_counter()
    for result in _results(spec, pending, function, workers, progress):
        manifest.record(result)
    seconds = time.perf_counter() - started
    return summarise(manifest, mine, done_now=pending, seconds=seconds)


def _results(
    spec: JobSpec, pending: list[int], function: InputFunction, workers: int, progress: bool
) -> Iterator[UnitResult]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), desc=f"{spec.kind} units", unit="unit", disable=not progress)
    try:
        if workers <= 1:
            for unit in pending:
                result = process_unit(spec, unit, function)
                bar.update(1)
                bar.set_postfix(samples=result.samples, failed=len(result.failed))
                yield result
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(process_unit, spec, unit, function) for unit in pending]
            for future in as_completed(futures):
                result = future.result()
                bar.update(1)
                bar.set_postfix(samples=result.samples, failed=len(result.failed))
                yield result
    finally:
        bar.close()


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
