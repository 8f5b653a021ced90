"""The run scaffold that all three trainers share (`agent train`, `agent rl grpo`, `agent lapa train`):
a resumed run continues from its checkpoint, for real, in each of them.

This test can tell a resume from a restart: a run that ignored the checkpoint and started again from
step 1 with the same seed would reproduce the same losses, and metric lines keyed by step would
collapse onto the old ones. So it checks what only a resume has: the counters and the optimizer's
own step count of the checkpoint before the first new step, and the resumed process writing the
remaining steps only (its first line is the checkpoint's step + 1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from data_tools.synthetic import write_synthetic_corpus
from lapa.config import quantizer_train_config_from
from lapa.synthetic_motion import write_motion_videos
from lapa.training import QuantizerTrainer
from magma.rl.config import load_rl_config
from magma.rl.trainer import GRPOTrainer
from magma.training.config import train_config_from
from magma.training.run import TrainingRun
from magma.training.trainer import Trainer

CHECKPOINT_STEP, MAX_STEPS = 2, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(root, samples_per_source=8, eval_samples_per_source=2, samples_per_shard=8, image_size=48)
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("videos")
    write_motion_videos(out, count=4, size=32, frames=20, fps=10.0, seed=0)
    return out


def model_trainer(run_dir: Path, max_steps: int, resume: bool, corpus: Path, videos: Path) -> TrainingRun:
    ui = {"name": "ui-som", "shards": [str(corpus / "train" / "ui-som" / "*.tar")]}
    config = {"model": "magma-tiny", "run_dir": str(run_dir), "max_steps": max_steps, "data": {"sources": [ui]}}
    overrides = ["data.batch_size=2", "data.num_workers=0", "data.shuffle_buffer=0", "data.max_length=256"]
    overrides += ["optim.lr=3e-3", "optim.schedule=constant", f"checkpoint.every={CHECKPOINT_STEP}"]
    return Trainer(train_config_from(config, [*overrides, "logging.progress=false"], "test"), resume=resume)


def grpo_trainer(run_dir: Path, max_steps: int, resume: bool, corpus: Path, videos: Path) -> TrainingRun:
    overrides = [f"run_dir={run_dir}", f"max_steps={max_steps}", f"checkpoint.every={CHECKPOINT_STEP}"]
    overrides += ["logging.progress=false", "text.prompts_per_step=2", "sampling.group_size=4", "text.eval_prompts=2"]
    overrides += ["sampling.max_new_tokens=4"]
    return GRPOTrainer(load_rl_config("text-digits", overrides), resume=resume)


def quantizer_trainer(run_dir: Path, max_steps: int, resume: bool, corpus: Path, videos: Path) -> TrainingRun:
    config = {
        "run_dir": str(run_dir),
        "max_steps": max_steps,
        "batch_size": 4,
        "quantizer": {"image_size": 32, "patch_size": 8, "dim": 32, "heads": 4, "quant_dim": 8, "num_codes": 4},
        "data": {"videos": [str(videos)], "window_s": 0.2},
        "codebook": {"every": 2},
        "checkpoint": {"every": CHECKPOINT_STEP},
        "logging": {"every": 1, "progress": False},
    }
    for layers in ("spatial_layers", "temporal_layers", "decoder_layers"):
        config["quantizer"][layers] = 1
    return QuantizerTrainer(quantizer_train_config_from(config, [], "test"), resume=resume)


def adam_steps(trainer: TrainingRun) -> int:
    """The optimizer's own count of updates (AdamW keeps one per parameter), 0 before the first update."""
    return max((int(state["step"]) for state in trainer.optimizer.state_dict()["state"].values()), default=0)


def step_lines(run_dir: Path) -> list[int]:
    """The step of every per-step metric line, in the order they were written."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "elapsed_s" in record]


@pytest.mark.parametrize("build", [model_trainer, grpo_trainer, quantizer_trainer], ids=["train", "grpo", "lapa"])
def test_a_resumed_run_continues_from_its_checkpoint_not_from_step_one(
    tmp_path: Path, corpus: Path, videos: Path, build: Callable[..., TrainingRun]
) -> None:
    run_dir = tmp_path / "run"
    first = build(run_dir, CHECKPOINT_STEP, False, corpus, videos)
    first.train()
    updates_at_checkpoint, samples_at_checkpoint = adam_steps(first), first.state.samples
    assert updates_at_checkpoint > 0 and step_lines(run_dir) == [1, 2]

    resumed = build(run_dir, MAX_STEPS, True, corpus, videos)
    # restored before any new step: the counters and the optimizer's state of the checkpoint
    assert resumed.state.step == CHECKPOINT_STEP and resumed.state.samples == samples_at_checkpoint
    assert adam_steps(resumed) == updates_at_checkpoint
    summary = resumed.train()
    # the resumed process took the remaining steps only, and its first was the checkpoint's step + 1
    assert step_lines(run_dir) == [1, 2, 3, 4]
    assert summary["steps"] == MAX_STEPS and adam_steps(resumed) >= updates_at_checkpoint
