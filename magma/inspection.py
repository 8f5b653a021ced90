"""What ``agent model info`` and ``agent model demo`` report: parameter tables, image token
counts and action codecs for a config or checkpoint, and a prompt answered by a built model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from data_tools.config_files import ConfigError
from magma.actions import ACTION_STATISTICS_FILENAME, load_action_statistics
from magma.actions.robot import DEFAULT_NUM_BINS
from magma.config import load_config
from magma.configuration_magma import MagmaConfig
from magma.image_processing import image_token_count, select_grid

UI_GRAMMARS = {
    "vwa": "click [id] | type [id] [text] [0|1] | hover [id] | press [keys] | scroll [up|down] | goto [url] | "
    "go_back | go_forward | new_tab | tab_focus [i] | close_tab | stop [answer]",
    "som": "Coordinate: (x, y). Mark: N.",
    "aitw": '{"TAP": {"MARK": N}} | {"SWIPE": "UP"} | {"NAVIGATE": "BACK"} | {"TYPE": "..."} | '
    '{"SET_TASK_STATUS": "COMPLETE"}',
}


def resolve_model_config(source: str, overrides: list[str]) -> tuple[MagmaConfig, Path | None]:
    """A config from a preset/YAML, or from a checkpoint directory (returned as the second item)."""
    path = Path(source)
    if path.is_dir():
        if overrides:
            raise ConfigError("--set overrides apply to configs, not to a saved checkpoint directory")
        from magma.checkpoint import load_checkpoint_config

        return load_checkpoint_config(path), path
    return load_config(source, overrides), None


def parameter_counts_without_weights(config: MagmaConfig) -> dict[str, int]:
    """Count parameters on the meta device: no memory is allocated, so magma-8b works on a laptop."""
    from magma.model import MagmaForCausalLM

    config.vision.pretrained = None
    with torch.device("meta"):
        return MagmaForCausalLM(config).parameter_counts()


def describe_model(source: str, image_sizes: list[tuple[int, int]], overrides: list[str]) -> dict[str, Any]:
    config, checkpoint = resolve_model_config(source, overrides)
    images = []
    for width, height in image_sizes:
        grid = select_grid(width, height, config.image.num_crops, config.image.base_size)
        images.append(
            {
                "size": f"{width}x{height}",
                "grid": list(grid),
                "crops": grid[0] * grid[1],
                "tokens": image_token_count(grid, config.image, config.projector.row_separator),
            }
        )
    base = config.tokens.base_vocab_size
    robot_bins = DEFAULT_NUM_BINS
    statistics: list[str] | None = None
    if checkpoint is not None and (checkpoint / ACTION_STATISTICS_FILENAME).is_file():
        statistics = sorted(load_action_statistics(checkpoint / ACTION_STATISTICS_FILENAME))
    return {
        "name": config.name,
        "source": str(checkpoint or source),
        "parameters": parameter_counts_without_weights(config),
        "image_tokens": images,
        "image": {"base_size": config.image.base_size, "num_crops": config.image.num_crops},
        "codecs": {
            "robot": {
                "bins": robot_bins,
                "token_ids": [base - robot_bins, base - 1],
                "statistics": statistics,
            },
            "ui": UI_GRAMMARS,
            "latent": {"token_ids": "the last V ids of the base vocabulary (V = codebook size)", "base_vocab": base},
        },
    }


def _human(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def format_parameter_table(counts: dict[str, int]) -> str:
    width = max(len(name) for name in counts)
    lines = [f"{'module':<{width}}  {'parameters':>14}  {'':>9}"]
    for name, count in counts.items():
        if name == "total":
            lines.append("-" * (width + 27))
        lines.append(f"{name:<{width}}  {count:>14,}  {_human(count):>9}")
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"model {report['name']}  ({report['source']})", "", format_parameter_table(report["parameters"]), ""]
    image = report["image"]
    lines.append(f"image tokens (base {image['base_size']} px, up to {image['num_crops']} crops):")
    for entry in report["image_tokens"]:
        rows, cols = entry["grid"]
        lines.append(f"  {entry['size']:>11} -> grid {rows}x{cols} ({entry['crops']} crops), {entry['tokens']} tokens")
    robot = report["codecs"]["robot"]
    stats = robot["statistics"]
    lines += [
        "",
        "action codecs:",
        f"  robot  : {robot['bins']} tokens, uniform bins on [-1, 1] after q01/q99 normalisation; "
        f"token ids {robot['token_ids'][0]}..{robot['token_ids'][1]}; statistics: "
        + (", ".join(stats) if stats else "none saved (needed before robot actions can be decoded)"),
    ]
    for grammar, text in report["codecs"]["ui"].items():
        lines.append(f"  ui/{grammar:<4}: {text}")
    lines.append(f"  latent : k codes -> {report['codecs']['latent']['token_ids']}")
    return "\n".join(lines)


def synthetic_scene(width: int = 320, height: int = 240):
    """A small tabletop picture (table, red block, blue cup) so the demo needs no image file."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (200, 210, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height * 0.55, width, height], fill=(150, 110, 70))
    draw.rectangle([width * 0.2, height * 0.45, width * 0.35, height * 0.62], fill=(200, 30, 30))
    draw.ellipse([width * 0.6, height * 0.4, width * 0.75, height * 0.62], fill=(40, 60, 200))
    return image


def fit_one_example(model, processor, image, prompt: str, answer: str, steps: int) -> tuple[float, float]:
    """Overfit the model to one (image, prompt, answer) example: the whole training path, end to end."""
    batch = processor.collate(
        [processor.encode([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], [image])]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = model(**batch.as_kwargs()).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses[0], losses[-1]


def run_demo(
    config_name: str,
    image_path: Path | None,
    prompt: str,
    max_new_tokens: int,
    seed: int,
    fit_steps: int = 0,
    fit_answer: str = "The red block.",
) -> str:
    from magma.model import MagmaForCausalLM
    from magma.processor import MagmaProcessor

    torch.manual_seed(seed)
    config = load_config(config_name)
    model = MagmaForCausalLM(config).eval()
    processor = MagmaProcessor.from_config(config)
    image = image_path if image_path is not None else synthetic_scene()
    images = [image] if "<image>" in prompt else []
    lines = [f"model   : {config.name} (random init, seed {seed})"]
    if fit_steps:
        first, last = fit_one_example(model, processor, image, prompt, fit_answer, fit_steps)
        lines.append(
            f"training: {fit_steps} steps on one example (answer {fit_answer!r}), loss {first:.3f} -> {last:.3f}"
        )
    else:
        lines.append("training: none (--fit-steps 0): the answer is noise")
    inputs = processor(prompt, images)
    new_tokens = model.generate(**inputs.generation_kwargs(), max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = new_tokens[:, inputs.input_ids.shape[1] :]
    answer = processor.decode(new_tokens[0])
    grid = inputs.image_grids[0].tolist() if inputs.image_grids is not None else None
    grid_text = f" -> grid {grid[0]}x{grid[1]}" if grid else ""
    lines += [
        f"image   : {image_path or 'synthetic tabletop scene 320x240'}{grid_text}",
        f"prompt  : {prompt!r}",
        f"tokens  : {inputs.input_ids.shape[1]} in, {new_tokens.shape[1]} out",
        f"answer  : {answer!r}",
        "",
        format_parameter_table(model.parameter_counts()),
    ]
    return "\n".join(lines)
