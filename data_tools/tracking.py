"""Point tracking behind one interface, and the removal of camera motion from point tracks.

``PointTracker.track(frames, queries)`` follows points given in frame 0 through a clip. Two trackers:

- ``LucasKanadeTracker`` (default): OpenCV pyramidal Lucas-Kanade, frame to frame, with a
  forward-backward check; CPU only, no weights.
- ``CoTrackerTracker`` (optional): Meta's CoTracker, loaded only from files the user gives (a
  checkpoint, and a local clone of its repository unless the ``cotracker`` package is installed).
  Nothing downloads; torch is imported only when this tracker is built.

A tracker whose ``points_independent`` attribute is True (Lucas-Kanade) gives each point the same track
whichever other points are tracked with it, so callers may leave out points they will not use.

``estimate_camera_motion`` fits one RANSAC homography per frame (frame t -> frame 0) to the tracks and
decides whether the camera moves; ``compensate`` maps tracks into frame-0 coordinates with them, so
that what still moves afterwards moves in the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import cv2
import numpy as np

from data_tools.errors import UserFacingError

MIN_HOMOGRAPHY_POINTS = 8


class TrackingError(UserFacingError, ValueError):
    """Frames or query points a tracker cannot work with."""


class TrackerUnavailableError(UserFacingError):
    """An optional tracker whose code or weights are not on this machine."""


@dataclass
class TrackResult:
    """Tracks of N points through T frames: ``tracks`` (T, N, 2) float32 xy pixels, ``visible`` (T, N) bool.
    Where a point is not visible its position is the tracker's best guess (LK: where it was last seen)."""

    tracks: np.ndarray
    visible: np.ndarray


@runtime_checkable
class PointTracker(Protocol):
    """Anything that follows query points (xy pixels in frame 0) through frames (T, H, W, 3) uint8 RGB."""

    name: str

    def track(self, frames: np.ndarray, queries: np.ndarray) -> TrackResult: ...


def _check_inputs(frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    queries = np.asarray(queries, dtype=np.float32)
    colour = frames.ndim == 4 and frames.shape[3] == 3
    if not (frames.ndim == 3 or colour) or frames.shape[0] < 2 or frames.dtype != np.uint8:
        raise TrackingError(
            f"frames have shape {frames.shape} and dtype {frames.dtype}; pass at least 2 frames as uint8 "
            "(T, H, W, 3) RGB or (T, H, W) grey"
        )
    if queries.ndim != 2 or queries.shape[1] != 2 or len(queries) == 0:
        raise TrackingError(f"queries have shape {queries.shape}; pass (N, 2) xy pixel positions in frame 0, N >= 1")
    return frames, queries


def _grey(frames: np.ndarray) -> list[np.ndarray]:
    if frames.ndim == 3:
        return list(frames)
    count, height, width = frames.shape[:3]  # one conversion for the whole clip (per pixel: the same values)
    stacked = cv2.cvtColor(np.ascontiguousarray(frames).reshape(count * height, width, -1), cv2.COLOR_RGB2GRAY)
    return list(stacked.reshape(count, height, width))


def _inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0) & (points[:, 1] <= height - 1)


