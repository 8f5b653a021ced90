"""The action queue of one episode: chunks of actions from the policy, each aligned to the moment its
observation was taken, so the robot never runs an action meant for a moment already past.

**Decision (latency-aware execution, the rule of LeRobot's async inference, with openpi's real-time
chunking prefix):** time is counted in *action steps*, the policy actions the robot has run in the
episode. A chunk computed from an observation taken at step ``s`` proposes its ``k``-th action for
step ``s + k``. When it arrives at step ``n > s`` (the robot ran ``n - s`` actions of an earlier chunk
meanwhile), its first ``n - s`` actions are late: they are skipped and counted, and it goes on from its
action ``n - s``. A chunk with nothing left for step ``n`` on is dropped whole. A tick in which the
robot only holds (nothing queued yet, a stale camera) runs no step: the scene waits for the plan, so a
slow single-action policy makes the robot act every few ticks on fresh observations, never on actions
planned for a state it has left. Actions from an observation older than a bound (``drop_older_than``)
are dropped, however few steps ran since.

The daemon sends, with each observation, what the queue will run while the answer is on its way
(``planned``): a chunking policy plans on from there (real-time chunking's frozen prefix), so the steps
skipped on arrival are exactly those that ran.

Where chunks overlap, ``merge`` decides: ``"latest"`` (default) runs the newest chunk from its first
valid step on (the freshest observation wins); ``"ensemble"`` averages every chunk covering the step
with weights ``exp(-m * i)``, ``i = 0`` for the oldest (ACT's temporal ensembling; ``m =
ensemble_weight``: 0 averages, > 0 favours older chunks).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

MERGE_MODES = ("latest", "ensemble")


@dataclass
class _Chunk:
    start: int  # the action step when its observation was taken: its action 0 is for this step
    actions: np.ndarray  # (length, dim)
    capture_time: float  # when that observation was captured (the daemon's monotonic clock, seconds)
    first_sent: bool = False

    @property
    def end(self) -> int:
        return self.start + len(self.actions)


@dataclass
class Placement:
    """What became of one arriving chunk: how many of its actions were already late, and whether any
    were left to run (``stale``: none were)."""

    skipped: int
    stale: bool


@dataclass
class QueuedAction:
    action: np.ndarray
    capture_time: float  # capture time of the observation behind the newest contributing chunk
    first_of_chunk: bool  # the first action run from its chunk (where observation-to-action latency is taken)


class ActionQueue:
    def __init__(self, merge: str = "latest", ensemble_weight: float = 0.0, max_chunks: int = 32) -> None:
        if merge not in MERGE_MODES:
            raise ValueError(f"merge={merge!r}; use one of {MERGE_MODES}")
        self.merge = merge
        self.ensemble_weight = ensemble_weight
        self._chunks: deque[_Chunk] = deque(maxlen=max_chunks)

    def clear(self) -> None:
        self._chunks.clear()

    def add(self, actions: np.ndarray, observation_step: int, now_step: int, capture_time: float = 0.0) -> Placement:
        """A chunk (or one action) computed from the observation taken at ``observation_step``, arriving
        at ``now_step``: its actions for the steps before ``now_step`` are skipped."""
        chunk = np.asarray(actions, dtype=np.float64)
        chunk = chunk.reshape(-1, chunk.shape[-1])
        late = max(0, now_step - observation_step)
        if late >= len(chunk):
            return Placement(skipped=len(chunk), stale=True)
        self._chunks.append(_Chunk(observation_step, chunk, capture_time))
        return Placement(skipped=late, stale=False)

    def depth(self, step: int) -> int:
        """How many steps from ``step`` on have an action queued."""
        return max((chunk.end - step for chunk in self._chunks), default=0) if self._chunks else 0

    def drop_older_than(self, capture_time: float, step: int) -> int:
        """Drop the chunks computed from observations captured before ``capture_time``; how many steps from
        ``step`` on lost their action."""
        before = self.depth(step)
        self._chunks = deque(
            (chunk for chunk in self._chunks if chunk.capture_time >= capture_time), maxlen=self._chunks.maxlen
        )
        return max(0, before - self.depth(step))

    def planned(self, step: int, count: int) -> np.ndarray:
        """The actions queued for steps ``step .. step + count - 1``, up to the first step with none: what
        the robot runs while a request sent now is in flight ((n, dim), n <= count)."""
        rows = []
        for future in range(step, step + count):
            covering = self._covering(future)
            if not covering:
                break
            rows.append(self._merged(covering, future))
        return np.stack(rows) if rows else np.zeros((0, 0))

    def pop(self, step: int) -> QueuedAction | None:
        """The action for ``step``, or None when no chunk covers it; chunks that ended are dropped."""
        while self._chunks and self._chunks[0].end <= step:
            self._chunks.popleft()
        covering = self._covering(step)
        if not covering:
            return None
        newest = max(covering, key=lambda chunk: chunk.start)
        first = not newest.first_sent
        newest.first_sent = True
        return QueuedAction(self._merged(covering, step), newest.capture_time, first)

    def _covering(self, step: int) -> list[_Chunk]:
        return [chunk for chunk in self._chunks if chunk.start <= step < chunk.end]

    def _merged(self, covering: list[_Chunk], step: int) -> np.ndarray:
        if self.merge == "latest":
            newest = max(covering, key=lambda chunk: chunk.start)
            return newest.actions[step - newest.start]
        votes = np.stack([chunk.actions[step - chunk.start] for chunk in covering])
        weights = np.exp(-self.ensemble_weight * np.arange(len(votes)))
        return (votes * weights[:, None]).sum(axis=0) / weights.sum()
