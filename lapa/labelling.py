"""Latent labelling: the latent action of every frame pair of a corpus, written as training shards
in the sample contract (``<image>`` + the task as the question, ``<action>`` as the answer, the k
codes as ``actions``), so the magma trainer pretrains a VLA on them with ``action_codec: latent``.

The corpus is cut into work units by ``data_tools.jobs``: machines share it by rank, each machine
runs ``workers`` processes, a restarted job skips finished units. An input is a video file or one
episode of a LeRobot dataset (``ROOT::episode=N``); a clip shorter than the window is recorded as
failed ("shorter than the window") and the job goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data_tools.jobs import (
    InputResult,
    JobSpec,
    JobSummary,
    check_workers,
    list_inputs,
    rank_and_world,
    run_corpus_job,
)
from data_tools.lerobot_dataset import DEFAULT_PROMPT
from data_tools.lerobot_dataset import _task_phrase as task_phrase
from data_tools.ray_cluster import check_engine
from lapa.frame_pairs import (
    EPISODE_SEPARATOR,
    VIDEO_EXTENSIONS,
    FramePairError,
    check_long_enough,
    dataset_identifiers,
    pair_starts,
    read_clip,
)
from lapa.quantizer import LatentActionQuantizer

JOB_KIND = "latent"


@dataclass
class LabelOptions:
    """What a labelling job does with each clip (plain values: they travel to worker processes)."""

    checkpoint: str  # a quantizer checkpoint directory (the final/ of `agent lapa train`)
    window_s: float = 0.3  # seconds between the two frames of a pair
    stride_s: float | None = None  # seconds between labelled pairs; None: every frame
    camera: str | None = None  # the dataset camera; None: the first
    image_size: int | None = None  # the quantizer's frame size, checked against the checkpoint; None: its own
    source: str = "latent"  # the samples' "source" field
    task: str | None = None  # the instruction of videos that carry none; None: the file name
    shard_image_size: int | None = None  # short side of the stored start frame; None: as stored
    batch_size: int = 64

    def as_options(self) -> dict[str, Any]:
        return asdict(self)


_QUANTIZERS: dict[str, LatentActionQuantizer] = {}  # one loaded quantizer per worker process


def quantizer_for(options: LabelOptions) -> LatentActionQuantizer:
    if options.checkpoint not in _QUANTIZERS:
        _QUANTIZERS[options.checkpoint] = LatentActionQuantizer.from_pretrained(
            options.checkpoint, image_size=options.image_size
        )
    return _QUANTIZERS[options.checkpoint]


def resize_short_side(frame: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or min(frame.shape[:2]) == size:
        return frame
    height, width = frame.shape[:2]
    scale = size / min(height, width)
    return cv2.resize(
        frame, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )


@torch.no_grad()
def clip_codes(quantizer: LatentActionQuantizer, frames: np.ndarray, starts: np.ndarray, offset: int, batch: int):
    """The codes (P, k) of the pairs (starts, starts + offset) of one clip's frames."""
    codes = []
    for begin in range(0, len(starts), batch):
        chosen = starts[begin : begin + batch]
        first, second = torch.from_numpy(frames[chosen]), torch.from_numpy(frames[chosen + offset])
        codes.append(quantizer.encode_codes(first, second).cpu().numpy())
    return np.concatenate(codes) if codes else np.zeros((0, quantizer.config.num_codes), dtype=np.int64)


def clip_id(identifier: str) -> str:
    """A sample-id prefix unique across a corpus: the clip's name plus a short hash of its identifier."""
    stem = Path(identifier.split(EPISODE_SEPARATOR)[0]).stem
    episode = identifier.rsplit(EPISODE_SEPARATOR, 1)[1] if EPISODE_SEPARATOR in identifier else None
    name = stem if episode is None else f"{stem}-ep{int(episode):06d}"
    return f"{name}-{hashlib.sha1(identifier.encode()).hexdigest()[:8]}"


def clip_task(identifier: str, task: str | None, options: LabelOptions) -> str:
    if task:
        return task
    if options.task:
        return options.task
    return Path(identifier.split(EPISODE_SEPARATOR)[0]).stem.replace("_", " ").replace("-", " ")


def label_clip_input(identifier: str, options: dict[str, Any], rng: np.random.Generator) -> InputResult:
    """Latent-action samples of one video or episode (a ``data_tools.jobs`` input function)."""
    label = LabelOptions(**options)
    quantizer = quantizer_for(label)
    clip = read_clip(identifier, quantizer.config.image_size, label.camera, keep_originals=True)
    offset = check_long_enough(len(clip.frames), clip.fps, label.window_s, identifier)
    stride = max(1, round(label.stride_s * clip.fps)) if label.stride_s else 1
    starts = pair_starts(len(clip.frames), offset, stride)
    codes = clip_codes(quantizer, clip.frames, starts, offset, label.batch_size)
    task = clip_task(identifier, clip.task, label)
    question = "<image>\n" + DEFAULT_PROMPT.format(task=task_phrase(task))
    result = InputResult(frames=len(clip.frames))
    for start, code in zip(starts, codes, strict=True):
        meta: dict[str, Any] = {
            "clip": identifier,
            "frame_index": int(start),
            "start_s": float(start / clip.fps),
            "window_s": label.window_s,
            "task": task,
            "checkpoint": label.checkpoint,
        }
        if clip.states is not None:  # recorded episodes: the robot state at both frames (for probes)
            meta["state"] = clip.states[start].astype(np.float64).tolist()
            meta["state_next"] = clip.states[start + offset].astype(np.float64).tolist()
        record = {
            "id": f"{clip_id(identifier)}-{start:06d}",
            "source": label.source,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "<action>"}],
            "actions": [int(value) for value in code],
            "meta": meta,
        }
        frame = resize_short_side(clip.originals[start], label.shard_image_size)  # type: ignore[index]
        result.samples.append((record, [frame]))
    return result


def label_inputs(videos: list[str], datasets: list[str]) -> list[str]:
    listed = {item for source in videos for item in list_inputs(source, VIDEO_EXTENSIONS)}
    listed |= {item for root in datasets for item in dataset_identifiers(root)}
    if not listed:
        raise FramePairError(
            "nothing to label: give --input VIDEOS (files, directories, list files) and/or --dataset ROOT"
        )
    return sorted(listed)


def run_label_job(
    videos: list[str],
    datasets: list[str],
    out_dir: str | Path,
    options: LabelOptions,
    workers: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    samples_per_shard: int = 1000,
    inputs_per_unit: int = 4,
    seed: int = 0,
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
    max_tries: int | None = None,
) -> JobSummary:
    """Label this machine's share of the corpus into ``out_dir`` (on this machine's processes, or on Ray with
    ``engine="ray"``); the checkpoint is checked (and its image size against ``options.image_size``) before
    anything is written."""
    check_engine(engine)
    check_workers(workers, engine)
    LatentActionQuantizer.from_pretrained(options.checkpoint, image_size=options.image_size)
    rank, world = rank_and_world(rank, world_size)
    spec = JobSpec(
        kind=JOB_KIND,
        inputs=label_inputs(videos, datasets),
        out_dir=str(out_dir),
        options=options.as_options(),
        samples_per_shard=samples_per_shard,
        inputs_per_unit=inputs_per_unit,
        seed=seed,
        rank=rank,
        world_size=world,
    )
    return run_corpus_job(
        spec,
        label_clip_input,
        workers=workers,
        progress=progress,
        engine=engine,
        address=address,
        max_tries=max_tries,
    )
