"""Trace-of-Mark throughput on CPU: frames/s of the whole pipeline against decoding alone.

One synthetic 512 x 512 video (a textured scene through a moving camera with moving objects, from
``data_tools.tracking_truth``) is cut into windows of ``num_steps + 1`` frames. Figures (one JSON line
each on stdout; progress on stderr), at 256 px and 512 px short side:

* ``tom_frames_per_s/<size>px``: the whole job on one process: decode, track (Lucas-Kanade with the
  forward-backward check), camera compensation, clustering, mark drawing, PNG encoding and shard
  writing, against decoding the same windows alone (decord, resize on decode) in the same run.
  ``ratio`` is pipeline / decoding: 1.0 would mean decoding is the only cost. Goal at 256 px: >= 0.5.
* ``delta_avg`` (printed with each figure): TAP-Vid's < delta^x_avg of the tracker the job uses, on the
  truth clips of ``tests/test_tom.py`` (17 frames at 256 px through an mp4 and decord, a 15 x 15 grid
  of queries, seeds 0-3, moving and still camera): ``delta_avg`` on the tests' moving-camera clip (seed 0)
  and ``delta_avg_min`` over all eight. The speed must not cost accuracy: both stay >= 0.92.

* ``tom_frames_per_cpu_s/<size>px``: the same runs counted in CPU time (all of the process's threads):
  frames per CPU-second of the job against those of decoding alone. It is the per-core figure (decord
  decodes on a thread of its own, which a second idle core runs beside the job: the wall-clock ratio
  counts that overlap, this one does not) and the steadier one on a loaded machine.

OpenCV runs on one thread (``cv2.setNumThreads(1)``); decord's own threads are left as they are. Each
round decodes the windows alone, then runs the job, so that both see the same load; the figures are
medians over the rounds (``--repeats``).

Usage: ``python bench/data_tools.py [--frames 255] [--quick]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from data_tools.corpus_kinds import TomJobOptions, tom_video_input  # noqa: E402
from data_tools.jobs import JobSpec, run_corpus_job  # noqa: E402
from data_tools.tom import TomConfig, grid_queries  # noqa: E402
from data_tools.tracking import LucasKanadeTracker  # noqa: E402
from data_tools.tracking_truth import CameraPath, render_truth_video, tapvid_position_accuracy  # noqa: E402
from data_tools.video import (  # noqa: E402
    clip_windows,
    decode_windows,
    probe_video,
    read_frames,
    write_mp4,
)

NUM_STEPS = 16
SOURCE_FPS = 30.0


def log(message: str) -> None:
    report.log("data_tools", message)


def decode_only(video: Path, size: int) -> tuple[float, float]:
    """Frames per second and per CPU-second of decoding every window of the video at ``size`` (short side)."""
    info = probe_video(video)
    windows = clip_windows(info, NUM_STEPS + 1, NUM_STEPS + 1, SOURCE_FPS)
    started, cpu_started = time.perf_counter(), time.process_time()
    clips = decode_windows(info, [window.frame_indices for window in windows], size)  # as the job decodes
    frames = sum(len(clip.frames) for clip in clips)
    return frames / (time.perf_counter() - started), frames / (time.process_time() - cpu_started)


def truth_accuracy(work: Path, seeds: int = 4) -> tuple[float, float]:
    """TAP-Vid delta_avg of the job's tracker on the tests' truth clips: (seed-0 moving camera, min of all)."""
    clip_frames = TomConfig().num_steps + 1
    queries = grid_queries(256, 256, 15)
    scores = []
    for seed in range(seeds):
        for camera in (None, CameraPath.static()):
            truth = render_truth_video(num_frames=clip_frames, camera=camera, seed=seed)
            clip = read_frames(write_mp4(truth.frames, work / f"truth-{seed}-{camera is None}.mp4", fps=15))
            true_tracks, true_visible, _ = truth.true_tracks(queries)
            result = LucasKanadeTracker().track(clip.frames, queries)
            scores.append(tapvid_position_accuracy(result.tracks, true_tracks, true_visible)["delta_avg"])
    return scores[0], min(scores)


def whole_pipeline(video: Path, size: int, work: Path) -> tuple[float, float, int]:
    """Frames per second and per CPU-second of the ToM job over every window of the video, one process,
    shards written; and the samples it wrote."""
    options = TomJobOptions(fps=SOURCE_FPS, size=size, clips_per_video=10_000, tom={"num_steps": NUM_STEPS})
    out_dir = work / f"shards-{size}-{time.monotonic_ns()}"
    spec = JobSpec(kind="tom", inputs=[str(video)], out_dir=str(out_dir), options=options.as_options())
    cpu_started = time.process_time()
    summary = run_corpus_job(spec, tom_video_input, workers=1, progress=False)
    cpu_s = time.process_time() - cpu_started
    shutil.rmtree(out_dir)
    return summary.frames_per_s, summary.frames / cpu_s, summary.samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=255, help="frames of the synthetic video (15 windows)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per figure; the median is reported")
    parser.add_argument("--quick", action="store_true", help="a short video and one run: checks the bench runs")
    args = parser.parse_args(argv)
    frames, repeats = (68, 1) if args.quick else (args.frames, args.repeats)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="bench-data-tools-") as temp:
        work = Path(temp)
        log(f"rendering a {frames}-frame 512 x 512 video with camera and object motion")
        video = write_mp4(
            render_truth_video(num_frames=frames, size=512, seed=0).frames, work / "scene.mp4", SOURCE_FPS
        )
        delta_avg, delta_avg_min = truth_accuracy(work, seeds=1 if args.quick else 4)
        log(f"tracking accuracy on the truth clips: delta_avg {delta_avg:.4f} (min {delta_avg_min:.4f})")
        whole_pipeline(video, 256, work)  # warm-up: imports, fonts, the tracker
        for size in (256, 512):
            decodings, runs = [], []
            for _ in range(repeats):  # interleaved, so that a change of load hits both alike
                decodings.append(decode_only(video, size))
                runs.append(whole_pipeline(video, size, work))
            decoding = statistics.median(rate for rate, _ in decodings)
            decoding_cpu = statistics.median(rate for _, rate in decodings)
            pipeline = statistics.median(rate for rate, _, _ in runs)
            pipeline_cpu = statistics.median(rate for _, rate, _ in runs)
            log(
                f"{size} px: pipeline {pipeline:.1f} frames/s ({pipeline_cpu:.1f} per CPU-s), decoding alone "
                f"{decoding:.1f} frames/s ({decoding_cpu:.1f} per CPU-s)"
            )
            accuracy = {"delta_avg": round(delta_avg, 4), "delta_avg_min": round(delta_avg_min, 4)}
            report.emit(
                f"tom_frames_per_s/{size}px",
                pipeline,
                "frames/s",
                baseline=f"decoding alone ({decoding:.1f} frames/s)",
                ratio=pipeline / decoding,
                goal=">= 0.5" if size == 256 else None,
                samples=runs[0][2],
                rounds=repeats,
                **accuracy,
            )
            report.emit(
                f"tom_frames_per_cpu_s/{size}px",
                pipeline_cpu,
                "frames/CPU-s",
                baseline=f"decoding alone ({decoding_cpu:.1f} frames/CPU-s)",
                ratio=pipeline_cpu / decoding_cpu,
                cpu_ms_per_frame=round(1e3 / pipeline_cpu, 3),
                decoding_cpu_ms_per_frame=round(1e3 / decoding_cpu, 3),
                rounds=repeats,
                **accuracy,
            )


if __name__ == "__main__":
    main()
