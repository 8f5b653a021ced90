"""The training loop, read top to bottom: build (accelerator, model, optimizer, data), resume if
asked, then for each optimizer step fetch the micro-batches, weight their losses by label tokens
over all processes and accumulation steps, step, log, evaluate, checkpoint; export at the end.

Loss weighting: each micro-batch's mean loss is scaled by its share of the step's label tokens
across every process and accumulation step, so one process with batch 8 and two with batch 4
take the same optimizer step (the token-level mean over the global batch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from magma.actions import ACTION_STATISTICS_FILENAME, ActionStatistics
from magma.checkpoint import load_checkpoint_action_statistics
from magma.data.encoding import SampleEncoder
from magma.data.loader import build_eval_loader, build_train_loader
from magma.data.records import TrainBatch
from magma.model import IGNORE_INDEX, MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.training.config import TrainConfig
from magma.training.divergence import refuse_non_finite_weights, stop_if_diverged
from magma.training.evaluation import BatchScorer, EvalTotals, lockstep
from magma.training.optimization import add_lora, build_optimizer, build_scheduler, merge_lora, set_trainable
from magma.training.run_directory import RunDirectory, write_json_atomically

DATA_STATE_FILE = "data_state_rank{rank}.json"


@dataclass
class TrainerState:
    """Counters that survive a resume (the model, optimizer, scheduler and RNG are saved by accelerate)."""

    step: int = 0
    samples: int = 0
    label_tokens: int = 0
    elapsed_s: float = 0.0
    last_loss: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)


def inherited_action_statistics(config: TrainConfig) -> dict[str, ActionStatistics]:
    """The robot action statistics of the checkpoint a fine-tune starts from: kept in its export, so
    a model fine-tuned on UI data still decodes the robot actions it learned before."""
    statistics_file = Path(config.model) / ACTION_STATISTICS_FILENAME
    return load_checkpoint_action_statistics(config.model) if statistics_file.is_file() else {}


def load_model_and_processor(config: TrainConfig) -> tuple[MagmaForCausalLM, MagmaProcessor]:
    """A checkpoint directory (fine-tuning) or a model preset/YAML (new weights, seeded by config.seed)."""
    source = Path(config.model)
    if (source / "config.json").is_file():
        model = MagmaForCausalLM.from_pretrained(source, dtype=torch.float32)
        processor = MagmaProcessor.from_pretrained(source)
        if config.gradient_checkpointing:
            model.language_model.activation_checkpointing_enable()
            model.vision_tower.set_gradient_checkpointing(True)
        return model.train(), processor
    overrides = list(config.model_overrides)
    if config.gradient_checkpointing:
        overrides += ["text.gradient_checkpointing=true", "vision.gradient_checkpointing=true"]
    model = MagmaForCausalLM.from_config(config.model, overrides)
    return model.train(), MagmaProcessor.from_config(model.config)


def label_tokens(batch: TrainBatch) -> int:
    labels = batch.inputs.labels
    return 0 if labels is None else int((labels[:, 1:] != IGNORE_INDEX).sum())


def batch_digest(batches: list[TrainBatch]) -> str:
    """A short fingerprint of the samples of one step on this process (resume checks compare it)."""
    ids = "\n".join(sample_id for batch in batches for sample_id in batch.sample_ids)
    return hashlib.sha1(ids.encode()).hexdigest()[:12]


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        self.config = config
        self.run = RunDirectory(config.run_dir)
        trackers = list(config.logging.trackers) or None
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # accelerate keeps one state per Python process; a later Trainer in the same process
            # (a notebook, the tests) may ask for another precision
            AcceleratorState._reset_state(reset_partial_state=True)
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # several processes on a CPU machine: MULTI_CPU with gloo
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.grad_accum_steps,
            step_scheduler_with_optimizer=False,
            log_with=trackers,
            project_dir=str(self.run.root) if trackers else None,
        )
        accelerator = self.accelerator
        # Every process checks (read-only) before the main process writes anything.
        resume_step = self.run.check_resumable(config) if resume else None
        if not resume:
            self.run.check_fresh()
        accelerator.wait_for_everyone()
        if not resume and accelerator.is_main_process:
            self.run.start(config)

        set_seed(config.seed)
        model, self.processor = load_model_and_processor(config)
        if config.lora.enabled:
            add_lora(model, config.lora)
        self.trainable = set_trainable(model, config.optim, config.lora.enabled)
        optimizer = build_optimizer(model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, config.max_steps)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)

        self.state = TrainerState()
        data_state = None
        if resume_step:
            data_file = DATA_STATE_FILE.format(rank=accelerator.process_index)
            counters, files = self.run.load_accelerate_checkpoint(accelerator, resume_step, [data_file])
            self.state, data_state = TrainerState(**counters), files[data_file]
        if accelerator.is_main_process:
            if resume_step is not None:  # killed before its first checkpoint: resume_step 0, start over
                self.run.truncate_metrics_after(resume_step)
            self.run.remove_stale_staging()
        self.encoder = SampleEncoder(self.processor, config.data)
        self.collate = partial(self.processor.collate, padding_side="right")
        self.loader = build_train_loader(
            config.data,
            self.encoder,
            self.collate,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            state=data_state,
        )
        if trackers:
            accelerator.init_trackers(config.name, config=_flat(config.to_dict()))

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, accelerator, state = self.config, self.accelerator, self.state
        world = accelerator.num_processes
        global_batch = config.global_batch_size(world)
        progress = _progress_bar(config, accelerator.is_main_process, state.step)
        batches = iter(self.loader)
        started = time.perf_counter() - state.elapsed_s
        while state.step < config.max_steps:
            step_started = time.perf_counter()
            micro_batches = [next(batches) for _ in range(config.grad_accum_steps)]
            local_tokens = sum(label_tokens(batch) for batch in micro_batches)
            step_tokens = int(accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum"))
            loss_sum = torch.zeros((), device=accelerator.device)
            for index, batch in enumerate(micro_batches):
                with accelerator.accumulate(self.model), accelerator.autocast():
                    out = self.model(**batch.inputs.to(accelerator.device).as_kwargs())
                    # mean loss -> this batch's share of the step's tokens; undo accelerate's 1/accum
                    # and DDP's 1/world averaging, so the gradient is the global token mean
                    share = out.num_label_tokens / max(step_tokens, 1)
                    accelerator.backward(out.loss * share * config.grad_accum_steps * world)
                    loss_sum += out.loss.detach().float() * out.num_label_tokens
                    if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.optim.max_grad_norm)
                    else:
                        grad_norm = None
                    if index == len(micro_batches) - 1:  # before the update: a diverged step is never applied
                        stop_if_diverged(accelerator, state.step + 1, {"training loss": loss_sum}, self.run, grad_norm)
                    self.optimizer.step()
                    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples += global_batch
            state.label_tokens += step_tokens
            state.elapsed_s = time.perf_counter() - started
            step_loss = float(accelerator.reduce(loss_sum, "sum")) / max(step_tokens, 1)
            state.last_loss = step_loss
            step_seconds = time.perf_counter() - step_started
            if state.step % config.logging.every == 0 or state.step == config.max_steps:
                self._log(
                    {
                        "step": state.step,
                        "loss": step_loss,
                        **self._learning_rates(),
                        "grad_norm": None if grad_norm is None else float(grad_norm),
                        "samples_per_s": global_batch / step_seconds,
                        "label_tokens": step_tokens,
                        "samples": state.samples,
                        "elapsed_s": round(state.elapsed_s, 3),
                        "batch_digest": batch_digest(micro_batches),
                    }
                )
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}", samples_per_s=f"{global_batch / step_seconds:.1f}")
            if config.eval.every and state.step % config.eval.every == 0 and state.step < config.max_steps:
                self.evaluate()
            if config.checkpoint.every and state.step % config.checkpoint.every == 0:
                self.save_checkpoint()
        progress.close()
        if config.data.eval_sources:
            self.evaluate()
        if not self.run.checkpoint_steps() or self.run.checkpoint_steps()[-1] != state.step:
            self.save_checkpoint()
        final = self.export()
        return self.summarise(final)

    def _learning_rates(self) -> dict[str, float]:
        """The current learning rate of each trained module (``lr/language_model``, ...)."""
        return {
            f"lr/{group['name']}": group["lr"]
            for group in self.optimizer.param_groups
            if not group["name"].endswith("/no_decay")
        }

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.run.append_metrics(record)
        numbers = {key: value for key, value in record.items() if isinstance(value, int | float) and key != "step"}
        if self.config.logging.trackers:
            self.accelerator.log(numbers, step=record["step"])

    # ---- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        accelerator, config = self.accelerator, self.config
        action_sources = {s.name for s in config.data.eval_sources if s.action_codec != "none"}
        scorer = BatchScorer(self.processor.tokenizer, self.processor.config.tokens.base_vocab_size, action_sources)
        self.model.eval()
        metrics: dict[str, float] = {}
        overall = EvalTotals()
        for source in config.data.eval_sources:
            loader = build_eval_loader(
                [source],
                config.data,
                self.encoder,
                self.collate,
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
            )
            totals = EvalTotals()

            def any_process_has_more(has_batch: bool) -> bool:
                flag = torch.tensor(int(has_batch), device=accelerator.device)
                return bool(accelerator.reduce(flag, "sum") > 0)

            for seen, (batch, counts) in enumerate(lockstep(loader, any_process_has_more)):
                if config.eval.max_batches and seen >= config.eval.max_batches:
                    break  # every process stops at the same count, so the forward passes stay in step
                with accelerator.autocast():
                    out = self.model(**batch.inputs.to(accelerator.device).as_kwargs(), return_label_predictions=True)
                if counts and out.label_predictions is not None:
                    scorer.add(totals, batch, out.loss, out.num_label_tokens, out.label_predictions)
            reduced = EvalTotals.from_tensor(accelerator.reduce(totals.as_tensor().to(accelerator.device), "sum").cpu())
            metrics |= reduced.metrics(f"eval/{source.name}")
            for name in overall.__dataclass_fields__:
                setattr(overall, name, getattr(overall, name) + getattr(reduced, name))
        metrics |= overall.metrics("eval/all")
        self.model.train()
        self.state.eval_metrics = metrics
        self._log({"step": self.state.step, **metrics})
        return metrics

    # ---- checkpoints and export -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """accelerate's state (model, optimizer, scheduler, RNG of every process) + each process's data
        position + the trainer counters, staged in a temporary directory and renamed when complete."""
        rank = self.accelerator.process_index
        refuse_non_finite_weights(self.accelerator, self.model.parameters(), self.state.step, "checkpoint", self.run)
        self.run.save_accelerate_checkpoint(
            self.accelerator,
            self.state.step,
            vars(self.state),
            self.config.checkpoint.keep,
            per_process={DATA_STATE_FILE.format(rank=rank): self.loader.state_dict()},
        )

    def export(self) -> Path:
        """The final model as an ordinary checkpoint (LoRA merged, tokenizer and action statistics
        included), loadable with ``MagmaForCausalLM.from_pretrained``."""
        accelerator = self.accelerator
        refuse_non_finite_weights(accelerator, self.model.parameters(), self.state.step, "final model", self.run)
        weights = accelerator.get_state_dict(self.model)  # gathers FSDP / ZeRO-3 shards
        if accelerator.is_main_process:
            config = copy.deepcopy(accelerator.unwrap_model(self.model).config)
            config.text.gradient_checkpointing = config.vision.gradient_checkpointing = False  # a training setting
            model = MagmaForCausalLM(config)
            if self.config.lora.enabled:
                add_lora(model, self.config.lora)
            model.load_state_dict(weights)
            merge_lora(model)
            model.save_pretrained(
                self.run.final_model,
                tokenizer=self.processor.tokenizer,
                action_statistics=inherited_action_statistics(self.config) | self.encoder.robot_statistics() or None,
            )
        accelerator.wait_for_everyone()
        return self.run.final_model

    def summarise(self, final: Path) -> dict[str, Any]:
        """The end-of-run record (summary.json) with skip counts and mixture shares over all processes."""
        from accelerate.utils import gather_object

        accelerator, state = self.accelerator, self.state
        skipped: dict[str, int] = {}
        by_source: dict[str, int] = {}
        for counts in gather_object([self.loader.skipped]):
            for reason, count in counts.items():
                skipped[reason] = skipped.get(reason, 0) + count
        for counts in gather_object([self.loader.samples_by_source]):
            for name, count in counts.items():
                by_source[name] = by_source.get(name, 0) + count
        total = sum(by_source.values()) or 1
        weights = sum(source.weight for source in self.config.data.sources)
        summary = {
            "run_dir": str(self.run.root),
            "steps": state.step,
            "processes": accelerator.num_processes,
            "samples": state.samples,
            "label_tokens": state.label_tokens,
            "elapsed_s": round(state.elapsed_s, 2),
            "samples_per_s": round(state.samples / state.elapsed_s, 2) if state.elapsed_s else None,
            "final_loss": state.last_loss,
            "eval": state.eval_metrics,
            "skipped": skipped,
            "mixture": {
                source.name: {"weight": source.weight / weights, "share": by_source.get(source.name, 0) / total}
                for source in self.config.data.sources
            },
            "trainable_parameters": self.trainable,
            "model": str(final),
        }
        if accelerator.is_main_process:
            write_json_atomically(self.run.summary_path, summary)
        accelerator.end_training()  # stops trackers and takes the process group down cleanly
        return summary


def _progress_bar(config: TrainConfig, is_main: bool, initial: int):
    from tqdm.auto import tqdm

    enabled = is_main and config.logging.progress
    return tqdm(total=config.max_steps, initial=initial, desc=config.name, unit="step", disable=not enabled)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"optim.lr": ...} with tracker-friendly values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, int | float | str | bool):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value)
    return flat


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text for the end of ``agent train``."""
    lines = [
        f"run        : {summary['run_dir']}  ({summary['processes']} process(es))",
        f"steps      : {summary['steps']}  samples {summary['samples']}  label tokens {summary['label_tokens']}",
        f"time       : {summary['elapsed_s']} s  ({summary['samples_per_s']} samples/s)",
        f"final loss : {summary['final_loss']:.4f}" if summary["final_loss"] is not None else "final loss : -",
    ]
    for name, share in summary["mixture"].items():
        lines.append(f"mixture    : {name:<20} weight {share['weight']:.2f}  drawn {share['share']:.2f}")
    for key, value in sorted(summary["eval"].items()):
        shown = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)
        lines.append(f"eval       : {key:<40} {shown}")
    skipped = summary["skipped"]
    lines.append(
        "skipped    : " + (", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items())) or "none")
    )
    lines.append(f"model      : {summary['model']}")
    return "\n".join(lines)
