"""Typed training configuration. ``configs/train/NAME.yaml`` fills it; ``key=value`` dotted
overrides on the command line change it (``agent train --config NAME optim.lr=3e-5``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from magma.config import (
    ConfigError,
    check_number,
    count_problems,
    find_config_file,
    merge_structured,
    optimizer_problems,
    read_yaml,
    seed_problems,
)
from magma.data.config import DataConfig
from magma.data.encoding import check_action_codecs
from magma.data.loader import check_sources

TRAIN_CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "train"
MODULES = ("vision_tower", "projector", "language_model")
SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class ModuleOptimConfig:
    """How one of the three modules trains: frozen or not, and its own learning rate."""

    train: bool = True
    lr: float | None = None  # None: optim.lr


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0  # not applied to biases, norms, embeddings-free 1-d tensors
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"  # "constant" | "cosine" (both after a linear warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping
    vision_tower: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)
    projector: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)
    language_model: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) on the language model; its base weights are then frozen."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0: only at the end
    keep: int = 2  # most recent checkpoints kept on disk


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations on data.eval_sources; 0: only at the end
    max_batches: int = 0  # per process and eval source; 0: the whole eval set


@dataclass
class LoggingConfig:
    every: int = 1  # steps between metric lines in metrics.jsonl
    trackers: list[str] = field(default_factory=list)  # accelerate trackers: "tensorboard", "wandb"
    progress: bool = True  # the progress bar (samples/s, ETA) on the main process


@dataclass
class TrainConfig:
    name: str = "run"
    model: str = "magma-tiny"  # a model preset / YAML (new weights) or a checkpoint directory (fine-tune)
    model_overrides: list[str] = field(default_factory=list)  # key=value for a new model's config
    run_dir: str = "runs/${name}"
    seed: int = 0
    max_steps: int = 100  # optimizer steps
    grad_accum_steps: int = 1
    mixed_precision: str | None = None  # "no" | "bf16" | "fp16"; None: the accelerate config decides
    gradient_checkpointing: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def global_batch_size(self, world_size: int) -> int:
        return self.data.batch_size * self.grad_accum_steps * world_size


# Keys that may change when a run is resumed; any other difference means another run.
RESUMABLE_CHANGES = ("max_steps", "checkpoint", "eval", "logging", "run_dir")


def load_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe name (``configs/train/NAME.yaml``) or YAML path, with ``key=value`` overrides."""
    path = find_config_file(name_or_path, TRAIN_CONFIG_DIR, "training")
    return train_config_from(read_yaml(path, "training"), overrides or [], str(path))


def train_config_from(data: Any, overrides: list[str], source: str) -> TrainConfig:
    tree = OmegaConf.create(data) if isinstance(data, dict) else data
    config = merge_structured(TrainConfig, tree, overrides, source)
    validate_train_config(config, source)
    return config


def adamw_problems(optim: OptimConfig, prefix: str = "optim") -> list[str]:
    """Every number of an ``OptimConfig`` (shared by ``agent train`` and ``agent rl grpo``)."""
    problems = optimizer_problems(
        prefix,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        betas=optim.betas,
        warmup_steps=optim.warmup_steps,
        max_grad_norm=optim.max_grad_norm,
        eps=optim.eps,
    )
    check_number(problems, f"{prefix}.min_lr_ratio", optim.min_lr_ratio, low=0, high=1, hint="cosine floor: lr x it")
    for name in MODULES:
        module_lr = getattr(optim, name).lr
        check_number(problems, f"{prefix}.{name}.lr", module_lr, low=0, low_open=True, optional=True, hint="null: lr")
    return problems


def validate_train_config(config: TrainConfig, source: str) -> None:
    """Every problem of the config in one ConfigError, each with its key and the fix."""
    problems = adamw_problems(config.optim)
    count_problems(
        problems,
        1,
        {
            "max_steps": config.max_steps,
            "grad_accum_steps": config.grad_accum_steps,
            "data.batch_size": config.data.batch_size,
            "data.max_length": config.data.max_length,
            "logging.every": config.logging.every,
            "lora.r": config.lora.r if config.lora.enabled else None,
        },
    )
    count_problems(
        problems,
        0,
        {
            "checkpoint.every": config.checkpoint.every,
            "checkpoint.keep": config.checkpoint.keep,
            "eval.every": config.eval.every,
            "eval.max_batches": config.eval.max_batches,
            "data.shuffle_buffer": config.data.shuffle_buffer,
            "data.num_workers": config.data.num_workers,
        },
    )
    if config.data.num_workers > 0:
        count_problems(problems, 1, {"data.prefetch_factor": config.data.prefetch_factor})
    seed_problems(problems, {"seed": config.seed, "data.seed": config.data.seed})
    if config.lora.enabled:
        check_number(problems, "lora.alpha", config.lora.alpha, low=0, low_open=True, hint="e.g. 2 x lora.r")
        check_number(problems, "lora.dropout", config.lora.dropout, low=0, high=1, high_open=True)
    if config.data.split not in ("auto", "shards", "samples"):
        problems.append(f"data.split='{config.data.split}' must be auto, shards or samples")
    if config.optim.schedule not in SCHEDULES:
        problems.append(f"optim.schedule='{config.optim.schedule}' must be one of {SCHEDULES}")
    if config.mixed_precision is not None and config.mixed_precision not in MIXED_PRECISION:
        problems.append(f"mixed_precision='{config.mixed_precision}' must be one of {MIXED_PRECISION}")
    if not config.data.sources:
        problems.append("data.sources is empty; list at least one source with shards")
    trained = [name for name in MODULES if getattr(config.optim, name).train]
    if not trained and not config.lora.enabled:
        problems.append("every module is frozen (optim.*.train=false) and LoRA is off: nothing would train")
    unknown_trackers = set(config.logging.trackers) - {"tensorboard", "wandb"}
    if unknown_trackers:
        problems.append(f"logging.trackers has {sorted(unknown_trackers)}; use tensorboard and/or wandb")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    check_sources(config.data.sources, "data.sources", weighted=True)
    check_sources(config.data.eval_sources, "data.eval_sources", weighted=False)
    check_action_codecs(config.data.sources, "data.sources")
    check_action_codecs(config.data.eval_sources, "data.eval_sources")


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, except the ones a resume may change."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        if any(dotted == allowed or dotted.startswith(f"{allowed}.") for allowed in RESUMABLE_CHANGES):
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{dotted}.")
        elif old != new:
            differences.append(f"{dotted}: {old!r} -> {new!r}")
    return differences
