"""A small synthetic corpus in the sample contract, for demos, tests and benchmarks: three sources
that look like the real ones and carry a learnable signal.

- ``ui-som``: coloured boxes with numbered marks; "which mark is the red box?" -> ``click [3]``;
- ``video-tom``: a point with its past trail; "where does the point go?" -> a trace of coordinates;
- ``robot``: a block on a table; "pick up the block" -> ``<action>`` with a 7-D action that moves
  toward the block, plus ``dataset_statistics.json`` for the robot action codec.

``python -m data_tools.synthetic OUT_DIR`` writes ``OUT_DIR/{train,eval}/{source}/shard-*.tar``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_tools.shards import ShardWriter

SOURCES = ("ui-som", "video-tom", "robot")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 40)}
ROBOT_STATISTICS_FILE = "dataset_statistics.json"


def ui_som_sample(rng: np.random.Generator, index: int, size: int) -> tuple[dict, list[Image.Image]]:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    colours = list(COLOURS)
    rng.shuffle(colours)
    marks = rng.permutation(np.arange(1, 10))[: len(colours)]
    cell = size // 2
    for slot, (name, mark) in enumerate(zip(colours, marks, strict=True)):
        left, top = (slot % 2) * cell + 4, (slot // 2) * cell + 4
        draw.rectangle([left, top, left + cell - 8, top + cell - 8], fill=COLOURS[name])
        draw.text((left + 2, top + 2), str(int(mark)), fill=(0, 0, 0))
    target = int(rng.integers(len(colours)))
    record = {
        "id": f"ui-som-{index}",
        "source": "ui-som",
        "conversations": [
            {"from": "human", "value": f"<image>\nClick the {colours[target]} box."},
            {"from": "gpt", "value": f"click [{int(marks[target])}]"},
        ],
        "meta": {"marks": {name: int(mark) for name, mark in zip(colours, marks, strict=True)}},
    }
    return record, [image]


def video_tom_sample(rng: np.random.Generator, index: int, size: int) -> tuple[dict, list[Image.Image]]:
    start = rng.uniform(0.2, 0.5, size=2)
    velocity = rng.choice([-1.0, 1.0], size=2) * rng.uniform(0.05, 0.1, size=2)
    image = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    for step in range(3):  # the past: a fading trail ending at the point
        x, y = (start - velocity * (2 - step)) * size
        shade = 90 + 80 * step
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(shade, shade, 255))
    future = [start + velocity * (step + 1) for step in range(3)]
    trace = ", ".join(f"({x:.2f}, {y:.2f})" for x, y in np.clip(future, 0.0, 1.0))
    record = {
        "id": f"video-tom-{index}",
        "source": "video-tom",
        "conversations": [
            {"from": "human", "value": "<image>\nWhere will the marked point move in the next three frames?"},
            {"from": "gpt", "value": f"Trace: [{trace}]"},
        ],
    }
    return record, [image]


def robot_sample(rng: np.random.Generator, index: int, size: int) -> tuple[dict, list[Image.Image], list[float]]:
    block = rng.uniform(0.15, 0.85, size=2)
    image = Image.new("RGB", (size, size), (150, 110, 70))
    draw = ImageDraw.Draw(image)
    x, y = block * size
    draw.rectangle([x - 5, y - 5, x + 5, y + 5], fill=(220, 40, 40))
    gripper = np.array([0.5, 0.5])
    delta = np.clip((block - gripper) * 0.1, -0.05, 0.05)
    action = [float(delta[0]), float(delta[1]), -0.02, 0.0, 0.0, 0.0, 1.0]
    record = {
        "id": f"robot-{index}",
        "source": "robot",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat action should the robot take to pick up the red block?"},
            {"from": "gpt", "value": "<action>"},
        ],
        "actions": action,
    }
    return record, [image], action


def robot_statistics(actions: np.ndarray) -> dict:
    """OpenVLA/Magma ``dataset_statistics.json`` content (the gripper dimension is not normalised)."""
    mask = [True] * (actions.shape[1] - 1) + [False]
    stats = {
        "q01": np.quantile(actions, 0.01, axis=0),
        "q99": np.quantile(actions, 0.99, axis=0),
        "mean": actions.mean(axis=0),
        "std": actions.std(axis=0),
        "min": actions.min(axis=0),
        "max": actions.max(axis=0),
    }
    return {"robot": {"action": {**{k: v.tolist() for k, v in stats.items()}, "mask": mask}}}


def write_synthetic_corpus(
    out_dir: str | Path,
    samples_per_source: int = 256,
    eval_samples_per_source: int = 32,
    samples_per_shard: int = 64,
    image_size: int = 64,
    seed: int = 0,
) -> dict[str, dict[str, list[Path]]]:
    """Write train and eval shards of the three sources; returns {split: {source: [shard paths]}}."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, list[Path]]] = {}
    all_actions: list[list[float]] = []
    for split, count in (("train", samples_per_source), ("eval", eval_samples_per_source)):
        written[split] = {}
        for source in SOURCES:
            with ShardWriter(out_dir / split / source, max_samples_per_shard=samples_per_shard) as writer:
                for index in range(count):
                    if source == "ui-som":
                        record, images = ui_som_sample(rng, index, image_size)
                    elif source == "video-tom":
                        record, images = video_tom_sample(rng, index, image_size)
                    else:
                        record, images, action = robot_sample(rng, index, image_size)
                        if split == "train":  # statistics come from the training split only
                            all_actions.append(action)
                    record["id"] = f"{split}-{record['id']}"
                    writer.write(record, images)
            written[split][source] = writer.shards
    statistics = robot_statistics(np.asarray(all_actions))
    (out_dir / ROBOT_STATISTICS_FILE).write_text(json.dumps(statistics, indent=2) + "\n")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--samples-per-source", type=int, default=256)
    parser.add_argument("--eval-samples-per-source", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    written = write_synthetic_corpus(
        args.out_dir, args.samples_per_source, args.eval_samples_per_source, args.samples_per_shard, seed=args.seed
    )
    for split, sources in written.items():
        for source, shards in sources.items():
            print(f"{split}/{source}: {len(shards)} shard(s) in {args.out_dir / split / source}")


if __name__ == "__main__":
    main()
