"""Codebook upkeep: keep every code of the quantizer alive for the whole run.

The usage of each code is counted over a window of steps (summed over processes). At the end of a
window, codes used less than ``dead_share / codebook_size`` of the time are replaced by encoder
outputs of the last step (gathered from every process), drawn with probability proportional to
their own code's usage so that over-used codes are split, plus a small perturbation; the optimizer
moments of the replaced rows are reset. After the first step the whole codebook can be seeded the
same way from that step's encoder outputs, drawn uniformly (``seed_from_data``). Every input of the
replacement is identical on every process (summed counts, gathered vectors in rank order, a
generator seeded by the step), so DDP replicas compute the same new codebook and never diverge,
without a broadcast.
"""

from __future__ import annotations

import torch

from lapa.config import CodebookUpkeepConfig
from lapa.nsvq import code_counts, perplexity, usage


class CodebookUpkeep:
    def __init__(self, config: CodebookUpkeepConfig, codebook_size: int, seed: int) -> None:
        self.config = config
        self.codebook_size = codebook_size
        self.seed = seed
        self.window_counts = torch.zeros(codebook_size, dtype=torch.float64)

    def observe(self, codes: torch.Tensor) -> None:
        """Count this process's codes of one step."""
        self.window_counts += code_counts(codes.detach().cpu(), self.codebook_size)

    def window_ends(self, step: int) -> bool:
        return step % self.config.every == 0

    def replacing(self, step: int) -> bool:
        return self.config.stop_after is None or step <= self.config.stop_after

    def window_metrics(self, global_counts: torch.Tensor) -> dict[str, float]:
        return {"codebook/usage": usage(global_counts), "codebook/perplexity": perplexity(global_counts)}

    def dead_codes(self, global_counts: torch.Tensor) -> torch.Tensor:
        share = global_counts / global_counts.sum().clamp_min(1)
        return torch.nonzero(share < self.config.dead_share / self.codebook_size).flatten()

    @torch.no_grad()
    def replace(
        self,
        codebook: torch.nn.Parameter,
        optimizer: torch.optim.Optimizer,
        global_counts: torch.Tensor,
        latents: torch.Tensor,
        latent_codes: torch.Tensor,
        step: int,
    ) -> int:
        """Replace the dead codes of ``codebook`` in place; returns how many were replaced.

        ``latents`` (M, D) and ``latent_codes`` (M,) are the encoder outputs of the step and their
        codes, gathered from every process in rank order."""
        dead = self.dead_codes(global_counts)
        share = (global_counts / global_counts.sum().clamp_min(1)).float()
        return self._overwrite(codebook, optimizer, dead, latents, share[latent_codes.long().cpu()] + 1e-6, step)

    @torch.no_grad()
    def seed_codebook(
        self, codebook: torch.nn.Parameter, optimizer: torch.optim.Optimizer, latents: torch.Tensor
    ) -> int:
        """Every code drawn from ``latents`` (the first step's encoder outputs of every process, in rank
        order), distinct rows where there are enough, plus the perturbation."""
        every_code = torch.arange(self.codebook_size)
        return self._overwrite(codebook, optimizer, every_code, latents, torch.ones(len(latents)), step=0)

    def _overwrite(
        self,
        codebook: torch.nn.Parameter,
        optimizer: torch.optim.Optimizer,
        rows: torch.Tensor,
        latents: torch.Tensor,
        weights: torch.Tensor,
        step: int,
    ) -> int:
        """Codebook ``rows`` := latents drawn with ``weights`` + noise; their Adam moments zeroed."""
        if len(rows) == 0 or len(latents) == 0:
            return 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        picks = torch.multinomial(weights, len(rows), replacement=len(rows) > len(latents), generator=generator)
        source = latents.detach().float().cpu()
        scale = float(source.std(dim=0).mean()) if len(source) > 1 else 1.0
        noise = torch.randn(len(rows), source.shape[1], generator=generator) * self.config.noise * scale
        rows = rows.to(codebook.device)
        codebook[rows] = (source[picks] + noise).to(codebook.device, codebook.dtype)
        state = getattr(optimizer, "optimizer", optimizer).state.get(codebook, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment][rows] = 0.0
        return len(rows)

    def reset_window(self) -> None:
        self.window_counts.zero_()

    def state_dict(self) -> dict[str, list[float]]:
        return {"window_counts": self.window_counts.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.window_counts = torch.tensor(state["window_counts"], dtype=torch.float64)
