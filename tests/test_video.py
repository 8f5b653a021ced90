"""Video reading through decord (PyAV where decord lacks the codec) on real mp4 files written by the tests:
probing, fps-aware sampling, resize on decode, frame windows, H.264/HEVC/AV1 encoded by PyAV and decoded
to the right frames, and a clear VideoReadError for every kind of bad file (a missing codec told apart
from a corrupt file)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from data_tools.errors import UserFacingError
from data_tools.video import (
    VideoReadError,
    clip_windows,
    decode_frames,
    decode_windows,
    decoded_size,
    probe_video,
    read_frames,
    write_mp4,
)
from data_tools.video_encode import VIDEO_ENCODERS, VideoWriteError, encode_video

SOURCE_FPS = 30
NUM_FRAMES = 30
WIDTH, HEIGHT = 96, 64
BAR_STEP, BAR_WIDTH = 3, 6  # frame i shows a white bar at columns [3i, 3i + 6): a decoded frame tells its index


@pytest.fixture(scope="module")
def counting_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96 x 64 clip at 30 fps whose frame i is black with a white vertical bar at column 3 * i."""
    frames = np.zeros((NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    for index in range(NUM_FRAMES):
        frames[index, :, BAR_STEP * index : BAR_STEP * index + BAR_WIDTH] = 255
    return write_mp4(frames, tmp_path_factory.mktemp("video") / "counting.mp4", fps=SOURCE_FPS)


def frame_numbers(frames: np.ndarray) -> list[int]:
    """The index each decoded frame shows: where its bar's brightness centroid lies, in source columns."""
    numbers = []
    for frame in frames:
        columns = frame.astype(float).mean(axis=(0, 2))
        centre = (columns * np.arange(len(columns))).sum() / columns.sum() + 0.5  # pixel centres
        source_centre = centre * WIDTH / frame.shape[1]
        numbers.append(round((source_centre - BAR_WIDTH / 2) / BAR_STEP))
    return numbers


def test_probe_reports_frames_fps_and_size(counting_video: Path):
    info = probe_video(counting_video)
    assert (info.frames, info.fps, info.width, info.height) == (NUM_FRAMES, SOURCE_FPS, 96, 64)
    assert info.duration_s == pytest.approx(1.0)


def test_read_at_lower_fps_takes_the_right_frames_and_resizes_on_decode(counting_video: Path):
    clip = read_frames(counting_video, fps=10, size=40)
    assert clip.frames.shape == (10, 40, 60, 3) and clip.frames.dtype == np.uint8  # short side 40, aspect kept
    assert clip.frame_indices.tolist() == list(range(0, 30, 3))
    assert frame_numbers(clip.frames) == list(range(0, 30, 3))
    np.testing.assert_allclose(clip.times_s, np.arange(10) / 10)
    assert clip.source_fps == SOURCE_FPS and clip.path == counting_video


def test_start_time_and_frame_cap(counting_video: Path):
    clip = read_frames(counting_video, start_s=0.5, max_frames=4)
    assert frame_numbers(clip.frames) == [15, 16, 17, 18]
    assert clip.frames.shape == (4, 64, 96, 3)


def test_fps_above_the_source_rate_never_repeats_frames(counting_video: Path):
    clip = read_frames(counting_video, fps=120)
    assert clip.frame_indices.tolist() == list(range(NUM_FRAMES))


def test_clip_windows_cover_the_video_and_decode(counting_video: Path):
    info = probe_video(counting_video)
    windows = clip_windows(info, window_frames=6, stride_frames=4, fps=15)
    assert [window.frame_indices.tolist() for window in windows[:2]] == [[0, 2, 4, 6, 8, 10], [8, 10, 12, 14, 16, 18]]
    assert all(len(window.frame_indices) == 6 for window in windows)
    assert len(windows) == 3  # 15 sampled frames: windows start at 0, 4, 8
    clip = decode_frames(info, windows[1].frame_indices, size=32)  # 48 px wide: decord cannot, cv2 resizes
    assert clip.frames.shape == (6, 32, 48, 3)
    assert frame_numbers(clip.frames) == [8, 10, 12, 14, 16, 18]
    assert clip.times_s[0] == pytest.approx(windows[1].start_s)


@pytest.mark.parametrize("codec", ["h264", "av1"])
def test_windows_through_one_reader_are_the_frames_of_each_window(encoded: dict[str, Path], codec: str):
    if codec not in encoded:
        pytest.skip(f"this PyAV wheel has no {VIDEO_ENCODERS[codec]} encoder to make a {codec} file")
    info = probe_video(encoded[codec])
    windows = [window.frame_indices for window in clip_windows(info, window_frames=6, stride_frames=6, fps=None)]
    for size in (None, 40, 32):  # 32: decord cannot resize to 48 px wide, the window falls back
        together = list(decode_windows(info, windows, size))
        assert [clip.frame_indices.tolist() for clip in together] == [window.tolist() for window in windows]
        for clip, window in zip(together, windows, strict=True):
            alone = decode_frames(info, window, size)
            assert np.array_equal(clip.frames, alone.frames) and np.array_equal(clip.times_s, alone.times_s)
        assert frame_numbers(together[-1].frames) == windows[-1].tolist()
    with pytest.raises(VideoReadError, match="not inside the 30 frames"):
        list(decode_windows(info, [windows[0], np.array([28, 30])]))


def test_decoding_ahead_gives_the_same_windows_and_errors_in_place(encoded: dict[str, Path]):
    info = probe_video(encoded["h264"])
    windows = [window.frame_indices for window in clip_windows(info, window_frames=6, stride_frames=4, fps=None)]
    ahead = list(decode_windows(info, windows, 40))
    in_turn = list(decode_windows(info, windows, 40, decode_ahead=False))
    assert len(ahead) == len(windows) == len(in_turn)
    for first, second in zip(ahead, in_turn, strict=True):
        assert np.array_equal(first.frames, second.frames) and np.array_equal(first.frame_indices, second.frame_indices)
    clips = decode_windows(info, [windows[0], windows[1], np.array([28, 30]), windows[2]], 40)
    assert np.array_equal(next(clips).frames, in_turn[0].frames)  # the windows before the bad one arrive
    assert np.array_equal(next(clips).frames, in_turn[1].frames)
    with pytest.raises(VideoReadError, match="not inside the 30 frames"):
        next(clips)
    assert list(decode_windows(info, [])) == []
    early = decode_windows(info, windows)
    next(early)
    early.close()  # a caller that stops early leaves no decoding thread behind
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("decode-ahead")]


def test_decoding_ahead_delivers_the_decoded_window_before_the_callers_iterable_fails(counting_video: Path):
    info = probe_video(counting_video)
    windows = [window.frame_indices for window in clip_windows(info, window_frames=6, stride_frames=6, fps=None)]

    def failing() -> Iterator[np.ndarray]:
        yield windows[0]
        yield windows[1]
        raise ValueError("the caller's list broke")

    for ahead in (True, False):
        delivered = []
        with pytest.raises(ValueError, match="list broke"):
            for clip in decode_windows(info, failing(), 40, decode_ahead=ahead):
                delivered.append(clip.frame_indices[0])
        assert delivered == [0, 6]


def test_a_damaged_stretch_costs_only_its_windows(tmp_path: Path):
    """A file cut short after a good header (faststart: the index comes first) decodes up to the cut; with
    ``on_error`` the windows past it are reported one by one and the good ones still arrive."""
    frames = np.zeros((120, 64, 64, 3), np.uint8)
    for index in range(120):
        frames[index, :, (index * 7) % 60 : (index * 7) % 60 + 4] = 255
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"g": "10", "crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    info = probe_video(damaged)
    windows = [window.frame_indices for window in clip_windows(info, window_frames=10, stride_frames=10, fps=None)]
    errors: list[VideoReadError] = []
    good = list(decode_windows(info, windows, on_error=errors.append))
    assert good and errors and len(good) + len(errors) == len(windows)
    assert [int(clip.frame_indices[0]) for clip in good] == [int(window[0]) for window in windows[: len(good)]]
    assert all(str(damaged) in str(error) for error in errors)
    with pytest.raises(VideoReadError):  # without on_error the first damaged window raises
        list(decode_windows(info, windows))


def test_a_size_that_makes_giant_frames_is_refused_before_decoding(tmp_path: Path):
    thin = write_mp4(np.full((4, 2000, 4, 3), 128, np.uint8), tmp_path / "thin.mp4", fps=SOURCE_FPS)
    info = probe_video(thin)
    with pytest.raises(VideoReadError, match=r"gives 256x128000 frames.*lower the size") as err:
        next(decode_windows(info, [np.arange(2)], 256))
    _assert_clear(err, thin, "re-encode")
    with pytest.raises(VideoReadError, match="256x128000"):
        decode_frames(info, np.arange(2), 256)
    assert decode_frames(info, np.arange(2), 8).frames.shape == (2, 4000, 8, 3)  # a size that fits still decodes


def test_decoded_size_keeps_the_aspect_ratio():
    assert decoded_size(1280, 720, 256) == (455, 256)
    assert decoded_size(720, 1280, 256) == (256, 455)
    assert decoded_size(640, 480, None) == (640, 480)


def _assert_clear(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, UserFacingError)
    assert str(path) in message
    for word in words:
        assert word in message


def test_corrupt_file_is_a_clear_error(tmp_path: Path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError) as err:
        read_frames(garbage)
    _assert_clear(err, garbage, "corrupt", "re-encode")


def test_truncated_file_is_a_clear_error(tmp_path: Path, counting_video: Path):
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(counting_video.read_bytes()[:2000])
    with pytest.raises(VideoReadError) as err:
        probe_video(truncated)
    _assert_clear(err, truncated, "re-encode")


def test_empty_and_missing_files_are_clear_errors(tmp_path: Path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError) as err:
        probe_video(empty)
    _assert_clear(err, empty, "empty")
    with pytest.raises(VideoReadError) as err:
        probe_video(tmp_path / "missing.mp4")
    _assert_clear(err, tmp_path / "missing.mp4", "not found")


def test_video_without_frames_is_a_clear_error(tmp_path: Path):
    zero = tmp_path / "zero.mp4"
    writer = cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 64))
    writer.release()  # a valid container with no frame in it
    with pytest.raises(VideoReadError) as err:
        read_frames(zero)
    _assert_clear(err, zero, "drop it")


