"""The action queue of one episode: chunks of actions from the policy, each placed at the control tick
it arrived at, overlapping chunks merged by temporal ensembling.

A chunk that arrives at tick ``s`` proposes its ``k``-th action for tick ``s + k`` (chunks run from
arrival, as openpi's and LeRobot's async clients run them, so a slow policy's chunks never start in
the past). At tick ``t`` every chunk covering ``t`` votes; votes are weighted ``exp(-m * i)`` with
``i = 0`` for the oldest chunk (ACT's temporal ensembling; ``m = ensemble_weight``: 0 averages, > 0
favours older chunks, < 0 newer ones). A single-action policy is a chunk of one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class _Chunk:
    start: int
    actions: np.ndarray  # (length, dim)

    @property
    def end(self) -> int:
        return self.start + len(self.actions)


class ActionQueue:
    def __init__(self, ensemble_weight: float = 0.0, max_chunks: int = 32) -> None:
        self.ensemble_weight = ensemble_weight
        self._chunks: deque[_Chunk] = deque(maxlen=max_chunks)

    def clear(self) -> None:
        self._chunks.clear()

    def add(self, actions: np.ndarray, tick: int) -> None:
        """A chunk (or one action) that arrived for ticks ``tick``, ``tick + 1``, ..."""
        chunk = np.asarray(actions, dtype=np.float64)
        self._chunks.append(_Chunk(tick, chunk.reshape(-1, chunk.shape[-1])))

    def depth(self, tick: int) -> int:
        """How many ticks from ``tick`` on have an action queued."""
        return max((chunk.end - tick for chunk in self._chunks), default=0) if self._chunks else 0

    def pop(self, tick: int) -> np.ndarray | None:
        """The (ensembled) action for ``tick``, or None when no chunk covers it; older ticks are dropped."""
        while self._chunks and self._chunks[0].end <= tick:
            self._chunks.popleft()
        votes = [chunk.actions[tick - chunk.start] for chunk in self._chunks if chunk.start <= tick < chunk.end]
        if not votes:
            return None
        weights = np.exp(-self.ensemble_weight * np.arange(len(votes)))
        return (np.stack(votes) * weights[:, None]).sum(axis=0) / weights.sum()
