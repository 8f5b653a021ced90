"""The per-input functions of the two corpus jobs (``data_tools.jobs``), and their options.

- ``tom``: one video -> Trace-of-Mark samples from up to ``clips_per_video`` windows of
  ``num_steps + 1`` frames sampled at ``fps`` and decoded with the short side at ``size`` pixels;
- ``som``: one annotated screenshot (a line ``file.jsonl:N``) -> Set-of-Mark grounding samples.

Both run in job worker processes: they take plain options (a dict that pickles) and a seeded RNG.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.jobs import InputResult
from data_tools.som_samples import SomConfig, som_samples_from_annotation_line
from data_tools.tom import ClipTooShortError, TomConfig, TomExtractionError, tom_samples
from data_tools.tracking import CoTrackerTracker, LucasKanadeTracker, PointTracker
from data_tools.video import clip_windows, decode_windows, probe_video

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
ANNOTATION_EXTENSIONS = (".jsonl",)
TRACKERS = ("lk", "cotracker")


@dataclass
class TomJobOptions:
    fps: float = 8.0  # frames per second sampled from the video (one ToM step per sampled frame)
    size: int = 256  # the decoded short side in pixels
    clips_per_video: int = 4  # windows taken per video, spread evenly over it
    source: str = "video-tom"  # the samples' "source" field
    tracker: str = "lk"  # "lk" (OpenCV Lucas-Kanade) or "cotracker" (needs local weights)
    cotracker_weights: str | None = None
    cotracker_repo: str | None = None
    tom: dict[str, Any] = field(default_factory=dict)  # TomConfig fields (grid_size, num_steps, ...)

    def as_options(self) -> dict[str, Any]:
        return asdict(self)


_TRACKERS: dict[tuple, PointTracker] = {}  # one tracker per worker process (CoTracker loads weights once)


def tracker_for(options: TomJobOptions) -> PointTracker:
    key = (options.tracker, options.cotracker_weights, options.cotracker_repo)
    if key not in _TRACKERS:
        if options.tracker == "cotracker":
            _TRACKERS[key] = CoTrackerTracker(options.cotracker_weights or "", options.cotracker_repo)
        else:
            _TRACKERS[key] = LucasKanadeTracker()
    return _TRACKERS[key]


def video_id(path: Path) -> str:
    """The file's stem plus a short hash of its full path: unique across a corpus with repeated names."""
    return f"{path.stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def spread(count: int, keep: int) -> list[int]:
    """``keep`` indices of ``count`` spread evenly, first and last included."""
    if count <= keep:
        return list(range(count))
    return sorted({round(float(i)) for i in np.linspace(0, count - 1, keep)})


def tom_video_input(identifier: str, options: dict[str, Any], rng: np.random.Generator) -> InputResult:
    """Trace-of-Mark samples of one video; raises the last clip's error when no clip gives a sample."""
    job = TomJobOptions(**options)
    config = TomConfig(**job.tom)
    path = Path(identifier)
    info = probe_video(path)
    window = config.num_steps + 1
    windows = clip_windows(info, window, window, job.fps)
    if not windows:
        raise ClipTooShortError(
            f"'{path}' gives {info.duration_s:.2f} s, fewer than {window} frames at {job.fps} fps "
            f"(1 start frame + {config.num_steps} steps); lower --fps or num_steps, or leave the video out"
        )
    tracker = tracker_for(job)
    result = InputResult()
    errors: list[Exception] = []  # windows that gave no sample: damaged stretches of the file, blank clips
    chosen = [windows[index].frame_indices for index in spread(len(windows), job.clips_per_video)]
    # one reader for the whole video, in order; a damaged window is skipped and the later ones still run
    for clip in decode_windows(info, chosen, job.size, on_error=errors.append):
        result.frames += len(clip.frames)
        try:
            result.samples += tom_samples(clip, video_id(path), job.source, config, tracker, rng)
        except TomExtractionError as error:
            errors.append(error)
    if not result.samples and errors:
        raise errors[-1]
    return result


def som_annotation_input(identifier: str, options: dict[str, Any], rng: np.random.Generator) -> InputResult:
    """Set-of-Mark samples of one annotated screenshot (``file.jsonl:LINE``)."""
    samples = som_samples_from_annotation_line(identifier, SomConfig(**options), rng)
    return InputResult(samples=samples, frames=1)
