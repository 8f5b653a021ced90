"""Frame pairs (x_t, x_{t+window}) for the quantizer, from video files (``data_tools.video``) or the
episodes of LeRobot datasets (``data_tools.lerobot_reader``; their actions are not used).

The window is given in seconds and turned into frames with each clip's own frame rate, so a corpus
that mixes 10 fps episodes and 30 fps videos pairs frames the same time apart. Frames are center-
cropped to a square and resized to the quantizer's size, and held in memory as uint8 (a 64 px frame
is 12 KiB: about 80 000 frames per GiB).

A clip is named by an identifier: a video path, or ``DATASET_ROOT::episode=N``.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_tools.errors import UserFacingError
from data_tools.jobs import list_inputs
from data_tools.lerobot_reader import LeRobotDatasetReader
from data_tools.video import decode_frames, probe_video

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
EPISODE_SEPARATOR = "::episode="


class FramePairError(UserFacingError, ValueError):
    """Frame pairs that cannot be made as asked (no inputs, a window that does not fit)."""


class VideoTooShortError(FramePairError):
    """A clip shorter than the frame-pair window."""

    reason = "shorter than the window"


@dataclass
class Clip:
    """One video or episode: ``frames`` (T, S, S, 3) uint8 at the quantizer size; ``originals`` the
    frames as stored (kept only when asked, for labelling); ``states`` the robot state per frame when
    the clip is a recorded episode (used by the motion probe, never by the quantizer)."""

    name: str
    fps: float
    frames: np.ndarray
    task: str | None = None
    originals: np.ndarray | None = None
    states: np.ndarray | None = None

    @property
    def duration_s(self) -> float:
        return len(self.frames) / self.fps


def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Center-crop (T, H, W, 3) frames to a square and resize them to size x size (area filter)."""
    height, width = frames.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    cropped = frames[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(cropped)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(frame, (size, size), interpolation=interpolation) for frame in cropped])


def window_frames(window_s: float, fps: float, name: str) -> int:
    """The window in frames of a clip at ``fps``; at least one frame apart."""
    offset = round(window_s * fps)
    if offset < 1:
        raise FramePairError(
            f"a window of {window_s} s is less than one frame of '{name}' ({fps:g} fps); "
            f"set data.window_s to at least {1 / fps:.3f} s"
        )
    return offset


def pair_starts(frames: int, offset: int, stride: int) -> np.ndarray:
    return np.arange(0, frames - offset, stride, dtype=np.int64)


def check_long_enough(clip_frames: int, fps: float, window_s: float, name: str) -> int:
    """The window in frames; VideoTooShortError when the clip holds no frame pair."""
    offset = window_frames(window_s, fps, name)
    if clip_frames <= offset:
        raise VideoTooShortError(
            f"'{name}' lasts {clip_frames / fps:.2f} s ({clip_frames} frames at {fps:g} fps), shorter than the "
            f"frame-pair window of {window_s} s ({offset} frames); lower the window (data.window_s / --window-s) "
            "or leave this video out"
        )
    return offset


def dataset_identifiers(root: str | Path) -> list[str]:
    """One identifier per episode of a LeRobot dataset."""
    reader = _reader(str(root))
    return [f"{root}{EPISODE_SEPARATOR}{index}" for index in range(reader.num_episodes)]


@functools.lru_cache(maxsize=8)
def _reader(root: str) -> LeRobotDatasetReader:
    return LeRobotDatasetReader(root)


def read_clip(identifier: str, size: int, camera: str | None = None, keep_originals: bool = False) -> Clip:
    """The frames of one video file or dataset episode, squared and resized to ``size``."""
    if EPISODE_SEPARATOR in identifier:
        root, index = identifier.rsplit(EPISODE_SEPARATOR, 1)
        reader = _reader(root)
        if not reader.cameras:
            raise FramePairError(f"'{root}' has no video feature; frame pairs need a camera")
        key = camera or reader.cameras[0]
        episode = reader.episode(int(index), cameras=[key])
        originals = episode.frames[key]
        return Clip(
            name=identifier,
            fps=float(reader.fps),
            frames=square_frames(originals, size),
            task=episode.task,
            originals=originals if keep_originals else None,
            states=episode.states,
        )
    info = probe_video(identifier)
    clip = decode_frames(info, np.arange(info.frames), None if keep_originals else max(size, 8))
    return Clip(
        name=identifier,
        fps=info.fps,
        frames=square_frames(clip.frames, size),
        originals=clip.frames if keep_originals else None,
    )