def test_start_past_the_end_is_a_clear_error(counting_video: Path):
    with pytest.raises(VideoReadError) as err:
        read_frames(counting_video, start_s=5.0)
    _assert_clear(err, counting_video, "lasts 1.00s")


def counting_frames() -> np.ndarray:
    frames = np.zeros((NUM_FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    for index in range(NUM_FRAMES):
        frames[index, :, BAR_STEP * index : BAR_STEP * index + BAR_WIDTH] = 255
    return frames


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The counting clip encoded by PyAV as H.264, HEVC and AV1 (LeRobot's default), when the wheel can."""
    folder = tmp_path_factory.mktemp("codecs")
    return {
        codec: encode_video(counting_frames(), folder / f"{codec}.mp4", SOURCE_FPS, codec)
        for codec, encoder in VIDEO_ENCODERS.items()
        if codec != "mpeg4" and encoder in av.codecs_available
    }


@pytest.mark.parametrize("codec", ["h264", "hevc", "av1"])
def test_h264_hevc_and_av1_decode_to_the_right_frames(encoded: dict[str, Path], codec: str):
    if codec not in encoded:
        pytest.skip(f"this PyAV wheel has no {VIDEO_ENCODERS[codec]} encoder to make a {codec} file")
    info = probe_video(encoded[codec])
    assert (info.frames, info.fps, info.width, info.height) == (NUM_FRAMES, SOURCE_FPS, WIDTH, HEIGHT)
    assert info.backend == ("pyav" if codec == "av1" else "decord")  # decord's FFmpeg has no AV1 decoder
    clip = decode_frames(info, np.array([0, 7, 8, 20, 29]))
    assert frame_numbers(clip.frames) == [0, 7, 8, 20, 29]
    resized = decode_frames(info, np.array([3, 4]), size=32)
    assert resized.frames.shape == (2, 32, 48, 3) and frame_numbers(resized.frames) == [3, 4]


def test_h264_is_what_browsers_play(encoded: dict[str, Path]):
    with av.open(str(encoded["h264"])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
    assert encoded["h264"].read_bytes()[4:8] == b"ftyp" and b"moov" in encoded["h264"].read_bytes()


def test_a_codec_no_decoder_reads_is_told_apart_from_a_corrupt_file(tmp_path: Path, encoded: dict[str, Path]):
    """A well-formed mp4 whose stream claims MPEG-5 EVC ('evc1', which no decoder here reads) is a missing
    codec; the same AV1 file cut in half, or random bytes, are corrupt."""
    unknown = tmp_path / "evc.mp4"
    unknown.write_bytes(encoded["h264"].read_bytes().replace(b"avc1", b"evc1"))
    with pytest.raises(VideoReadError) as err:
        probe_video(unknown)
    _assert_clear(err, unknown, "'evc1' video", "no installed decoder reads it", "pip install -U av")
    assert "corrupt" not in str(err.value)

    source = encoded.get("av1", encoded["h264"])
    truncated = tmp_path / "truncated-av1.mp4"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(VideoReadError) as err:
        decode_frames(probe_video(truncated), np.arange(NUM_FRAMES))
    _assert_clear(err, truncated, "re-encode")
    assert "corrupt" in str(err.value) or "damaged" in str(err.value)
    assert "no installed decoder" not in str(err.value)


def test_odd_frame_sizes_and_unknown_codecs_are_refused_before_encoding(tmp_path: Path):
    with pytest.raises(VideoWriteError, match="even width and height"):
        encode_video(np.zeros((2, 9, 10, 3), np.uint8), tmp_path / "odd.mp4", 10)
    with pytest.raises(VideoWriteError, match="'vp8' is not one of"):
        encode_video(np.zeros((2, 8, 10, 3), np.uint8), tmp_path / "vp8.mp4", 10, "vp8")
    assert list(tmp_path.iterdir()) == []


def test_encoding_av1_leaves_the_calling_thread_at_its_normal_priority(tmp_path):
    # SVT-AV1 run as root switches the thread that opens it to SCHED_FIFO; children would inherit it
    from data_tools.video_encode import encode_video

    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    encode_video(np.zeros((3, 16, 16, 3), np.uint8), tmp_path / "clip.mp4", fps=10, codec="av1")
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
