"""Writing episode videos the way LeRobot does, through PyAV (FFmpeg): each episode is encoded on its
own (H.264 by default, HEVC or AV1 on request, ``yuv420p``, a keyframe every 2 frames), then appended
to the video file its dataset is filling by **stream copy**: packets are re-timed, never re-encoded.

Why episodes are encoded separately: every episode then starts on a keyframe, so an episode can later
be cut out of one file and copied into another (merging datasets) without decoding; and its encoded
size is known before it is appended, which is what the size limit of a video file is checked against.
Browsers play H.264 ``yuv420p`` in mp4; ``movflags=faststart`` puts the index first so they can
stream it. An appended file holds one stream, so only episodes with the same codec parameters
(codec, size, pixel format, extradata) share a file: ``VideoFileAppender.accepts`` says when a
different one must start a new file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data_tools.video import VideoReadError, VideoWriteError

# LeRobot's names for the codecs its writer offers (``vcodec``) -> the PyAV encoder used for each.
VIDEO_ENCODERS: dict[str, str] = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1", "mpeg4": "mpeg4"}
DEFAULT_VIDEO_CODEC = "h264"
GOP_FRAMES = 2  # LeRobot's g=2: any frame decodes after at most one other, which random access in training wants
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "23", "preset": "veryfast", "bf": "0"},  # no B-frames: decode order = display order
    "libx265": {"crf": "28", "preset": "veryfast", "x265-params": "log-level=error:bframes=0"},
    "libsvtav1": {"crf": "30", "preset": "12", "svtav1-params": "verbosity=0"},
    "mpeg4": {"qscale": "3"},
}
logging.getLogger("libav").setLevel(logging.ERROR)


def video_encoder(codec: str) -> str:
    """The PyAV encoder for ``codec`` ("h264", "hevc", "av1"), or one VideoWriteError saying which exist."""
    encoder = VIDEO_ENCODERS.get(codec)
    if encoder is None:
        raise VideoWriteError(f"video codec {codec!r} is not one of {sorted(VIDEO_ENCODERS)}; pick one of those")
    if encoder not in av.codecs_available:
        raise VideoWriteError(
            f"this PyAV build has no {encoder} encoder for {codec}; use video codec 'h264', or install a PyAV "
            "wheel that has it (pip install -U av)"
        )
    return encoder


@contextlib.contextmanager
def same_scheduling_policy() -> Iterator[None]:
    """Restore the calling thread's scheduling policy after an encoder ran. SVT-AV1 (``libsvtav1``), run as
    root, switches the thread that opens it to SCHED_FIFO priority 99 and leaves it so; every thread and
    process started from it afterwards would inherit real-time priority (a spinning child then starves
    the whole machine: seen with Playwright's driver in the test suite)."""
    policy, parameters = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, parameters):
            os.sched_setscheduler(0, policy, parameters)


def encode_video(frames: np.ndarray, path: str | Path, fps: int, codec: str = DEFAULT_VIDEO_CODEC) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) into a new mp4 at ``path`` (``yuv420p``, constant ``fps``,
    keyframe every ``GOP_FRAMES`` frames, the first frame a keyframe); returns ``path``."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise VideoWriteError(f"frames are {frames.dtype} {frames.shape}; pass uint8 RGB of shape (T, H, W, 3), T >= 1")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise VideoWriteError(
            f"frames are {width}x{height} pixels; {codec} in yuv420p needs an even width and height "
            "(resize or crop the camera image by one pixel)"
        )
    encoder = video_encoder(codec)
    try:
        with same_scheduling_policy(), av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream(encoder, rate=int(fps), options=_ENCODER_OPTIONS.get(encoder, {}))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = GOP_FRAMES
            for number, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = number
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    except (av.FFmpegError, OSError) as error:
        path.unlink(missing_ok=True)
        raise VideoWriteError(f"encoding {len(frames)} frames as {codec} into '{path}' failed ({error})") from None
    return path


@dataclass(frozen=True)
class StreamSignature:
    """What must match for two encoded streams to share one mp4 by stream copy."""

    codec: str
    width: int
    height: int
    pix_fmt: str | None
    extradata: bytes


def _signature(stream: av.video.stream.VideoStream) -> StreamSignature:
    context = stream.codec_context
    return StreamSignature(
        context.codec.canonical_name, context.width, context.height, context.pix_fmt, bytes(context.extradata or b"")
    )


@dataclass
class VideoSegment:
    """The packets of one episode in a video file, in decode order, with their time base."""

    packets: list[av.Packet]
    time_base: Fraction
    first_pts: int
    duration: Fraction  # seconds, exact
    signature: StreamSignature
    source: Path


