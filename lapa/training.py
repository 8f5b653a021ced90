"""Training the latent action quantizer (``agent lapa train``): build the frame pairs, model and optimizer;
one step draws this process's pairs, reconstructs the second frame, steps and counts codes; at the end of
each codebook window it logs usage and perplexity and replaces dead codes. At the end of the run every pair
is evaluated. The loop around the step (resume, metrics, checkpoints, export, summary) and the run
directory are the run scaffold's, :class:`magma.training.run.TrainingRun` (the layout of ``agent train``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.codebook_upkeep import CodebookUpkeep
from lapa.config import QuantizerTrainConfig
from lapa.frame_pairs import FramePairs, load_frame_pairs
from lapa.nsvq import code_counts, perplexity, usage
from lapa.quantizer import LatentActionQuantizer
from magma.training.divergence import stop_if_diverged
from magma.training.optimization import weight_decay_groups
from magma.training.run import RunCounters, StepResult, TrainingRun, run_row, summary_screen

EVAL_BATCH = 64


@dataclass
class QuantizerTrainerState(RunCounters):
    """The run's counters and the quantizer trainer's own (the codebook upkeep's window)."""

    replaced_codes: int = 0
    last: dict[str, float] = field(default_factory=dict)
    upkeep: dict[str, list[float]] = field(default_factory=dict)


def build_optimizer(model: torch.nn.Module, config: QuantizerTrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, position tables or the codebook. ``foreach`` (torch's
    choice on GPUs) also on CPU, where torch would update the ~100 tensors one by one: the same numbers,
    a third less CPU time with two threads."""

    def no_decay(name: str, parameter: torch.nn.Parameter) -> bool:
        return parameter.ndim < 2 or "position" in name or name.endswith("codebook")

    groups = weight_decay_groups(model.named_parameters(), config.optim.weight_decay, "quantizer", no_decay=no_decay)
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=tuple(config.optim.betas), foreach=True)


class QuantizerTrainer(TrainingRun):
    state: QuantizerTrainerState

    def __init__(self, config: QuantizerTrainConfig, resume: bool = False, pairs: FramePairs | None = None) -> None:
        super().__init__(config, resume)
        self.config: QuantizerTrainConfig = config
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
        model = LatentActionQuantizer(config.quantizer)
        optimizer = build_optimizer(model, config)
        warmup = max(config.optim.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        self.prepare(model, optimizer, scheduler)
        self.upkeep = CodebookUpkeep(config.codebook, config.quantizer.codebook_size, config.seed)
        self.resume_state(QuantizerTrainerState)
        if self.resume_step:
            self.upkeep.load_state_dict(self.state.upkeep)
        self.evaluation: dict[str, float] = {}

    @property
    def quantizer(self) -> LatentActionQuantizer:
        return self.accelerator.unwrap_model(self.model)

    # ---- one step -------------------------------------------------------------------------------
    def train_step(self) -> StepResult:
        config, accelerator, state = self.config, self.accelerator, self.state
        world, rank = accelerator.num_processes, accelerator.process_index
        step = state.step + 1
        indices = self.pairs.batch_indices(state.step, rank, world, config.batch_size, config.seed)
        first, second = (torch.from_numpy(frames).to(accelerator.device) for frames in self.pairs.frames(indices))
        out = self.model(first, second)
        accelerator.backward(out.loss)
        grad_norm = None
        if config.optim.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(self.model.parameters(), config.optim.max_grad_norm))
        losses = {"reconstruction loss": out.loss.detach()}
        stop_if_diverged(accelerator, step, losses, self.run, grad_norm)  # before the update
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if state.step == 0 and self.config.codebook.seed_from_data:
            latents = accelerator.gather(out.latents.contiguous())
            self.upkeep.seed_codebook(self.quantizer.vq.codebook, self.optimizer, latents)
        self.upkeep.observe(out.codes)
        losses = accelerator.reduce(torch.stack([out.loss.detach(), out.copy_loss]).float(), "mean")
        record: dict[str, Any] = {
            "loss": float(losses[0]),
            "copy_mse": float(losses[1]),
            "recon_vs_copy": float(losses[0] / losses[1].clamp_min(1e-12)),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
        }
        window_ended = self.upkeep.window_ends(step)
        if window_ended:
            record |= self._end_window(out, step)
        state.last = {key: value for key, value in record.items() if isinstance(value, float)}
        progress = {"loss": f"{record['loss']:.4f}", "vs_copy": f"{record['recon_vs_copy']:.2f}"}
        return StepResult(record, samples=config.batch_size * world, progress=progress, always_log=window_ended)

    def _end_window(self, out: Any, step: int) -> dict[str, Any]:
        """Usage and perplexity of the window (all processes), then dead-code replacement."""
        accelerator, state = self.accelerator, self.state
        counts = accelerator.reduce(self.upkeep.window_counts.to(accelerator.device), "sum").cpu()
        metrics: dict[str, Any] = self.upkeep.window_metrics(counts)
        replaced = 0
        if self.upkeep.replacing(step):
            latents = accelerator.gather(out.latents.contiguous())
            codes = accelerator.gather(out.codes.reshape(-1).contiguous())
            replaced = self.upkeep.replace(self.quantizer.vq.codebook, self.optimizer, counts, latents, codes, step)
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

    # ---- evaluation, checkpoints, export --------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The end-of-run evaluation (:meth:`evaluate_pairs`), logged under ``eval/``."""
        self.evaluation = self.evaluate_pairs()
        return {f"eval/{key}": value for key, value in self.evaluation.items()}

    @torch.no_grad()
    def evaluate_pairs(self) -> dict[str, float]:
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
        self.state.upkeep = self.upkeep.state_dict()
        super().save_checkpoint()

    def write_model(self, directory: Path) -> None:
        if self.accelerator.is_main_process:
            self.quantizer.save_pretrained(directory)

    def summary_fields(self) -> dict[str, Any]:
        state = self.state
        windows = (
            [r for r in self.run.read_metrics() if "codebook/perplexity" in r]
            if self.accelerator.is_main_process
            else []
        )
        return {
            "samples": state.samples,
            "pairs": len(self.pairs),
            "skipped": self.pairs.skipped,
            "frames": self.pairs.memory_report(),
            "samples_per_s": round(state.samples / state.elapsed_s, 2) if state.elapsed_s else None,
            "final_loss": state.last.get("loss"),
            "replaced_codes": state.replaced_codes,
            "min_window_perplexity": min((r["codebook/perplexity"] for r in windows), default=None),
            # after the first tenth of the run: the codebook's first windows start from random codewords
            "min_window_perplexity_after_warmup": min(
                (r["codebook/perplexity"] for r in windows if r["step"] > self.config.max_steps / 10), default=None
            ),
            "replicas_identical": self.replica_max_difference() == 0.0,
            "eval": self.evaluation,
        }


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text for the end of ``agent lapa train``."""
    evaluation = summary["eval"]
    return summary_screen(
        [
            run_row(summary),
            ("steps", f"{summary['steps']}  frame pairs seen {summary['samples']} of {summary['pairs']}"),
            ("time", f"{summary['elapsed_s']} s  ({summary['samples_per_s']} pairs/s)"),
            ("frames", summary["frames"]["mode"]),
            (
                "reconstruct",
                f"MSE {evaluation['recon_mse']:.5f} vs copying the first frame {evaluation['copy_mse']:.5f}"
                f"  (ratio {evaluation['recon_vs_copy']:.3f})",
            ),
            (
                "codebook",
                f"usage {evaluation['codebook_usage']:.2f}, perplexity {evaluation['codebook_perplexity']:.2f}"
                f" (lowest window {summary['min_window_perplexity']}, after the first tenth of the run "
                f"{summary['min_window_perplexity_after_warmup']}), {summary['replaced_codes']} codes replaced",
            ),
            ("replicas", "identical" if summary["replicas_identical"] else "DIFFER"),
            ("model", summary["model"]),
        ]
    )
