"""Robot actions <-> token ids, the Magma/OpenVLA convention.

Each action dimension is normalised to [-1, 1] with the dataset's 1st/99th percentiles (dimensions
whose mask is False, such as the gripper, pass through), discretised on `num_bins` uniform bin
edges over [-1, 1], and written as one of the last `num_bins` ids of the tokenizer's base
vocabulary, higher values getting lower ids. This is exactly what Magma-8B and OpenVLA decode
(`np.linspace(-1, 1, 256)` edges, `vocab_size - np.digitize(...)`, 255 bin centres), so token ids
are interchangeable with theirs. Statistics live next to the checkpoint in the OpenVLA
`dataset_statistics.json` shape and are never silently replaced by defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.atomic_files import write_json_atomically
from magma.actions.errors import ActionStatisticsError
from magma.actions.token_block import group_steps, validated_token_ids

ACTION_STATISTICS_FILENAME = "dataset_statistics.json"
DEFAULT_NUM_BINS = 256  # the Magma/OpenVLA convention
_SAVE_FIX = (
    f"save the statistics with the checkpoint as {ACTION_STATISTICS_FILENAME} (magma.actions.save_action_statistics)"
)
_REQUIRED_KEYS = ("q01", "q99")
_OPTIONAL_KEYS = ("mean", "std", "min", "max")


def _as_vector(name: str, values: Any) -> np.ndarray:
    """`values` as a finite 1-D float64 array, or an ActionStatisticsError naming `name`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ActionStatisticsError(f"action statistic {name!r} is not a list of numbers: {error}", key=name) from error
    if array.ndim != 1 or array.size == 0:
        raise ActionStatisticsError(f"action statistic {name!r} must be a non-empty 1-D list", key=name)
    if not np.all(np.isfinite(array)):
        raise ActionStatisticsError(f"action statistic {name!r} contains NaN or infinity", key=name)
    return array


def _as_mask(values: Any) -> np.ndarray:
    """`values` as a 1-D bool array; only booleans or 0/1 are accepted, not arbitrary truthiness."""
    array = np.asarray(values)
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.integer) and np.all((array == 0) | (array == 1))):
            raise ActionStatisticsError("action statistic 'mask' must be a list of booleans", key="mask")
        array = array.astype(bool)
    if array.ndim != 1:
        raise ActionStatisticsError("action statistic 'mask' must be a 1-D list", key="mask")
    return array


