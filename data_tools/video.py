"""Reading video clips with decord, or PyAV where decord lacks the codec: probing, fps-aware frame
sampling, resize on decode and the frame windows that corpus jobs cut a video into.

**Decision:** decord first (measured on H.264 128x128: 100 frames in 0.07 s against PyAV's 0.10 s), PyAV
(FFmpeg 8 with dav1d) for what decord's bundled FFmpeg cannot open, which is AV1, LeRobot's default
video codec. PyAV also tells the two failures apart: a container it parses whose stream has no decoder
here is a *missing codec* (install a build with the decoder, or re-encode), anything else a *corrupt*
file.

Every failure a user's file can cause (missing, empty, corrupt, unsupported, zero frames) comes out
as one ``VideoReadError`` naming the file and the fix, so a job records the file as failed and goes
on. decord and PyAV raise their own errors on broken files; they are always caught here and never
reach the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import cv2
import decord
import numpy as np

from data_tools.errors import UserFacingError

_DECORD_ERRORS = (decord.DECORDError, RuntimeError)
_PYAV_ERRORS = (av.FFmpegError, OSError, ValueError, IndexError)
REENCODE_HINT = "re-encode it (e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`) or drop it"
decord.logging.set_level(decord.logging.QUIET)  # broken files are reported by VideoReadError, not ffmpeg noise


class VideoWriteError(UserFacingError, OSError):
    """A video that cannot be written where or how it was asked."""


class VideoReadError(UserFacingError, ValueError):
    """A video that cannot be read: missing, empty, corrupt, unsupported, or without frames to sample."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, from its container: frame count, average frame rate and frame size in pixels."""

    path: Path
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str = ""  # as FFmpeg names it (h264, hevc, av1, mpeg4); "" when decord probed it
    backend: str = "decord"  # the decoder that reads it: "decord" or "pyav"


@dataclass
class ClipFrames:
    """Decoded frames of one clip: ``frames`` is uint8 RGB (T, H, W, 3); ``times_s`` the time of each
    frame in the video (seconds); ``frame_indices`` their indices among the video's frames."""

    frames: np.ndarray
    times_s: np.ndarray
    frame_indices: np.ndarray
    source_fps: float
    path: Path


class FrameWindow(NamedTuple):
    """One window of a video: its start time and the indices of the source frames it samples."""

    start_s: float
    frame_indices: np.ndarray


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoReadError(f"video not found: '{path}'; check the path (or remove it from the file list)")
    if path.stat().st_size == 0:
        raise VideoReadError(f"'{path}' is an empty file (0 bytes); re-download or re-encode it, or drop it")


def _open_reader(path: Path, width: int = -1, height: int = -1) -> decord.VideoReader:
    _check_file(path)
    try:
        return decord.VideoReader(str(path), width=width, height=height, num_threads=1)
    except _DECORD_ERRORS as err:
        raise _corrupt(path, err) from None


def _corrupt(path: Path, error: BaseException) -> VideoReadError:
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return VideoReadError(
        f"cannot decode '{path}' ({reason}): the file is corrupt or truncated (its container or frames do not "
        f"parse); {REENCODE_HINT}"
    )


_SAMPLE_ENTRY_CODECS = {b"av01": "AV1", b"avc1": "H.264", b"avc3": "H.264", b"hvc1": "HEVC", b"hev1": "HEVC",
                        b"vp09": "VP9", b"mp4v": "MPEG-4"}  # fmt: skip


def _mp4_sample_entry(path: Path) -> str:
    """The codec an mp4/mov file's first sample description names (its four-character code), e.g. "AV1"."""
    with open(path, "rb") as file:
        data = file.read(64 * 2**20)
    at = data.find(b"stsd")
    if at < 0 or len(data) < at + 20:
        return ""
    fourcc = data[at + 16 : at + 20]
    return _SAMPLE_ENTRY_CODECS.get(fourcc, f"'{fourcc.decode('ascii', 'replace')}'")


def _missing_decoder(path: Path) -> VideoReadError:
    codec = _mp4_sample_entry(path)
    what = f"{codec} video" if codec else "video in a codec FFmpeg does not know"
    return VideoReadError(
        f"'{path}' is {what} and no installed decoder reads it (decord's FFmpeg cannot, nor PyAV {av.__version__} "
        f"with FFmpeg {av.ffmpeg_version_info}); install a PyAV wheel that decodes it (`pip install -U av`) or "
        f"{REENCODE_HINT.replace('re-encode it', 're-encode it to H.264')}"
    )


