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
    load_state_statistics,
    select_statistics,
)
from magma.data.config import DataConfig, SourceConfig
from magma.data.records import RawSample, SampleRejected
from magma.image_processing import ImageLoadError, load_image
from magma.processor import ActionLayout, ConversationError, EncodedSample, ImagePlaceholderError, MagmaProcessor

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


def _chunk_rows(actions: np.ndarray, mask: list[bool] | None, length: int, where: str) -> tuple[np.ndarray, list[bool]]:
    """The first ``length`` rows of a sample's actions (one row, or future actions from this step on) and
    their padding mask; a sample with fewer rows than the chunk asks for is a data/config mismatch."""
    rows = actions.reshape(1, -1) if actions.ndim == 1 else actions
    if len(rows) < length:
        raise DataSourceError(
            f"action.chunk_length={length} but {where} carries {len(rows)} future action(s); rebuild the shards "
            f"with `agent data lerobot-shards --chunk-length {length}` (or more), or lower action.chunk_length"
        )
    valid = [True] * len(rows) if mask is None else [bool(value) for value in mask]
    if len(valid) != len(rows):
        raise SampleRejected("bad actions", f"{where} has {len(rows)} action rows but {len(valid)} action_mask values")
    return rows[:length], valid[:length]


def source_state_statistics(source: SourceConfig) -> ActionStatistics | None:
    """The proprioceptive-state statistics of a robot source (its ``statistics_key``, or the file's only
    dataset), or None when its statistics file has none for it."""
    states = load_state_statistics(source.statistics)
    key = source.statistics_key or (next(iter(states)) if len(states) == 1 else None)
    return states.get(key) if key is not None else None


class SampleEncoder:
    """Picklable callable run in dataloader workers: RawSample -> EncodedSample or SampleRejected.

    Robot samples follow the model's ``action`` config: a chunk of ``chunk_length`` actions (rows of the
    sample's ``actions``, with its ``action_mask``), as tokens or as normalised l1/flow targets, and the
    sample's ``state`` normalised with the source's state statistics when the model takes one."""

    def __init__(self, processor: MagmaProcessor, data: DataConfig) -> None:
        self.processor = processor
        self.max_length = data.max_length
        self.base_vocab_size = processor.config.tokens.base_vocab_size
        self.action = processor.config.action
        self.layout = ActionLayout.of(self.action)
        self.sources: dict[str, SourceConfig] = {s.name: s for s in [*data.sources, *data.eval_sources]}
        self.robot_codecs: dict[str, RobotActionCodec] = {}
        self.state_normalizers: dict[str, RobotActionCodec] = {}
        for source in self.sources.values():
            if source.action_codec == "robot":
                stats = select_statistics(load_action_statistics(source.statistics), source.statistics_key)
                self.robot_codecs[source.name] = RobotActionCodec(stats, self.base_vocab_size)
                self._check_action_dims(source, stats)

    def _check_action_dims(self, source: SourceConfig, stats: ActionStatistics) -> None:
        """The model's action and state sizes against the source's statistics, naming the field and the fix."""
        action = self.action
        if action.parallel and stats.action_dim != action.action_dim:
            raise DataSourceError(
                f"source '{source.name}' has {stats.action_dim}-D actions ({source.statistics}) but the model's "
                f"action.action_dim={action.action_dim}; set action.action_dim={stats.action_dim}"
            )
        if not action.state_dim:
            return
        state = source_state_statistics(source)
        if state is None:
            raise DataSourceError(
                f"the model takes a state (action.state_dim={action.state_dim}) but {source.statistics} has no state "
                f"statistics for source '{source.name}'; rebuild the shards with `agent data lerobot-shards` "
                "(it writes them) or set action.state_dim=0"
            )
        if state.action_dim != action.state_dim:
            raise DataSourceError(
                f"source '{source.name}' has a {state.action_dim}-D state ({source.statistics}) but the "
                f"model's action.state_dim={action.state_dim}; set action.state_dim={state.action_dim}"
            )
        self.state_normalizers[source.name] = RobotActionCodec(state, self.base_vocab_size)

    def robot_statistics(self) -> dict[str, ActionStatistics]:
        """The robot action statistics in use, by source name: saved next to every exported checkpoint."""
        return {name: codec.stats for name, codec in self.robot_codecs.items()}

    def state_statistics(self) -> dict[str, ActionStatistics]:
        """The proprioceptive-state statistics in use, by source name (saved beside the action statistics)."""
        return {name: normalizer.stats for name, normalizer in self.state_normalizers.items()}

    def robot_fields(self, raw: RawSample, sample_where: str) -> dict[str, object]:
        """A robot sample's action tokens or l1/flow targets, and its normalised state, by the model's config."""
        source = self.sources[raw.source]
        actions = np.asarray(raw.record["actions"], dtype=np.float64)
        rows, mask = _chunk_rows(actions, raw.record.get("action_mask"), self.action.chunk_length, sample_where)
        codec = self.robot_codecs[source.name]
        fields: dict[str, object] = {"action_layout": self.layout}
        if self.action.parallel:
            fields["action_targets"] = codec.normalize(rows).tolist()
            fields["action_mask"] = mask
        else:
            fields["action_token_ids"] = codec.encode(rows).ravel().tolist()
        if self.action.state_dim:
            state = raw.record.get("state")
            if state is None:
                raise DataSourceError(
                    f"the model takes a state (action.state_dim={self.action.state_dim}) but {sample_where} has no "
                    "'state'; rebuild the shards with `agent data lerobot-shards` or set action.state_dim=0"
                )
            fields["state"] = (
                self.state_normalizers[source.name].normalize(np.asarray(state, dtype=np.float64)).tolist()
            )
        return fields

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
        source = self.sources.get(raw.source)
        robot: dict[str, object] = {}
        if source is not None and source.action_codec == "robot" and raw.record.get("actions") is not None:
            try:
                robot = self.robot_fields(raw, where)
            except ValueError as err:
                if isinstance(err, DataSourceError | SampleRejected):
                    raise
                raise SampleRejected("bad actions", f"{where}: {err}") from None
            action_ids = robot.get("action_token_ids")
        else:
            action_ids = self.action_token_ids(raw)
        try:
            sample = self.processor.encode(
                raw.record["conversations"],
                images,
                action_token_ids=action_ids,  # type: ignore[arg-type]
                action_layout=robot.get("action_layout"),  # type: ignore[arg-type]
            )
        except (ConversationError, ImagePlaceholderError) as err:
            raise SampleRejected("invalid sample", f"{where}: {err}") from None
        sample.state = robot.get("state")  # type: ignore[assignment]
        sample.action_targets = robot.get("action_targets")  # type: ignore[assignment]
        sample.action_mask = robot.get("action_mask")  # type: ignore[assignment]
        if len(sample.input_ids) > self.max_length:
            raise SampleRejected(
                "too long", f"{where} has {len(sample.input_ids)} tokens, more than data.max_length={self.max_length}"
            )
        return sample
