"""Trace-of-Mark (ToM): training samples that ask where numbered marks on a video frame move next.

From a clip of ``num_steps + 1`` frames (Magma's recipe, our code):

1. an s x s grid of query points on the start frame is tracked through the clip (any ``PointTracker``);
2. points visible in more than half of the steps are kept;
3. camera motion is detected and removed with per-frame RANSAC homographies (frame t -> start frame);
4. points whose compensated track travels farther than ``motion_threshold`` are foreground, the rest
   background;
5. each group is clustered with K-means (k_fg in [2, 5], k_bg in [6, 14]) and one point per cluster
   becomes a mark; marks get shuffled 1-based labels and are drawn on the start frame;
6. the sample asks how the marks move over the next ``num_steps`` steps on a 256 x 256 coordinate
   grid and answers with the foreground marks' future positions, in the answer format of Magma's
   Trace-of-Mark data. When nothing moves, the sample asks instead to locate all marks.

A clip without texture to track raises ``NoTrackableTextureError``, a short clip ``ClipTooShortError``;
both derive from ``TomExtractionError`` so that a corpus job can count them and go on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from data_tools.errors import UserFacingError
from data_tools.sample_format import IMAGE_PLACEHOLDER
from data_tools.som import draw_point_marks
from data_tools.tracking import PointTracker, compensate, estimate_camera_motion
from data_tools.video import ClipFrames

TOM_KIND = "trace-of-mark"
LOCATE_KIND = "locate-marks"


class TomExtractionError(UserFacingError, ValueError):
    """A clip from which no Trace-of-Mark sample can be made (the job counts it and goes on)."""


class NoTrackableTextureError(TomExtractionError):
    """A clip whose start frame has too little texture to track, or whose points are all lost."""


class ClipTooShortError(TomExtractionError):
    """A clip with fewer frames than the start frame plus ``num_steps`` future steps."""


class TomConfigError(UserFacingError, ValueError):
    """A Trace-of-Mark setting out of its range."""


class TomAnswerParseError(UserFacingError, ValueError):
    """Text that is not a Trace-of-Mark (or locate-marks) answer."""


@dataclass
class TomConfig:
    """Settings of Trace-of-Mark extraction.

    ``motion_threshold`` is in coordinate-grid units (of ``coordinate_grid``, default 256 per image
    side): a point is foreground when its camera-compensated track gets farther than this from its
    start (6 units, 2.3% of the image: above the few pixels LK drags a background point next to a
    moving object). ``min_corner_strength`` is OpenCV's minimum-eigenvalue corner response (7 px blocks) that a
    query point needs to count as textured; fewer than ``min_textured_points`` such points on the start
    frame means there is nothing to track.
    """

    grid_size: int = 15
    num_steps: int = 16
    coordinate_grid: int = 256
    k_fg: tuple[int, int] = (2, 5)
    k_bg: tuple[int, int] = (6, 14)
    min_visible_fraction: float = 0.5
    motion_threshold: float = 6.0
    ransac_threshold_px: float = 3.0
    camera_moving_threshold_px: float = 1.0
    min_corner_strength: float = 1e-4
    min_textured_points: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k_fg", "k_bg"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise TomConfigError(f"{name}={(low, high)}; give (low, high) with 1 <= low <= high, e.g. (2, 5)")
            setattr(self, name, (int(low), int(high)))
        if self.grid_size < 2 or self.num_steps < 1 or self.coordinate_grid < 2:
            raise TomConfigError(
                f"grid_size={self.grid_size}, num_steps={self.num_steps}, coordinate_grid={self.coordinate_grid}; "
                "use grid_size >= 2, num_steps >= 1 and coordinate_grid >= 2 (defaults 15, 16, 256)"
            )
        if not 0 <= self.min_visible_fraction < 1:
            raise TomConfigError(f"min_visible_fraction={self.min_visible_fraction}; give a share in [0, 1)")


@dataclass
class TrackedMark:
    """One Trace-of-Mark point followed through a clip: its 1-based ``label``, start position in frame
    pixels (``pixel_xy``) and on the coordinate grid (``start``), its future positions on the grid
    (``trace``, (num_steps, 2) int, in start-frame coordinates after camera compensation) and whether it
    moves (``foreground``)."""

    label: int
    pixel_xy: tuple[float, float]
    start: tuple[int, int]
    trace: np.ndarray
    foreground: bool


@dataclass
class TraceOfMark:
    """The marks of one clip and what was measured on the way; ``has_motion`` is False when nothing in
    the scene moves (the sample then asks to locate the marks)."""

    marks: list[TrackedMark]
    has_motion: bool
    camera_moving: bool
    camera_residual_px: float
    camera_motion_px: float
    frame_size: tuple[int, int]
    tracked_points: int
    foreground_points: int
    query_points: int = 0

    @property
    def foreground(self) -> list[TrackedMark]:
        return [mark for mark in self.marks if mark.foreground]


def grid_queries(width: int, height: int, grid_size: int) -> np.ndarray:
    """The centres of a ``grid_size`` x ``grid_size`` grid of cells over the frame, (N, 2) xy float32."""
    xs = (np.arange(grid_size) + 0.5) * width / grid_size
    ys = (np.arange(grid_size) + 0.5) * height / grid_size
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)


def to_grid(points: np.ndarray, width: int, height: int, grid: int) -> np.ndarray:
    """Pixel positions (..., 2) -> integer cells of a ``grid`` x ``grid`` coordinate grid, clipped inside."""
    scaled = np.asarray(points, float) * np.array([grid / width, grid / height])
    return np.clip(np.floor(scaled), 0, grid - 1).astype(int)


def _textured(start_frame: np.ndarray, queries: np.ndarray, min_strength: float) -> np.ndarray:
    grey = cv2.cvtColor(start_frame, cv2.COLOR_RGB2GRAY) if start_frame.ndim == 3 else start_frame
    strength = cv2.cornerMinEigenVal(grey, 7, 3)
    columns = np.clip(np.round(queries[:, 0]).astype(int), 0, grey.shape[1] - 1)
    rows = np.clip(np.round(queries[:, 1]).astype(int), 0, grey.shape[0] - 1)
    return strength[rows, columns] >= min_strength


def _held_after_loss(tracks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Tracks where every invisible step repeats the last visible position (frame 0 is always seen)."""
    held = tracks.copy()
    for step in range(1, len(held)):
        lost = ~visible[step]
        held[step, lost] = held[step - 1, lost]
    return held


