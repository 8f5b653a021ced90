"""`agent lapa pipeline` end to end at the smallest scale: real MuJoCo episodes recorded into
LeRobot datasets, the quantizer trained on their videos, latent labels, magma-tiny pretrained on
them by the magma trainer, fine-tuned with and without that pretraining, and both policies run
in the simulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from data_tools.lerobot_reader import LeRobotDatasetReader
from lapa.frame_pairs import load_frame_pairs
from magma.model import MagmaForCausalLM
from magma.training.config import load_train_config

REPO = Path(__file__).resolve().parent.parent


def test_pipeline_runs_end_to_end_and_compares_with_scratch(tmp_path):
    run_dir = tmp_path / "pipeline"
    overrides = [
        f"run_dir={run_dir}",
        "video_episodes=3",
        "play_episodes=3",
        "robot_episodes=2",
        "eval_episodes=1",
        "eval_max_steps=3",
        "quantizer_overrides=[max_steps=4,batch_size=8,codebook.every=2]",
        "latent_pretrain_overrides=[max_steps=3,data.batch_size=4]",
        "finetune_overrides=[max_steps=3,data.batch_size=4]",
        "progress=false",
    ]
    command = [sys.executable, "-m", "magma.cli.app", "lapa", "pipeline", "--config", "pipeline-tiny", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=2700)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())

    videos = LeRobotDatasetReader(run_dir / "data" / "videos")
    assert videos.num_episodes == 3 and LeRobotDatasetReader(run_dir / "data" / "play").num_episodes == 3
    assert report["quantizer"]["codebook_size"] == 8 and report["quantizer"]["pairs"] > 0
    assert 0.0 <= report["probe"]["probe_accuracy"] <= 1.0 and report["probe"]["probe_test_pairs"] > 0
    # frame pairs of recorded episodes, decoded on demand (a one-episode cache) as in memory
    eager = load_frame_pairs([], [str(run_dir / "data" / "play")], 64, 0.3)
    lazy = load_frame_pairs([], [str(run_dir / "data" / "play")], 64, 0.3, memory_gib=1e-9)
    assert not lazy.in_memory and lazy.block_clips == 1
    np.testing.assert_array_equal(lazy.pairs, eager.pairs)
    for step in range(3):
        indices = lazy.batch_indices(step, 0, 1, 4, seed=0)
        np.testing.assert_array_equal(lazy.frames(indices)[1], eager.frames(indices)[1])
    # every frame pair of the three demonstration videos became a latent-action sample ...
    window = round(0.3 * videos.fps)
    lengths = [episode["length"] for episode in videos.episodes]
    assert report["label"]["samples"] == sum(max(0, length - window) for length in lengths)
    # ... that the magma trainer read without skipping any
    latent_summary = json.loads((run_dir / "latent-vla" / "summary.json").read_text())
    assert latent_summary["skipped"] == {} and latent_summary["mixture"]["latent"]["share"] == 1.0
    # the LAPA arm fine-tunes the latent VLA, the scratch arm new weights, with the same recipe otherwise
    lapa = load_train_config(run_dir / "finetune-lapa" / "config.yaml")
    scratch = load_train_config(run_dir / "finetune-scratch" / "config.yaml")
    assert lapa.model == str(run_dir / "latent-vla" / "final") and scratch.model == "magma-tiny"
    assert lapa.data == scratch.data and lapa.optim == scratch.optim and lapa.max_steps == scratch.max_steps
    MagmaForCausalLM.from_pretrained(run_dir / "finetune-lapa" / "final")
    for arm in ("lapa", "scratch"):
        assert report["evaluate"][arm]["episodes"] == 1 and report["evaluate"][arm]["mean_steps"] <= 3
        assert report["evaluate"][arm]["success_rate"] in (0.0, 1.0)
    assert "LAPA (latent pretrained)" in result.stdout and "scratch (no latent pretraining)" in result.stdout

    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=2700)  # every stage is done
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "report.json").read_text())["evaluate"] == report["evaluate"]
    assert "skipped" in json.dumps(json.loads((run_dir / "report.json").read_text())["record"])
