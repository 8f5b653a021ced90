"""Model training (``agent train``): build the model, optimizer and data; one optimizer step fetches the
micro-batches and weights their losses by label tokens over all processes and accumulation steps. The
loop around the step (resume, metrics, evaluation schedule, checkpoints, export, summary) is the run
scaffold's, :class:`magma.training.run.TrainingRun`.

Loss weighting: each micro-batch's mean loss is scaled by its share of the step's label tokens
across every process and accumulation step, so one process with batch 8 and two with batch 4
take the same optimizer step (the token-level mean over the global batch).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from data_tools.config_files import ConfigError
from magma.actions import (
    ACTION_STATISTICS_FILENAME,
    ActionStatistics,
    load_action_statistics,
    select_statistics,
)
from magma.checkpoint import load_checkpoint_action_statistics
from magma.data.encoding import SampleEncoder, source_state_statistics
from magma.data.loader import build_eval_loader, build_train_loader
from magma.data.records import TrainBatch
from magma.model import IGNORE_INDEX, MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.training.config import TrainConfig
from magma.training.divergence import stop_if_diverged
from magma.training.evaluation import BatchScorer, EvalTotals, lockstep
from magma.training.optimization import add_lora, build_optimizer, build_scheduler, merge_lora, set_trainable
from magma.training.run import RunCounters, StepResult, TrainingRun, counts_text, run_row, summary_screen

DATA_STATE_FILE = "data_state_rank{rank}.json"


@dataclass
class TrainerState(RunCounters):
    """The run's counters and the model trainer's own."""

    label_tokens: int = 0
    last_loss: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)


def inherited_action_statistics(config: TrainConfig) -> dict[str, ActionStatistics]:
    """The robot action statistics of the checkpoint a fine-tune starts from: kept in its export, so
    a model fine-tuned on UI data still decodes the robot actions it learned before."""
    statistics_file = Path(config.model) / ACTION_STATISTICS_FILENAME
    return load_checkpoint_action_statistics(config.model) if statistics_file.is_file() else {}


def action_head_fields(config: TrainConfig, model: MagmaForCausalLM) -> dict[str, Any]:
    """The ``action`` settings the recipe asks for (``action_head``, ``chunk_length``, ``use_state``), with the
    action and state sizes of its first robot source; empty when it asks for none."""
    asked = {name: getattr(config, name, None) for name in ("action_head", "chunk_length", "use_state")}
    if all(value is None for value in asked.values()):  # (GRPO's config has none of them)
        return {}
    current = model.config.action
    fields: dict[str, Any] = {
        "head": asked["action_head"] or current.head,
        "chunk_length": asked["chunk_length"] or current.chunk_length,
    }
    robot = [source for source in config.data.sources if source.action_codec == "robot"]
    if not robot:
        raise ConfigError(
            "action_head / chunk_length / use_state need a robot source in data.sources (action_codec: robot)"
        )
    source = robot[0]
    fields["action_dim"] = select_statistics(
        load_action_statistics(source.statistics), source.statistics_key
    ).action_dim
    use_state = current.state_dim > 0 if asked["use_state"] is None else asked["use_state"]
    fields["state_dim"] = 0
    if use_state:
        state = source_state_statistics(source)
        if state is None:
            raise ConfigError(
                f"use_state=true but {source.statistics} has no state statistics for source '{source.name}'; rebuild "
                "the shards with `agent data lerobot-shards` (it writes them) or set use_state=false"
            )
        fields["state_dim"] = state.action_dim
    return fields


def load_model_and_processor(config: TrainConfig) -> tuple[MagmaForCausalLM, MagmaProcessor]:
    """A checkpoint directory (fine-tuning) or a model preset/YAML (new weights, seeded by config.seed);
    then the action head the recipe asks for (a changed head starts from fresh weights)."""
    source = Path(config.model)
    if (source / "config.json").is_file():
        model = MagmaForCausalLM.from_pretrained(source, dtype=torch.float32)
        processor = MagmaProcessor.from_pretrained(source)
        if config.gradient_checkpointing:
            model.language_model.activation_checkpointing_enable()
            model.vision_tower.set_gradient_checkpointing(True)
    else:
        overrides = list(config.model_overrides)
        if config.gradient_checkpointing:
            overrides += ["text.gradient_checkpointing=true", "vision.gradient_checkpointing=true"]
        model = MagmaForCausalLM.from_config(config.model, overrides)
        processor = MagmaProcessor.from_config(model.config)
    fields = action_head_fields(config, model)
    if fields and any(getattr(model.config.action, key) != value for key, value in fields.items()):
        model.set_action_head(**fields)
    processor.config.action = model.config.action
    return model.train(), processor


def label_tokens(batch: TrainBatch) -> int:
    labels = batch.inputs.labels
    return 0 if labels is None else int((labels[:, 1:] != IGNORE_INDEX).sum())


def action_values(batch: TrainBatch) -> int:
    """The chunk values the l1/flow head's loss averages in this batch (valid steps x action dimensions)."""
    targets, mask = batch.inputs.action_targets, batch.inputs.action_mask
    return 0 if targets is None or mask is None else int(mask.sum()) * int(targets.shape[-1])