def pick_cluster_count(num_points: int, k_range: tuple[int, int], rng: np.random.Generator) -> int:
    """k drawn uniformly from ``k_range`` (inclusive), capped at the number of points (as Magma samples k)."""
    low, high = k_range
    if num_points <= low:
        return num_points
    return int(rng.integers(low, min(high, num_points) + 1))


def cluster_representatives(features: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of one point per K-means cluster of ``features`` (N, D): the member nearest its centre.

    cv2.kmeans runs from a k-means++ start drawn with ``rng``, so the result depends on ``rng`` only
    (not on OpenCV's global random state).
    """
    features = np.asarray(features, np.float32)
    if k >= len(features):
        return np.arange(len(features))
    first = features[rng.integers(len(features))]
    to_centres = [((features - first) ** 2).sum(axis=1)]  # squared distances to each centre so far
    nearest = to_centres[0]
    for _ in range(1, k):  # k-means++ seeding
        total = nearest.sum()
        pick = rng.choice(len(features), p=nearest / total) if total > 0 else rng.integers(len(features))
        to_centres.append(((features - features[pick]) ** 2).sum(axis=1))
        nearest = np.minimum(nearest, to_centres[-1])
    labels = np.argmin(to_centres, axis=0).astype(np.int32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
    _, labels, centres_found = cv2.kmeans(
        features, k, labels.reshape(-1, 1), criteria, 1, cv2.KMEANS_USE_INITIAL_LABELS
    )
    labels = labels.ravel()
    chosen = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        if len(members):
            distances = ((features[members] - centres_found[cluster]) ** 2).sum(axis=1)
            chosen.append(members[np.argmin(distances)])
    return np.asarray(sorted(chosen), dtype=int)


def extract_trace_of_mark(
    frames: np.ndarray, tracker: PointTracker, config: TomConfig, rng: np.random.Generator | None = None
) -> TraceOfMark:
    """Track, compensate, split and cluster the first ``num_steps + 1`` of ``frames`` (T, H, W, 3) uint8
    RGB into marks. Raises ClipTooShortError or NoTrackableTextureError (both TomExtractionError)."""
    rng = np.random.default_rng(config.seed) if rng is None else rng
    needed = config.num_steps + 1
    if len(frames) < needed:
        raise ClipTooShortError(
            f"the clip has {len(frames)} frames but Trace-of-Mark needs {needed} (the start frame and "
            f"num_steps={config.num_steps} more); cut windows of {needed} frames with clip_windows or lower num_steps"
        )
    frames = np.asarray(frames[:needed])
    height, width = frames.shape[1:3]
    queries = grid_queries(width, height, config.grid_size)
    textured = _textured(frames[0], queries, config.min_corner_strength)
    if textured.sum() < config.min_textured_points:
        raise NoTrackableTextureError(
            f"the start frame has no texture to track ({int(textured.sum())} of {len(queries)} grid points are "
            f"textured, {config.min_textured_points} needed): the clip is blank, flat or washed out; skip it "
            "(it is counted) or lower min_corner_strength"
        )
    # a tracker whose points do not affect each other (Lucas-Kanade) follows only the textured points:
    # the others are dropped below whatever their tracks, and the kept points' tracks are the same
    independent = getattr(tracker, "points_independent", False)
    tracked = np.flatnonzero(textured) if independent and textured.any() else np.arange(len(queries))
    result = tracker.track(frames, queries[tracked])
    visible_steps = result.visible[1:].sum(axis=0)
    kept = textured[tracked] & (visible_steps > config.min_visible_fraction * config.num_steps)
    if kept.sum() < 2:
        raise NoTrackableTextureError(
            f"only {int(kept.sum())} of {len(queries)} points stay tracked in more than "
            f"{config.min_visible_fraction:.0%} of the steps (scene cut, fast motion or blur); skip the clip "
            "(it is counted) or sample it at a higher fps"
        )
    tracks, visible = result.tracks[:, kept], result.visible[:, kept]
    camera = estimate_camera_motion(
        tracks, visible, config.ransac_threshold_px, moving_threshold_px=config.camera_moving_threshold_px
    )
    in_start_frame = compensate(tracks, camera.homographies) if camera.moving else tracks
    in_start_frame = _held_after_loss(in_start_frame, visible)
    grid_tracks = in_start_frame * np.array([config.coordinate_grid / width, config.coordinate_grid / height])
    travel = np.linalg.norm(grid_tracks - grid_tracks[:1], axis=2).max(axis=0)
    moving = travel > config.motion_threshold
    has_motion = int(moving.sum()) >= max(2, config.k_fg[0])
    features = grid_tracks.transpose(1, 0, 2).reshape(len(travel), -1)
    groups: list[tuple[np.ndarray, bool]] = []
    if has_motion:
        foreground = np.flatnonzero(moving)
        k_fg = pick_cluster_count(len(foreground), config.k_fg, rng)
        groups.append((foreground[cluster_representatives(features[foreground], k_fg, rng)], True))
        background = np.flatnonzero(~moving)
    else:
        background = np.arange(len(travel))
    if len(background):
        k_bg = pick_cluster_count(len(background), config.k_bg, rng)
        groups.append((background[cluster_representatives(features[background], k_bg, rng)], False))
    chosen = [(index, is_foreground) for indices, is_foreground in groups for index in indices]
    labels = rng.permutation(len(chosen)) + 1  # shuffled, so that a label says nothing about motion
    chosen_cells = to_grid(in_start_frame[:, [index for index, _ in chosen]], width, height, config.coordinate_grid)
    chosen_cells = chosen_cells.transpose(1, 0, 2).copy()  # (marks, steps + 1, 2)
    marks = []
    for (index, is_foreground), label, cells in zip(chosen, labels, chosen_cells, strict=True):
        marks.append(
            TrackedMark(
                label=int(label),
                pixel_xy=(float(tracks[0, index, 0]), float(tracks[0, index, 1])),
                start=(int(cells[0, 0]), int(cells[0, 1])),
                trace=cells[1:],
                foreground=is_foreground,
            )
        )
    marks.sort(key=lambda mark: mark.label)
    return TraceOfMark(
        marks=marks,
        has_motion=has_motion,
        camera_moving=camera.moving,
        camera_residual_px=camera.residual_px,
        camera_motion_px=camera.background_px,
        frame_size=(int(width), int(height)),
        tracked_points=int(kept.sum()),
        foreground_points=int(moving.sum()) if has_motion else 0,
        query_points=len(queries),
    )


def _format_xy(xy: tuple[int, int] | np.ndarray) -> str:
    return f"[{int(xy[0])},{int(xy[1])}]"


def trace_question(labels: list[int], num_steps: int, grid: int, task: str | None = None) -> str:
    """The human turn of a Trace-of-Mark sample (our wording of Magma's question)."""
    task_line = f"The task is: {task.strip().rstrip('.')}.\n" if task else ""
    return (
        f"{IMAGE_PLACEHOLDER}\nThe image is divided into a {grid}x{grid} grid and carries numeric marks {labels}.\n"
        f"{task_line}Predict how the numeric marks will move over the next {num_steps} steps."
    )


def trace_answer(marks: list[TrackedMark]) -> str:
    """The gpt turn of a Trace-of-Mark sample, in Magma's ToM answer format: the moving marks with their
    start cells, then per mark its future cells as ``"Mark k": "[[x,y],...]"`` blocks."""
    moving = [mark for mark in marks if mark.foreground]
    starts = ", ".join(f"Mark {mark.label} at {_format_xy(mark.start)}" for mark in moving)
    blocks = "\n\n".join(f'"Mark {mark.label}": "[{",".join(_format_xy(xy) for xy in mark.trace)}]"' for mark in moving)
    return f"{starts} should be moved, and their future positions are:\n\n{blocks}"


def locate_question(grid: int) -> str:
    """The human turn of the fallback sample when nothing moves (our wording of Magma's question)."""
    return (
        f"{IMAGE_PLACEHOLDER}\nThe image is divided into a {grid}x{grid} grid and carries numeric marks.\n"
        "Locate every numeric mark in the image."
    )


def locate_answer(marks: list[TrackedMark]) -> str:
    """The gpt turn of the fallback sample, in Magma's format: ``Mark k at [x,y]`` joined by '. '."""
    return ". ".join(f"Mark {mark.label} at {_format_xy(mark.start)}" for mark in marks)


_TRACE_BLOCK = re.compile(r'"Mark (\d+)":\s*"\[(.*?)\]"', re.DOTALL)
_MARK_AT = re.compile(r"Mark (\d+) at \[(-?\d+),\s*(-?\d+)\]")
_XY = re.compile(r"\[(-?\d+),\s*(-?\d+)\]")


def parse_trace_answer(text: str) -> dict[int, list[tuple[int, int]]]:
    """Future cells per mark label from a Trace-of-Mark answer (the inverse of ``trace_answer``)."""
    traces = {
        int(label): [(int(x), int(y)) for x, y in _XY.findall(body)] for label, body in _TRACE_BLOCK.findall(text)
    }
    if not traces:
        raise TomAnswerParseError(
            f'no \'"Mark k": "[[x,y],...]"\' trace in {text[:80]!r}; expected a Trace-of-Mark answer'
        )
    return traces


def parse_mark_locations(text: str) -> dict[int, tuple[int, int]]:
    """Start cell per mark label from ``Mark k at [x,y]`` phrases (the locate-marks answer, or the first
    line of a Trace-of-Mark answer)."""
    found = {int(label): (int(x), int(y)) for label, x, y in _MARK_AT.findall(text)}
    if not found:
        raise TomAnswerParseError(f"no 'Mark k at [x,y]' in {text[:80]!r}; expected a locate-marks answer")
    return found


def tom_samples(
    clip: ClipFrames,
    video_id: str,
    source: str,
    config: TomConfig,
    tracker: PointTracker,
    rng: np.random.Generator | None = None,
    task: str | None = None,
) -> list[tuple[dict, list[np.ndarray]]]:
    """The training sample(s) of one clip: the start frame with marks drawn, and either the
    Trace-of-Mark question and answer or, when nothing moves, the locate-marks fallback.

    Uses the clip's first ``num_steps + 1`` frames (cut longer videos with ``clip_windows``); ``task`` is
    an optional narration put into the question. A list, so that jobs treat every producer alike.
    Raises TomExtractionError subclasses for clips that give no sample.
    """
    trace = extract_trace_of_mark(clip.frames, tracker, config, rng)
    labels = [mark.label for mark in trace.marks]
    image = draw_point_marks(clip.frames[0], np.array([mark.pixel_xy for mark in trace.marks]), labels)
    grid = config.coordinate_grid
    if trace.has_motion:
        kind, question, answer = (
            TOM_KIND,
            trace_question(labels, config.num_steps, grid, task),
            trace_answer(trace.marks),
        )
    else:
        kind, question, answer = LOCATE_KIND, locate_question(grid), locate_answer(trace.marks)
    start_frame = int(clip.frame_indices[0]) if len(clip.frame_indices) else 0
    record = {
        "id": f"{video_id}-tom-{start_frame:06d}",
        "source": source,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        "meta": {
            "kind": kind,
            "video_id": video_id,
            "video": str(clip.path),
            "start_s": float(clip.times_s[0]),
            "end_s": float(clip.times_s[config.num_steps]),
            "num_steps": config.num_steps,
            "coordinate_grid": grid,
            "tracker": getattr(tracker, "name", type(tracker).__name__),
            "camera_moving": trace.camera_moving,
            "camera_residual_px": round(trace.camera_residual_px, 3),
            "foreground_labels": [mark.label for mark in trace.marks if mark.foreground],
            "background_labels": [mark.label for mark in trace.marks if not mark.foreground],
            "tracked_points": trace.tracked_points,
        },
    }
    return [(record, [image])]
