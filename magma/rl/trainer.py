"""GRPO (``agent rl grpo``): build the policy, optional reference, optimizer and task; then one GRPO step,
read top to bottom: roll out the current policy (groups of samples with rewards), leave out what cannot
train (counted), compute group advantages, score the samples with the policy before the update (and the
reference), then ``inner_epochs`` passes of clipped-loss updates over ``mini_batches`` optimizer steps,
accumulating gradients over micro-batches. The loop around the step (resume, metrics, evaluation schedule,
checkpoints, export, summary) is the run scaffold's, :class:`magma.training.run.TrainingRun`.

Loss normalisation over micro-batches: every micro-batch's loss is divided by the token / sequence
counts of its whole mini-batch (summed over processes), so the micro-batch losses add up to the
mini-batch loss that ``agg_loss`` defines, whatever the micro-batch size.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from magma.model import MagmaForCausalLM
from magma.rl.algorithms import (
    agg_loss,
    group_advantages,
    importance_weights,
    kl_penalty,
    masked_mean,
    policy_loss,
    reward_metrics,
)
from magma.rl.config import RLConfig
from magma.rl.rollout import (
    RLTask,
    RolloutResult,
    Sample,
    SkipCounter,
    assign_advantages,
    collate_samples,
    completion_log_probs,
    drop_empty_completions,
    drop_singleton_groups,
    drop_zero_variance_groups,
    trajectory_table,
)
from magma.training.divergence import stop_if_diverged
from magma.training.optimization import build_optimizer, build_scheduler, set_trainable
from magma.training.run import RunCounters, StepResult, TrainingRun, counts_text, run_row, summary_screen


@dataclass
class GRPOState(RunCounters):
    """The run's counters (``samples``: trained samples) and GRPO's own."""

    trajectories: int = 0
    generation_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    first_reward: float | None = None
    last_reward: float | None = None
    first_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)


def load_reference(config: RLConfig, policy: MagmaForCausalLM) -> MagmaForCausalLM | None:
    """The frozen reference model: none, a copy of the starting policy, or a checkpoint."""
    if config.reference is None:
        return None
    if config.reference == "initial":
        reference = copy.deepcopy(policy)
    else:
        reference = MagmaForCausalLM.from_pretrained(config.reference, dtype=policy.dtype)
    return reference.eval().requires_grad_(False)


def probe_samples(samples: list[Sample], most: int = 8) -> list[Sample]:
    """One sample of each group (a different prompt each), ``most`` at the most."""
    return list({sample.group_id: sample for sample in samples}.values())[:most]


def build_task(config: RLConfig, processor: Any) -> RLTask:
    """The use the config names (imported lazily: the robot and web tasks pull in their simulators)."""
    if config.task == "text":
        from magma.rl.text_task import TextTask

        return TextTask(config, processor)
    if config.task == "robot":
        from magma.rl.robot_task import RobotTask

        return RobotTask(config, processor)
    from magma.rl.web_task import WebAgentTask

    return WebAgentTask(config, processor)


class RolloutEngine(Protocol):
    """Where a step's rollout runs when not in the task itself: :class:`magma.rl.ray_rollouts.RayRollouts`."""

    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult: ...


def remote_rollouts(config: RLConfig, task: RLTask, policy: MagmaForCausalLM) -> RolloutEngine | None:
    """Ray actors playing the task's groups (``rollout.engine: ray``; Ray is imported only then), or None for
    the local engine (the default: the task rolls out in the training process)."""
    if config.rollout.engine == "local":
        return None
    from magma.rl.ray_rollouts import RayRollouts

    return RayRollouts(task, policy, config.rollout)  # type: ignore[arg-type]


def chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class GRPOTrainer(TrainingRun):
    state: GRPOState

    def __init__(
        self, config: RLConfig, resume: bool = False, task: RLTask | None = None, rollouts: RolloutEngine | None = None
    ) -> None:
        from magma.training.trainer import load_model_and_processor

        if config.rollout.engine == "ray" and rollouts is None:  # a cluster that does not answer fails first
            from data_tools.ray_cluster import connect

            connect(config.rollout.address)
        super().__init__(config, resume, mixed_precision=config.mixed_precision)
        self.config: RLConfig = config
        model, self.processor = load_model_and_processor(config)  # type: ignore[arg-type]
        self.reference = load_reference(config, model)
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        self.trainable = set_trainable(model, config.optim, lora_enabled=False)
        optimizer = build_optimizer(model, config.optim)
        updates = config.max_steps * config.inner_epochs * config.mini_batches
        self.prepare(model, optimizer, build_scheduler(optimizer, config.optim, updates))
        self.resume_state(GRPOState)
        self.task = task if task is not None else build_task(config, self.processor)
        # None: the task rolls out in this process (the local engine), whatever ``self.task`` is then
        self.rollout_engine = rollouts if rollouts is not None else remote_rollouts(config, self.task, self.policy)
        self.policy_unchecked = False  # updated since the last check_updated_policy (a checkpoint is checked)
        self.trained_samples: list[Sample] = []  # a probe of the last update's: when a later step scored none

    @property
    def policy(self) -> MagmaForCausalLM:
        return self.accelerator.unwrap_model(self.model)

    # ---- one GRPO step --------------------------------------------------------------------------
    def on_start(self) -> None:
        if self.state.step == 0:
            self.state.first_eval = self.evaluate()

    def train_step(self) -> StepResult:
        state, accelerator = self.state, self.accelerator
        step_started = time.perf_counter()
        self.policy.eval()
        # each process rolls out its own groups (one process: the index is the step)
        index = state.step * accelerator.num_processes + accelerator.process_index
        rollout = (self.rollout_engine or self.task).rollout(self.policy, index)
        generation_s = time.perf_counter() - step_started
        skipped = rollout.skipped
        samples = self.trainable_samples(rollout.samples, skipped)
        reward_stats = self.reward_statistics(rollout.samples)
        # every process updates when any has samples (DDP needs all of them in each step)
        anyone = int(accelerator.reduce(torch.tensor(len(samples), device=accelerator.device), "sum"))
        metrics = self.update(samples, filler=rollout.samples[:1] or samples[:1]) if anyone else {}
        if anyone:
            self.policy_unchecked = True
            self.trained_samples = probe_samples(samples) or self.trained_samples
        if self.policy_unchecked and self.policy_leaves_the_step():  # also after a step with nothing to train
            self.check_updated_policy(samples or rollout.samples or self.trained_samples)
            self.policy_unchecked = False
        local_trajectories = len(trajectory_table(rollout.samples)[0]) if rollout.samples else 0
        state.trajectories += int(
            accelerator.reduce(torch.tensor(local_trajectories, device=accelerator.device), "sum")
        )
        state.generation_s += generation_s
        skipped = SkipCounter({reason: count for reason, count in skipped.items() if count})
        for reason, count in skipped.items():
            state.skipped[reason] = state.skipped.get(reason, 0) + count
        if state.first_reward is None:
            state.first_reward = reward_stats.get("reward_mean")
        state.last_reward = reward_stats.get("reward_mean", state.last_reward)
        step_s = time.perf_counter() - step_started
        record = {
            **reward_stats,
            **rollout.metrics,
            **metrics,
            "trained_samples": len(samples),
            "skipped": dict(skipped),
            "samples_per_s": len(rollout.samples) / step_s,  # generated on this process
            "step_s": step_s,
            "generation_share": generation_s / step_s,
            "lr": self.scheduler.get_last_lr()[0],
        }
        progress = {"reward": f"{reward_stats.get('reward_mean', float('nan')):.3f}"}
        return StepResult(record, samples=anyone, progress=progress)  # counters are over all processes

    def reward_statistics(self, samples: list[Sample]) -> dict[str, float]:
        """Reward diagnostics over every scored trajectory of the rollout (before any filtering)."""
        if not samples:
            return {}
        _, rewards, groups = trajectory_table(samples)
        advantages = group_advantages(rewards, groups, self.config.algorithm.advantage_scale)
        return reward_metrics(rewards, groups, advantages)

    def trainable_samples(self, samples: list[Sample], skipped: SkipCounter) -> list[Sample]:
        """Drop empty completions and groups of one, set advantages, then (dynamic sampling) drop
        zero-variance groups; every dropped sample is counted in ``skipped``."""
        algorithm = self.config.algorithm
        samples = drop_singleton_groups(drop_empty_completions(samples, skipped), skipped)
        assign_advantages(samples, algorithm.advantage_scale, algorithm.epsilon)  # type: ignore[arg-type]
        if algorithm.drop_zero_variance_groups:
            samples = drop_zero_variance_groups(samples, skipped)
        return samples

    # ---- one update -----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, samples: list[Sample]) -> None:
        """Log-probs of the policy before this step's updates (needed when it takes several optimizer
        steps on one rollout) and of the reference model (for the KL term), written on the samples."""
        config = self.config
        several_updates = config.inner_epochs * config.mini_batches > 1
        if not several_updates and self.reference is None:
            return
        pad = self.processor.config.tokens.pad_token_id
        temperature = config.sampling.temperature
        for micro in chunks(samples, config.micro_batch_size):
            batch = collate_samples(micro, pad)
            if several_updates:
                old, _ = completion_log_probs(self.model, batch, self.task.allowed, temperature)
                for sample, row in zip(micro, old.cpu(), strict=True):
                    sample.old_log_probs = row[: len(sample.completion_ids)].tolist()
            if self.reference is not None:
                ref, _ = completion_log_probs(self.reference, batch, self.task.allowed, temperature)
                for sample, row in zip(micro, ref.cpu(), strict=True):
                    sample.ref_log_probs = row[: len(sample.completion_ids)].tolist()

    def update(self, samples: list[Sample], filler: list[Sample]) -> dict[str, float]:
        """``inner_epochs`` x ``mini_batches`` optimizer steps on one rollout. ``filler`` (any one sample)
        stands in, with zero weight, on a process that has fewer micro-batches than another."""
        config = self.config
        self.score(samples)
        self.model.train()
        on_policy = config.inner_epochs * config.mini_batches == 1
        generator = torch.Generator().manual_seed(config.seed * 7919 + self.state.step)
        totals: dict[str, float] = {}
        counted = 0
        for _ in range(config.inner_epochs):
            order = torch.randperm(len(samples), generator=generator).tolist()
            for part in range(config.mini_batches):  # always mini_batches steps, on every process
                mini = [samples[i] for i in order[part :: config.mini_batches]]
                metrics = self.optimizer_step(mini, on_policy, filler)
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + value
                counted += 1
        return {key: value / max(counted, 1) for key, value in totals.items()}

    def policy_leaves_the_step(self) -> bool:
        """Whether the policy this step ends with is written (a checkpoint, or the last step's export) or
        evaluated before the next rollout: only then is an updated policy checked (:meth:`check_updated_policy`),
        even when this step itself trained nothing (its samples all dropped). Otherwise the next rollout draws
        from it whatever its logits (the samplers never crash on them) and that step's loss check stops a
        diverged run before its update: one forward pass less a step (6 % of a text step)."""
        step, config = self.state.step + 1, self.config

        def due(every: int) -> bool:
            return bool(every) and step % every == 0

        return step >= config.max_steps or due(config.checkpoint.every) or due(self.evaluation_every())

    @torch.no_grad()
    def check_updated_policy(self, samples: list[Sample], most: int = 8) -> None:
        """One forward pass after the step's updates over one sample of each group (a different prompt
        each, ``most`` at the most): weights that stay finite can still overflow the logits (a learning rate
        far too high), for some prompts and not others; stop here, on every process, before the step's
        checkpoint, export or evaluation."""
        probe = probe_samples(samples, most)
        log_probs = None
        if probe:
            batch = collate_samples(probe, self.processor.config.tokens.pad_token_id)
            log_probs, _ = completion_log_probs(self.policy, batch, self.task.allowed, self.config.sampling.temperature)
        checked = {"log-probs of the updated policy": log_probs}
        consequence = "so this step's checkpoint was not written"
        stop_if_diverged(self.accelerator, self.state.step + 1, checked, self.run, consequence=consequence)

    def optimizer_step(self, mini: list[Sample], on_policy: bool, filler: list[Sample]) -> dict[str, float]:
        """One optimizer step over a mini-batch, accumulating gradients over its micro-batches."""
        config, accelerator, algorithm = self.config, self.accelerator, self.config.algorithm
        device = accelerator.device
        pad = self.processor.config.tokens.pad_token_id
        world = accelerator.num_processes
        local = torch.tensor([sum(sum(s.mask()) for s in mini), len(mini)], dtype=torch.float64, device=device)
        num_tokens, num_sequences = accelerator.reduce(local, "sum").tolist()
        micro_batches = chunks(mini, config.micro_batch_size)
        # every process runs as many forward/backward passes as the busiest one (DDP stays in step)
        passes = int(accelerator.reduce(torch.tensor(len(micro_batches), device=device), "max"))
        agg = {
            "num_tokens": num_tokens / world,  # DDP averages gradients over processes: undo it
            "num_sequences": num_sequences / world,
            "norm_length": algorithm.norm_length or config.sampling.max_new_tokens,
        }
        sums: dict[str, float] = {}
        for index in range(passes):
            padding_pass = index >= len(micro_batches)
            batch = collate_samples(filler if padding_pass else micro_batches[index], pad)
            sync = index == passes - 1
            context = accelerator.no_sync(self.model) if not sync else contextlib.nullcontext()
            with context, accelerator.autocast():
                log_probs, entropy = completion_log_probs(
                    self.model, batch, self.task.allowed, config.sampling.temperature, True
                )
                mask = batch.completion_mask.to(device)
                sampling = batch.sampling_log_probs.to(device)
                old = log_probs.detach() if on_policy else batch.old_log_probs.to(device)
                weights = (
                    importance_weights(old, sampling, mask, algorithm.importance_cap)
                    if algorithm.importance_correction
                    else None
                )
                loss, metrics = policy_loss(
                    log_probs,
                    old,
                    batch.advantages.to(device),
                    mask,
                    clip_low=algorithm.clip_low,
                    clip_high=algorithm.clip_high,
                    dual_clip=algorithm.dual_clip,
                    ratio_level=algorithm.ratio_level,  # type: ignore[arg-type]
                    agg_mode=algorithm.loss_agg,  # type: ignore[arg-type]
                    weights=weights,
                    **agg,
                )
                metrics["policy_loss"] = loss.detach()
                metrics["entropy"] = masked_mean(entropy.detach(), mask)
                if algorithm.entropy_coef:
                    loss = loss - algorithm.entropy_coef * agg_loss(entropy, mask, algorithm.loss_agg, **agg)  # type: ignore[arg-type]
                if self.reference is not None and batch.ref_log_probs is not None:
                    kl = agg_loss(
                        kl_penalty(log_probs, batch.ref_log_probs.to(device), algorithm.kl_estimator),  # type: ignore[arg-type]
                        mask,
                        algorithm.loss_agg,  # type: ignore[arg-type]
                        **agg,
                    )
                    metrics["kl"] = kl.detach()
                    loss = loss + algorithm.kl_coef * kl
                metrics["sampling_log_ratio"] = ((old - sampling) * mask).sum() / mask.sum().clamp(min=1)
                if padding_pass:
                    loss = loss * 0.0
                accelerator.backward(loss)
            if not padding_pass:
                share = len(micro_batches[index]) / len(mini)
                for key, value in metrics.items():
                    additive = key in ("policy_loss", "kl")
                    sums[key] = sums.get(key, 0.0) + float(value) * (1.0 if additive else share)
        grad_norm = None
        if config.optim.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.optim.max_grad_norm)
        checked = {f"{name.replace('_', ' ')}": sums.get(name) for name in ("policy_loss", "kl", "entropy")}
        stop_if_diverged(accelerator, self.state.step + 1, checked, self.run, grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if grad_norm is not None:
            sums["grad_norm"] = float(grad_norm)
        return sums

    # ---- evaluation, export, summary ------------------------------------------------------------
    def evaluation_every(self) -> int:
        return self.config.eval.every

    def evaluate(self) -> dict[str, float]:
        self.policy.eval()
        metrics = self.task.evaluate(self.policy)
        self.state.last_eval = metrics
        return metrics

    def close(self) -> None:
        try:
            if self.rollout_engine is not None and hasattr(self.rollout_engine, "close"):
                self.rollout_engine.close()
        finally:
            self.task.close()

    def write_model(self, directory: Path) -> None:
        """The final policy as an ordinary checkpoint (tokenizer and inherited action statistics)."""
        from magma.training.trainer import inherited_action_statistics

        if self.accelerator.is_main_process:
            self.policy.save_pretrained(
                directory,
                tokenizer=self.processor.tokenizer,
                action_statistics=inherited_action_statistics(self.config) or None,  # type: ignore[arg-type]
            )

    def summary_fields(self) -> dict[str, Any]:
        state = self.state
        return {
            "task": self.config.task,
            "trained_samples": state.samples,
            "trajectories": state.trajectories,
            "generation_share": round(state.generation_s / state.elapsed_s, 3) if state.elapsed_s else None,
            "first_reward": state.first_reward,
            "last_reward": state.last_reward,
            "eval_before": state.first_eval,
            "eval_after": state.last_eval,
            "skipped": state.skipped,
            "trainable_parameters": self.trainable,
        }


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text for the end of ``agent rl grpo``."""

    def shown(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    rows = [
        run_row(summary, f"task {summary['task']}, "),
        (
            "steps",
            f"{summary['steps']}  trajectories {summary['trajectories']}  trained samples {summary['trained_samples']}",
        ),
        ("time", f"{summary['elapsed_s']} s  (generation {shown(summary['generation_share'])} of it)"),
        ("reward", f"first step {shown(summary['first_reward'])}  last step {shown(summary['last_reward'])}"),
    ]
    for key in sorted(set(summary["eval_before"]) | set(summary["eval_after"])):
        before, after = summary["eval_before"].get(key), summary["eval_after"].get(key)
        rows.append(("eval", f"{key:<32} {shown(before)} -> {shown(after)}"))
    rows += [("skipped", counts_text(summary["skipped"])), ("model", summary["model"])]
    return summary_screen(rows)
