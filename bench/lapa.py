"""LAPA benchmarks on CPU: latent action quantizer training throughput and labelling speed.

Each figure is one JSON line on stdout (``{"name", "value", "unit", "baseline", "ratio", ...}``);
progress goes to stderr. Figures:

* ``quantizer_train_samples_per_s/<config>/<attention>``: one training step of the quantizer (forward
  on a batch of frame pairs, backward, AdamW step) with ``auto`` attention (the default: SDPA, the
  math written out for short sequences on CPU) and with SDPA everywhere, each against the same model
  (same weights, same batch) with naive attention (``softmax(q k^T / sqrt(d)) v`` written out) in
  the same run; ratio is naive time / this time. Configs: ``lapa-tiny`` (64 px, dim 128) and
  ``lapa-mid`` (128 px in 16 px patches, dim 384, 4 + 4 encoder and 4 decoder layers).
* ``laq_samples_per_s/lapa_small``: ``agent lapa train`` (:class:`lapa.training.QuantizerTrainer`: frame
  pairs, forward, backward, clipping, AdamW, codebook upkeep, metrics) at LAPA's own small LAQ setting,
  ``lapa-paper-small``: 64 px frames in 8 px patches, dim 128, 2 spatial + 2 temporal (and 2 decoder)
  layers, 4 latent tokens from a codebook of 8 with 32-d codewords, batch 16, on synthetic motion
  videos; the figure is the run's samples/s, next to the codebook's perplexity and usage over every pair
  at the end. Baseline: LAPA's own LAQ at the same setting, 68 samples/s measured on this machine kind
  (it collapses to one code); ratio is ours / 68.
* ``label_frames_per_s/lapa-tiny``: ``agent lapa label``'s job (decode, codes, samples, shards) over
  synthetic 64 px mp4 videos in one process, against decoding the same clips alone; ratio is
  labelling / decoding.

Usage: ``python bench/lapa.py [--quick] [--threads 2] [--only laq training labelling]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# this file is bench/lapa.py: the repository root goes first so that `lapa` is the package, not this script
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() not in (ROOT, BENCH)), str(BENCH)]

import report  # noqa: E402  (bench/report.py)
import torch  # noqa: E402

from lapa.config import QuantizerConfig, load_quantizer_train_config  # noqa: E402
from lapa.frame_pairs import read_clip  # noqa: E402
from lapa.labelling import LabelOptions, run_label_job  # noqa: E402
from lapa.quantizer import LatentActionQuantizer  # noqa: E402
from lapa.synthetic_motion import write_motion_videos  # noqa: E402
from lapa.training import QuantizerTrainer  # noqa: E402

MID_OVERRIDES = [
    "quantizer.image_size=128",
    "quantizer.patch_size=16",
    "quantizer.dim=384",
    "quantizer.heads=6",
    "quantizer.spatial_layers=4",
    "quantizer.temporal_layers=4",
    "quantizer.decoder_layers=4",
    "quantizer.quant_dim=32",
]

# LAPA's small LAQ setting on top of lapa-tiny (which already has its 64 px / 8 px patches, dim 128,
# 2 + 2 (+ 2 decoder) layers and 4 tokens from a codebook of 8): LAPA's 32-d codewords and batch 16
PAPER_SMALL_OVERRIDES = ["batch_size=16", "quantizer.quant_dim=32"]
LAPA_LAQ_SAMPLES_PER_S = 68.0  # LAPA's LAQ at that setting, measured on this machine kind
SECTIONS = ["laq", "training", "labelling"]


def step_seconds(model: LatentActionQuantizer, batch: int, steps: int, warmup: int) -> float:
    """Median seconds of a training step (forward, backward, AdamW step) on a fixed random batch."""
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
    second = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for index in range(warmup + steps):
        started = time.perf_counter()
        out = model(first, second)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_training(name: str, config: QuantizerConfig, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    models = {
        implementation: LatentActionQuantizer(QuantizerConfig(**{**config.to_dict(), "attention": implementation}))
        for implementation in ("naive", "auto", "sdpa")
    }
    for model in models.values():
        model.load_state_dict(models["naive"].state_dict())
        model.train()
    parameters = sum(p.numel() for p in models["naive"].parameters())
    report.log("lapa", f"{name}: {parameters / 1e6:.1f} M parameters, batch {batch}")
    seconds = {implementation: step_seconds(model, batch, steps, warmup=2) for implementation, model in models.items()}
    for implementation in ("auto", "sdpa"):
        report.emit(
            f"quantizer_train_samples_per_s/{name}/{implementation}",
            batch / seconds[implementation],
            "samples/s",
            baseline=f"naive attention: {batch / seconds['naive']:.1f} samples/s",
            ratio=seconds["naive"] / seconds[implementation],
            parameters=parameters,
            batch=batch,
        )


def bench_laq_training(steps: int) -> None:
    """``agent lapa train`` at lapa-paper-small for ``steps`` steps on 16 synthetic 64 px motion videos."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_motion_videos(root / "videos", count=16, size=64, frames=40, fps=10.0, seed=0)
        run = [f"run_dir={root / 'run'}", f"max_steps={steps}", f"data.videos=[{root / 'videos'}]"]
        quiet = ["logging.progress=false", "checkpoint.every=0"]
        config = load_quantizer_train_config("lapa-tiny", [*PAPER_SMALL_OVERRIDES, *run, *quiet])
        torch.manual_seed(0)
        summary = QuantizerTrainer(config).train()
    evaluation = summary["eval"]
    report.emit(
        "laq_samples_per_s/lapa_small",
        summary["samples_per_s"],
        "samples/s",
        baseline=f"LAPA LAQ ({LAPA_LAQ_SAMPLES_PER_S:.0f} samples/s, measured on this machine kind)",
        ratio=summary["samples_per_s"] / LAPA_LAQ_SAMPLES_PER_S,
        goal=">= 1.5",
        config="lapa-paper-small",
        batch=config.batch_size,
        steps=steps,
        threads=torch.get_num_threads(),
        codebook_perplexity=round(evaluation["codebook_perplexity"], 2),
        codebook_usage=evaluation["codebook_usage"],
        codebook_size=config.quantizer.codebook_size,
        min_window_perplexity_after_warmup=summary["min_window_perplexity_after_warmup"],
        recon_vs_copy=round(evaluation["recon_vs_copy"], 4),
    )


