"""Frame pairs (x_t, x_{t+window}) for the quantizer, from video files (``data_tools.video``) or the
episodes of LeRobot datasets (``data_tools.lerobot_reader``; their actions are not used).

The window is given in seconds and turned into frames with each clip's own frame rate, so a corpus
that mixes 10 fps episodes and 30 fps videos pairs frames the same time apart. Frames are center-
cropped to a square and resized to the quantizer's size as uint8 (a 64 px frame is 12 KiB, a 256 px
frame 192 KiB). A corpus whose decoded frames fit ``memory_gib`` is decoded once and held in memory;
a larger one is indexed from metadata alone (video headers, dataset episode lengths) and its clips
are decoded on demand into a least-recently-used cache of that size. Each epoch then visits the clips
in blocks that fit the cache, shuffling the pairs within a block, so each clip is decoded about once
per epoch and memory stays bounded whatever the corpus size.

A clip is named by an identifier: a video path, or ``DATASET_ROOT::episode=N``.
"""

from __future__ import annotations

import functools
from collections import Counter, OrderedDict
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
class ClipInfo:
    """What the pair index needs of a clip, read from metadata without decoding it."""

    name: str
    fps: float
    length: int
    frame_bytes: int


def clip_info(identifier: str, size: int, camera: str | None = None) -> ClipInfo:
    if EPISODE_SEPARATOR in identifier:
        root, index = identifier.rsplit(EPISODE_SEPARATOR, 1)
        reader = _reader(root)
        length = int(reader.episodes[int(index)]["length"])
        return ClipInfo(identifier, float(reader.fps), length, size * size * 3)
    info = probe_video(identifier)
    return ClipInfo(identifier, info.fps, info.frames, size * size * 3)


class ClipCache:
    """Clips decoded on demand, the least recently used dropped once their frames exceed ``budget_bytes``
    (the clip in use is always kept). Indexable like the list of clips it stands for."""

    def __init__(self, infos: list[ClipInfo], size: int, camera: str | None, budget_bytes: int) -> None:
        self.infos = infos
        self.size = size
        self.camera = camera
        self.budget_bytes = budget_bytes
        self.decoded: OrderedDict[int, Clip] = OrderedDict()
        self.held_bytes = 0
        self.decodes = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        return len(self.infos)

    def __iter__(self):
        return (self[index] for index in range(len(self)))

    def __getitem__(self, index: int) -> Clip:
        if index in self.decoded:
            self.decoded.move_to_end(index)
            return self.decoded[index]
        info = self.infos[index]
        clip = read_clip(info.name, self.size, self.camera)
        if len(clip.frames) < info.length:
            raise FramePairError(
                f"'{info.name}' decodes to {len(clip.frames)} frames but its metadata says {info.length}; "
                "re-encode the video (ffmpeg -i in.mp4 out.mp4) or leave it out"
            )
        self.decodes += 1
        self.decoded[index] = clip
        self.held_bytes += clip.frames.nbytes
        while self.held_bytes > self.budget_bytes and len(self.decoded) > 1:
            _, dropped = self.decoded.popitem(last=False)
            self.held_bytes -= dropped.frames.nbytes
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return clip


