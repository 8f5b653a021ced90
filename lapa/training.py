"""Training the latent action quantizer with accelerate, read top to bottom: build (accelerator,
frame pairs, model, optimizer), resume if asked, then per step draw this process's pairs, reconstruct
the second frame, step, count codes; at the end of each codebook window log usage and perplexity
and replace dead codes; checkpoint; at the end evaluate on every pair and export ``final/``.

Run directory (the layout of ``agent train``): ``config.yaml``, ``metrics.jsonl``,
``checkpoints/step-N/`` (accelerate state + ``trainer_state.json``), ``summary.json``, ``final/``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lapa.codebook_upkeep import CodebookUpkeep
from lapa.config import QuantizerTrainConfig
from lapa.frame_pairs import FramePairs, load_frame_pairs
from lapa.nsvq import code_counts, perplexity, usage
from lapa.quantizer import LatentActionQuantizer
from magma.training.divergence import refuse_non_finite_weights, stop_if_diverged
from magma.training.run_directory import RunDirectory, write_json_atomically

EVAL_BATCH = 64


@dataclass
class QuantizerTrainerState:
    """Counters that survive a resume (model, optimizer, scheduler and RNG are saved by accelerate)."""

    step: int = 0
    samples: int = 0
    elapsed_s: float = 0.0
    replaced_codes: int = 0
    last: dict[str, float] = field(default_factory=dict)
    upkeep: dict[str, list[float]] = field(default_factory=dict)


def build_optimizer(model: torch.nn.Module, config: QuantizerTrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, position tables or the codebook."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "position" in name or name.endswith("codebook") else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=tuple(config.optim.betas))


class QuantizerTrainer:
    def __init__(self, config: QuantizerTrainConfig, resume: bool = False, pairs: FramePairs | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        self.config = config
        self.run = RunDirectory(config.run_dir)
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            AcceleratorState._reset_state(reset_partial_state=True)  # a later trainer in the same process
        self.accelerator = accelerator = Accelerator(cpu=not torch.cuda.is_available())
        resume_step = self.run.check_resumable(config) if resume else None  # type: ignore[arg-type]
        if not resume:
            self.run.check_fresh()
        accelerator.wait_for_everyone()
        if not resume and accelerator.is_main_process:
            self.run.start(config)  # type: ignore[arg-type]

        data = config.data
        self.pairs = pairs or load_frame_pairs(
            data.videos,
            data.datasets,
            config.quantizer.image_size,
            data.window_s,
            data.stride_s,
            data.camera,
            data.memory_gib,
        )
        set_seed(config.seed)
        model = LatentActionQuantizer(config.quantizer)
        optimizer = build_optimizer(model, config)
        warmup = max(config.optim.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.upkeep = CodebookUpkeep(config.codebook, config.quantizer.codebook_size, config.seed)
        self.state = QuantizerTrainerState()
        if resume_step:
            self.state = QuantizerTrainerState(**self.run.load_accelerate_checkpoint(accelerator, resume_step)[0])
            self.upkeep.load_state_dict(self.state.upkeep)
        if accelerator.is_main_process:
            if resume_step is not None:
                self.run.truncate_metrics_after(resume_step)
            self.run.remove_stale_staging()

    @property
    def quantizer(self) -> LatentActionQuantizer:
        return self.accelerator.unwrap_model(self.model)

    # ---- the loop -------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, accelerator, state = self.config, self.accelerator, self.state
        world, rank = accelerator.num_processes, accelerator.process_index
        global_batch = config.batch_size * world
        progress = _progress_bar(config, accelerator.is_main_process, state.step)
        started = time.perf_counter() - state.elapsed_s
        while state.step < config.max_steps:
            step_started = time.perf_counter()
            indices = self.pairs.batch_indices(state.step, rank, world, config.batch_size, config.seed)
            first, second = (torch.from_numpy(frames).to(accelerator.device) for frames in self.pairs.frames(indices))
            out = self.model(first, second)
            accelerator.backward(out.loss)
            grad_norm = None
            if config.optim.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(self.model.parameters(), config.optim.max_grad_norm))
            losses = {"reconstruction loss": out.loss.detach()}
            stop_if_diverged(accelerator, state.step + 1, losses, self.run, grad_norm)  # before the update
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if state.step == 0 and self.config.codebook.seed_from_data:
                latents = accelerator.gather(out.latents.contiguous())
                self.upkeep.seed_codebook(self.quantizer.vq.codebook, self.optimizer, latents)
            self.upkeep.observe(out.codes)
            state.step += 1
            state.samples += global_batch
            losses = accelerator.reduce(torch.stack([out.loss.detach(), out.copy_loss]).float(), "mean")
            record: dict[str, Any] = {
                "step": state.step,
                "loss": float(losses[0]),
                "copy_mse": float(losses[1]),
                "recon_vs_copy": float(losses[0] / losses[1].clamp_min(1e-12)),
                "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
            }
            if self.upkeep.window_ends(state.step):
                record |= self._end_window(out)
            state.elapsed_s = time.perf_counter() - started
            record |= {"samples_per_s": global_batch / (time.perf_counter() - step_started)}
            record["elapsed_s"] = round(state.elapsed_s, 3)
            state.last = {key: value for key, value in record.items() if isinstance(value, float)}
            if state.step % config.logging.every == 0 or state.step == config.max_steps or "codebook/usage" in record:
                self._log(record)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", vs_copy=f"{record['recon_vs_copy']:.2f}")
            if config.checkpoint.every and state.step % config.checkpoint.every == 0:
                self.save_checkpoint()
        progress.close()
        if not self.run.checkpoint_steps() or self.run.checkpoint_steps()[-1] != state.step:
            self.save_checkpoint()
        evaluation = self.evaluate()
        self._log({"step": state.step, **{f"eval/{key}": value for key, value in evaluation.items()}})
        final = self.export()
        return self.summarise(evaluation, str(final))

    def _end_window(self, out: Any) -> dict[str, Any]:
        """Usage and perplexity of the window (all processes), then dead-code replacement."""
        accelerator, state = self.accelerator, self.state
        counts = accelerator.reduce(self.upkeep.window_counts.to(accelerator.device), "sum").cpu()
        metrics: dict[str, Any] = self.upkeep.window_metrics(counts)
        replaced = 0
        if self.upkeep.replacing(state.step):
            latents = accelerator.gather(out.latents.contiguous())
            codes = accelerator.gather(out.codes.reshape(-1).contiguous())
            replaced = self.upkeep.replace(
                self.quantizer.vq.codebook, self.optimizer, counts, latents, codes, state.step
            )
        state.replaced_codes += replaced
        metrics["codebook/replaced"] = replaced
        metrics["codebook/replica_max_diff"] = self.replica_max_difference()
        self.upkeep.reset_window()
        return metrics

    def replica_max_difference(self) -> float:
        """The largest difference of any codebook entry between processes (0.0: identical replicas)."""
        codebook = self.quantizer.vq.codebook.detach().contiguous()
        everyone = self.accelerator.gather(codebook.unsqueeze(0))
        return float((everyone - everyone[0:1]).abs().max())

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.run.append_metrics(record)

    # ---- evaluation, checkpoints, export --------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Every pair once, quantized to the nearest codes: reconstruction MSE vs copying the first
        frame, codebook usage and perplexity (summed over processes, each taking every world-th pair)."""
        accelerator = self.accelerator
        model = self.quantizer.eval()
        mine = np.arange(accelerator.process_index, len(self.pairs), accelerator.num_processes)
        sums = torch.zeros(3, dtype=torch.float64)  # squared error of the reconstruction, of the copy, pixels
        counts = torch.zeros(model.config.codebook_size, dtype=torch.float64)
        for start in range(0, len(mine), EVAL_BATCH):
            first, second = (
                torch.from_numpy(f).to(accelerator.device) for f in self.pairs.frames(mine[start : start + EVAL_BATCH])
            )
            out = model(first, second)
            pixels = out.reconstruction.numel()
            sums += torch.tensor([float(out.loss) * pixels, float(out.copy_loss) * pixels, pixels], dtype=torch.float64)
            counts += code_counts(out.codes.cpu(), model.config.codebook_size)
        model.train()
        sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
        recon, copy = float(sums[0] / sums[2]), float(sums[1] / sums[2])
        return {
            "pairs": len(self.pairs),
            "recon_mse": recon,
            "copy_mse": copy,
            "recon_vs_copy": recon / max(copy, 1e-12),
            "codebook_usage": usage(counts),
            "codebook_perplexity": perplexity(counts),
        }

    def save_checkpoint(self) -> None:
        refuse_non_finite_weights(self.accelerator, self.model.parameters(), self.state.step, "checkpoint", self.run)
        self.state.upkeep = self.upkeep.state_dict()
        self.run.save_accelerate_checkpoint(
            self.accelerator, self.state.step, asdict(self.state), self.config.checkpoint.keep
        )

    def export(self):
        refuse_non_finite_weights(self.accelerator, self.model.parameters(), self.state.step, "final model", self.run)
        if self.accelerator.is_main_process:
            self.quantizer.save_pretrained(self.run.final_model)
        self.accelerator.wait_for_everyone()
        return self.run.final_model

    def summarise(self, evaluation: dict[str, float], final: str) -> dict[str, Any]:
        accelerator, state = self.accelerator, self.state
        windows = (
            [r for r in self.run.read_metrics() if "codebook/perplexity" in r] if accelerator.is_main_process else []
        )
        summary = {
            "run_dir": str(self.run.root),
            "steps": state.step,
            "processes": accelerator.num_processes,
            "samples": state.samples,
            "pairs": len(self.pairs),
            "skipped": self.pairs.skipped,
            "frames": self.pairs.memory_report(),
            "elapsed_s": round(state.elapsed_s, 2),
            "samples_per_s": round(state.samples / state.elapsed_s, 2) if state.elapsed_s else None,
            "final_loss": state.last.get("loss"),
            "replaced_codes": state.replaced_codes,
            "min_window_perplexity": min((r["codebook/perplexity"] for r in windows), default=None),
            # after the first tenth of the run: the codebook's first windows start from random codewords
            "min_window_perplexity_after_warmup": min(
                (r["codebook/perplexity"] for r in windows if r["step"] > self.config.max_steps / 10), default=None
            ),
            "replicas_identical": self.replica_max_difference() == 0.0,
            "eval": evaluation,
            "model": final,
        }
        if accelerator.is_main_process:
            write_json_atomically(self.run.summary_path, summary)
        accelerator.end_training()
        return summary


