"""NSVQ: noise-substitution vector quantization (Vali & Bäckström, 2022).

Training replaces the quantization error by a random vector of the same norm,
``z + ||z - c|| * u / ||u||`` with ``u ~ N(0, I)`` and ``c`` the nearest codeword, so gradients
reach both the encoder (through ``z``) and the codebook (through the error's norm) without a
straight-through estimator or commitment losses. Evaluation returns the nearest codeword itself.
Codebook statistics (usage, perplexity) are pure functions of code counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Quantized:
    """``vectors`` (..., quant_dim): noise-substituted in training, the codewords in evaluation;
    ``codes`` (...): the index of each vector's nearest codeword; ``inputs``: the vectors before
    quantization (detached), for codebook upkeep."""

    vectors: torch.Tensor
    codes: torch.Tensor
    inputs: torch.Tensor


class NoiseSubstitutionVQ(nn.Module):
    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The index of the nearest codeword (squared Euclidean distance) of each row of ``z`` (M, D)."""
        codebook = self.codebook.detach()
        distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(1)
        return distances.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> Quantized:
        shape = z.shape
        flat = z.reshape(-1, shape[-1])
        codes = self.nearest(flat.detach())
        hard = self.codebook[codes]
        if self.training:
            noise = torch.randn_like(flat)
            error_norm = (flat - hard).norm(dim=1, keepdim=True)
            vectors = flat + error_norm * noise / noise.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            vectors = hard
        return Quantized(vectors.reshape(shape), codes.reshape(shape[:-1]), flat.detach())


def code_counts(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in ``codes`` (any shape), as float64 (codebook_size,)."""
    return torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).double()


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution: codebook_size when every code is used equally, 1 for one code."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    probabilities = counts[counts > 0] / total
    return float(torch.exp(-(probabilities * probabilities.log()).sum()))


def usage(counts: torch.Tensor) -> float:
    """The share of codes used at least once."""
    return float((counts > 0).double().mean())
