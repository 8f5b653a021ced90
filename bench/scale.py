"""Scaling out on Ray against the local engine, on this machine, in one run (issue 22).

- Corpus job: a Trace-of-Mark job over synthetic H.264 videos (one video a unit), the local engine (one
  process, then a 2-process pool) against Ray with 1 and 2 tasks in flight. Goal: Ray's time within 1.2x of
  the local engine's at equal workers. Rounds are interleaved; the best round of each is kept.
- Ray's per-unit overhead in corpus jobs: the same job machinery over units whose input function does
  nothing, local against Ray, one worker: (Ray's time - local time) / units.
- Ray's per-job cost: starting a local instance (a cluster's is paid once, not per job).
- Evaluation: the runner's own cost per unit (empty units), and 10 bundled web tasks with the oracle policy,
  local threads against Ray actors at 1 and 2 workers, tasks per minute (each worker starts its own Chromium
  and bundled sites inside the clock); ``--no-web`` leaves the web runs out.
- The driver's manifest: one rewrite at 10k and 100k recorded units.

Run: ``.venv/bin/python bench/scale.py [--videos 8] [--rounds 2] [--no-web]``; one JSON line per figure.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

from report import emit, log  # noqa: E402  (bench/report.py)

from data_tools.corpus_kinds import TomJobOptions, tom_video_input  # noqa: E402
from data_tools.jobs import InputResult, JobSpec, Manifest, UnitResult, list_inputs, run_corpus_job  # noqa: E402
from data_tools.ray_cluster import connect  # noqa: E402
from data_tools.tracking_truth import render_truth_video  # noqa: E402
from data_tools.video import write_mp4  # noqa: E402

BENCH = "scale"


def nothing(identifier: str, options: dict, rng: np.random.Generator) -> InputResult:
    """An input that costs nothing: what is left of a unit's time is the engine's."""
    return InputResult()


def timed_job(spec: JobSpec, function, workers: int, engine: str) -> float:
    shutil.rmtree(spec.out_dir, ignore_errors=True)
    started = time.perf_counter()
    run_corpus_job(spec, function, workers=workers, progress=False, engine=engine)
    return time.perf_counter() - started


def best_of_interleaved_rounds(rounds: int, what: str, timed: Callable[[str, int], float]) -> dict:
    """The best of ``rounds`` of ``timed(engine, workers)``, local and Ray at 1 and 2 workers, interleaved."""
    best: dict[tuple[str, int], float] = {}
    for round_index in range(rounds):
        for workers in (1, 2):
            for engine in ("local", "ray"):
                seconds = timed(engine, workers)
                best[engine, workers] = min(best.get((engine, workers), float("inf")), seconds)
                log(BENCH, f"round {round_index + 1}: {what}, {engine} x {workers}: {seconds:.2f} s")
    return best


def emit_engines(prefix: str, best: dict, count: int, items: str) -> None:
    """Per worker count: the local engine's rate, and Ray's time against it (goal: within 1.2x)."""
    for workers in (1, 2):
        local, ray = best["local", workers], best["ray", workers]
        emit(f"{prefix}_local_{workers}w", count / local * 60, f"{items}/min", workers=workers)
        emit(
            f"{prefix}_ray_{workers}w_time_vs_local",
            ray,
            "s",
            baseline=f"local engine, {workers} worker(s): {local:.2f} s ({count / local * 60:.1f} {items}/min)",
            ratio=ray / local,
            goal="<= 1.2",
            workers=workers,
            per_min=round(count / ray * 60, 1),
        )


def corpus_figures(work: Path, videos: int, rounds: int) -> None:
    log(BENCH, f"rendering {videos} videos (90 frames, 256 x 256, H.264)")
    corpus = work / "videos"
    corpus.mkdir()
    for seed in range(videos):
        write_mp4(render_truth_video(num_frames=90, size=256, seed=seed).frames, corpus / f"clip{seed}.mp4", fps=30)
    inputs = list_inputs(corpus, (".mp4",))
    options = TomJobOptions(fps=15, size=256, clips_per_video=4, tom={"grid_size": 15, "num_steps": 8}).as_options()

    def spec(name: str) -> JobSpec:
        return JobSpec("tom", inputs, str(work / name), options, inputs_per_unit=1)

    timed_job(spec("warm"), tom_video_input, 2, "ray")  # Ray's workers import the toolkit once, as on a cluster

    def job(engine: str, workers: int) -> float:
        return timed_job(spec(f"{engine}-{workers}"), tom_video_input, workers, engine)

    best = best_of_interleaved_rounds(rounds, "tom job", job)
    emit_engines("corpus_tom", best, videos, "videos")

    overhead_figures(work, rounds)


def overhead_figures(work: Path, rounds: int, units: int = 200) -> None:
    """The engine's own cost per unit: units whose input costs nothing, local and Ray, one worker."""
    empty = [f"unit-{index:04d}" for index in range(units)]

    def best(engine: str, workers: int) -> float:
        spec = JobSpec("som", empty, str(work / f"empty-{engine}-{workers}"), {}, inputs_per_unit=1)
        return min(timed_job(spec, nothing, workers, engine) for _ in range(rounds))

    local, ray, ray_two = best("local", 1), best("ray", 1), best("ray", 2)
    emit(
        "ray_overhead_per_unit",
        (ray - local) / units * 1000,
        "ms",
        baseline=f"local engine: {local / units * 1000:.2f} ms a unit (manifest write included)",
        units=units,
        ray_ms_per_unit=round(ray / units * 1000, 2),
        ray_two_workers_ms_per_unit=round(ray_two / units * 1000, 2),
    )


