"""Continuous action chunks and proprioception: the parts of the model besides the token head.

The processor marks the positions these parts own in ``action_slots`` (one int per token: ``NO_SLOT``
for ordinary tokens, ``STATE_SLOT`` for the one position holding the projected proprioceptive state,
``h + 1`` for the h-th action query). :class:`ActionModules` writes their embeddings into the sequence
before the language model runs, and reads the query positions' final hidden states back out:

- ``l1`` (OpenVLA-OFT's parallel decoding): a small MLP maps each query's hidden state to one action of
  the chunk; trained with L1 against the normalised actions, the whole chunk in one forward pass.
- ``flow`` (pi0/SmolVLA's action expert): a small transformer over the chunk predicts the velocity of the
  flow from noise to actions, conditioned on the query hidden states and the flow time; trained with flow
  matching (``x_t = t * noise + (1 - t) * actions``, target ``noise - actions``, times drawn from
  pi0's Beta(1.5, 1)) and sampled from noise at ``t = 1`` in ``flow_steps`` Euler steps to ``t = 0``.

Actions are in the codec's normalised units ([-1, 1] by the dataset's q01/q99) in and out of the heads;
padded steps past an episode's end carry ``action_mask`` False and add nothing to the loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from data_tools.errors import UserFacingError
from magma.config import ActionHeadConfig

NO_SLOT = -1
FLOW_DRAWS_PER_CHUNK = 4  # (noise, time) draws per chunk in the flow head's loss
STATE_SLOT = 0  # the action query h (0-based) is slot h + 1


class ActionHeadError(UserFacingError, ValueError):
    """Inputs or a request that the model's action head cannot serve (a missing head, state or slot)."""


