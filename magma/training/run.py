"""One training run, as every trainer runs it (``agent train``, ``agent rl grpo``, ``agent lapa train``).

:class:`TrainingRun` owns what the three share, read top to bottom in :meth:`TrainingRun.train`: accelerate
set up, the run directory started (or checked and resumed: the accelerate state, the counters, each
process's own files), then per step the trainer's own :meth:`~TrainingRun.train_step`, a metric line in
``metrics.jsonl`` (and the trackers), the progress bar, evaluation and checkpoints on their schedule; at the
end a last checkpoint, a last evaluation, the export into ``final/`` and ``summary.json``.

A trainer subclasses it and writes only what is its own: how it builds its model, optimizer and data (in
``__init__``, between ``super().__init__`` and :meth:`~TrainingRun.resume_state`), one step, its evaluation,
how it writes the final model and the fields of its summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from data_tools.atomic_files import write_json_atomically
from magma.training.divergence import refuse_non_finite_weights
from magma.training.run_config import MixedPrecision, RunConfig
from magma.training.run_directory import RunDirectory

CounterT = TypeVar("CounterT", bound="RunCounters")


@dataclass
class RunCounters:
    """Counters that survive a resume (model, optimizer, scheduler and RNG are saved by accelerate);
    a trainer adds its own fields in a subclass."""

    step: int = 0  # completed steps
    samples: int = 0  # over all processes
    elapsed_s: float = 0.0  # training time, summed over the resumed parts of the run


@dataclass
class StepResult:
    """What one step of a trainer reports to the run."""

    metrics: dict[str, Any]  # the step's metric line (the run adds step, elapsed_s and, if absent, samples_per_s)
    samples: int  # samples this step trained on, over all processes (counted, and the rate unless metrics give one)
    progress: dict[str, str] = dataclasses.field(default_factory=dict)  # shown beside the progress bar
    always_log: bool = False  # write this line even between logging.every steps


class TrainingRun:
    """The scaffold of a run; see the module docstring for what a subclass provides."""

    state: RunCounters
    model: Any
    optimizer: Any
    scheduler: Any

    def __init__(
        self,
        config: RunConfig,
        resume: bool,
        *,
        mixed_precision: MixedPrecision | None = None,
        grad_accum_steps: int = 1,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        self.config = config
        self.run = RunDirectory(config.run_dir)
        self.trackers = list(config.logging.trackers)
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # accelerate keeps one state per Python process; a later run in the same process (a notebook,
            # the tests) may ask for another precision
            AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # several processes on a CPU machine: MULTI_CPU with gloo
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=grad_accum_steps,
            step_scheduler_with_optimizer=False,  # the trainers step the scheduler once per optimizer step
            log_with=self.trackers or None,
            project_dir=str(self.run.root) if self.trackers else None,
        )
        # Every process checks (read-only) before the main process writes anything.
        self.resume_step = self.run.check_resumable(config) if resume else None
        if not resume:
            self.run.check_fresh()
        self.accelerator.wait_for_everyone()
        if not resume and self.accelerator.is_main_process:
            self.run.start(config)
        set_seed(config.seed)

    # ---- built by the trainer, then restored -----------------------------------------------------
    def prepare(self, model: Any, optimizer: Any, scheduler: Any) -> None:
        """Hand the model, optimizer and scheduler to accelerate (DDP / FSDP / DeepSpeed wrapping)."""
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)

    def resume_state(self, counters: type[CounterT], per_process: list[str] | None = None) -> dict[str, Any]:
        """Set ``self.state``: fresh counters, or the checkpoint's when resuming (with accelerate's state
        loaded into the prepared model, optimizer, scheduler and RNG). Returns this process's own files
        of the checkpoint (name -> payload; empty on a fresh run). A run killed before its first
        checkpoint resumes from the start."""
        accelerator = self.accelerator
        self.state = counters()
        files: dict[str, Any] = {}
        if self.resume_step:
            saved, files = self.run.load_accelerate_checkpoint(accelerator, self.resume_step, per_process)
            self.state = counters(**saved)
        if accelerator.is_main_process:
            if self.resume_step is not None:
                self.run.truncate_metrics_after(self.resume_step)
            self.run.remove_stale_staging()
        if self.trackers:
            accelerator.init_trackers(self.config.name, config=flat_config(self.config.to_dict()))
        return files

    # ---- what a trainer provides -----------------------------------------------------------------
    def train_step(self) -> StepResult:
        """One step of training (``self.state.step`` is the number of steps done before it)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Evaluation metrics with their logged names; empty when the trainer has nothing to evaluate."""
        return {}

    def evaluation_every(self) -> int:
        """Steps between evaluations during the run; 0: only at the end."""
        return 0

    def on_start(self) -> None:
        """Called once before the first step of this process's part of the run."""

    def close(self) -> None:
        """Release what the trainer holds (simulators, browsers), even when the run failed."""

    def checkpoint_files(self) -> dict[str, Any]:
        """Files this process adds to a checkpoint (name -> JSON payload), read back by :meth:`resume_state`."""
        return {}

    def write_model(self, directory: Path) -> None:
        """Write the final model into ``directory``; called on every process (gathering sharded weights is
        collective), the main process writes."""
        raise NotImplementedError

    def summary_fields(self) -> dict[str, Any]:
        """The trainer's own fields of ``summary.json``; called on every process."""
        return {}

    # ---- the loop --------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, state = self.config, self.state
        progress = self.progress_bar()
        started = time.perf_counter() - state.elapsed_s
        try:
            self.on_start()
            while state.step < config.max_steps:
                step_started = time.perf_counter()
                result = self.train_step()
                state.step += 1
                state.samples += result.samples
                state.elapsed_s = time.perf_counter() - started
                record = {"step": state.step, **result.metrics, "samples": state.samples}
                record.setdefault("samples_per_s", result.samples / (time.perf_counter() - step_started))
                record["elapsed_s"] = round(state.elapsed_s, 3)
                every = self.evaluation_every()
                evaluated = bool(every) and state.step % every == 0 and state.step < config.max_steps
                if evaluated:
                    record |= self.evaluate()
                if evaluated or result.always_log or self.logging_due():
                    self.log(record)
                progress.update(1)
                progress.set_postfix(result.progress)
                if config.checkpoint.every and state.step % config.checkpoint.every == 0:
                    self.save_checkpoint()
            progress.close()
            if not self.run.checkpoint_steps() or self.run.checkpoint_steps()[-1] != state.step:
                self.save_checkpoint()
            evaluation = self.evaluate()
            if evaluation:
                self.log({"step": state.step, **evaluation})
            final = self.export()
        finally:
            self.close()
        return self.summarise(final)

    def logging_due(self) -> bool:
        step = self.state.step
        return step % self.config.logging.every == 0 or step == self.config.max_steps

    def progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        enabled = self.accelerator.is_main_process and self.config.logging.progress
        total, name = self.config.max_steps, self.config.name
        return tqdm(total=total, initial=self.state.step, desc=name, unit="step", disable=not enabled)

    def log(self, record: dict[str, Any]) -> None:
        """A metric line into metrics.jsonl (main process) and its numbers into the trackers."""
        if self.accelerator.is_main_process:
            self.run.append_metrics(record)
        if self.trackers:
            numbers = {key: value for key, value in record.items() if isinstance(value, int | float) and key != "step"}
            self.accelerator.log(numbers, step=record["step"])

    # ---- checkpoints, export, summary ------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """accelerate's state (model, optimizer, scheduler, RNG of every process), each process's own files
        and the counters, staged in a temporary directory and renamed when complete; never non-finite weights."""
        accelerator, step = self.accelerator, self.state.step
        refuse_non_finite_weights(accelerator, self.model.parameters(), step, "checkpoint", self.run)
        counters = dataclasses.asdict(self.state)
        keep = self.config.checkpoint.keep
        self.run.save_accelerate_checkpoint(accelerator, step, counters, keep, per_process=self.checkpoint_files())

    def export(self) -> Path:
        """The final model in ``final/``; a run whose weights stopped being finite exports nothing."""
        refuse_non_finite_weights(self.accelerator, self.model.parameters(), self.state.step, "final model", self.run)
        self.write_model(self.run.final_model)
        self.accelerator.wait_for_everyone()
        return self.run.final_model

    def summarise(self, final: Path) -> dict[str, Any]:
        """The end-of-run record, written to summary.json; then accelerate stops the trackers and takes the
        process group down cleanly."""
        state, accelerator = self.state, self.accelerator
        summary = {
            "run_dir": str(self.run.root),
            "steps": state.step,
            "processes": accelerator.num_processes,
            "elapsed_s": round(state.elapsed_s, 2),
            **self.summary_fields(),
            "model": str(final),
        }
        if accelerator.is_main_process:
            write_json_atomically(self.run.summary_path, summary)
        accelerator.end_training()
        return summary


def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"optim.lr": ...} with tracker-friendly values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        elif isinstance(value, int | float | str | bool):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def summary_screen(rows: list[tuple[str, str]]) -> str:
    """One screen of ``label : value`` lines, the labels aligned (the end of every ``agent ... train``)."""
    width = max(len(label) for label, _ in rows) + 1
    return "\n".join(f"{label:<{width}}: {value}" for label, value in rows)


def run_row(summary: dict[str, Any], detail: str = "") -> tuple[str, str]:
    """The first line of every summary screen: where the run lives and on how many processes."""
    return "run", f"{summary['run_dir']}  ({detail}{summary['processes']} process(es))"


def counts_text(counts: dict[str, int]) -> str:
    """``reason count, ...`` in name order, or ``none``."""
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"
