"""Typed configuration of the latent action quantizer and of its training run.

``configs/lapa/NAME.yaml`` fills :class:`QuantizerTrainConfig` (the ``quantizer:`` section is the
model, the rest is the run); ``key=value`` dotted overrides change it
(``agent lapa train --config lapa-tiny quantizer.codebook_size=16``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from data_tools.config_files import ConfigError, check_number, config_from, count_problems, load_config_file
from magma.config import optimizer_problems
from magma.training.run_config import LoggingConfig, RunConfig, run_problems

LAPA_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "lapa"
AttentionImplementation = Literal["auto", "sdpa", "naive"]
ATTENTION_IMPLEMENTATIONS = get_args(AttentionImplementation)


class CodebookGridError(ConfigError):
    """A number of latent tokens that cannot tile the encoder's patch grid."""


@dataclass
class QuantizerConfig:
    """The LAQ VQ-VAE: a spatio-temporal transformer encoder over a frame pair, NSVQ on the difference
    of the two frames' features (``num_codes`` tokens from a codebook of ``codebook_size``), and a
    decoder over the first frame's features with cross-attention to the action tokens."""

    image_size: int = 64  # frames are square, image_size x image_size pixels
    patch_size: int = 8
    channels: int = 3
    dim: int = 128
    heads: int = 4
    spatial_layers: int = 2  # encoder: attention among the patches of one frame
    temporal_layers: int = 2  # encoder: causal attention between the two frames at each patch
    decoder_layers: int = 2
    mlp_ratio: float = 4.0
    quant_dim: int = 32  # the codebook's vector size (the action features are projected to it)
    codebook_size: int = 8  # V
    num_codes: int = 4  # k tokens per frame pair: a sqrt(k) x sqrt(k) grid pooled from the patch grid
    # "auto": SDPA, but the math written out for short sequences on CPU (lapa/attention.py) |
    # "sdpa" (torch scaled_dot_product_attention everywhere) | "naive" (the benchmark baseline)
    attention: AttentionImplementation = "auto"

    @property
    def grid_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def code_grid_side(self) -> int:
        return math.isqrt(self.num_codes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def quantizer_problems(config: QuantizerConfig) -> list[str]:
    """Every problem of a quantizer config but the code grid's (see :func:`validate_quantizer_config`)."""
    problems: list[str] = []
    count_problems(
        problems,
        1,
        {
            "quantizer.image_size": config.image_size,
            "quantizer.patch_size": config.patch_size,
            "quantizer.channels": config.channels,
            "quantizer.dim": config.dim,
            "quantizer.heads": config.heads,
            "quantizer.quant_dim": config.quant_dim,
        },
    )
    count_problems(
        problems,
        0,
        {
            "quantizer.spatial_layers": config.spatial_layers,
            "quantizer.temporal_layers": config.temporal_layers,
            "quantizer.decoder_layers": config.decoder_layers,
        },
    )
    check_number(problems, "quantizer.mlp_ratio", config.mlp_ratio, low=0, low_open=True, hint="e.g. 4.0")
    if problems:  # the checks below divide by these sizes
        return problems
    if config.image_size % config.patch_size:
        problems.append(
            f"quantizer.image_size={config.image_size} is not a multiple of quantizer.patch_size={config.patch_size}"
        )
    if config.dim % config.heads:
        problems.append(f"quantizer.dim={config.dim} is not divisible by quantizer.heads={config.heads}")
    if config.codebook_size < 2:
        problems.append(f"quantizer.codebook_size={config.codebook_size} must be >= 2")
    if config.attention not in ATTENTION_IMPLEMENTATIONS:
        problems.append(f"quantizer.attention='{config.attention}' must be one of {ATTENTION_IMPLEMENTATIONS}")
    return problems


def validate_quantizer_config(config: QuantizerConfig, source: str) -> None:
    """Refuse a quantizer that cannot be built, naming every problem and its fix."""
    problems = quantizer_problems(config)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    side, grid = config.code_grid_side, config.grid_side
    if config.num_codes < 1 or side * side != config.num_codes or grid % side:
        tilings = [n * n for n in range(1, grid + 1) if grid % n == 0]
        raise CodebookGridError(
            f"{source}: quantizer.num_codes={config.num_codes} latent tokens cannot tile the "
            f"{grid} x {grid} patch grid (image_size {config.image_size} / patch_size {config.patch_size}): "
            f"the tokens form a square grid whose side divides {grid}; use num_codes in {tilings}"
        )


@dataclass
class FramePairsConfig:
    """Where frame pairs (x_t, x_{t+window}) come from: video files and/or LeRobot datasets."""

    videos: list[str] = field(default_factory=list)  # files, directories (searched recursively) or list files
    datasets: list[str] = field(default_factory=list)  # LeRobotDataset v3 roots (their videos; actions unused)
    camera: str | None = None  # the dataset camera; None: the first
    window_s: float = 0.3  # seconds between the two frames of a pair (frames = round(window_s * fps))
    stride_s: float | None = None  # seconds between pair starts; None: every frame starts a pair
    # decoded frames held in memory (per process); a larger corpus is decoded clip by clip into a
    # cache of this size and each epoch visits the clips in blocks that fit it (lapa/frame_pairs.py)
    memory_gib: float = 8.0


@dataclass
class QuantizerOptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclass
class CodebookUpkeepConfig:
    """Every ``every`` steps, codes used less than ``dead_share / codebook_size`` of the time in that
    window are replaced by perturbed encoder outputs of live (preferably over-used) codes.
    ``seed_from_data``: after the first step the whole codebook is drawn from that step's encoder
    outputs (as k-means starts from data points), instead of staying at its N(0, 1) initialisation,
    which lies away from the encoder's outputs and leaves most codes unused in the first windows."""

    every: int = 10
    seed_from_data: bool = True
    dead_share: float = 0.5
    noise: float = 0.05  # perturbation, relative to the encoder outputs' standard deviation
    stop_after: int | None = None  # no replacements after this step (None: for the whole run)


@dataclass
class QuantizerTrainConfig(RunConfig):
    """A quantizer training run (``agent lapa train``): the ``quantizer:`` section is the model."""

    name: str = "lapa"
    max_steps: int = 1000
    batch_size: int = 32  # frame pairs per process per step
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    data: FramePairsConfig = field(default_factory=FramePairsConfig)
    optim: QuantizerOptimConfig = field(default_factory=QuantizerOptimConfig)
    codebook: CodebookUpkeepConfig = field(default_factory=CodebookUpkeepConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(every=10))


def load_quantizer_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> QuantizerTrainConfig:
    """A recipe name (``configs/lapa/NAME.yaml``) or YAML path, with ``key=value`` overrides."""
    return load_config_file(
        QuantizerTrainConfig, name_or_path, LAPA_CONFIG_DIR, "lapa", overrides, validate_quantizer_train_config
    )


def quantizer_train_config_from(data: Any, overrides: list[str], source: str) -> QuantizerTrainConfig:
    return config_from(QuantizerTrainConfig, data, overrides, source, validate_quantizer_train_config)


def validate_quantizer_train_config(config: QuantizerTrainConfig, source: str) -> None:
    """Every problem of the run and of its quantizer in one ConfigError, each with its key and the fix."""
    optim, data, codebook = config.optim, config.data, config.codebook
    problems = optimizer_problems(
        "optim",
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        betas=optim.betas,
        warmup_steps=optim.warmup_steps,
        max_grad_norm=optim.max_grad_norm,
    )
    problems += run_problems(config)
    count_problems(problems, 1, {"batch_size": config.batch_size, "codebook.every": codebook.every})
    check_number(problems, "data.window_s", data.window_s, low=0, low_open=True, hint="seconds between the frames")
    check_number(problems, "data.stride_s", data.stride_s, low=0, low_open=True, optional=True, hint="null: all")
    check_number(problems, "data.memory_gib", data.memory_gib, low=0, low_open=True, hint="e.g. 8")
    check_number(problems, "codebook.dead_share", codebook.dead_share, low=0, high=1, hint="e.g. 0.5")
    check_number(problems, "codebook.noise", codebook.noise, low=0, hint="e.g. 0.05")
    count_problems(problems, 0, {"codebook.stop_after": codebook.stop_after})
    problems += quantizer_problems(config.quantizer)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    validate_quantizer_config(config.quantizer, source)