def read_segment(
    path: str | Path, from_s: float = 0.0, to_s: float | None = None, fps: float | None = None
) -> VideoSegment:
    """The packets of ``path``'s video stream whose presentation time lies in ``[from_s, to_s)`` (the whole
    stream when ``to_s`` is None). Raises VideoReadError if the segment does not start on a keyframe (it
    cannot then be copied without re-encoding) or holds no packet."""
    path = Path(path)
    tolerance = 1e-4  # LeRobot's frame-time tolerance
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            time_base = Fraction(stream.time_base)
            signature = _signature(stream)
            packets = [
                packet
                for packet in container.demux(stream)
                if packet.pts is not None
                and float(packet.pts * time_base) >= from_s - tolerance
                and (to_s is None or float(packet.pts * time_base) < to_s - tolerance)
            ]
    except (av.FFmpegError, IndexError, OSError) as error:
        raise VideoReadError(f"cannot read the video stream of '{path}' ({error}); re-encode it or drop it") from None
    if not packets:
        raise VideoReadError(f"'{path}' holds no frame between {from_s:.3f}s and {to_s}s; the dataset is damaged")
    packets.sort(key=lambda packet: packet.dts if packet.dts is not None else packet.pts)
    first_pts = min(packet.pts for packet in packets)
    if not next(packet for packet in packets if packet.pts == first_pts).is_keyframe:
        raise VideoReadError(f"the segment of '{path}' from {from_s:.3f}s does not start on a keyframe")
    end = max(packet.pts + (packet.duration or 0) for packet in packets)
    duration = (end - first_pts) * time_base
    if fps:  # constant frame rate: the exact duration, so that episode boundaries stay on frame times
        duration = Fraction(len(packets)) / Fraction(fps).limit_denominator(1001)
    return VideoSegment(packets, time_base, first_pts, duration, signature, path)


def video_stream_info(path: str | Path) -> dict[str, object]:
    """A video feature's ``info`` in info.json, probed from the file as LeRobot 0.4.4 probes it (same keys
    and order): size, codec, pixel format, fps, channels, no depth map, no audio."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        pix_fmt = context.pix_fmt or "yuv420p"
        return {
            "video.height": context.height,
            "video.width": context.width,
            "video.codec": context.codec.canonical_name,
            "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate or stream.average_rate),
            "video.channels": 1 if "gray" in pix_fmt else 4 if ("rgba" in pix_fmt or "yuva" in pix_fmt) else 3,
            "has_audio": bool(container.streams.audio),
        }


class VideoFileAppender:
    """One mp4 being filled with episode segments by stream copy; ``duration_s`` is where the next starts."""

    def __init__(self, path: str | Path, template_path: str | Path) -> None:
        """Open ``path`` for a stream with the codec parameters of ``template_path``'s video stream."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(template_path)) as template:
            source = template.streams.video[0]
            self.signature = _signature(source)
            self._container = av.open(str(self.path), "w", format="mp4", options={"movflags": "faststart"})
            self._stream = self._container.add_stream_from_template(source, opaque=True)
        self._container.start_encoding()
        self._end = Fraction(0)
        self.bytes = 0
        self.frames = 0

    @property
    def duration_s(self) -> float:
        return float(self._end)

    def accepts(self, segment: VideoSegment) -> bool:
        return segment.signature == self.signature

    def append(self, segment: VideoSegment) -> tuple[float, float]:
        """Copy ``segment`` to the end of the file; returns its (from_timestamp, to_timestamp) in the file."""
        if not self.accepts(segment):
            raise VideoWriteError(f"'{self.path}' holds {self.signature.codec} video; this segment differs")
        out_base = Fraction(self._stream.time_base)
        start = self._end
        for packet in segment.packets:
            pts_s = (packet.pts - segment.first_pts) * segment.time_base + start
            dts = packet.dts if packet.dts is not None else packet.pts
            dts_s = (dts - segment.first_pts) * segment.time_base + start
            duration = packet.duration
            packet.pts, packet.dts = round(pts_s / out_base), round(dts_s / out_base)
            if duration:
                packet.duration = round(duration * segment.time_base / out_base)
            packet.time_base = out_base
            packet.stream = self._stream
            self.bytes += packet.size
            self._container.mux(packet)
        self.frames += len(segment.packets)
        self._end = start + segment.duration
        return float(start), float(self._end)

    def close(self) -> None:
        self._container.close()
