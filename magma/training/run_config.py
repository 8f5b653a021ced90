"""The configuration every training run shares (``agent train``, ``agent rl grpo``, ``agent lapa train``):
checkpointing and logging sections, the value sets of fixed-choice fields, and the rule for which keys may
change when a run is resumed. Torch-free, like ``magma.config``: configs load without building a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from data_tools.config_files import count_problems, nested_differences, seed_problems

MixedPrecision = Literal["no", "bf16", "fp16"]
Schedule = Literal["constant", "cosine"]  # both after a linear warm-up
Tracker = Literal["tensorboard", "wandb"]

# Keys that may change when a run is resumed; any other difference means another run.
RESUMABLE_CHANGES = ("max_steps", "checkpoint", "eval", "logging", "run_dir", "rollout")  # rollout: GRPO's engine


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints; 0: only at the end
    keep: int = 2  # most recent checkpoints kept on disk


@dataclass
class LoggingConfig:
    every: int = 1  # steps between metric lines in metrics.jsonl (evaluations are always written)
    trackers: list[Tracker] = field(default_factory=list)  # accelerate trackers
    progress: bool = True  # the progress bar (rate, ETA) on the main process


@dataclass
class RunConfig:
    """The settings every training run has, read by the run scaffold (:class:`magma.training.run.TrainingRun`).
    Each trainer's config extends it, and may give a field another default."""

    name: str = "run"
    run_dir: str = "runs/${name}"
    seed: int = 0
    max_steps: int = 100  # the trainer's steps (an optimizer step, a GRPO step)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_problems(config: RunConfig) -> list[str]:
    """The problems of the settings every run has (steps, logging, checkpoints, seed), each naming its key."""
    problems: list[str] = []
    count_problems(problems, 1, {"max_steps": config.max_steps, "logging.every": config.logging.every})
    count_problems(
        problems, 0, {"checkpoint.every": config.checkpoint.every, "checkpoint.keep": config.checkpoint.keep}
    )
    seed_problems(problems, {"seed": config.seed})
    return problems


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, except the ones a resume may change."""
    return [
        f"{dotted}: {old!r} -> {new!r}"
        for dotted, old, new in nested_differences(saved, current)
        if not any(dotted == allowed or dotted.startswith(f"{allowed}.") for allowed in RESUMABLE_CHANGES)
    ]
