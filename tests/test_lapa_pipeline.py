"""`agent lapa pipeline` end to end at the smallest scale: real MuJoCo episodes recorded into
LeRobot datasets, the quantizer trained on their videos, latent labels, magma-tiny pretrained on
them by the magma trainer, fine-tuned with and without that pretraining, and both policies run
in the simulator. At this scale the probe does not beat chance reliably and no policy succeeds, so
those figures are checked against a recomputation; the two arms are compared by their fine-tuning
loss on the same batch, which the latent pretraining lowers (by 0.016 to 0.14 over seeds 0-5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cli_in_process import agent_in_process

from data_tools.lerobot_reader import LeRobotDatasetReader
from lapa.frame_pairs import FramePairs, load_frame_pairs
from lapa.probe import direction_labels, linear_probe
from lapa.quantizer import LatentActionQuantizer
from magma.model import MagmaForCausalLM
from magma.training.config import load_train_config

LATENT_PRETRAINING_GAIN = 0.01  # the least the LAPA arm's fine-tuning loss is below scratch's (seeds 0-5: 0.016+)


def recomputed_probe(run_dir: Path, pairs: FramePairs, min_motion_m: float, test_share: float) -> dict[str, Any]:
    """The motion probe of the held-out play clips, recomputed here: codes from the quantizer's forward pass
    over every pair at once (the pipeline encodes clip by clip), motion straight from the recorded states."""
    quantizer = LatentActionQuantizer.from_pretrained(run_dir / "quantizer" / "final").eval()
    first, second = pairs.frames(np.arange(len(pairs)))
    with torch.no_grad():
        codes = quantizer(torch.from_numpy(first), torch.from_numpy(second)).codes.numpy()
    states = [clip.states for clip in pairs.clips]
    motion = np.stack([states[clip][end, :3] - states[clip][start, :3] for clip, start, end in pairs.pairs])
    labels = direction_labels(motion, min_motion_m)
    held_out = pairs.pairs[:, 0] >= round(len(pairs.clips) * (1 - test_share))
    train, test = (labels >= 0) & ~held_out, (labels >= 0) & held_out
    size = quantizer.config.codebook_size
    return linear_probe(codes[train], labels[train], codes[test], labels[test], size).as_dict()


def logged_steps(run_dir: Path) -> dict[int, dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, filter(str.strip, lines)) if "loss" in record}


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
    command = ["lapa", "pipeline", "--config", "pipeline-tiny", *overrides]
    result = agent_in_process(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())

    videos = LeRobotDatasetReader(run_dir / "data" / "videos")
    assert videos.num_episodes == 3 and LeRobotDatasetReader(run_dir / "data" / "play").num_episodes == 3
    assert report["quantizer"]["codebook_size"] == 8 and report["quantizer"]["pairs"] > 0
    assert report["probe"]["probe_test_pairs"] > 0
    # frame pairs of recorded episodes, decoded on demand (a one-episode cache) as in memory
    eager = load_frame_pairs([], [str(run_dir / "data" / "play")], 64, 0.3)
    lazy = load_frame_pairs([], [str(run_dir / "data" / "play")], 64, 0.3, memory_gib=1e-9)
    assert not lazy.in_memory and lazy.block_clips == 1
    np.testing.assert_array_equal(lazy.pairs, eager.pairs)
    for step in range(3):
        indices = lazy.batch_indices(step, 0, 1, 4, seed=0)
        np.testing.assert_array_equal(lazy.frames(indices)[1], eager.frames(indices)[1])
    # the probe's figures are those of its codes on the held-out play clips, recomputed
    config = report["config"]
    assert report["probe"] == recomputed_probe(run_dir, eager, config["probe_min_motion_m"], config["probe_test_share"])
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
    # ... and, from the same initial weights on the same batches, the latent pretraining lowers the loss
    lapa_steps, scratch_steps = logged_steps(run_dir / "finetune-lapa"), logged_steps(run_dir / "finetune-scratch")
    assert sorted(lapa_steps) == sorted(scratch_steps) and 3 in lapa_steps
    for step in lapa_steps:
        assert lapa_steps[step]["batch_digest"] == scratch_steps[step]["batch_digest"], step
    assert report["finetune"]["lapa"]["final_loss"] == lapa_steps[3]["loss"]
    assert report["finetune"]["scratch"]["final_loss"] == scratch_steps[3]["loss"]
    assert lapa_steps[3]["loss"] < scratch_steps[3]["loss"] - LATENT_PRETRAINING_GAIN, (lapa_steps, scratch_steps)
    for arm in ("lapa", "scratch"):
        assert report["evaluate"][arm]["episodes"] == 1 and report["evaluate"][arm]["mean_steps"] <= 3
        # each rate is that of episodes played out (no policy error counted as a failure)
        lines = (run_dir / f"eval-{arm}" / "results.jsonl").read_text().splitlines()
        episodes = [json.loads(line) for line in lines if line.strip()]
        assert [(e["status"], e["error"], type(e["success"])) for e in episodes] == [("done", None, bool)]
        assert report["evaluate"][arm]["success_rate"] == float(np.mean([e["success"] for e in episodes]))
        assert report["evaluate"][arm]["mean_steps"] == float(np.mean([e["steps"] for e in episodes]))
    assert "LAPA (latent pretrained)" in result.stdout and "scratch (no latent pretraining)" in result.stdout

    again = agent_in_process(*command)  # every stage is done
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "report.json").read_text())["evaluate"] == report["evaluate"]
    assert "skipped" in json.dumps(json.loads((run_dir / "report.json").read_text())["record"])