def _patches(image: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Square patches (N, size, size) float32 centred on sub-pixel points (bilinear, borders replicated).

    One ``cv2.remap`` over all points (one patch per map row, its pixels row by row, or one patch row
    per map row for patches of over 32000 pixels; chunked under OpenCV's 32767-row limit) rather than one
    ``cv2.getRectSubPix`` per point, at a fifth of the cost (remap samples each pixel on its own, so the
    layout of the maps does not change a value). Inside
    the frame the values are getRectSubPix's but for interpolation rounding (at most 1 grey level, on
    about 1 pixel in 2000); a patch that hangs over a frame corner replicates the border, where
    getRectSubPix did not.
    """
    points = np.asarray(points, np.float32).reshape(-1, 2)
    offsets = np.arange(size, dtype=np.float32) - np.float32((size - 1) * 0.5)
    column_offsets, row_offsets = np.tile(offsets, size), np.repeat(offsets, size)  # (size * size,) each
    map_columns = size * size if size * size <= 32_000 else size  # OpenCV's limit holds for columns too
    per_call = max(1, 32_000 * map_columns // (size * size))
    patches = np.empty((len(points), size, size), np.float32)
    for first in range(0, len(points), per_call):
        chunk = points[first : first + per_call]
        map_x = np.empty((len(chunk), size * size), np.float32)
        map_y = np.empty((len(chunk), size * size), np.float32)
        np.add(chunk[:, :1], column_offsets, out=map_x)
        np.add(chunk[:, 1:], row_offsets, out=map_y)
        sampled = cv2.remap(
            image,
            map_x.reshape(-1, map_columns),
            map_y.reshape(-1, map_columns),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        patches[first : first + len(chunk)] = sampled.reshape(len(chunk), size, size)
    return patches


@dataclass
class _Templates:
    """Patches (N, h, w) made zero-mean and flattened (``centred``, (N, h*w)), with their summed squares
    (``energy``, (N,)): what the correlation needs of a frame-0 patch, computed once per clip."""

    centred: np.ndarray
    energy: np.ndarray

    @classmethod
    def of(cls, patches: np.ndarray) -> _Templates:
        flat = patches.reshape(len(patches), -1)
        centred = flat - flat.mean(axis=1, keepdims=True)
        return cls(centred, (centred**2).sum(axis=1))

    def __getitem__(self, rows: np.ndarray) -> _Templates:
        return _Templates(self.centred[rows], self.energy[rows])

    def correlation(self, patches: np.ndarray) -> np.ndarray:
        """Zero-mean normalised cross-correlation of each template with its patch (N, h, w), in [-1, 1];
        0 where either is flat."""
        other = _Templates.of(patches)
        norms = np.sqrt(self.energy * other.energy)
        return np.where(norms > 1e-6, (self.centred * other.centred).sum(axis=1) / np.maximum(norms, 1e-6), 0.0)


@dataclass
class _TemplateRows:
    """Rows ``rows`` of ``templates``, gathered only when a check needs them (a subset of a subset)."""

    templates: _Templates
    rows: np.ndarray

    def __getitem__(self, rows: np.ndarray) -> _TemplateRows:
        return _TemplateRows(self.templates, self.rows[rows])

    def correlation(self, patches: np.ndarray) -> np.ndarray:
        return self.templates[self.rows].correlation(patches)


def _normalised_correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Zero-mean normalised cross-correlation of paired patches (N, h, w), in [-1, 1]; 0 for flat patches."""
    return _Templates.of(first).correlation(second)


@dataclass
class LucasKanadeTracker:
    """Pyramidal Lucas-Kanade from each frame to the next, with a forward-backward check.

    Each step tracks the points forward, then the found points back; a point whose round trip misses
    its start by more than ``fb_threshold_px``, that LK loses, that leaves the frame, or whose patch no
    longer looks like its frame-0 patch (normalised cross-correlation below ``min_appearance_ncc``;
    this catches points dragged along by an object that covers them, which pass the round trip) is
    marked invisible and *stays lost* for the rest of the clip, held at its last position. Lost points
    are not re-acquired: a wrong re-acquisition corrupts a trace more than a lost point does.
    The defaults (11 px window, NCC 0.75) were chosen on the synthetic clips of ``tracking_truth``: a
    larger window drags background points along with objects passing next to them (21 px badly). On
    54 truth clips (seeds 0-5; moving, still and fast-panning camera; clean, with sensor noise and
    blurred; through mp4) the 11 px window beat the former 15 px default in every one of the nine sets:
    TAP-Vid delta_avg mean 0.930 -> 0.943, min 0.876 -> 0.902, as many points kept, 21 % less CPU
    (an LK iteration's cost grows with the window's area).

    Speed: each step first tries a quick pass with ``quick_levels`` pyramid levels above the full-size
    image (0: the full-size image alone), the forward search started where the point would be if it
    kept its last step's motion, and the backward search as far from the point's start as the forward
    guess was from where the forward search ended (so that the round trip is a search of its own, not
    a start at the answer). A point that passes every check this way and ended within
    ``quick_max_correction_px`` of the guess is kept (on the truth clips it lies where the full search
    puts it: median gap 0.000 px, largest 0.2 px); every other point is tracked again with the full
    ``levels``-level search from scratch, exactly as without the quick pass. The bound matters when the
    motion changes at once (a shake, a dropped frame): a single-level search far from its guess can
    settle on a wrong match that passes the checks; with the bound the quick pass keeps no more wrong
    points across sudden jumps than the full search. ``quick_levels=None`` always runs the full search.
    """

    window: int = 11
    levels: int = 3
    fb_threshold_px: float = 1.0
    max_iterations: int = 30
    min_appearance_ncc: float | None = 0.75
    patch_px: int = 11
    quick_levels: int | None = 0
    quick_max_correction_px: float = 2.0
    name: str = "lucas-kanade"
    # each point's track depends on that point and the frames alone, not on the other points tracked
    # with it: a caller may track only the points it will use (CoTracker's points attend to each other)
    points_independent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        ranges = {  # setting: (is it in range, what to give)
            "window": (self.window >= 3, "a search window of 3 px or more (default 11)"),
            "levels": (self.levels >= 0, "0 or more pyramid levels above the full-size image (default 3)"),
            "max_iterations": (self.max_iterations >= 1, "1 or more iterations a level (default 30)"),
            "patch_px": (self.patch_px >= 1, "an appearance patch of 1 px or more (default 11)"),
            "fb_threshold_px": (self.fb_threshold_px > 0, "a round-trip distance in pixels above 0 (default 1.0)"),
            "min_appearance_ncc": (
                self.min_appearance_ncc is None or -1 <= self.min_appearance_ncc <= 1,
                "a correlation in [-1, 1] (default 0.75), or None for no appearance check",
            ),
            "quick_max_correction_px": (
                self.quick_max_correction_px > 0,
                "a distance in pixels above 0 (default 2.0): how far the quick pass may end from its guess "
                "before the full search redoes the point",
            ),
        }
        for name, (in_range, wanted) in ranges.items():
            if not in_range:  # NaN fails every comparison, so it lands here too
                raise TrackingError(f"{name}={getattr(self, name)}; give {wanted}")
        if self.quick_levels is not None and not 0 <= self.quick_levels <= self.levels:
            raise TrackingError(
                f"quick_levels={self.quick_levels} with levels={self.levels}; give 0 <= quick_levels <= levels "
                "(default 0) or None to always run the full pyramid search"
            )

    def _lk_params(self, levels: int) -> dict[str, Any]:
        return {
            "winSize": (self.window, self.window),
            "maxLevel": levels,
            "criteria": (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.max_iterations, 0.01),
        }

    def _round_trip(
        self, before: np.ndarray, after: np.ndarray, start: np.ndarray, guess: np.ndarray | None, levels: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forward positions (N, 2) of ``start`` (N, 2) from ``before`` to ``after``, and which of them
        LK found both ways with a round trip within ``fb_threshold_px``. With ``guess`` (N, 2) the forward
        pass starts there and the backward pass the same offset away from ``start``."""
        params = self._lk_params(levels)
        if guess is None:
            forward, found, _ = cv2.calcOpticalFlowPyrLK(before, after, start.reshape(-1, 1, 2), None, **params)
            back, found_back, _ = cv2.calcOpticalFlowPyrLK(after, before, forward, None, **params)
        else:
            params["flags"] = cv2.OPTFLOW_USE_INITIAL_FLOW
            forward, found, _ = cv2.calcOpticalFlowPyrLK(
                before, after, start.reshape(-1, 1, 2), guess.reshape(-1, 1, 2).copy(), **params
            )
            # the backward search starts as far from ``start`` as the forward one started from its end
            backward_guess = (forward - (guess - start).reshape(-1, 1, 2)).astype(np.float32)
            back, found_back, _ = cv2.calcOpticalFlowPyrLK(after, before, forward, backward_guess, **params)
        forward = forward.reshape(-1, 2)
        round_trip_px = np.linalg.norm(back.reshape(-1, 2) - start, axis=1)
        passed = (found.ravel() == 1) & (found_back.ravel() == 1) & (round_trip_px <= self.fb_threshold_px)
        return forward, passed

    def _step(
        self,
        before: np.ndarray,
        after: np.ndarray,
        start: np.ndarray,
        guess: np.ndarray | None,
        levels: int,
        templates: _TemplateRows | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One step for points ``start`` (N, 2): their positions in ``after`` and which of them pass every
        check (round trip, inside the frame, appearance against their ``templates``)."""
        forward, kept = self._round_trip(before, after, start, guess, levels)
        height, width = after.shape
        kept &= _inside(forward, width, height)
        if templates is not None and kept.any():
            checked = np.flatnonzero(kept)  # the appearance check only matters for points still kept
            ncc = templates[checked].correlation(_patches(after, forward[checked], self.patch_px))
            kept[checked] = ncc >= self.min_appearance_ncc
        return forward, kept

    def track(self, frames: np.ndarray, queries: np.ndarray) -> TrackResult:
        frames, queries = _check_inputs(frames, queries)
        grey = _grey(frames)
        height, width = grey[0].shape
        tracks = np.empty((len(grey), len(queries), 2), np.float32)
        visible = np.zeros((len(grey), len(queries)), bool)
        tracks[0] = queries
        visible[0] = _inside(queries, width, height)
        templates = None
        if self.min_appearance_ncc is not None:  # frame 0's patches, centred once for every step's check
            templates = _Templates.of(_patches(grey[0], queries, self.patch_px))
        for step in range(1, len(grey)):
            tracks[step] = tracks[step - 1]
            alive = np.flatnonzero(visible[step - 1])
            if len(alive) == 0:
                continue
            start = tracks[step - 1, alive]
            alive_templates = None if templates is None else _TemplateRows(templates, alive)
            if self.quick_levels is None:
                forward, kept = self._step(grey[step - 1], grey[step], start, None, self.levels, alive_templates)
            else:
                motion = start - tracks[step - 2, alive] if step >= 2 else 0.0
                guess = start + motion
                forward, kept = self._step(grey[step - 1], grey[step], start, guess, self.quick_levels, alive_templates)
                kept &= np.linalg.norm(forward - guess, axis=1) <= self.quick_max_correction_px
                retry = np.flatnonzero(~kept)  # whatever the quick pass lost gets the full search
                if len(retry):
                    forward[retry], kept[retry] = self._step(
                        grey[step - 1],
                        grey[step],
                        start[retry],
                        None,
                        self.levels,
                        None if alive_templates is None else alive_templates[retry],
                    )
            tracks[step, alive[kept]] = forward[kept]
            visible[step, alive[kept]] = True
        return TrackResult(tracks=tracks, visible=visible)


class CoTrackerTracker:
    """CoTracker (Meta) from local files only: ``weights_path`` is a checkpoint such as ``scaled_offline.pth``;
    ``repo_dir`` a local clone of facebookresearch/co-tracker (its ``hubconf.py`` entry ``model_name`` is
    built without weights, then the checkpoint is loaded). Without ``repo_dir`` the installed ``cotracker``
    package is used. Raises TrackerUnavailableError when any piece is missing; nothing is downloaded."""

    name = "cotracker"

    def __init__(
        self,
        weights_path: str | Path,
        repo_dir: str | Path | None = None,
        model_name: str = "cotracker3_offline",
        device: str = "cpu",
    ) -> None:
        weights = Path(weights_path)
        if not weights.is_file():
            raise TrackerUnavailableError(
                f"CoTracker weights not found at '{weights}'; give the path of a local checkpoint "
                "(e.g. scaled_offline.pth) or use the default LucasKanadeTracker (nothing is downloaded)"
            )
        if repo_dir is not None and not (Path(repo_dir) / "hubconf.py").is_file():
            raise TrackerUnavailableError(
                f"'{repo_dir}' is not a clone of facebookresearch/co-tracker (no hubconf.py); give the clone's "
                "directory, leave repo_dir out to use the installed cotracker package, or use LucasKanadeTracker"
            )
        import torch  # optional path: torch is imported only for CoTracker

        self._torch = torch
        self.device = device
        try:
            if repo_dir is not None:
                predictor = torch.hub.load(str(repo_dir), model_name, source="local", pretrained=False)
                state = torch.load(weights, map_location="cpu", weights_only=True)
                predictor.model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
            else:
                try:
                    from cotracker.predictor import CoTrackerPredictor
                except ImportError:
                    raise TrackerUnavailableError(
                        "the cotracker package is not installed; pass repo_dir=<local clone of "
                        "facebookresearch/co-tracker>, install it from that clone, or use LucasKanadeTracker"
                    ) from None
                predictor = CoTrackerPredictor(checkpoint=str(weights))
        except TrackerUnavailableError:
            raise
        except Exception as err:  # a wrong checkpoint or a broken clone: one clear message, whatever broke
            raise TrackerUnavailableError(
                f"CoTracker could not be built from '{weights}' ({type(err).__name__}: {err}); check that the "
                f"checkpoint matches '{model_name}', or use LucasKanadeTracker"
            ) from None
        self._predictor: Any = predictor.to(device).eval()

    def track(self, frames: np.ndarray, queries: np.ndarray) -> TrackResult:
        frames, queries = _check_inputs(frames, queries)
        torch = self._torch
        if frames.ndim == 3:
            frames = np.repeat(frames[..., None], 3, axis=3)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None].float().to(self.device)
        query_points = torch.zeros((1, len(queries), 3), dtype=torch.float32)
        query_points[0, :, 1:] = torch.from_numpy(queries)
        with torch.no_grad():
            tracks, visible = self._predictor(video, queries=query_points.to(self.device))
        return TrackResult(
            tracks=tracks[0].cpu().numpy().astype(np.float32), visible=visible[0].cpu().numpy().astype(bool)
        )


def _median(values: np.ndarray) -> float:
    """``np.median`` of a non-empty 1-D array, the same value without its per-call overhead."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)


@dataclass
class CameraMotion:
    """Per-frame homographies (T, 3, 3) that map frame-t pixels to frame 0, whether the camera moves,
    the share of points each fit explains (RANSAC inliers), and the mean inlier residual in pixels."""

    homographies: np.ndarray
    moving: bool
    inlier_fraction: np.ndarray
    residual_px: float
    background_px: float


def estimate_camera_motion(
    tracks: np.ndarray,
    visible: np.ndarray,
    ransac_threshold_px: float = 3.0,
    moving_threshold_px: float = 1.0,
) -> CameraMotion:
    """Fit frame t -> frame 0 homographies to the tracks with RANSAC and decide whether the camera moves.

    The RANSAC inliers of each fit are the points that follow the dominant (camera) motion: the
    background. The camera counts as moving when, in some frame, the median inlier has moved more
    than ``moving_threshold_px`` from its frame-0 position. A frame with fewer than 8 points seen in
    both frames keeps the previous frame's homography.
    """
    tracks = np.asarray(tracks, np.float32)
    visible = np.asarray(visible, bool)
    steps = len(tracks)
    homographies = np.repeat(np.eye(3)[None], steps, axis=0)
    inlier_fraction = np.ones(steps)
    residuals: list[float] = []
    background_motion = 0.0
    shared_steps = visible & visible[0]
    enough = shared_steps.sum(axis=1) >= MIN_HOMOGRAPHY_POINTS
    for step in range(1, steps):
        homographies[step] = homographies[step - 1]
        inlier_fraction[step] = 0.0
        if not enough[step]:
            continue
        shared = shared_steps[step]
        here, there = tracks[step, shared], tracks[0, shared]
        homography, inliers = cv2.findHomography(here, there, cv2.RANSAC, ransac_threshold_px)
        if homography is None:
            continue
        inliers = inliers.ravel().view(bool)  # RANSAC's 0/1 mask
        homographies[step] = homography
        inlier_fraction[step] = np.count_nonzero(inliers) / len(inliers)
        here, there = here[inliers], there[inliers]
        mapped = cv2.perspectiveTransform(here[None], homography)[0]
        residuals.append(float(np.linalg.norm(mapped - there, axis=1).mean()))
        background_motion = max(background_motion, _median(np.linalg.norm(here - there, axis=1)))
    return CameraMotion(
        homographies=homographies,
        moving=background_motion > moving_threshold_px,
        inlier_fraction=inlier_fraction,
        residual_px=float(np.mean(residuals)) if residuals else 0.0,
        background_px=background_motion,
    )


def compensate(tracks: np.ndarray, homographies: np.ndarray) -> np.ndarray:
    """Map tracks (T, N, 2) into frame-0 coordinates with per-frame homographies (T, 3, 3), frame t -> 0."""
    tracks = np.asarray(tracks, np.float32)
    pairs = zip(tracks, homographies, strict=True)
    mapped = [cv2.perspectiveTransform(points[None], matrix)[0] for points, matrix in pairs]
    return np.stack(mapped).astype(np.float32)