def query_slot(step: int) -> int:
    return step + 1


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean of ``values`` (B, H, D) over the steps where ``mask`` (B, H) is True, and how many values that is."""
    weights = mask.to(values.dtype).unsqueeze(-1).expand_as(values)
    count = int(weights.sum())
    if count == 0:
        return values.sum() * 0.0, 0
    return (values * weights).sum() / count, count


class L1ChunkHead(nn.Module):
    """Query hidden states (B, H, hidden) -> actions (B, H, D), one shared MLP per step."""

    def __init__(self, lm_hidden: int, action: ActionHeadConfig) -> None:
        super().__init__()
        width = action.hidden_size
        self.mlp = nn.Sequential(
            nn.LayerNorm(lm_hidden),
            nn.Linear(lm_hidden, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, action.action_dim),
        )

    def loss(
        self, condition: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, int]:
        return masked_mean((self.mlp(condition) - targets).abs(), mask)

    def sample(self, condition: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mlp(condition)


def time_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    """Sinusoidal embedding of flow times (B,) in [0, 1] -> (B, width)."""
    half = width // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half, 1))
    angles = t[:, None] * 1000.0 * frequencies[None]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(embedding, (0, width - embedding.shape[-1]))


class FlowChunkHead(nn.Module):
    """A small transformer over the H steps of a noisy chunk: (x_t, t, query hidden states) -> velocity."""

    def __init__(self, lm_hidden: int, action: ActionHeadConfig) -> None:
        super().__init__()
        width = action.hidden_size
        self.width = width
        self.steps = action.flow_steps
        self.condition = nn.Sequential(nn.LayerNorm(lm_hidden), nn.Linear(lm_hidden, width))
        self.action_in = nn.Linear(action.action_dim, width)
        self.time_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.step_position = nn.Parameter(torch.randn(action.chunk_length, width) * 0.02)
        heads = next(count for count in (8, 4, 2, 1) if width % count == 0)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, action.flow_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, action.action_dim))

    def velocity(self, noisy: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = self.action_in(noisy) + self.condition(condition) + self.step_position
        x = x + self.time_in(time_embedding(t.to(x.dtype), self.width))[:, None, :]
        return self.out(self.blocks(x))

    def loss(
        self, condition: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, int]:
        # several (noise, time) draws per chunk: the language model runs once, the small expert a few times,
        # and the gradient that reaches the language model is far less noisy
        draws = FLOW_DRAWS_PER_CHUNK
        condition, mask = condition.repeat_interleave(draws, 0), mask.repeat_interleave(draws, 0)
        targets = targets.repeat_interleave(draws, 0)
        shape, device, dtype = targets.shape, targets.device, condition.dtype
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        # pi0's Beta(1.5, 1) times (u^(1/1.5)): more weight on the noisy end, where the plan is decided; near
        # t = 0 the target (noise - actions) is all but unpredictable from x_t and only adds variance
        uniform = torch.rand(shape[0], generator=generator, device=device, dtype=dtype)
        t = uniform ** (1 / 1.5) * 0.999 + 0.001
        noisy = t[:, None, None] * noise + (1.0 - t[:, None, None]) * targets.to(dtype)
        velocity = self.velocity(noisy, t, condition)
        loss, count = masked_mean((velocity - (noise - targets.to(dtype))) ** 2, mask)
        return loss, count // draws

    def sample(self, condition: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch, steps = condition.shape[0], self.step_position.shape[0]
        x = torch.randn(
            (batch, steps, self.out[-1].out_features),
            generator=generator,
            device=condition.device,
            dtype=condition.dtype,
        )
        dt = 1.0 / self.steps
        for index in range(self.steps):
            t = torch.full((batch,), 1.0 - index * dt, device=condition.device, dtype=condition.dtype)
            x = x - dt * self.velocity(x, t, condition)
        return x


class ActionModules(nn.Module):
    """The state projector (``state_dim`` > 0), the action queries and the chunk head (``l1``/``flow``)."""

    def __init__(self, action: ActionHeadConfig, lm_hidden: int) -> None:
        super().__init__()
        self.config = action
        self.state_projector = (
            nn.Sequential(nn.Linear(action.state_dim, lm_hidden), nn.GELU(), nn.Linear(lm_hidden, lm_hidden))
            if action.state_dim
            else None
        )
        self.queries = nn.Parameter(torch.randn(action.chunk_length, lm_hidden) * 0.02) if action.parallel else None
        heads = {"l1": L1ChunkHead, "flow": FlowChunkHead}
        self.decoder = heads[action.head](lm_hidden, action) if action.parallel else None

    def place(self, embeds: torch.Tensor, slots: torch.Tensor, states: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the projected state and the action queries written at their slots."""
        state_positions = slots == STATE_SLOT
        if bool(state_positions.any()):
            if self.state_projector is None:
                raise ActionHeadError("the input has a state slot but the model takes no state (action.state_dim=0)")
            if states is None:
                raise ActionHeadError("the input has a state slot but no states were given")
            projected = self.state_projector(states.to(embeds.dtype))
            embeds = torch.where(state_positions[..., None], projected[:, None, :], embeds)
        query_positions = slots >= query_slot(0)
        if bool(query_positions.any()):
            if self.queries is None:
                raise ActionHeadError(f"the input has action query slots but action.head={self.config.head}")
            steps = (slots - query_slot(0)).clamp(0, self.queries.shape[0] - 1)
            embeds = torch.where(query_positions[..., None], self.queries[steps].to(embeds.dtype), embeds)
        return embeds

    def query_hidden(self, hidden: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The final hidden states at each row's action queries, (B, H, hidden) in step order (zeros for a
        row without queries)."""
        rows, columns = torch.nonzero(slots >= query_slot(0), as_tuple=True)
        gathered = hidden.new_zeros(hidden.shape[0], self.config.chunk_length, hidden.shape[-1])
        gathered[rows, slots[rows, columns] - query_slot(0)] = hidden[rows, columns]
        return gathered

    def loss(
        self,
        hidden: torch.Tensor,
        slots: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, int]:
        """The head's loss over the valid steps of the chunks (normalised units) and the count of values in it."""
        assert self.decoder is not None
        condition = self.query_hidden(hidden, slots)
        return self.decoder.loss(condition, targets.to(condition.dtype), mask, generator)

    def sample(
        self, hidden: torch.Tensor, slots: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised action chunks (B, H, D)."""
        assert self.decoder is not None
        return self.decoder.sample(self.query_hidden(hidden, slots), generator)
