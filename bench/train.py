"""Training throughput of magma-tiny on CPU: the data pipeline's overhead and 1 vs 2 processes.

Figures (one JSON line each on stdout; progress on stderr):

* ``train_samples_per_s/shards/workers<W>``: the real trainer reading the synthetic three-source
  mixture from WebDataset shards (decoding, multi-crop processing, tokenization and collation in
  W dataloader workers), against the same trainer fed the same batches from memory (collated
  tensors, no data loading at all). ``ratio`` is in-memory / shards: the pipeline's overhead
  factor, target <= 1.1.
* ``train_samples_per_s/processes2``: ``accelerate launch`` with 2 processes (gloo), against 1
  process with the same global batch; ``ratio`` is 2-process / 1-process throughput.

Throughput is the median of the per-step samples/s of the steps after a warm-up; every step's
time includes waiting for its batch.

Usage: ``python bench/train.py [--steps 40] [--quick]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from data_tools.synthetic import ROBOT_STATISTICS_FILE, write_synthetic_corpus  # noqa: E402
from magma.data.loader import build_train_loader  # noqa: E402
from magma.training.config import train_config_from  # noqa: E402
from magma.training.launch import accelerate_train_command  # noqa: E402
from magma.training.trainer import Trainer  # noqa: E402

WARMUP_STEPS = 3
BATCH_SIZE = 8


def log(message: str) -> None:
    report.log("train", message)


def run_config(corpus: Path, run_dir: Path, steps: int, workers: int, batch_size: int = BATCH_SIZE) -> dict:
    robot = {"action_codec": "robot", "statistics": str(corpus / ROBOT_STATISTICS_FILE)}
    sources = [
        {"name": "ui-som", "weight": 0.3, "shards": [str(corpus / "train" / "ui-som" / "*.tar")]},
        {"name": "video-tom", "weight": 0.4, "shards": [str(corpus / "train" / "video-tom" / "*.tar")]},
        {"name": "robot", "weight": 0.3, "shards": [str(corpus / "train" / "robot" / "*.tar")], **robot},
    ]
    return {
        "name": run_dir.name,
        "model": "magma-tiny",
        "run_dir": str(run_dir),
        "max_steps": steps,
        "data": {"batch_size": batch_size, "num_workers": workers, "shuffle_buffer": 64, "sources": sources},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "logging": {"progress": False},
    }


def median_samples_per_s(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["samples_per_s"] for line in lines if '"samples_per_s"' in line]
    return statistics.median(rates[WARMUP_STEPS:])


class InMemoryBatches:
    """The baseline's loader: batches already collated, cycled; nothing is read or decoded."""

    def __init__(self, batches: list) -> None:
        self.batches = batches
        self.skipped: dict[str, int] = {}
        self.samples_by_source: dict[str, int] = {}

    def __iter__(self):
        return itertools.cycle(self.batches)

    def state_dict(self) -> dict:
        return {}


def bench_pipeline(corpus: Path, work: Path, steps: int, workers: int) -> None:
    shards_config = train_config_from(run_config(corpus, work / f"shards-w{workers}", steps, workers), [], "bench")
    memory_config = train_config_from(run_config(corpus, work / f"memory-w{workers}", steps, workers), [], "bench")

    log(f"collecting {steps} batches for the in-memory baseline")
    trainer = Trainer(memory_config)
    loader = build_train_loader(memory_config.data, trainer.encoder, trainer.collate)
    trainer.loader = InMemoryBatches(list(itertools.islice(iter(loader), steps)))
    log("in-memory baseline: training")
    trainer.train()
    in_memory = median_samples_per_s(work / f"memory-w{workers}")

    log(f"shards with {workers} dataloader worker(s): training")
    Trainer(shards_config).train()
    from_shards = median_samples_per_s(work / f"shards-w{workers}")
    report.emit(
        f"train_samples_per_s/shards/workers{workers}",
        from_shards,
        "samples/s",
        baseline=f"in-memory batches ({in_memory:.2f} samples/s)",
        ratio=in_memory / from_shards,
    )


def bench_processes(corpus: Path, work: Path, steps: int) -> None:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    agent = [sys.executable, "-m", "magma.cli.app", "train", "--config"]
    rates = {}
    for processes in (1, 2):
        run_dir = work / f"processes{processes}"
        config = run_config(corpus, run_dir, steps, workers=1, batch_size=BATCH_SIZE // processes)
        config_path = work / f"processes{processes}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        if processes == 1:
            command = [*agent, str(config_path)]
        else:
            accelerate_config = ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"
            command = accelerate_train_command(accelerate_config, ["--config", str(config_path)])
        log(f"{processes} process(es), global batch {BATCH_SIZE}")
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{processes}-process run failed:\n{result.stderr[-3000:]}")
        rates[processes] = median_samples_per_s(run_dir)
    report.emit(
        "train_samples_per_s/processes2",
        rates[2],
        "samples/s",
        baseline=f"1 process, same global batch ({rates[1]:.2f} samples/s)",
        ratio=rates[2] / rates[1],
        cores=os.cpu_count(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="12 steps: checks the bench runs, figures are rough")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1, 0], help="dataloader workers to measure")
    parser.add_argument("--skip-processes", action="store_true", help="leave out the 1 vs 2 process figure")
    args = parser.parse_args(argv)
    steps = 12 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as temp:
        work = Path(temp)
        log("writing the synthetic corpus")
        write_synthetic_corpus(work / "corpus", samples_per_source=256, eval_samples_per_source=0)
        for workers in args.workers:
            bench_pipeline(work / "corpus", work, steps, workers)
        if not args.skip_processes:
            bench_processes(work / "corpus", work, steps)


if __name__ == "__main__":
    main()