@dataclass
class FramePairs:
    """Every frame pair of a corpus: ``pairs`` rows are (clip, first frame, second frame), grouped by
    clip in clip order. ``clips`` is the list of decoded clips, or a :class:`ClipCache` standing for it
    when ``block_clips`` is set: then each epoch visits the clips in seeded blocks of that many."""

    clips: list[Clip] | ClipCache
    pairs: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    block_clips: int | None = None
    _permutations: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def in_memory(self) -> bool:
        return self.block_clips is None

    def memory_report(self) -> dict[str, object]:
        """How the decoded frames are held: all in memory, or the cache's budget, decodes and peak."""
        if isinstance(self.clips, list):
            held = sum(clip.frames.nbytes for clip in self.clips)
            return {"mode": f"in memory ({held / 2**20:.1f} MiB)", "held_bytes": held}
        cache = self.clips
        return {
            "mode": f"decoded on demand into a {cache.budget_bytes / 2**20:.1f} MiB cache, blocks of "
            f"{self.block_clips} clips, {cache.decodes} clip decodes, peak {cache.peak_bytes / 2**20:.1f} MiB",
            "budget_bytes": cache.budget_bytes,
            "block_clips": self.block_clips,
            "decodes": cache.decodes,
            "peak_bytes": cache.peak_bytes,
        }

    def frames(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S, 3) first and second frames of the pairs ``indices`` (each clip read once)."""
        rows = self.pairs[indices]
        first = second = None
        for clip_index in dict.fromkeys(rows[:, 0].tolist()):
            frames = self.clips[clip_index].frames
            if first is None:
                first = np.empty((len(rows), *frames.shape[1:]), dtype=frames.dtype)
                second = np.empty_like(first)
            mine = rows[:, 0] == clip_index
            first[mine], second[mine] = frames[rows[mine, 1]], frames[rows[mine, 2]]
        return first, second

    def epoch_order(self, epoch: int, seed: int) -> np.ndarray:
        """The order of all pairs in ``epoch``: one seeded permutation; with ``block_clips``, the
        clips are permuted and cut into blocks, and the pairs are permuted within each block."""
        rng = np.random.default_rng([seed, epoch])
        if self.block_clips is None:
            return rng.permutation(len(self))
        clip_count = len(self.clips)
        starts = np.searchsorted(self.pairs[:, 0], np.arange(clip_count + 1))
        clip_order = rng.permutation(clip_count)
        blocks = []
        for first in range(0, clip_count, self.block_clips):
            members = [np.arange(starts[c], starts[c + 1]) for c in clip_order[first : first + self.block_clips]]
            blocks.append(rng.permutation(np.concatenate(members)))
        return np.concatenate(blocks)

    def batch_indices(self, step: int, rank: int, world_size: int, batch_size: int, seed: int) -> np.ndarray:
        """The pairs of process ``rank`` at optimizer step ``step`` (0-based): a function of its
        arguments only, so a resumed run draws exactly the batches the interrupted one would have.
        Each epoch is one seeded order of all pairs (:meth:`epoch_order`); the global batch is cut into ranks."""
        start = step * batch_size * world_size + rank * batch_size
        positions = np.arange(start, start + batch_size)
        out = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(positions // len(self.pairs)):
            if int(epoch) not in self._permutations:
                self._permutations = {int(epoch): self.epoch_order(int(epoch), seed)}
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
    memory_gib: float | None = None,
) -> FramePairs:
    """Frame pairs ``window_s`` seconds apart, starting every ``stride_s`` seconds, of a corpus.

    ``memory_gib``: the decoded frames are held in memory when they fit (always when None); otherwise
    the clips are decoded on demand into a cache of that size (see the module docstring). A video
    shorter than the window is an error naming it (the user listed it); a dataset episode shorter
    than the window is skipped and counted (``skipped``)."""
    identifiers = corpus_identifiers(videos, datasets)
    budget = None if memory_gib is None else int(memory_gib * 2**30)
    infos = [clip_info(identifier, size, camera) for identifier in identifiers] if budget is not None else None
    in_memory = infos is None or sum(info.length * info.frame_bytes for info in infos) <= budget
    decoded = [read_clip(identifier, size, camera) for identifier in identifiers] if in_memory else []
    lengths = [len(clip.frames) for clip in decoded] if in_memory else [info.length for info in infos]
    fps = [clip.fps for clip in decoded] if in_memory else [info.fps for info in infos]
    kept, rows, skipped = [], [], Counter()
    for index, identifier in enumerate(identifiers):
        try:
            offset = check_long_enough(lengths[index], fps[index], window_s, identifier)
        except VideoTooShortError:
            if EPISODE_SEPARATOR not in identifier:
                raise
            skipped["episode shorter than the window"] += 1
            continue
        stride = max(1, round(stride_s * fps[index])) if stride_s else 1
        starts = pair_starts(lengths[index], offset, stride)
        rows.append(np.stack([np.full_like(starts, len(kept)), starts, starts + offset], axis=1))
        kept.append(index)
    if not rows:
        raise FramePairError(
            f"no clip of the corpus is longer than the {window_s} s window ({sum(skipped.values())} episodes "
            "skipped); lower data.window_s or record longer episodes"
        )
    pairs = np.concatenate(rows)
    if in_memory:
        return FramePairs(clips=[decoded[index] for index in kept], pairs=pairs, skipped=dict(skipped))
    kept_infos = [infos[index] for index in kept]
    mean_clip_bytes = sum(info.length * info.frame_bytes for info in kept_infos) / len(kept_infos)
    cache = ClipCache(kept_infos, size, camera, budget)
    block_clips = max(1, int(budget // mean_clip_bytes))
    return FramePairs(clips=cache, pairs=pairs, skipped=dict(skipped), block_clips=block_clips)


def motion_between(clip: Clip, first: int, second: int) -> np.ndarray | None:
    """The end effector's displacement (metres, x y z) between two frames of a recorded episode."""
    if clip.states is None or clip.states.shape[1] < 3:
        return None
    return (clip.states[second, :3] - clip.states[first, :3]).astype(np.float64)
