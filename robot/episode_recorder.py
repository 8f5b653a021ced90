"""Recording of daemon episodes, off the control thread: each episode is its own LeRobotDataset v3
(``RUN_DIR/episodes/episode-NNNNNN``) holding the observations, the actions actually sent, the
policy's raw actions, per-tick timings and safety-event flags.

**Decision:** one dataset per episode, finalized (renamed from its hidden ``.partial`` staging
folder) when the episode ends, so a crash loses at most the episode in progress and never leaves
a half-written dataset that looks complete; a later run removes the stale staging folder.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data_tools.lerobot_dataset import FeatureSpec, LeRobotDatasetWriter
from robot.safety import SAFETY_EVENTS

# Per-tick timings, one float column each (0.0 when a tick's timings lack the key); action_age_s is the
# age, when it is sent, of the observation the action was computed from.
TIMINGS = ("period_s", "lateness_s", "policy_latency_s", "observation_age_s", "action_age_s")


@dataclass
class TickRecord:
    state: np.ndarray
    sent: np.ndarray
    policy_action: np.ndarray | None  # None when the tick sent no policy action (hold, rest)
    images: dict[str, np.ndarray]
    task: str
    timings: dict[str, float]
    events: list[str]


def dimension_names(names: tuple[str, ...] | None, dim: int, prefix: str) -> list[str]:
    """The names of a vector's ``dim`` dimensions: ``names`` when they fit, else ``prefix.0``, ``prefix.1``, ..."""
    if names and len(names) == dim:
        return [str(name) for name in names]
    return [f"{prefix}.{index}" for index in range(dim)]


class EpisodeRecorder:
    """``start(index)``, ``add(record)`` per tick (never blocks), ``finish()`` -> the dataset path."""

    def __init__(
        self,
        root: Path,
        robot_type: str,
        fps: int,
        state_dim: int,
        action_names: tuple[str, ...],
        cameras: list[str],
        image_size: tuple[int, int],
        state_names: tuple[str, ...] | None = None,
    ) -> None:
        """``state_names`` name the dimensions of ``observation.state`` (``state.0``, ... when None)."""
        self.root = root
        self.robot_type = robot_type
        self.fps = fps
        self.cameras = cameras
        self.image_size = image_size
        dim = len(action_names)
        self.features = {
            "observation.state": FeatureSpec("float32", (state_dim,), dimension_names(state_names, state_dim, "state")),
            "action": FeatureSpec("float32", (dim,), dimension_names(action_names, dim, "action")),
            "action.policy": FeatureSpec("float32", (dim,), dimension_names(action_names, dim, "action")),
            "action.from_policy": FeatureSpec("bool", (1,)),
            **{f"timing.{name}": FeatureSpec("float32", (1,)) for name in TIMINGS},
            **{f"safety.{event}": FeatureSpec("bool", (1,)) for event in SAFETY_EVENTS},
        }
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._writer: LeRobotDatasetWriter | None = None
        self.error: BaseException | None = None
        self.frames = 0

    def start(self, index: int) -> None:
        path = self.root / f"episode-{index:06d}"
        self._writer = LeRobotDatasetWriter(
            path, self.robot_type, self.fps, self.features, cameras=self.cameras, image_size=self.image_size
        )
        self.frames, self.error = 0, None
        self._thread = threading.Thread(target=self._drain, name="episode-recorder", daemon=True)
        self._thread.start()

    def add(self, record: TickRecord) -> None:
        self._queue.put(record)

    def _drain(self) -> None:
        while (record := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self._write(record)
            except Exception as error:  # keep the loop alive; the episode is reported as not recorded
                self.error = error

    def _write(self, record: TickRecord) -> None:
        assert self._writer is not None
        raw = record.policy_action
        extra: dict[str, Any] = {
            "action.policy": np.nan_to_num(raw if raw is not None else np.zeros_like(record.sent), posinf=0, neginf=0),
            "action.from_policy": np.array([raw is not None]),
        }
        extra |= {f"timing.{name}": np.array([record.timings.get(name, 0.0)]) for name in TIMINGS}
        extra |= {f"safety.{event}": np.array([event in record.events]) for event in SAFETY_EVENTS}
        images = {camera: self._sized(record.images[camera]) for camera in self.cameras}
        self._writer.add_frame(record.state, record.sent, images, record.task or "unspecified task", extra)
        self.frames += 1

    def _sized(self, image: np.ndarray) -> np.ndarray:
        height, width = self.image_size
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return image

    def finish(self, keep: bool = True) -> Path | None:
        """Wait for the queued frames; finalize the episode's dataset (or delete it) and return its path."""
        if self._writer is None:
            return None
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
        writer, self._writer = self._writer, None
        if not keep or self.frames == 0 or self.error is not None:
            writer.abort()
            return None
        try:
            writer.save_episode()
            return writer.finalize()
        except BaseException:
            writer.abort()
            raise
