"""``agent lapa``: latent action pretraining, the command group this package contributes to the ``agent``
app. ``train`` the latent action quantizer on frame pairs of videos or recorded episodes, ``label`` a
corpus with its latent actions as training shards, and run the whole ``pipeline`` on the MuJoCo suite
(quantizer -> labels -> latent VLA -> fine-tuning -> success rate vs the same model fine-tuned without
latent pretraining). Every command imports its work when it runs, so ``agent --help`` stays fast.

Several processes through accelerate::

    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m magma.cli.app lapa train --config lapa-tiny
"""

from __future__ import annotations

from typing import Annotated

import typer

from data_tools.ray_cluster import DEFAULT_MAX_TRIES
from magma.cli.engine_options import AddressOption, EngineOption, MaxTriesOption

lapa_app = typer.Typer(
    help="Latent action pretraining (LAPA): train the latent action quantizer (train), label videos with "
    "latent actions (label), run quantizer -> labels -> latent VLA -> robot fine-tuning end to end (pipeline).",
    no_args_is_help=True,
)

Overrides = Annotated[list[str] | None, typer.Argument(help="Dotted key=value overrides, e.g. max_steps=100.")]


@lapa_app.command("train")
def train(
    config: Annotated[str, typer.Option("--config", "-c", help="A recipe name in configs/lapa or a YAML path.")],
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in run_dir from its last checkpoint.")] = (
        False
    ),
) -> None:
    """Train the latent action quantizer (LAQ) on frame pairs; writes metrics.jsonl, checkpoints,
    summary.json and final/ into the run directory."""
    from lapa.config import load_quantizer_train_config

    train_config = load_quantizer_train_config(config, list(overrides or []))  # a bad config fails before torch loads
    from lapa.training import QuantizerTrainer, format_summary

    trainer = QuantizerTrainer(train_config, resume=resume)
    summary = trainer.train()
    if trainer.accelerator.is_main_process:
        typer.echo(format_summary(summary))


@lapa_app.command("label")
def label(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="A quantizer checkpoint (final/ of lapa train).")],
    out: Annotated[str, typer.Option("--out", "-o", help="The output directory for shards and manifests.")],
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="Videos: a file, directory or list file; repeatable.")
    ] = None,
    datasets: Annotated[list[str] | None, typer.Option("--dataset", help="A LeRobot dataset root; repeatable.")] = None,
    window_s: Annotated[float, typer.Option("--window-s", help="Seconds between the frames of a pair.")] = 0.3,
    stride_s: Annotated[
        float | None, typer.Option("--stride-s", help="Seconds between labelled pairs (default: every frame).")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Frame size the quantizer must have been trained at.")
    ] = None,
    camera: Annotated[str | None, typer.Option("--camera", help="Dataset camera (default: the first).")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Instruction for videos (default: the file name).")] = None,
    source: Annotated[str, typer.Option("--source", help="The samples' source name.")] = "latent",
    shard_image_size: Annotated[
        int | None, typer.Option("--shard-image-size", help="Short side of the stored frame (default: as stored).")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Processes on this machine; with --engine ray, units in flight.")
    ] = 1,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    rank: Annotated[int | None, typer.Option("--rank", help="This machine's rank (default: RANK, else 0).")] = None,
    world_size: Annotated[
        int | None, typer.Option("--world-size", help="Machines in the job (default: WORLD_SIZE, else 1).")
    ] = None,
    samples_per_shard: Annotated[int, typer.Option("--samples-per-shard", help="Samples per tar shard.")] = 1000,
    inputs_per_unit: Annotated[int, typer.Option("--inputs-per-unit", help="Clips per work unit.")] = 4,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Write the latent action of every frame pair of videos / dataset episodes as training shards
    (the sample contract, codes in `actions`), sharded over machines (--rank/--world-size) and
    worker processes; a restarted job skips finished units."""
    from lapa.labelling import LabelOptions, run_label_job

    options = LabelOptions(
        checkpoint=checkpoint,
        window_s=window_s,
        stride_s=stride_s,
        camera=camera,
        image_size=image_size,
        source=source,
        task=task,
        shard_image_size=shard_image_size,
    )
    summary = run_label_job(
        list(inputs or []),
        list(datasets or []),
        out,
        options,
        workers=workers,
        rank=rank,
        world_size=world_size,
        samples_per_shard=samples_per_shard,
        inputs_per_unit=inputs_per_unit,
        progress=progress,
        engine=engine,
        address=address,
        max_tries=max_tries,
    )
    typer.echo(summary.format("latent", out))


@lapa_app.command("pipeline")
def pipeline(
    config: Annotated[
        str, typer.Option("--config", "-c", help="A pipeline config name in configs/lapa or a YAML path.")
    ] = "pipeline-tiny",
    overrides: Overrides = None,
) -> None:
    """LAPA end to end on the MuJoCo suite: unlabelled videos -> quantizer -> latent labels -> latent
    VLA -> fine-tuning on a few labelled episodes -> success rate vs the same model without latent
    pretraining. Stages already done in run_dir are skipped."""
    from lapa.recipes.pipeline import LapaPipeline, format_report, load_pipeline_config

    pipeline_config = load_pipeline_config(config, list(overrides or []))
    report = LapaPipeline(pipeline_config, log=lambda line: typer.echo(line, err=True)).run()
    typer.echo(format_report(report))
    typer.echo(f"report: {pipeline_config.run_dir}/report.json")
