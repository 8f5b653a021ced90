"""Training the quantizer for real: mp4 videos written by the test (a square moving in known
directions), real accelerate in one process and two processes (torchrun, gloo), checkpoints and
an exact resume, and the codes checked against the true motion with a probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_tools.video import write_mp4
from lapa.config import quantizer_train_config_from
from lapa.frame_pairs import FramePairError, load_frame_pairs
from lapa.labelling import clip_codes
from lapa.probe import direction_labels, linear_probe
from lapa.quantizer import LatentActionQuantizer
from lapa.synthetic_motion import write_motion_videos
from lapa.training import QuantizerTrainer
from magma.training.launch import accelerate_agent_command

REPO = Path(__file__).resolve().parent.parent
CPU_2PROC = REPO / "configs" / "accelerate" / "cpu-2proc.yaml"
QUANTIZER = {
    "image_size": 32,
    "patch_size": 8,
    "dim": 64,
    "heads": 4,
    "spatial_layers": 1,
    "temporal_layers": 1,
    "decoder_layers": 1,
    "quant_dim": 8,
    "codebook_size": 8,
    "num_codes": 4,
}


@pytest.fixture(scope="module")
def motion_videos(tmp_path_factory):
    return write_motion_videos(tmp_path_factory.mktemp("videos"), count=16, size=32, frames=30, fps=10.0, seed=0)


def config(run_dir: Path, videos: Path, **fields) -> dict:
    base = {
        "run_dir": str(run_dir),
        "max_steps": 6,
        "batch_size": 8,
        "quantizer": QUANTIZER,
        "data": {"videos": [str(videos)], "window_s": 0.2},
        "optim": {"lr": 2e-3},
        "codebook": {"every": 2, "dead_share": 1.0},
        "logging": {"every": 1, "progress": False},
    }
    for key, value in fields.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_codes_carry_the_motion_and_every_code_stays_in_use(tmp_path, motion_videos):
    videos = motion_videos[0].path.parent
    train_config = quantizer_train_config_from(
        config(tmp_path / "run", videos, max_steps=500, batch_size=32, codebook={"every": 10, "dead_share": 0.5}),
        [],
        "test",
    )
    summary = QuantizerTrainer(train_config).train()
    evaluation = summary["eval"]
    assert evaluation["recon_vs_copy"] < 0.97  # better than copying the first frame
    assert evaluation["codebook_usage"] == 1.0
    windows = [r["codebook/perplexity"] for r in metrics(tmp_path / "run") if "codebook/perplexity" in r]
    # alive through training, not only at the end: after the first tenth of the run (the codebook
    # starts from the first batch's encoder outputs) at least 0.8 x V in 9 windows of 10 and never
    # below 0.7 x V (seeds 0-2 measured: 2, 0 and 1 windows of 45 below 0.8 x V, lowest 0.73 x V)
    assert len(windows) == 50
    settled = windows[5:]
    assert min(settled) >= 0.7 * 8 and sum(w >= 0.8 * 8 for w in settled) >= 0.9 * len(settled), windows
    assert summary["replicas_identical"]

    # a linear probe from codes to the square's direction, trained on 11 videos, scored on the other 5
    quantizer = LatentActionQuantizer.from_pretrained(tmp_path / "run" / "final")
    pairs = load_frame_pairs([str(videos)], [], 32, window_s=0.2)
    truth = {str(video.path): video.positions for video in motion_videos}
    codes, labels, clips = [], [], []
    for index, clip in enumerate(pairs.clips):
        rows = pairs.pairs[pairs.pairs[:, 0] == index]
        codes.append(clip_codes(quantizer, clip.frames, rows[:, 1], int(rows[0, 2] - rows[0, 1]), 64))
        motion = truth[clip.name][rows[:, 2]] - truth[clip.name][rows[:, 1]]
        labels.append(direction_labels(motion.astype(float), min_motion=0.5))
        clips.append(np.full(len(rows), index))
    codes, labels, clips = np.concatenate(codes), np.concatenate(labels), np.concatenate(clips)
    train, test = (labels >= 0) & (clips < 11), (labels >= 0) & (clips >= 11)
    probe = linear_probe(codes[train], labels[train], codes[test], labels[test], codebook_size=8)
    assert probe.classes == 4 and probe.test_pairs > 100
    assert probe.accuracy > probe.chance + 0.15, probe  # seeds 0-2 measured: 53-61 % against 25 %


def test_a_resumed_run_continues_exactly(tmp_path, motion_videos):
    videos = motion_videos[0].path.parent
    fields = {"checkpoint": {"every": 3}}
    straight = QuantizerTrainer(quantizer_train_config_from(config(tmp_path / "straight", videos, **fields), [], "t"))
    straight.train()
    first = quantizer_train_config_from(config(tmp_path / "resumed", videos, **fields), ["max_steps=3"], "t")
    QuantizerTrainer(first).train()
    assert (tmp_path / "resumed" / "checkpoints" / "step-00000003").is_dir()
    second = quantizer_train_config_from(config(tmp_path / "resumed", videos, **fields), [], "t")
    QuantizerTrainer(second, resume=True).train()

    expected = {r["step"]: r for r in metrics(tmp_path / "straight") if "loss" in r}
    got = {r["step"]: r for r in metrics(tmp_path / "resumed") if "loss" in r}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-6), step
    windows = [r for r in metrics(tmp_path / "resumed") if "codebook/replaced" in r]
    assert [r["step"] for r in windows] == [2, 4, 6] and sum(r["codebook/replaced"] for r in windows) > 0
    a = LatentActionQuantizer.from_pretrained(tmp_path / "straight" / "final").state_dict()
    b = LatentActionQuantizer.from_pretrained(tmp_path / "resumed" / "final").state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_corpus_larger_than_memory_is_decoded_clip_by_clip_in_blocks(tmp_path, motion_videos):
    videos = str(motion_videos[0].path.parent)
    clip_bytes = 30 * 32 * 32 * 3  # 16 clips of 30 frames at 32 px
    eager = load_frame_pairs([videos], [], 32, window_s=0.2)
    lazy = load_frame_pairs([videos], [], 32, window_s=0.2, memory_gib=3 * clip_bytes / 2**30)
    assert eager.in_memory and not lazy.in_memory and lazy.block_clips == 3
    np.testing.assert_array_equal(lazy.pairs, eager.pairs)

    order = lazy.epoch_order(0, seed=0)
    assert sorted(order.tolist()) == list(range(len(lazy)))  # every pair once per epoch
    for start in range(0, len(order), 3 * 28):  # a block: 3 clips of 28 pairs each
        assert len(np.unique(lazy.pairs[order[start : start + 3 * 28], 0])) <= 3
    for step in range(len(lazy) // 8):  # one epoch in batches of 8: each clip decoded once, never over budget
        indices = lazy.batch_indices(step, 0, 1, 8, seed=0)
        for got, expected in zip(lazy.frames(indices), eager.frames(indices), strict=True):
            np.testing.assert_array_equal(got, expected)
    report = lazy.memory_report()
    assert report["decodes"] == 16 and report["peak_bytes"] <= 3 * clip_bytes

    fields = {"data": {"videos": [videos], "window_s": 0.2, "memory_gib": 3 * clip_bytes / 2**30}}
    summary = QuantizerTrainer(quantizer_train_config_from(config(tmp_path / "run", videos, **fields), [], "t")).train()
    assert summary["frames"]["block_clips"] == 3 and summary["frames"]["peak_bytes"] <= 3 * clip_bytes
    assert np.isfinite(summary["final_loss"]) and summary["eval"]["pairs"] == len(eager)


def test_two_processes_keep_their_codebooks_identical(tmp_path, motion_videos):
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "two", motion_videos[0].path.parent, batch_size=4)))
    command = accelerate_agent_command(CPU_2PROC, ["lapa", "train", "--config", str(path)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["samples"] == 6 * 8
    windows = [r for r in metrics(tmp_path / "two") if "codebook/replaced" in r]
    assert sum(r["codebook/replaced"] for r in windows) > 0  # dead codes were replaced on both replicas ...
    assert all(r["codebook/replica_max_diff"] == 0.0 for r in windows)  # ... identically
    assert summary["replicas_identical"]
    assert "replicas    : identical" in result.stdout


def test_a_video_shorter_than_the_window_is_one_clear_message(tmp_path):
    short = write_mp4(np.zeros((3, 32, 32, 3), dtype=np.uint8), tmp_path / "short.mp4", fps=10.0)
    with pytest.raises(FramePairError, match=r"short.mp4' lasts 0.30 s .* shorter than the frame-pair window of 1.0 s"):
        load_frame_pairs([str(short)], [], 32, window_s=1.0)
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "run", short, data={"window_s": 1.0})))
    result = subprocess.run(
        [sys.executable, "-m", "magma.cli.app", "lapa", "train", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1200,
    )
    assert result.returncode == 2
    assert "shorter than the frame-pair window" in result.stderr and "Traceback" not in result.stderr


def test_the_quantizer_optimizer_updates_exactly_as_torchs_default_adamw():
    from lapa.training import build_optimizer

    train_config = quantizer_train_config_from({"quantizer": QUANTIZER, "optim": {"lr": 1e-2}}, [], "t")
    torch.manual_seed(0)
    ours, reference = (LatentActionQuantizer(train_config.quantizer) for _ in range(2))
    reference.load_state_dict(ours.state_dict())
    optimizer = build_optimizer(ours, train_config)  # foreach on every device
    twin = dict(zip(ours.parameters(), reference.parameters(), strict=True))
    groups = [
        {
            **{k: v for k, v in group.items() if k not in ("params", "foreach")},
            "params": [twin[p] for p in group["params"]],
        }
        for group in optimizer.param_groups
    ]
    default = torch.optim.AdamW(groups)  # the same groups, torch's own choice of implementation here
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        for mine, theirs in twin.items():
            mine.grad = torch.randn(mine.shape, generator=generator)
            theirs.grad = mine.grad.clone()
        optimizer.step()
        default.step()
    assert all(torch.equal(mine, theirs) for mine, theirs in twin.items())
