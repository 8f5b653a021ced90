"""Transformer blocks of the quantizer: multi-head attention through torch's
``scaled_dot_product_attention`` (fused kernels) or the same math written out
(``softmax(q k^T / sqrt(d)) v``, the benchmark baseline); pre-norm blocks with optional
cross-attention.

``auto`` (the default) uses SDPA except where the written-out math is faster: on CPU, when both
sequences are at most ``SHORT_SEQUENCE`` tokens. The temporal blocks attend over the two frames of
each patch, batch x patches sequences of length 2, and torch's CPU SDPA kernel spends about 4x
longer on those than two batched matmuls (``bench/lapa.py`` measures all three choices)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SHORT_SEQUENCE = 8


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Attention as the formula reads: (B, H, Lq, D) x (B, H, Lk, D) -> (B, H, Lq, D)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself when None)."""

    def __init__(self, dim: int, heads: int, implementation: str = "auto", causal: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.implementation = implementation
        self.causal = causal
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def uses_sdpa(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        if self.implementation != "auto":
            return self.implementation == "sdpa"
        short = max(q.shape[-2], k.shape[-2]) <= SHORT_SEQUENCE
        return not (short and q.device.type == "cpu")

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        q = self._split(self.to_q(x))
        k, v = (self._split(part) for part in self.to_kv(source).chunk(2, dim=-1))
        if self.uses_sdpa(q, k):
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            attended = naive_attention(q, k, v, causal=self.causal)
        batch, _, length, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(batch, length, -1))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, optional cross-attention to a context, then an MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        implementation: str = "auto",
        causal: bool = False,
        cross_attention: bool = False,
    ) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, implementation, causal)
        self.norm_cross = nn.LayerNorm(dim) if cross_attention else None
        self.cross_attention = Attention(dim, heads, implementation) if cross_attention else None
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attention(self.norm_self(x))
        if self.cross_attention is not None and self.norm_cross is not None:
            if context is None:
                raise ValueError("this block cross-attends: pass the context tokens")
            x = x + self.cross_attention(self.norm_cross(x), context)
        return x + self.mlp(self.norm_mlp(x))