def bench_labelling(videos: int, frames: int) -> None:
    config = load_quantizer_train_config("lapa-tiny").quantizer
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        clips = write_motion_videos(root / "videos", count=videos, size=64, frames=frames, fps=10.0, seed=0)
        torch.manual_seed(0)
        LatentActionQuantizer(config).save_pretrained(root / "quantizer")
        started = time.perf_counter()
        for clip in clips:
            read_clip(str(clip.path), config.image_size, keep_originals=True)
        decode_fps = videos * frames / (time.perf_counter() - started)
        options = LabelOptions(checkpoint=str(root / "quantizer"), window_s=0.3)
        summary = run_label_job([str(root / "videos")], [], root / "labels", options, progress=False)
    report.emit(
        "label_frames_per_s/lapa-tiny",
        summary.frames_per_s,
        "frames/s",
        baseline=f"decoding the clips alone: {decode_fps:.1f} frames/s",
        ratio=summary.frames_per_s / decode_fps,
        samples=summary.samples,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer steps and videos (a smoke run).")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=SECTIONS,
        help="run only these sections (default: all); e.g. --only laq for the LAPA-setting figure alone",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 3 if args.quick else 10
    if "laq" in args.only:
        bench_laq_training(steps=40 if args.quick else 300)
    if "training" in args.only:
        bench_training("lapa-tiny", load_quantizer_train_config("lapa-tiny").quantizer, batch=32, steps=steps)
        mid = load_quantizer_train_config("lapa-tiny", MID_OVERRIDES).quantizer
        bench_training("lapa-mid", mid, batch=8, steps=steps)
    if "labelling" in args.only:
        bench_labelling(videos=2 if args.quick else 8, frames=40 if args.quick else 100)


if __name__ == "__main__":
    main()