def _progress_bar(config: QuantizerTrainConfig, is_main: bool, initial: int):
    from tqdm.auto import tqdm

    enabled = is_main and config.logging.progress
    return tqdm(total=config.max_steps, initial=initial, desc=config.name, unit="step", disable=not enabled)


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text for the end of ``agent lapa train``."""
    evaluation = summary["eval"]
    return "\n".join(
        [
            f"run         : {summary['run_dir']}  ({summary['processes']} process(es))",
            f"steps       : {summary['steps']}  frame pairs seen {summary['samples']} of {summary['pairs']}",
            f"time        : {summary['elapsed_s']} s  ({summary['samples_per_s']} pairs/s)",
            f"frames      : {summary['frames']['mode']}",
            f"reconstruct : MSE {evaluation['recon_mse']:.5f} vs copying the first frame {evaluation['copy_mse']:.5f}"
            f"  (ratio {evaluation['recon_vs_copy']:.3f})",
            f"codebook    : usage {evaluation['codebook_usage']:.2f}, "
            f"perplexity {evaluation['codebook_perplexity']:.2f}"
            f" (lowest window {summary['min_window_perplexity']}, after the first tenth of the run "
            f"{summary['min_window_perplexity_after_warmup']}), {summary['replaced_codes']} codes replaced",
            f"replicas    : {'identical' if summary['replicas_identical'] else 'DIFFER'}",
            f"model       : {summary['model']}",
        ]
    )
