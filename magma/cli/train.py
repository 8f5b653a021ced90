"""``agent train``: Magma-style pretraining and fine-tuning from a recipe in ``configs/train``.

Multi-process / multi-GPU runs go through accelerate, which picks DDP, FSDP or DeepSpeed from its
config file::

    accelerate launch --config_file configs/accelerate/fsdp.yaml -m magma.cli.app train --config pretrain-8b
"""

from __future__ import annotations

from typing import Annotated

import typer


def train(
    config: Annotated[str, typer.Option("--config", "-c", help="A recipe name in configs/train or a YAML path.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted key=value overrides, e.g. optim.lr=3e-4 data.batch_size=4.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in run_dir from its last checkpoint, exactly.")
    ] = False,
) -> None:
    """Train a Magma model on a weighted mixture of WebDataset shards; writes metrics.jsonl,
    checkpoints, summary.json and the final model into the run directory."""
    from magma.training.config import load_train_config
    from magma.training.trainer import Trainer, format_summary

    train_config = load_train_config(config, list(overrides or []))
    trainer = Trainer(train_config, resume=resume)
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        typer.echo(format_summary(summary))
