"""``agent model``: inspect a model config or checkpoint, export a checkpoint to another layout, and run the tiny
model demo."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

model_app = typer.Typer(
    help="Inspect Magma model configs and checkpoints, export them to the public Magma-8B layout; run the model demo.",
    no_args_is_help=True,
)

DEFAULT_IMAGE_SIZES = ["512x512", "640x480", "1920x1080"]


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not WIDTHxHEIGHT (e.g. 640x480)") from None
    if width <= 0 or height <= 0:
        raise typer.BadParameter(f"'{text}': width and height must be positive")
    return width, height


@model_app.command("info")
def info(
    source: Annotated[str, typer.Argument(help="A config preset (magma-tiny), a YAML file or a checkpoint directory.")],
    image_size: Annotated[
        list[str] | None, typer.Option("--image-size", help="WIDTHxHEIGHT to count image tokens for (repeatable).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Parameters per module, image tokens per image size, and the action codecs."""
    from magma.inspection import describe_model

    sizes = [_parse_size(s) for s in (image_size or DEFAULT_IMAGE_SIZES)]
    report = describe_model(source, sizes, overrides or [])
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from magma.inspection import format_report

    typer.echo(format_report(report))


@model_app.command("demo")
def demo(
    config: Annotated[str, typer.Option(help="Model config preset or YAML.")] = "magma-tiny",
    image: Annotated[Path | None, typer.Option(help="An image file; a synthetic scene is drawn if omitted.")] = None,
    prompt: Annotated[str, typer.Option(help="The user prompt; <image> marks where the image goes.")] = (
        "<image>\nWhat should the robot pick up?"
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 24,
    seed: Annotated[int, typer.Option()] = 0,
    fit_steps: Annotated[
        int, typer.Option(min=0, help="First train on the one example for this many steps (0: untrained answer).")
    ] = 40,
    fit_answer: Annotated[str, typer.Option(help="The answer the model is trained to give.")] = "The red block.",
) -> None:
    """Build a model, fit it to one image+prompt+answer, answer the prompt, print the parameter table."""
    from magma.inspection import run_demo

    typer.echo(run_demo(config, image, prompt, max_new_tokens, seed, fit_steps, fit_answer))


class ExportLayout(StrEnum):
    magma_hf = "magma-hf"  # microsoft/Magma-8B's names and config, for their published modeling code


@model_app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory (ours or the Magma-8B layout).")],
    out: Annotated[Path, typer.Argument(help="The directory to write (replaced if it holds an earlier export).")],
    layout: Annotated[
        ExportLayout, typer.Option("--layout", help="magma-hf: the layout of microsoft/Magma-8B on the hub.")
    ] = ExportLayout.magma_hf,
    vision_backbone: Annotated[
        str | None,
        typer.Option(
            "--vision-backbone",
            help="convnextxxlarge | convnextlarge: the vision model Microsoft's code builds (found from the trunk's "
            "sizes when omitted).",
        ),
    ] = None,
    max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest safetensors shard.")] = "4GB",
) -> None:
    """Write a checkpoint in the public Magma-8B layout, which Microsoft's published Magma code loads."""
    from magma.magma8b_layout import export_checkpoint_magma8b

    written = export_checkpoint_magma8b(checkpoint, out, vision_backbone, max_shard_size)
    typer.echo(f"wrote {written} ({layout.value} layout)")
