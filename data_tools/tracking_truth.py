"""Videos whose true 2-D point trajectories are known, and the scores that compare a tracker with them.

A ``TruthVideo`` is drawn with OpenCV: a textured scene (multi-scale noise, so Lucas-Kanade has
texture at every pyramid level) seen through a camera that pans, rotates and zooms (a known
homography per frame), with textured objects that move on known paths in the scene. Every pixel of
every frame comes from an exact warp, so the true track of any point of frame 0 follows from the
same matrices, sub-pixel exact, with its visibility (inside the frame, not covered by an object).

Scores: ``tapvid_position_accuracy`` (TAP-Vid's < delta^x_avg) and ``camera_compensation_error``.
Used by the tests and the benchmarks; ``data_tools.video.write_mp4`` writes the clips so that they go through decord.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from data_tools.errors import UserFacingError

TAPVID_THRESHOLDS_PX = (1, 2, 4, 8, 16)
TAPVID_FRAME_SIZE = 256


class TruthVideoError(UserFacingError, ValueError):
    """A synthetic video that cannot be made or written as asked."""


@dataclass(frozen=True)
class MovingObject:
    """A textured disc or square of ``radius_px`` (scene pixels) whose centre moves from ``start_xy`` with
    ``velocity_xy`` px/frame plus a sideways wobble of ``wobble_px`` (period ``wobble_frames``)."""

    start_xy: tuple[float, float]
    velocity_xy: tuple[float, float]
    radius_px: float = 22.0
    shape: str = "disc"
    wobble_px: float = 0.0
    wobble_frames: float = 24.0

    def centre(self, step: int) -> np.ndarray:
        base = np.asarray(self.start_xy) + step * np.asarray(self.velocity_xy)
        direction = np.asarray(self.velocity_xy, float)
        norm = np.linalg.norm(direction)
        side = np.array([-direction[1], direction[0]]) / norm if norm > 0 else np.zeros(2)
        return base + side * self.wobble_px * np.sin(2 * np.pi * step / self.wobble_frames)

    def to_scene(self, step: int) -> np.ndarray:
        """3x3 matrix from object-texture pixels (origin at the texture's corner) to scene pixels."""
        corner = self.centre(step) - self.radius_px
        return np.array([[1.0, 0.0, corner[0]], [0.0, 1.0, corner[1]], [0.0, 0.0, 1.0]])

    def covers(self, local_xy: np.ndarray) -> np.ndarray:
        """Whether object-texture points (N, 2) lie on the object."""
        offset = local_xy - self.radius_px
        if self.shape == "disc":
            return np.linalg.norm(offset, axis=1) < self.radius_px
        return np.all(np.abs(offset) < self.radius_px, axis=1)


@dataclass(frozen=True)
class CameraPath:
    """Camera motion per frame in scene pixels and radians: a pan of ``pan_xy`` px/frame, a rotation of
    ``rotation_rad`` per frame, a zoom factor growing by ``zoom`` per frame and a slight perspective tilt."""

    pan_xy: tuple[float, float] = (2.0, 1.0)
    rotation_rad: float = 0.004
    zoom: float = 0.004
    tilt: float = 2e-6

    @classmethod
    def static(cls) -> CameraPath:
        return cls(pan_xy=(0.0, 0.0), rotation_rad=0.0, zoom=0.0, tilt=0.0)


@dataclass
class TruthVideo:
    """Frames (T, H, W, 3) uint8 RGB and the matrices that made them: ``scene_to_frame`` (T, 3, 3) for the
    camera, and the moving objects drawn over the scene in list order."""

    frames: np.ndarray
    scene_to_frame: np.ndarray
    objects: list[MovingObject] = field(default_factory=list)

    def true_tracks(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """True tracks (T, N, 2) and visibility (T, N) of frame-0 points (N, 2), and the index of the
        object each point lies on (-1: the background)."""
        queries = np.asarray(queries, float)
        steps, height, width = self.frames.shape[:3]
        owner = np.full(len(queries), -1)
        anchor = _apply(np.linalg.inv(self.scene_to_frame[0]), queries)  # scene (or object) coordinates
        for index in reversed(range(len(self.objects))):  # the topmost object owns a point
            local = _apply(np.linalg.inv(self.scene_to_frame[0] @ self.objects[index].to_scene(0)), queries)
            hit = (owner == -1) & self.objects[index].covers(local)
            owner[hit] = index
            anchor[hit] = local[hit]
        tracks = np.zeros((steps, len(queries), 2))
        visible = np.zeros((steps, len(queries)), bool)
        for step in range(steps):
            for index in range(-1, len(self.objects)):
                mine = owner == index
                to_frame = self.scene_to_frame[step]
                if index >= 0:
                    to_frame = to_frame @ self.objects[index].to_scene(step)
                tracks[step, mine] = _apply(to_frame, anchor[mine])
            points = tracks[step]
            inside = (points[:, 0] >= 0) & (points[:, 0] <= width - 1) & (points[:, 1] >= 0)
            visible[step] = inside & (points[:, 1] <= height - 1)
            for index, thing in enumerate(self.objects):  # hidden under an object drawn above the owner
                local = _apply(np.linalg.inv(self.scene_to_frame[step] @ thing.to_scene(step)), points)
                visible[step] &= ~((owner < index) & thing.covers(local))
        return tracks.astype(np.float32), visible, owner


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    if len(points) == 0:
        return np.zeros((0, 2))
    return cv2.perspectiveTransform(np.asarray(points, np.float64)[None], matrix)[0]


def textured_canvas(height: int, width: int, rng: np.random.Generator, contrast: float = 1.0) -> np.ndarray:
    """Colour noise summed over several scales (fine to coarse), uint8 RGB: texture at every pyramid level."""
    canvas = np.zeros((height, width, 3), np.float32)
    for sigma, weight in ((1.0, 0.6), (3.0, 1.0), (8.0, 1.2)):
        noise = rng.standard_normal((height, width, 3)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), sigma)
        canvas += weight * blurred / (blurred.std() + 1e-6)
    canvas = 128 + contrast * 40 * canvas / canvas.std()
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _camera_matrices(path: CameraPath, steps: int, size: int, scene_size: int) -> np.ndarray:
    """Scene -> frame homographies: the frame looks at the scene's centre, then the camera moves."""
    matrices = []
    for step in range(steps):
        angle, scale = path.rotation_rad * step, 1.0 + path.zoom * step
        pan = np.asarray(path.pan_xy) * step
        centre_scene = np.array([scene_size / 2 + pan[0], scene_size / 2 + pan[1]])
        to_origin = np.array([[1, 0, -centre_scene[0]], [0, 1, -centre_scene[1]], [0, 0, 1]], float)
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        rotate = np.array([[cos, -sin, 0], [sin, cos, 0], [path.tilt * step, 0, 1]], float)
        to_frame = np.array([[1, 0, (size - 1) / 2], [0, 1, (size - 1) / 2], [0, 0, 1]], float)
        matrices.append(to_frame @ rotate @ to_origin)
    return np.stack(matrices)


def render_truth_video(
    num_frames: int = 24,
    size: int = 256,
    camera: CameraPath | None = None,
    objects: Sequence[MovingObject] | None = None,
    seed: int = 0,
) -> TruthVideo:
    """Draw a ``size`` x ``size`` clip of ``num_frames`` frames: the textured scene through ``camera``
    (default: a pan with rotation and zoom; ``CameraPath.static()`` for a fixed camera) and ``objects``
    (default: three objects moving across the middle), in scene pixels centred on the first view."""
    if num_frames < 2 or size < 32:
        raise TruthVideoError(f"num_frames={num_frames}, size={size}; make at least 2 frames of 32 px or more")
    rng = np.random.default_rng(seed)
    camera = CameraPath() if camera is None else camera
    scene_size = 2 * size
    middle = scene_size / 2
    if objects is None:
        objects = [
            MovingObject((middle - 60, middle - 40), (2.5, 0.8), radius_px=24, wobble_px=6),
            MovingObject((middle + 50, middle + 10), (-1.5, 2.0), radius_px=20, shape="square"),
            MovingObject((middle - 20, middle + 60), (1.8, -2.2), radius_px=18, wobble_px=4, wobble_frames=16),
        ]
    objects = list(objects)
    scene = textured_canvas(scene_size, scene_size, rng)
    textures = []
    for thing in objects:
        side = int(np.ceil(2 * thing.radius_px)) + 1
        texture = textured_canvas(side, side, rng, contrast=1.6)
        texture[..., int(rng.integers(3))] //= 3  # a tint, so that objects stand out to the eye
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2).astype(float)
        mask = thing.covers(grid).reshape(side, side).astype(np.float32)
        textures.append((texture, cv2.GaussianBlur(mask, (0, 0), 0.5)))
    scene_to_frame = _camera_matrices(camera, num_frames, size, scene_size)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for step in range(num_frames):
        frame = cv2.warpPerspective(scene, scene_to_frame[step], (size, size), flags=cv2.INTER_LINEAR)
        frame = frame.astype(np.float32)
        for thing, (texture, mask) in zip(objects, textures, strict=True):
            to_frame = scene_to_frame[step] @ thing.to_scene(step)
            drawn = cv2.warpPerspective(texture, to_frame, (size, size), flags=cv2.INTER_LINEAR)
            alpha = cv2.warpPerspective(mask, to_frame, (size, size), flags=cv2.INTER_LINEAR)[..., None]
            frame = frame * (1 - alpha) + drawn.astype(np.float32) * alpha
        frames[step] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    return TruthVideo(frames=frames, scene_to_frame=scene_to_frame, objects=objects)