def _probe_with_pyav(path: Path, decord_error: BaseException) -> VideoInfo:
    """What decord could not open, probed by PyAV: a video PyAV decodes, else missing codec vs corrupt file."""
    try:
        container = av.open(str(path))
    except _PYAV_ERRORS:
        raise _corrupt(path, decord_error) from None
    with container:
        if not container.streams.video:
            raise VideoReadError(f"'{path}' holds no video stream (audio or data only); use a video file or drop it")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise _missing_decoder(path)
        codec = stream.codec_context.codec.canonical_name
        try:
            first = next(container.decode(stream), None)
        except _PYAV_ERRORS as error:
            raise _corrupt(path, error) from None
        if first is None:
            raise VideoReadError(f"'{path}' holds no video frames (a zero-length clip); re-encode it or drop it")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = stream.frames
        if not frames:  # containers without a frame count in their header (Matroska, WebM): count packets
            container.seek(0)
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        width, height = first.width, first.height
    if not math.isfinite(fps) or fps <= 0:
        raise VideoReadError(
            f"'{path}' has no usable frame rate ({fps}); re-encode it with a fixed rate (ffmpeg -r 30) or drop it"
        )
    return VideoInfo(path, frames, fps, width, height, frames / fps, codec=codec, backend="pyav")


def probe_video(path: str | Path) -> VideoInfo:
    """Open ``path`` and read its frame count, average fps and frame size; raise VideoReadError if unreadable."""
    path = Path(path)
    _check_file(path)
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
    except _DECORD_ERRORS as error:
        return _probe_with_pyav(path, error)
    try:
        frames = len(reader)
        fps = float(reader.get_avg_fps())
        if frames == 0:
            raise VideoReadError(f"'{path}' holds no video frames (a zero-length clip); re-encode it or drop it")
        if not math.isfinite(fps) or fps <= 0:
            raise VideoReadError(
                f"'{path}' has no usable frame rate ({fps}); re-encode it with a fixed rate (ffmpeg -r 30) or drop it"
            )
        try:
            height, width = reader[0].shape[:2]
        except _DECORD_ERRORS as err:
            raise VideoReadError(f"cannot decode the first frame of '{path}' ({err}); re-encode or drop it") from None
    finally:
        del reader
    return VideoInfo(path=path, frames=frames, fps=fps, width=int(width), height=int(height), duration_s=frames / fps)


def decoded_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """``(width, height)`` after scaling so that the shorter side is ``short_side`` pixels, aspect ratio
    kept (up or down); the stored size when ``short_side`` is None."""
    if short_side is None:
        return width, height
    if short_side < 8:
        raise VideoReadError(f"size={short_side} is too small; give the short side in pixels (e.g. 256) or None")
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


MAX_DECODED_SIDE = 8192  # px: an 8K UHD frame's long side fits
MAX_DECODED_PIXELS = 36_000_000  # a little over an 8K UHD frame (33.2 MP)


def decoded_frame_size(info: VideoInfo, size: int | None) -> tuple[int, int]:
    """``decoded_size`` of ``info``'s video, refused (VideoReadError) when a frame would be larger than
    ``MAX_DECODED_SIDE`` a side or ``MAX_DECODED_PIXELS``: scaling a 2 x 2000 video's short side to 256 px
    makes frames of 256 x 256000, gigabytes a window, which a job must not try to allocate."""
    width, height = decoded_size(info.width, info.height, size)
    if max(width, height) > MAX_DECODED_SIDE or width * height > MAX_DECODED_PIXELS:
        raise VideoReadError(
            f"decoding '{info.path}' ({info.width}x{info.height} stored) with a short side of {size} px gives "
            f"{width}x{height} frames, over the {MAX_DECODED_SIDE} px a side and {MAX_DECODED_PIXELS // 10**6} MP "
            "a frame decoded here; lower the size (--size), or crop or re-encode the video to a usual aspect ratio"
        )
    return width, height


def sample_frame_indices(
    info: VideoInfo, fps: float | None, start_s: float = 0.0, max_frames: int | None = None
) -> np.ndarray:
    """Indices of the source frames that sample ``info``'s video at ``fps`` from ``start_s`` on.

    ``fps=None``, or an ``fps`` at or above the source rate, takes every source frame (frames are
    never repeated). Each sample time ``start_s + k / fps`` takes the nearest source frame.
    """
    if fps is not None and (not math.isfinite(fps) or fps <= 0):
        raise VideoReadError(f"fps={fps} is not a frame rate; give a positive number or None for the source rate")
    if start_s < 0:
        raise VideoReadError(f"start_s={start_s} is negative; give a start time of 0 or more seconds")
    if max_frames is not None and max_frames < 1:
        raise VideoReadError(f"max_frames={max_frames}; give 1 or more, or None for the rest of the video")
    rate = info.fps if fps is None else min(fps, info.fps)
    first = round(start_s * info.fps)
    if rate >= info.fps:
        indices = np.arange(first, info.frames)
    else:
        steps = np.arange(math.ceil((info.duration_s - start_s) * rate) + 1)
        indices = np.round((start_s + steps / rate) * info.fps).astype(np.int64)
        indices = indices[indices < info.frames]
    return indices[:max_frames] if max_frames is not None else indices