def corpus_identifiers(videos: list[str], datasets: list[str]) -> list[str]:
    """The clips of a corpus: every video of the listed files/directories/list files, every episode
    of the listed datasets; sorted, without repeats."""
    found = {item for source in videos for item in list_inputs(source, VIDEO_EXTENSIONS)}
    found |= {item for root in datasets for item in dataset_identifiers(root)}
    if not found:
        raise FramePairError(
            "no videos or dataset episodes to make frame pairs from; give data.videos=[DIR or FILE] "
            "and/or data.datasets=[LEROBOT_DATASET_ROOT]"
        )
    return sorted(found)


@dataclass
class FramePairs:
    """Every frame pair of a corpus: ``pairs`` rows are (clip, first frame, second frame)."""

    clips: list[Clip]
    pairs: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    _permutations: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def frames(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) first and second frames of the pairs ``indices``."""
        rows = self.pairs[indices]
        first = np.stack([self.clips[c].frames[i] for c, i, _ in rows])
        second = np.stack([self.clips[c].frames[j] for c, _, j in rows])
        return first, second

    def batch_indices(self, step: int, rank: int, world_size: int, batch_size: int, seed: int) -> np.ndarray:
        """The pairs of process ``rank`` at optimizer step ``step`` (0-based): a function of its
        arguments only, so a resumed run draws exactly the batches the interrupted one would have.
        Each epoch is one seeded permutation of all pairs; the global batch is cut into ranks."""
        start = step * batch_size * world_size + rank * batch_size
        positions = np.arange(start, start + batch_size)
        out = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(positions // len(self.pairs)):
            if int(epoch) not in self._permutations:
                self._permutations = {int(epoch): np.random.default_rng([seed, int(epoch)]).permutation(len(self))}
            chosen = positions // len(self.pairs) == epoch
            out[chosen] = self._permutations[int(epoch)][positions[chosen] % len(self.pairs)]
        return out


def load_frame_pairs(
    videos: list[str],
    datasets: list[str],
    size: int,
    window_s: float,
    stride_s: float | None = None,
    camera: str | None = None,
) -> FramePairs:
    """Decode a corpus into frame pairs ``window_s`` seconds apart, starting every ``stride_s`` seconds.

    A video shorter than the window is an error naming it (the user listed it); a dataset episode
    shorter than the window is skipped and counted (``skipped``)."""
    clips, rows, skipped = [], [], Counter()
    for identifier in corpus_identifiers(videos, datasets):
        clip = read_clip(identifier, size, camera)
        try:
            offset = check_long_enough(len(clip.frames), clip.fps, window_s, identifier)
        except VideoTooShortError:
            if EPISODE_SEPARATOR not in identifier:
                raise
            skipped["episode shorter than the window"] += 1
            continue
        stride = max(1, round(stride_s * clip.fps)) if stride_s else 1
        starts = pair_starts(len(clip.frames), offset, stride)
        index = len(clips)
        clips.append(clip)
        rows.append(np.stack([np.full_like(starts, index), starts, starts + offset], axis=1))
    if not rows:
        raise FramePairError(
            f"no clip of the corpus is longer than the {window_s} s window ({sum(skipped.values())} episodes "
            "skipped); lower data.window_s or record longer episodes"
        )
    return FramePairs(clips=clips, pairs=np.concatenate(rows), skipped=dict(skipped))


def motion_between(clip: Clip, first: int, second: int) -> np.ndarray | None:
    """The end effector's displacement (metres, x y z) between two frames of a recorded episode."""
    if clip.states is None or clip.states.shape[1] < 3:
        return None
    return (clip.states[second, :3] - clip.states[first, :3]).astype(np.float64)
