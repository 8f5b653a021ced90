"""Typed configuration of the training data: sources (shards + weight + action codec) and how
they are streamed. Part of ``magma.training.config.TrainConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourceConfig:
    """One data source: its shards, its share of the mixture and how its ``actions`` become tokens."""

    name: str = "???"
    shards: list[str] = field(default_factory=list)  # paths, globs (``*.tar``) or brace lists (``{000..009}``)
    weight: float = 1.0
    action_codec: str = "none"  # "none" | "robot" (q01/q99 bins; needs statistics) | "latent" (LAPA codes)
    statistics: str | None = None  # dataset_statistics.json for robot actions
    statistics_key: str | None = None  # which dataset of that file; default: its only one
    latent_codebook_size: int = 8  # latent codes: codebook size (codes are written with the last ids)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    eval_sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 8  # samples per process per micro-batch
    shuffle_buffer: int = 1000  # samples held for shuffling per worker; 0 = stream order
    shuffle_shards: bool = True  # reshuffle shard order every epoch of a source
    split: str = "auto"  # how sources are split over processes x workers: "auto" | "shards" | "samples"
    num_workers: int = 2  # dataloader worker processes per training process (0 = in the main process)
    prefetch_factor: int = 2
    max_length: int = 2048  # samples longer than this (in tokens, images included) are skipped and counted
    seed: int = 0