def tapvid_position_accuracy(
    pred_tracks: np.ndarray,
    true_tracks: np.ndarray,
    visible_mask: np.ndarray,
    thresholds: Sequence[float] = TAPVID_THRESHOLDS_PX,
    frame_size: tuple[int, int] | None = None,
) -> dict[str, float]:
    """TAP-Vid's position accuracy: over the points visible in the truth (after the query frame 0), the
    share of predictions within each threshold, ``within_{t}px``, and their mean, ``delta_avg``.

    TAP-Vid scores at 256 x 256; give ``frame_size=(width, height)`` to rescale the coordinates to that
    first, or None to score in the frames' own pixels.
    """
    pred = np.asarray(pred_tracks, float)[1:]
    true = np.asarray(true_tracks, float)[1:]
    mask = np.asarray(visible_mask, bool)[1:]
    if pred.shape != true.shape or mask.shape != true.shape[:2]:
        raise TruthVideoError(
            f"tracks {pred.shape} vs {true.shape} and mask {mask.shape}: pass (T, N, 2), (T, N, 2) and (T, N)"
        )
    if frame_size is not None:
        scale = np.array([TAPVID_FRAME_SIZE / frame_size[0], TAPVID_FRAME_SIZE / frame_size[1]])
        pred, true = pred * scale, true * scale
    errors = np.linalg.norm(pred - true, axis=-1)[mask]
    scores = {f"within_{limit:g}px": float((errors < limit).mean()) if len(errors) else 0.0 for limit in thresholds}
    scores["delta_avg"] = float(np.mean(list(scores.values())))
    scores["points_scored"] = float(len(errors))
    return scores


def camera_compensation_error(
    homographies: np.ndarray, true_tracks: np.ndarray, true_visible: np.ndarray, background: np.ndarray
) -> float:
    """Mean pixel distance between true background positions at frame t mapped to frame 0 with the
    estimated homographies (T, 3, 3) and their true frame-0 positions; measures the camera
    compensation alone, apart from tracking error. ``background``: (N,) mask of background points."""
    errors = []
    background = np.asarray(background, bool)
    for step in range(1, len(true_tracks)):
        seen = background & np.asarray(true_visible[step], bool)
        if seen.any():
            mapped = _apply(homographies[step], true_tracks[step, seen])
            errors.append(np.linalg.norm(mapped - true_tracks[0, seen], axis=1))
    if not errors:
        raise TruthVideoError("no background point is visible after frame 0; render a clip with background in view")
    return float(np.concatenate(errors).mean())
