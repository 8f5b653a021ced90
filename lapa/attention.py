"""Transformer blocks of the quantizer: multi-head attention through torch's
``scaled_dot_product_attention`` (fused kernels) or the same math written out
(``softmax(q k^T / sqrt(d)) v``, the benchmark baseline); pre-norm blocks with optional
cross-attention.

``auto`` (the default) uses SDPA except where the written-out math is faster: on CPU, when both
sequences are at most ``SHORT_SEQUENCE`` tokens. The temporal blocks attend over the two frames of
each patch, batch x patches sequences of length 2, and torch's CPU SDPA kernel spends about 4x
longer on those than two batched matmuls (``bench/lapa.py`` measures all three choices).

Temporal blocks take their tokens as (B, frames, patches, dim), the layout the spatial blocks leave
them in, and attend along the frame axis. For two causal frames ``auto`` on CPU writes that
attention out per token (:func:`two_frame_causal_attention`): no transposes to (B * patches, 2, dim)
and back, no batched matmuls of 2 x 2 scores, and no query projection for the first frame, whose
output is its own value whatever its query."""

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


def two_frame_causal_attention(q_second: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over two frames, token by token: ``k`` and ``v`` are (B, 2, ..., D) with the
    frames on dim 1, ``q_second`` (B, ..., D) the second frame's queries. The first frame sees only
    itself (its output is its value); the second attends to both with ``softmax(q k^T / sqrt(d))``.
    The same numbers as :func:`naive_attention` with ``causal=True`` up to float summation order."""
    scale = math.sqrt(q_second.shape[-1])
    scores = torch.stack([(q_second * k[:, 0]).sum(-1), (q_second * k[:, 1]).sum(-1)], dim=-1) / scale
    weights = scores.softmax(dim=-1).unsqueeze(-1)
    second = weights[..., 0, :] * v[:, 0] + weights[..., 1, :] * v[:, 1]
    return torch.stack([v[:, 0], second], dim=1)


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (itself when None); with ``over_frames`` the
    tokens are (B, frames, patches, dim) and each patch position attends along the frame axis."""

    def __init__(
        self, dim: int, heads: int, implementation: str = "auto", causal: bool = False, over_frames: bool = False
    ) -> None:
        super().__init__()
        self.heads = heads
        self.implementation = implementation
        self.causal = causal
        self.over_frames = over_frames
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

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., heads, dim / heads), a view."""
        return x.unflatten(-1, (self.heads, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.uses_sdpa(q, k):
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return naive_attention(q, k, v, causal=self.causal)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.over_frames:
            return self._forward_over_frames(x)
        source = x if context is None else context
        q = self._split(self.to_q(x))
        k, v = (self._split(part) for part in self.to_kv(source).chunk(2, dim=-1))
        attended = self._attend(q, k, v)
        batch, _, length, _ = attended.shape
        return self.out(attended.transpose(1, 2).reshape(batch, length, -1))

    def _forward_over_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention along dim 1 of ``x`` (B, frames, patches, dim)."""
        batch, frames, patches, dim = x.shape
        k, v = (self._heads(part) for part in self.to_kv(x).chunk(2, dim=-1))  # (B, frames, patches, heads, d)
        if self.causal and frames == 2 and self.implementation == "auto" and x.device.type == "cpu":
            attended = two_frame_causal_attention(self._heads(self.to_q(x[:, 1])), k, v)
        else:  # sequences of frames: (B, patches, heads, frames, d)
            q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (self._heads(self.to_q(x)), k, v))
            shape = (batch * patches, self.heads, frames, dim // self.heads)
            q, k, v = (t.reshape(shape) for t in (q, k, v))
            attended = self._attend(q, k, v).view(batch, patches, self.heads, frames, -1).permute(0, 3, 1, 2, 4)
        return self.out(attended.reshape(batch, frames, patches, dim))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, optional cross-attention to a context, then an MLP. With ``over_frames``
    the tokens are (B, frames, patches, dim) and self-attention runs along the frame axis."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        implementation: str = "auto",
        causal: bool = False,
        cross_attention: bool = False,
        over_frames: bool = False,
    ) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, implementation, causal, over_frames)
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