def batch_digest(batches: list[TrainBatch]) -> str:
    """A short fingerprint of the samples of one step on this process (resume checks compare it)."""
    ids = "\n".join(sample_id for batch in batches for sample_id in batch.sample_ids)
    return hashlib.sha1(ids.encode()).hexdigest()[:12]


class Trainer(TrainingRun):
    state: TrainerState

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        super().__init__(
            config, resume, mixed_precision=config.mixed_precision, grad_accum_steps=config.grad_accum_steps
        )
        self.config: TrainConfig = config
        accelerator = self.accelerator
        model, self.processor = load_model_and_processor(config)
        if config.lora.enabled:
            add_lora(model, config.lora)
        self.trainable = set_trainable(model, config.optim, config.lora.enabled)
        optimizer = build_optimizer(model, config.optim)
        self.prepare(model, optimizer, build_scheduler(optimizer, config.optim, config.max_steps))
        data_file = DATA_STATE_FILE.format(rank=accelerator.process_index)
        data_state = self.resume_state(TrainerState, [data_file]).get(data_file)
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

    # ---- one optimizer step ---------------------------------------------------------------------
    def on_start(self) -> None:
        self.batches = iter(self.loader)  # here, not in __init__: a benchmark may swap the loader in between

    def train_step(self) -> StepResult:
        config, accelerator, state = self.config, self.accelerator, self.state
        world = accelerator.num_processes
        global_batch = config.global_batch_size(world)
        step_started = time.perf_counter()
        micro_batches = [next(self.batches) for _ in range(config.grad_accum_steps)]
        local = [
            sum(label_tokens(batch) for batch in micro_batches),
            sum(action_values(batch) for batch in micro_batches),
        ]
        step_tokens, step_values = (
            int(v) for v in accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum").tolist()
        )
        weight = accelerator.unwrap_model(self.model).config.action.loss_weight
        loss_sum = torch.zeros((), device=accelerator.device)
        action_loss_sum = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(micro_batches):
            with accelerator.accumulate(self.model), accelerator.autocast():
                out = self.model(**batch.inputs.to(accelerator.device).as_kwargs())
                # mean losses -> this batch's share of the step's label tokens (LM) and chunk values (l1/flow
                # head); undo accelerate's 1/accum and DDP's 1/world averaging, so the gradient is the global mean
                objective = out.lm_loss * (out.num_label_tokens / max(step_tokens, 1))
                if out.action_loss is not None:
                    objective = objective + weight * out.action_loss * (out.num_action_values / max(step_values, 1))
                    action_loss_sum += out.action_loss.detach().float() * out.num_action_values
                accelerator.backward(objective * config.grad_accum_steps * world)
                loss_sum += out.lm_loss.detach().float() * out.num_label_tokens
                if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.optim.max_grad_norm)
                else:
                    grad_norm = None
                if index == len(micro_batches) - 1:  # before the update: a diverged step is never applied
                    losses = {"training loss": loss_sum, "action head loss": action_loss_sum}
                    stop_if_diverged(accelerator, state.step + 1, losses, self.run, grad_norm)
                self.optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        state.label_tokens += step_tokens
        lm_loss = float(accelerator.reduce(loss_sum, "sum")) / max(step_tokens, 1)
        action_loss = float(accelerator.reduce(action_loss_sum, "sum")) / max(step_values, 1)
        step_loss = lm_loss + weight * action_loss  # the objective: the LM's token mean plus the weighted head loss
        state.last_loss = step_loss
        samples_per_s = global_batch / (time.perf_counter() - step_started)
        metrics = {
            "loss": step_loss,
            **self._learning_rates(),
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "samples_per_s": samples_per_s,
            "label_tokens": step_tokens,
            "batch_digest": batch_digest(micro_batches),
        }
        if step_values:
            metrics |= {"lm_loss": lm_loss, "action_loss": action_loss, "action_values": step_values}
        progress = {"loss": f"{step_loss:.4f}", "samples_per_s": f"{samples_per_s:.1f}"}
        return StepResult(metrics, samples=global_batch, progress=progress)

    def _learning_rates(self) -> dict[str, float]:
        """The current learning rate of each trained module (``lr/language_model``, ...)."""
        return {
            f"lr/{group['name']}": group["lr"]
            for group in self.optimizer.param_groups
            if not group["name"].endswith("/no_decay")
        }

    def checkpoint_files(self) -> dict[str, Any]:
        """Each process's position in its data stream, so a resumed run draws the same batches."""
        return {DATA_STATE_FILE.format(rank=self.accelerator.process_index): self.loader.state_dict()}

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluation_every(self) -> int:
        return self.config.eval.every

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        accelerator, config = self.accelerator, self.config
        if not config.data.eval_sources:
            return {}
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
                if counts and out.label_predictions is not None and batch.inputs.labels is not None:
                    scorer.add(totals, batch, out.lm_loss, out.num_label_tokens, out.label_predictions)
                if counts and out.action_loss is not None:
                    totals.action_loss_sum += float(out.action_loss) * out.num_action_values
                    totals.action_values += out.num_action_values
                    totals.samples += 0 if batch.inputs.labels is not None else len(batch.sample_ids)
            reduced = EvalTotals.from_tensor(accelerator.reduce(totals.as_tensor().to(accelerator.device), "sum").cpu())
            metrics |= reduced.metrics(f"eval/{source.name}")
            for name in overall.__dataclass_fields__:
                setattr(overall, name, getattr(overall, name) + getattr(reduced, name))
        metrics |= overall.metrics("eval/all")
        self.model.train()
        self.state.eval_metrics = metrics
        return metrics

    # ---- export and summary ---------------------------------------------------------------------
    def write_model(self, directory: Path) -> None:
        """The final model as an ordinary checkpoint (LoRA merged, tokenizer and action statistics
        included), loadable with ``MagmaForCausalLM.from_pretrained``."""
        accelerator = self.accelerator
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
                directory,
                tokenizer=self.processor.tokenizer,
                action_statistics=inherited_action_statistics(self.config) | self.encoder.robot_statistics() or None,
                state_statistics=self.encoder.state_statistics() or None,
            )

    def summary_fields(self) -> dict[str, Any]:
        """Skip counts and mixture shares over all processes."""
        from accelerate.utils import gather_object

        state = self.state
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
        return {
            "samples": state.samples,
            "label_tokens": state.label_tokens,
            "samples_per_s": round(state.samples / state.elapsed_s, 2) if state.elapsed_s else None,
            "final_loss": state.last_loss,
            "eval": state.eval_metrics,
            "skipped": skipped,
            "mixture": {
                source.name: {"weight": source.weight / weights, "share": by_source.get(source.name, 0) / total}
                for source in self.config.data.sources
            },
            "trainable_parameters": self.trainable,
        }


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text for the end of ``agent train``."""
    final_loss = summary["final_loss"]
    rows = [
        run_row(summary),
        ("steps", f"{summary['steps']}  samples {summary['samples']}  label tokens {summary['label_tokens']}"),
        ("time", f"{summary['elapsed_s']} s  ({summary['samples_per_s']} samples/s)"),
        ("final loss", "-" if final_loss is None else f"{final_loss:.4f}"),
    ]
    for name, share in summary["mixture"].items():
        rows.append(("mixture", f"{name:<20} weight {share['weight']:.2f}  drawn {share['share']:.2f}"))
    for key, value in sorted(summary["eval"].items()):
        shown = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)
        rows.append(("eval", f"{key:<40} {shown}"))
    rows += [("skipped", counts_text(summary["skipped"])), ("model", summary["model"])]
    return summary_screen(rows)
