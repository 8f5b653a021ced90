"""Videos whose true motion is known: a coloured square moving over a textured background in
straight segments (right, left, down or up), written as mp4 files with ``data_tools.video``.
Tests and benchmarks train the quantizer on them and check that its codes carry the motion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data_tools.video import write_mp4

DIRECTIONS = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])  # (dx, dy) in pixels: right, left, down, up


@dataclass
class MotionVideo:
    path: Path
    fps: float
    positions: np.ndarray  # (T, 2) the square's top-left corner (x, y) in each frame


def textured_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour noise (upsampled coarse noise), so that frames have texture but no motion."""
    coarse = rng.integers(40, 200, (6, 6, 3), dtype=np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def square_path(frames: int, size: int, square: int, speed: int, segment: int, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners of a square that moves ``speed`` px a frame, changing direction every
    ``segment`` frames (and whenever the next step would leave the frame)."""
    position = rng.integers(0, size - square, 2)
    direction = DIRECTIONS[rng.integers(4)]
    positions = [position.copy()]
    for index in range(1, frames):
        if index % segment == 0:
            direction = DIRECTIONS[rng.integers(4)]
        while (
            not (position + direction * speed >= 0).all() or not (position + direction * speed <= size - square).all()
        ):
            direction = DIRECTIONS[rng.integers(4)]
        position = position + direction * speed
        positions.append(position.copy())
    return np.array(positions)


def write_motion_videos(
    out_dir: str | Path,
    count: int,
    size: int = 32,
    frames: int = 40,
    fps: float = 10.0,
    speed: int = 2,
    segment: int = 6,
    seed: int = 0,
) -> list[MotionVideo]:
    """``count`` videos of ``frames`` frames, size x size pixels, into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    square = max(4, size // 3)
    videos = []
    for index in range(count):
        background = textured_background(size, rng)
        colour = rng.integers(0, 256, 3)
        positions = square_path(frames, size, square, speed, segment, rng)
        clip = np.repeat(background[None], frames, axis=0)
        for frame, (x, y) in zip(clip, positions, strict=True):
            frame[y : y + square, x : x + square] = colour
        path = write_mp4(clip, out_dir / f"motion-{index:04d}.mp4", fps)
        videos.append(MotionVideo(path=path, fps=fps, positions=positions))
    return videos
