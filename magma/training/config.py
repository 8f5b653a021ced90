"""Typed training configuration. ``configs/train/NAME.yaml`` fills it; ``key=value`` dotted
overrides on the command line change it (``agent train --config NAME optim.lr=3e-5``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.config_files import (
    ConfigError,
    check_number,
    config_from,
    count_problems,
    load_config_file,
    seed_problems,
)
from magma.config import ACTION_HEADS, optimizer_problems
from magma.data.config import DataConfig
from magma.data.encoding import check_action_codecs
from magma.data.loader import check_sources
from magma.training.run_config import MixedPrecision, RunConfig, Schedule, run_problems

TRAIN_CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "train"
MODULES = ("vision_tower", "projector", "language_model", "action_head")  # action_head: when the model has one


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
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0  # 0 disables clipping
    vision_tower: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)
    projector: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)
    language_model: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)
    action_head: ModuleOptimConfig = field(default_factory=ModuleOptimConfig)  # state projector, queries, l1/flow


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) on the language model; its base weights are then frozen."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations on data.eval_sources; 0: only at the end
    max_batches: int = 0  # per process and eval source; 0: the whole eval set


@dataclass
class TrainConfig(RunConfig):
    """A model training run (``agent train``); ``max_steps`` counts optimizer steps."""

    model: str = "magma-tiny"  # a model preset / YAML (new weights) or a checkpoint directory (fine-tune)
    model_overrides: list[str] = field(default_factory=list)  # key=value for a new model's config
    grad_accum_steps: int = 1
    mixed_precision: MixedPrecision | None = None  # None: the accelerate config decides
    gradient_checkpointing: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The robot action head (None: the model's own; a new model's is the token head). Setting any of these
    # rebuilds the head with the data's action and state sizes (action.action_dim/state_dim from the robot
    # source's statistics); its other settings (action.flow_steps, action.loss_weight, ...) are model_overrides.
    action_head: str | None = None  # tokens | l1 | flow
    chunk_length: int | None = None  # actions per sample and per answer (the shards need as many rows)
    use_state: bool | None = None  # feed the proprioceptive state (the shards' "state", normalised)

    def global_batch_size(self, world_size: int) -> int:
        return self.data.batch_size * self.grad_accum_steps * world_size


def load_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe name (``configs/train/NAME.yaml``) or YAML path, with ``key=value`` overrides."""
    return load_config_file(TrainConfig, name_or_path, TRAIN_CONFIG_DIR, "training", overrides, validate_train_config)


def train_config_from(data: Any, overrides: list[str], source: str) -> TrainConfig:
    return config_from(TrainConfig, data, overrides, source, validate_train_config)


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
    problems = adamw_problems(config.optim) + run_problems(config)
    count_problems(
        problems,
        1,
        {
            "grad_accum_steps": config.grad_accum_steps,
            "data.batch_size": config.data.batch_size,
            "data.max_length": config.data.max_length,
            "lora.r": config.lora.r if config.lora.enabled else None,
        },
    )
    count_problems(
        problems,
        0,
        {
            "eval.every": config.eval.every,
            "eval.max_batches": config.eval.max_batches,
            "data.shuffle_buffer": config.data.shuffle_buffer,
            "data.num_workers": config.data.num_workers,
        },
    )
    if config.data.num_workers > 0:
        count_problems(problems, 1, {"data.prefetch_factor": config.data.prefetch_factor})
    seed_problems(problems, {"data.seed": config.data.seed})
    if config.lora.enabled:
        check_number(problems, "lora.alpha", config.lora.alpha, low=0, low_open=True, hint="e.g. 2 x lora.r")
        check_number(problems, "lora.dropout", config.lora.dropout, low=0, high=1, high_open=True)
    if config.data.split not in ("auto", "shards", "samples"):
        problems.append(f"data.split='{config.data.split}' must be auto, shards or samples")
    if not config.data.sources:
        problems.append("data.sources is empty; list at least one source with shards")
    if config.action_head is not None and config.action_head not in ACTION_HEADS:
        problems.append(f"action_head={config.action_head!r} must be one of {ACTION_HEADS} (or null: the model's)")
    if config.chunk_length is not None:
        count_problems(problems, 1, {"chunk_length": config.chunk_length})
        if config.chunk_length > 256:
            problems.append(f"chunk_length={config.chunk_length} must be at most 256")
    trained = [name for name in MODULES if getattr(config.optim, name).train]
    if not trained and not config.lora.enabled:
        problems.append("every module is frozen (optim.*.train=false) and LoRA is off: nothing would train")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    check_sources(config.data.sources, "data.sources", weighted=True)
    check_sources(config.data.eval_sources, "data.eval_sources", weighted=False)
    check_action_codecs(config.data.sources, "data.sources")
    check_action_codecs(config.data.eval_sources, "data.eval_sources")
