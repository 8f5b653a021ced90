"""Latent labelling for real: mp4 videos written by the test, a real quantizer checkpoint, the
corpus job split over two ranks, shards read back through the trainer's own shard reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_tools.sample_format import validate_sample
from data_tools.video import write_mp4
from lapa.config import QuantizerConfig
from lapa.frame_pairs import read_clip
from lapa.labelling import LabelOptions, run_label_job
from lapa.quantizer import LatentActionQuantizer
from lapa.synthetic_motion import write_motion_videos
from magma.actions import LatentActionCodec
from magma.data.shard_index import SampleRef, expand_shards, index_shard, read_raw_sample

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("label")
    videos = root / "videos"
    write_motion_videos(videos, count=5, size=64, frames=12, fps=10.0, seed=1)
    write_mp4(np.zeros((2, 64, 64, 3), dtype=np.uint8), videos / "too-short.mp4", fps=10.0)
    torch.manual_seed(0)
    config = QuantizerConfig(image_size=32, patch_size=8, dim=32, heads=2, spatial_layers=1, temporal_layers=1)
    LatentActionQuantizer(config).save_pretrained(root / "quantizer")
    return videos, root / "quantizer"


def read_samples(out: Path) -> list:
    samples = []
    for shard in expand_shards([str(out / "*.tar")]):
        samples += [read_raw_sample(SampleRef("latent", shard, entry)) for entry in index_shard(shard).samples]
    return samples


def test_labels_are_latent_action_shards_split_over_ranks(tmp_path, corpus):
    videos, checkpoint = corpus
    options = LabelOptions(checkpoint=str(checkpoint), window_s=0.2, task="move the square")
    summaries = [
        run_label_job(
            [str(videos)], [], tmp_path / "two", options, rank=rank, world_size=2, inputs_per_unit=1, progress=False
        )
        for rank in (0, 1)
    ]
    single = run_label_job([str(videos)], [], tmp_path / "one", options, inputs_per_unit=1, progress=False)

    assert single.inputs_ok == 5 and single.inputs_failed == {"shorter than the window": 1}
    assert sum(s.inputs_ok for s in summaries) == 5 and all(s.units_done == 3 for s in summaries)
    split, whole = read_samples(tmp_path / "two"), read_samples(tmp_path / "one")
    assert len(whole) == 5 * (12 - 2)  # every frame starts a pair 2 frames (0.2 s at 10 fps) later
    assert sorted(s.sample_id for s in split) == sorted(s.sample_id for s in whole)  # no pair twice, none lost

    quantizer = LatentActionQuantizer.from_pretrained(checkpoint)
    codec = LatentActionCodec.reusing_base_vocab(num_codes=4, codebook_size=8, base_vocab_size=1024)
    for sample in whole:
        validate_sample(sample.record, len(sample.images))
        assert sample.record["conversations"][1]["value"] == "<action>"
        assert "move the square" in sample.record["conversations"][0]["value"]
        assert codec.decode(codec.encode(sample.record["actions"])).tolist() == sample.record["actions"]
    sample = whole[7]
    meta = sample.record["meta"]
    clip = read_clip(meta["clip"], 32)
    start = meta["frame_index"]
    pair = (torch.from_numpy(clip.frames[[start]]), torch.from_numpy(clip.frames[[start + 2]]))
    assert quantizer.encode_codes(*pair)[0].tolist() == sample.record["actions"]  # the codes of that very pair


def test_labelling_with_a_checkpoint_of_another_image_size_is_one_clear_message(tmp_path, corpus):
    videos, checkpoint = corpus
    command = [sys.executable, "-m", "magma.cli.app", "lapa", "label", "--checkpoint", str(checkpoint)]
    command += ["--input", str(videos), "--out", str(tmp_path / "out"), "--image-size", "64"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert result.returncode == 2
    assert "trained on 32 x 32 frames, not 64 x 64" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written
