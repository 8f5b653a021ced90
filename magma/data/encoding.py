"""RawSample -> EncodedSample: validate against the sample contract, decode the images, turn the
sample's ``actions`` into tokens with its source's action codec, tokenize. Any problem with one
sample raises ``SampleRejected`` (the pipeline skips and counts it); a problem with the
configuration raises a ``UserFacingError`` at construction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_tools.config_files import ConfigError
from data_tools.errors import UserFacingError
from data_tools.sample_format import SampleFormatError, validate_sample
from magma.actions import (
    ActionStatistics,
    LatentActionCodec,
    RobotActionCodec,
    load_action_statistics,
    select_statistics,
)
from magma.data.config import DataConfig, SourceConfig
from magma.data.records import RawSample, SampleRejected
from magma.image_processing import ImageLoadError, load_image
from magma.processor import ConversationError, EncodedSample, ImagePlaceholderError, MagmaProcessor

ACTION_CODECS = ("none", "robot", "latent")


class DataSourceError(ConfigError):
    """A data source configured in a way that cannot work (bad weight, codec or statistics)."""


def check_action_codecs(sources: Sequence[SourceConfig], field_name: str) -> None:
    """Refuse unknown action codecs and robot sources without statistics, naming the entry."""
    for index, source in enumerate(sources):
        where = f"{field_name}[{index}]"
        if source.action_codec not in ACTION_CODECS:
            raise DataSourceError(f"{where}.action_codec is '{source.action_codec}'; choose one of {ACTION_CODECS}")
        if source.action_codec == "robot" and not source.statistics:
            raise DataSourceError(
                f"{where} ('{source.name}') uses robot actions but names no statistics file; set "
                f"{where}.statistics=path/dataset_statistics.json (compute it with ActionStatistics.compute)"
            )


class SampleEncoder:
    """Picklable callable run in dataloader workers: RawSample -> EncodedSample or SampleRejected."""

    def __init__(self, processor: MagmaProcessor, data: DataConfig) -> None:
        self.processor = processor
        self.max_length = data.max_length
        self.base_vocab_size = processor.config.tokens.base_vocab_size
        self.sources: dict[str, SourceConfig] = {s.name: s for s in [*data.sources, *data.eval_sources]}
        self.robot_codecs: dict[str, RobotActionCodec] = {}
        for source in self.sources.values():
            if source.action_codec == "robot":
                stats = select_statistics(load_action_statistics(source.statistics), source.statistics_key)
                self.robot_codecs[source.name] = RobotActionCodec(stats, self.base_vocab_size)

    def robot_statistics(self) -> dict[str, ActionStatistics]:
        """The robot action statistics in use, by source name: saved next to every exported checkpoint."""
        return {name: codec.stats for name, codec in self.robot_codecs.items()}

    def action_token_ids(self, raw: RawSample) -> list[int] | None:
        actions = raw.record.get("actions")
        if actions is None:
            return None
        source = self.sources[raw.source]
        try:
            if source.action_codec == "robot":
                return self.robot_codecs[source.name].encode(np.asarray(actions, dtype=np.float64)).ravel().tolist()
            if source.action_codec == "latent":
                codes = np.asarray(actions, dtype=np.int64)
                codec = LatentActionCodec.reusing_base_vocab(
                    codes.shape[-1], source.latent_codebook_size, self.base_vocab_size
                )
                return codec.encode(codes).ravel().tolist()
        except (ValueError, UserFacingError) as err:
            raise SampleRejected("bad actions", f"sample '{raw.sample_id}' of {raw.shard}: {err}") from None
        raise SampleRejected(
            "actions without codec",
            f"sample '{raw.sample_id}' has actions but source '{source.name}' has action_codec=none; "
            "set the source's action_codec to robot or latent",
        )

    def __call__(self, raw: RawSample) -> EncodedSample:
        where = f"sample '{raw.sample_id}' of {raw.shard}"
        try:
            validate_sample(raw.record, len(raw.images))
        except SampleFormatError as err:
            raise SampleRejected("invalid sample", f"{where}: {err}") from None
        try:
            images = [load_image(data) for data in raw.images]
        except ImageLoadError as err:
            raise SampleRejected("corrupt image", f"{where}: {err}") from None
        action_ids = self.action_token_ids(raw)
        try:
            sample = self.processor.encode(raw.record["conversations"], images, action_token_ids=action_ids)
        except (ConversationError, ImagePlaceholderError) as err:
            raise SampleRejected("invalid sample", f"{where}: {err}") from None
        if len(sample.input_ids) > self.max_length:
            raise SampleRejected(
                "too long", f"{where} has {len(sample.input_ids)} tokens, more than data.max_length={self.max_length}"
            )
        return sample