def _decode_with_pyav(info: VideoInfo, indices: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Frames ``indices`` (frame number = presentation time x fps) decoded by PyAV; None if any is missing."""
    wanted, found = set(indices.tolist()), {}
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            time_base, start = stream.time_base, stream.start_time or 0
            container.seek(start + int(int(indices.min()) / info.fps / time_base), stream=stream, backward=True)
            last = int(indices.max())
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                number = round(float((frame.pts - start) * time_base) * info.fps)
                if number in wanted and number not in found:
                    found[number] = frame.to_ndarray(width=width, height=height, format="rgb24")
                if number >= last:
                    break
    except _PYAV_ERRORS:
        return None
    if len(found) < len(wanted):
        return None
    return np.stack([found[index] for index in indices.tolist()])


def _decode_batch(path: Path, indices: np.ndarray, width: int, height: int) -> np.ndarray:
    reader = _open_reader(path, width=width, height=height)
    try:
        return reader.get_batch(indices.tolist()).asnumpy()
    finally:
        del reader


def read_frames(
    path: str | Path,
    fps: float | None = None,
    size: int | None = None,
    start_s: float = 0.0,
    max_frames: int | None = None,
) -> ClipFrames:
    """Decode the frames of ``path`` sampled at ``fps`` (None: every frame) from ``start_s`` on, at most
    ``max_frames`` of them, resized on decode so that the *short side* is ``size`` pixels (None: as stored).

    Raises VideoReadError for an unreadable file or when no frame falls in the requested span.
    """
    path = Path(path)
    info = probe_video(path)
    indices = sample_frame_indices(info, fps, start_s, max_frames)
    if len(indices) == 0:
        raise VideoReadError(
            f"no frames of '{path}' from {start_s:.2f}s on: the video lasts {info.duration_s:.2f}s; "
            "give a start time inside the video"
        )
    return decode_frames(info, indices, size)


def _reader_size(info: VideoInfo, width: int, height: int) -> tuple[int, int]:
    """decord's (width, height) for a reader decoding at ``width`` x ``height``: (-1, -1) keeps the stored size."""
    return (-1, -1) if (width, height) == (info.width, info.height) else (width, height)


def _decode_with_decord(info: VideoInfo, indices: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Frames ``indices`` decoded by decord, resized to ``width`` x ``height``; None where decord fails."""
    try:
        return _decode_batch(info.path, indices, *_reader_size(info, width, height))
    except _DECORD_ERRORS:  # decord fails to resize to a few narrow widths (16, 24, 48, 72 px): resize after
        try:
            stored = _decode_batch(info.path, indices, -1, -1)
        except _DECORD_ERRORS:
            return None
        return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in stored])


def _checked_indices(info: VideoInfo, frame_indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(frame_indices, dtype=np.int64)
    if len(indices) == 0 or indices.min() < 0 or indices.max() >= info.frames:
        raise VideoReadError(
            f"frame indices {indices.tolist()[:4]}... are not inside the {info.frames} frames of '{info.path}'; "
            "take them from clip_windows or sample_frame_indices for this video"
        )
    return indices


def _clip(info: VideoInfo, indices: np.ndarray, frames: np.ndarray) -> ClipFrames:
    return ClipFrames(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        times_s=indices / info.fps,
        frame_indices=indices,
        source_fps=info.fps,
        path=info.path,
    )


def decode_frames(info: VideoInfo, frame_indices: np.ndarray, size: int | None = None) -> ClipFrames:
    """Decode the source frames ``frame_indices`` of the probed video ``info`` (e.g. one ``FrameWindow``),
    resized on decode so that the short side is ``size`` pixels (None: as stored)."""
    indices = _checked_indices(info, frame_indices)
    width, height = decoded_frame_size(info, size)
    frames = None if info.backend == "pyav" else _decode_with_decord(info, indices, width, height)
    if frames is None:  # AV1, or a frame size decord's converter gets wrong (e.g. H.264 48 px wide)
        frames = _decode_with_pyav(info, indices, width, height)
    if frames is None:
        raise VideoReadError(
            f"decoding frames {int(indices[0])}..{int(indices[-1])} of '{info.path}' failed: the file is damaged "
            f"after its header; {REENCODE_HINT}"
        )
    return _clip(info, indices, frames)


class _WindowReader:
    """One decord reader kept across the windows of a video; a window decord cannot give goes the
    ``decode_frames`` way, and so does every later one once decord gave up on the file."""

    def __init__(self, info: VideoInfo, size: int | None) -> None:
        self.info, self.size = info, size
        self.reader = None
        width, height = decoded_frame_size(info, size)  # a size no frame may have fails the whole video, here
        if info.backend != "pyav":
            try:
                self.reader = _open_reader(info.path, *_reader_size(info, width, height))
            except VideoReadError:
                self.reader = None

    def decode(self, window: np.ndarray) -> ClipFrames:
        indices = _checked_indices(self.info, window)
        if self.reader is not None:
            try:
                return _clip(self.info, indices, self.reader.get_batch(indices.tolist()).asnumpy())
            except _DECORD_ERRORS:
                self.reader = None  # decord gave up on this file: every later window goes the single-window way
        return decode_frames(self.info, indices, self.size)

    def decode_or_error(self, window: np.ndarray) -> ClipFrames | VideoReadError:
        try:
            return self.decode(window)
        except VideoReadError as error:
            return error


def decode_windows(
    info: VideoInfo,
    windows: Iterable[np.ndarray],
    size: int | None = None,
    decode_ahead: bool = True,
    on_error: Callable[[VideoReadError], None] | None = None,
) -> Iterator[ClipFrames]:
    """``decode_frames`` for several windows of one video, in the order given, through one decord reader.

    The frames are the same as ``decode_frames`` gives window by window; the reader goes on from where the
    last window ended instead of seeking back to a keyframe for each window (a fresh reader per window
    decodes from the keyframe before it: with H.264's usual 8-10 s between keyframes that is most of a
    clip's decoding). A window decord cannot give falls back to ``decode_frames`` (PyAV).

    A window that cannot be decoded (a damaged stretch of the file) raises its ``VideoReadError`` when the
    caller reaches it; with ``on_error`` it is passed there instead and the later windows still come.

    With ``decode_ahead`` the next window decodes on a background thread while the caller works on the
    one it was given (decord and PyAV let go of the GIL while they decode), so a job's decoding and its
    tracking overlap on a machine with a core to spare; one window is decoded ahead at most, and the
    windows and errors arrive as without it.
    """
    reader = _WindowReader(info, size)

    def delivered(result: ClipFrames | VideoReadError) -> Iterator[ClipFrames]:
        if isinstance(result, ClipFrames):
            yield result
        elif on_error is None:
            raise result
        else:
            on_error(result)

    if not decode_ahead:
        for window in windows:
            yield from delivered(reader.decode_or_error(window))
        return
    remaining = iter(windows)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead") as pool:
        pending: Future[ClipFrames | VideoReadError] | None = None
        while True:
            try:
                window = next(remaining)
            except StopIteration:
                break
            except Exception:  # the caller's iterable failed: the window decoded before it still arrives
                if pending is not None:
                    yield from delivered(pending.result())
                raise
            following = pending
            pending = pool.submit(reader.decode_or_error, window)  # starts once ``following`` is done
            if following is not None:
                yield from delivered(following.result())
        if pending is not None:
            yield from delivered(pending.result())


def clip_windows(
    info: VideoInfo, window_frames: int, stride_frames: int, fps: float | None = None
) -> list[FrameWindow]:
    """Cut ``info``'s video, sampled at ``fps`` (None: source rate), into windows of ``window_frames``
    sampled frames that start every ``stride_frames`` sampled frames; only full windows are returned.

    ``decode_frames(info, window.frame_indices, size)`` decodes a window.
    """
    if window_frames < 1 or stride_frames < 1:
        raise VideoReadError(
            f"window_frames={window_frames}, stride_frames={stride_frames}; both must be 1 or more frames"
        )
    sampled = sample_frame_indices(info, fps)
    return [
        FrameWindow(start_s=float(sampled[start] / info.fps), frame_indices=sampled[start : start + window_frames])
        for start in range(0, len(sampled) - window_frames + 1, stride_frames)
    ]


def write_mp4(frames: np.ndarray | list[np.ndarray], path: str | Path, fps: float = 30.0) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) as an H.264 (yuv420p) MP4 with PyAV; returns the path. H.264, not
    OpenCV's mp4v, so browsers play it (the run reports embed these videos); an odd width or height is
    padded by one edge pixel, as yuv420p needs even sizes. The one video writer of the toolkit (episode
    videos, truth clips, benchmarks)."""
    path = Path(path)
    if len(frames) == 0:
        raise VideoWriteError(f"no frames to write to '{path}'; record at least one frame")
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    try:
        container = av.open(str(path), "w", format="mp4")
    except (OSError, av.FFmpegError) as error:
        raise VideoWriteError(f"cannot write '{path}' ({error}); write to a .mp4 path on a writable disk") from None
    with container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for frame in frames:
            image = np.ascontiguousarray(np.pad(np.asarray(frame, dtype=np.uint8)[..., :3], pad, mode="edge"))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
