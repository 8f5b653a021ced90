"""Records that move through the data pipeline, and the one error that makes it skip a sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from data_tools.errors import UserFacingError

if TYPE_CHECKING:
    from magma.processor import ModelInputs


class SampleRejected(UserFacingError, ValueError):  # noqa: N818 (a verdict, not a failure)
    """A sample the pipeline skips and counts under ``reason`` (a short, stable key such as
    ``"corrupt image"``); ``detail`` says what was wrong with which sample."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class RawSample:
    """One sample as read from a shard: the parsed JSON record and its image members' bytes, in order."""

    source: str  # the SourceConfig name it was drawn from
    shard: str
    key: str
    record: dict[str, Any]
    images: list[bytes] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        return str(self.record.get("id", f"{self.shard}:{self.key}"))


@dataclass
class TrainBatch:
    """A collated batch and, per row, the sample's id and source (for logs and per-source metrics)."""

    inputs: ModelInputs
    sample_ids: list[str]
    sources: list[str]