@dataclass(frozen=True, eq=False)
class ActionStatistics:
    """Per-dimension action statistics of one dataset; `mask[d]` True means dimension d is normalised."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "q01", _as_vector("q01", self.q01))
        object.__setattr__(self, "q99", _as_vector("q99", self.q99))
        object.__setattr__(self, "mask", _as_mask(self.mask))
        for name in _OPTIONAL_KEYS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_vector(name, getattr(self, name)))
        for name in ("q99", "mask", *_OPTIONAL_KEYS):
            value = getattr(self, name)
            if value is not None and value.shape != self.q01.shape:
                raise ActionStatisticsError(
                    f"action statistic {name!r} has {value.size} dimensions but 'q01' has {self.q01.size}",
                    key=name,
                )
        if np.any(self.q99 < self.q01):
            bad = np.flatnonzero(self.q99 < self.q01).tolist()
            raise ActionStatisticsError(f"action statistics have q99 < q01 in dimensions {bad}", key="q99")

    @property
    def action_dim(self) -> int:
        return int(self.q01.size)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_mask: Sequence[bool] | None = None) -> ActionStatistics:
        """Statistics from a JSON-like dict; "mask" is required unless `default_mask` is given."""
        for key in _REQUIRED_KEYS:
            if key not in data:
                raise ActionStatisticsError(
                    f"action statistics are missing {key!r}", key=key, available=data.keys(), fix=_SAVE_FIX
                )
        if "mask" in data:
            mask = data["mask"]
        elif default_mask is not None:
            mask = default_mask
        else:
            raise ActionStatisticsError(
                "action statistics are missing 'mask' (which dimensions to normalise)",
                key="mask",
                available=data.keys(),
                fix="add a 'mask' list (False for the gripper) or pass default_mask explicitly",
            )
        optional = {name: data[name] for name in _OPTIONAL_KEYS if name in data}
        return cls(q01=data["q01"], q99=data["q99"], mask=mask, **optional)

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly dict with plain lists, the inverse of `from_dict`."""
        result: dict[str, list] = {
            "q01": self.q01.tolist(),
            "q99": self.q99.tolist(),
            "mask": self.mask.tolist(),
        }
        for name in _OPTIONAL_KEYS:
            if getattr(self, name) is not None:
                result[name] = getattr(self, name).tolist()
        return result

    @classmethod
    def compute(cls, actions: np.ndarray, mask: Sequence[bool] | None = None) -> ActionStatistics:
        """Statistics of an (N, D) array of actions; `mask` None normalises every dimension."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0:
            raise ValueError(f"actions must be a non-empty (N, D) array, got shape {actions.shape}")
        return cls(
            q01=np.quantile(actions, 0.01, axis=0),
            q99=np.quantile(actions, 0.99, axis=0),
            mask=np.ones(actions.shape[1], dtype=bool) if mask is None else mask,
            mean=actions.mean(axis=0),
            std=actions.std(axis=0),
            min=actions.min(axis=0),
            max=actions.max(axis=0),
        )


def save_action_statistics(
    path: str | os.PathLike,
    stats: Mapping[str, ActionStatistics],
    state_stats: Mapping[str, ActionStatistics] | None = None,
) -> None:
    """Write `{dataset key: {"action": {...}, "state": {...}}}` JSON atomically (temporary file, then rename);
    "state" (the proprioceptive state's statistics, for models that take it) only where given."""
    payload: dict[str, dict[str, Any]] = {key: {"action": value.to_dict()} for key, value in stats.items()}
    for key, value in (state_stats or {}).items():
        payload.setdefault(key, {})["state"] = value.to_dict()
    write_json_atomically(Path(path), payload)


def load_state_statistics(path: str | os.PathLike) -> dict[str, ActionStatistics]:
    """The proprioceptive-state statistics of a statistics file, by dataset key (datasets without are left
    out; every state dimension is normalised unless the file gives a mask)."""
    load_action_statistics(path)  # the file's own checks
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    stats = {}
    for dataset_key, entry in payload.items():
        if isinstance(entry.get("state"), dict):
            try:
                state = entry["state"]
                stats[dataset_key] = ActionStatistics.from_dict(state, default_mask=[True] * len(state.get("q01", [])))
            except ActionStatisticsError as error:
                raise ActionStatisticsError(
                    f"{error.reason} (the state statistics of dataset {dataset_key!r} in {path})", key=error.key
                ) from error
    return stats


def load_action_statistics(path: str | os.PathLike) -> dict[str, ActionStatistics]:
    """Read a statistics file written by `save_action_statistics` (or OpenVLA/Magma's)."""
    path = Path(path)
    if not path.is_file():
        raise ActionStatisticsError(f"action statistics file not found: {path}", key=str(path), fix=_SAVE_FIX)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ActionStatisticsError(
            f"action statistics file {path} is not valid JSON: {str(error)[:200]}", key=str(path)
        ) from None
    if not isinstance(payload, dict) or not payload:
        raise ActionStatisticsError(
            f"action statistics file {path} must map dataset keys to {{'action': {{...}}}}", key=str(path)
        )
    stats = {}
    for dataset_key, entry in payload.items():
        if not isinstance(entry, dict) or "action" not in entry:
            raise ActionStatisticsError(
                f"dataset {dataset_key!r} in {path} has no 'action' statistics",
                key=dataset_key,
                available=entry.keys() if isinstance(entry, dict) else (),
                fix=_SAVE_FIX,
            )
        try:
            stats[dataset_key] = ActionStatistics.from_dict(entry["action"])
        except ActionStatisticsError as error:
            raise ActionStatisticsError(
                f"{error.reason} (dataset {dataset_key!r} in {path})",
                key=error.key,
                available=error.available,
                fix=error.fix,
            ) from error
    return stats


def select_statistics(all_stats: Mapping[str, ActionStatistics], key: str | None) -> ActionStatistics:
    """The statistics of dataset `key`; None picks the only dataset and refuses to guess among several."""
    if key is None:
        if len(all_stats) == 1:
            return next(iter(all_stats.values()))
        raise ActionStatisticsError(
            f"{len(all_stats)} datasets have action statistics; choose one",
            available=all_stats.keys(),
            fix="pass the dataset key (e.g. unnorm_key) that the policy was trained on",
        )
    if key not in all_stats:
        raise ActionStatisticsError(
            f"no action statistics for dataset {key!r}",
            key=key,
            available=all_stats.keys(),
            fix="pass the key of the dataset the policy was trained on, or save its statistics",
        )
    return all_stats[key]


class RobotActionCodec:
    """Continuous robot actions <-> the last `num_bins` token ids of the base vocabulary."""

    def __init__(self, stats: ActionStatistics, base_vocab_size: int, num_bins: int = DEFAULT_NUM_BINS) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        if base_vocab_size <= num_bins:
            raise ValueError(f"base_vocab_size ({base_vocab_size}) must exceed num_bins ({num_bins})")
        self.stats = stats
        self.base_vocab_size = base_vocab_size
        self.num_bins = num_bins
        self._bin_edges = np.linspace(-1.0, 1.0, num_bins)
        self._bin_centres = (self._bin_edges[:-1] + self._bin_edges[1:]) / 2.0
        self._range = stats.q99 - stats.q01

    @property
    def action_dim(self) -> int:
        return self.stats.action_dim

    @property
    def bin_width(self) -> float:
        """Width of one bin in normalised units; a round trip errs by at most half of it."""
        return 2.0 / (self.num_bins - 1)

    @property
    def token_range(self) -> tuple[int, int]:
        """First and last action token id, inclusive."""
        return self.base_vocab_size - self.num_bins, self.base_vocab_size - 1

    def is_action_token(self, token_id: int) -> bool:
        first, last = self.token_range
        return first <= int(token_id) <= last

    def _check_actions(self, actions: Any) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim == 0 or actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must have shape (..., {self.action_dim}), got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or infinity")
        return actions

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Raw actions (..., D) -> [-1, 1]; masked dims by q01/q99 (a zero range gives 0), others clipped."""
        actions = self._check_actions(actions)
        safe_range = np.where(self._range > 0, self._range, 1.0)
        scaled = np.where(self._range > 0, 2.0 * (actions - self.stats.q01) / safe_range - 1.0, 0.0)
        return np.clip(np.where(self.stats.mask, scaled, actions), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """[-1, 1] values (..., D) -> raw actions; unmasked dims pass through."""
        normalized = self._check_actions(normalized)
        raw = (normalized + 1.0) / 2.0 * self._range + self.stats.q01
        return np.where(self.stats.mask, raw, normalized)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Raw actions of shape (..., D) -> token ids of the same shape."""
        bins = np.digitize(self.normalize(actions), self._bin_edges)  # 1..num_bins after clipping
        return (self.base_vocab_size - bins).astype(np.int64)

    def decode(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Token ids (..., n) -> raw actions; n == D gives (..., D), a multiple of D gives (..., n/D, D)."""
        ids = validated_token_ids(token_ids, self.action_dim, self.token_range, "action")
        bins = np.clip(self.base_vocab_size - ids - 1, 0, self.num_bins - 2)
        return self.unnormalize(group_steps(self._bin_centres[bins], self.action_dim))