def manifest_figures(work: Path) -> None:
    """What the driver pays per unit for its manifest as a job grows (the one per-job file a Ray job has):
    one rewrite at 10k and 100k recorded units, each unit one shard, as a ToM unit of 8 videos writes."""
    for units in (10_000, 100_000):
        spec = JobSpec("tom", [f"v{index}" for index in range(units)], str(work / f"manifest-{units}"), {})
        Path(spec.out_dir).mkdir()
        manifest = Manifest(spec)
        entry = UnitResult(0, ["tom-u000000-000000.tar"], 32, 680, 4.2, [], 8)
        for unit in range(units - 1):
            manifest.units[unit] = {key: value for key, value in asdict(entry).items() if key != "unit"}
        started = time.perf_counter()
        manifest.record(UnitResult(units - 1, ["tom-u000000-000000.tar"], 32, 680, 4.2, [], 8))  # the first write
        emit(
            f"manifest_rewrite_{units}_units",
            (time.perf_counter() - started) * 1000,
            "ms",
            units=units,
            bytes=manifest.path.stat().st_size,
            note="the driver rewrites it at most once per 20x this (<= 5 % of the job)",
        )


class EmptyWorker:
    """A suite worker whose units finish at once: what is left of a run's time is the runner's own."""

    device_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, index: int) -> None:
        self.index = index

    def run(self, attempt: Any) -> Any:
        attempt.result.status, attempt.result.success = "done", True
        return attempt.result

    def close(self) -> None:
        pass


@dataclass
class EmptyRunSettings:
    units: int


def timed_empty_run(units: int, engine: str, workers: int, out_dir: Path) -> float:
    """Seconds for ``units`` units that do nothing through ``run_suite`` (actor start-up included)."""
    from magma.evaluation.runner import RunOptions, RunUnit, run_suite

    options = RunOptions(workers=workers, engine=engine, max_consecutive_errors=0)
    unit_list = [RunUnit(f"unit-{number:05d}", "empty") for number in range(units)]
    started = time.perf_counter()
    run_suite(unit_list, EmptyRunSettings(units), out_dir, EmptyWorker, options)
    return time.perf_counter() - started


def timed_web_run(tasks: str, engine: str, workers: int, out_dir: Path) -> float:
    """Seconds for an oracle ``agent run web`` over ``tasks``, browsers and sites started inside the clock."""
    from magma.evaluation.web_suite import WebRunOptions, WebRunSettings, run_web_suite, web_policy_factory

    started = time.perf_counter()
    run_web_suite(
        WebRunSettings(tasks=[tasks], policy="oracle"),
        WebRunOptions(workers=workers, engine=engine),
        out_dir,
        web_policy_factory("oracle", None),
    )
    return time.perf_counter() - started


def run_figures(work: Path, rounds: int, tasks: str, task_count: int) -> None:
    """Evaluation on Ray actors against the local engine's threads: the runner's own cost per unit (empty
    units: the slope between 50 and 500, so actor start-up drops out), and oracle web runs at 1 and 2 workers."""
    slopes = {}
    for engine in ("local", "ray"):
        few = min(timed_empty_run(50, engine, 1, work / f"run-{engine}-50-{index}") for index in range(rounds))
        many = min(timed_empty_run(500, engine, 1, work / f"run-{engine}-500-{index}") for index in range(rounds))
        slopes[engine] = (many - few) / 450
    emit(
        "ray_run_overhead_per_unit",
        (slopes["ray"] - slopes["local"]) * 1000,
        "ms",
        baseline=f"local threads: {slopes['local'] * 1000:.2f} ms a unit",
        ray_ms_per_unit=round(slopes["ray"] * 1000, 2),
    )
    counter = iter(range(1_000_000))
    best = best_of_interleaved_rounds(
        rounds, "web run", lambda engine, workers: timed_web_run(tasks, engine, workers, work / f"web-{next(counter)}")
    )
    emit_engines("web_eval", best, task_count, "tasks")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-web", action="store_true", help="leave out the web runs (Chromium, bundled sites)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    connect(num_cpus=2)
    seconds = time.perf_counter() - started
    emit("ray_local_instance_start", seconds, "s", note="once per job without a cluster; a cluster's is paid once")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as directory:
        corpus_figures(Path(directory), args.videos, args.rounds)
        manifest_figures(Path(directory))
        if not args.no_web:
            run_figures(Path(directory), args.rounds, "classifieds:0-9", 10)


if __name__ == "__main__":
    main()
