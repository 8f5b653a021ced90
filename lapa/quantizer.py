"""``LatentActionQuantizer``: the LAQ VQ-VAE that learns discrete latent actions between two frames.

- Encoder: both frames cut into patches and embedded; ``spatial_layers`` transformer blocks over
  the patches of each frame, then ``temporal_layers`` causal blocks over the two frames at each
  patch position.
- Quantizer: the difference of the two frames' features (second minus first) on the patch grid,
  pooled by a strided convolution to a sqrt(k) x sqrt(k) grid of k action vectors, projected to the
  codebook's size and quantized by NSVQ (``lapa.nsvq``).
- Decoder: the first frame's patch embeddings (detached, so that the action tokens must carry the
  change) through transformer blocks that cross-attend to the action tokens, predicting the second
  frame's pixels as the first frame plus a predicted change.

Frames are uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1]. A checkpoint is a directory with
``config.json`` and ``model.safetensors``, written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from data_tools.config_files import ConfigError, merge_structured
from data_tools.errors import UserFacingError
from lapa.attention import TransformerBlock
from lapa.config import QuantizerConfig, validate_quantizer_config
from lapa.nsvq import NoiseSubstitutionVQ
from magma.checkpoint import read_safetensors, staged_directory, unreadable_file_message

FORMAT_NAME = "lapa-latent-action-quantizer"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class QuantizerCheckpointError(UserFacingError, ValueError):
    """A quantizer checkpoint that cannot be read, or that does not fit the frames it is given."""


@dataclass
class QuantizerOutput:
    """``loss``: reconstruction MSE; ``copy_loss``: the MSE of copying the first frame (the baseline
    to beat); ``reconstruction`` (B, 3, H, W); ``codes`` (B, k); ``latents``: the pre-quantization
    vectors (B * k, quant_dim), detached, for codebook upkeep."""

    loss: torch.Tensor
    copy_loss: torch.Tensor
    reconstruction: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor


def as_float_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]; float (B, 3, H, W) passes through."""
    if frames.dtype == torch.uint8:
        return frames.permute(0, 3, 1, 2).float() / 255.0
    return frames.float()


class LatentActionQuantizer(nn.Module):
    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        validate_quantizer_config(config, "quantizer config")
        self.config = config
        c = config
        patch_pixels = c.patch_size * c.patch_size * c.channels
        patches = c.grid_side * c.grid_side
        self.patch_embed = nn.Sequential(
            nn.LayerNorm(patch_pixels), nn.Linear(patch_pixels, c.dim), nn.LayerNorm(c.dim)
        )
        self.spatial_position = nn.Parameter(torch.randn(1, patches, c.dim) * 0.02)
        self.time_position = nn.Parameter(torch.randn(1, 2, 1, c.dim) * 0.02)

        def blocks(count: int, **kwargs) -> nn.ModuleList:
            return nn.ModuleList(
                TransformerBlock(c.dim, c.heads, c.mlp_ratio, c.attention, **kwargs) for _ in range(count)
            )

        self.spatial_blocks = blocks(c.spatial_layers)
        self.temporal_blocks = blocks(c.temporal_layers, causal=True, over_frames=True)
        self.encoder_norm = nn.LayerNorm(c.dim)
        pool = c.grid_side // c.code_grid_side
        self.to_action = nn.Conv2d(c.dim, c.quant_dim, kernel_size=pool, stride=pool)
        self.vq = NoiseSubstitutionVQ(c.codebook_size, c.quant_dim)
        self.from_action = nn.Linear(c.quant_dim, c.dim)
        self.action_position = nn.Parameter(torch.randn(1, c.num_codes, c.dim) * 0.02)
        self.decoder_blocks = blocks(c.decoder_layers, cross_attention=True)
        self.decoder_norm = nn.LayerNorm(c.dim)
        self.to_pixels = nn.Linear(c.dim, patch_pixels)
        nn.init.zeros_(self.to_pixels.weight)
        nn.init.zeros_(self.to_pixels.bias)

    # ---- pixels <-> patches -----------------------------------------------------------------------
    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p * p * C), patches in row-major order."""
        c, p, g = self.config.channels, self.config.patch_size, self.config.grid_side
        batch = frames.shape[0]
        x = frames.reshape(batch, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(batch, g * g, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        c, p, g = self.config.channels, self.config.patch_size, self.config.grid_side
        batch = patches.shape[0]
        x = patches.reshape(batch, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(batch, c, g * p, g * p)

    def check_frames(self, frames: torch.Tensor) -> None:
        size = self.config.image_size
        height, width = (frames.shape[1:3]) if frames.dtype == torch.uint8 else frames.shape[2:4]
        if (height, width) != (size, size):
            raise QuantizerCheckpointError(
                f"frames are {width} x {height} pixels but this quantizer takes {size} x {size}; "
                f"resize the frames to {size} px or use a quantizer trained at {width} px"
            )

    # ---- the three parts --------------------------------------------------------------------------
    def embed(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, 2, N, dim) of the two frames (floats in [0, 1]), with spatial positions."""
        tokens = self.patch_embed(torch.stack([self.patchify(first), self.patchify(second)], dim=1))
        return tokens + self.spatial_position.unsqueeze(1)

    def encode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Features (B, 2, N, dim) of the two frames from their patch embeddings."""
        batch = embeddings.shape[0]
        x = embeddings + self.time_position
        patches = x.shape[2]
        x = x.reshape(batch * 2, patches, -1)
        for block in self.spatial_blocks:
            x = block(x)
        x = x.view(batch, 2, patches, -1)
        for block in self.temporal_blocks:  # attention along the frame axis, no transposes
            x = block(x)
        return self.encoder_norm(x)

    def action_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """The change between the frames' features pooled to k vectors (B, k, quant_dim)."""
        delta = features[:, 1] - features[:, 0]
        batch, _, dim = delta.shape
        side = self.config.grid_side
        grid = delta.transpose(1, 2).reshape(batch, dim, side, side)
        return self.to_action(grid).flatten(2).transpose(1, 2)

    def decode(self, first_embeddings: torch.Tensor, actions: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """The predicted second frame (B, 3, H, W) from the first frame's patch embeddings and the action
        vectors."""
        context = self.from_action(actions) + self.action_position
        x = first_embeddings.detach()
        for block in self.decoder_blocks:
            x = block(x, context)
        change = self.unpatchify(self.to_pixels(self.decoder_norm(x)))
        return first + change

    # ---- entry points -----------------------------------------------------------------------------
    def forward(self, first: torch.Tensor, second: torch.Tensor) -> QuantizerOutput:
        self.check_frames(first)
        first, second = as_float_frames(first), as_float_frames(second)
        embeddings = self.embed(first, second)
        quantized = self.vq(self.action_vectors(self.encode(embeddings)))
        reconstruction = self.decode(embeddings[:, 0], quantized.vectors, first)
        return QuantizerOutput(
            loss=torch.nn.functional.mse_loss(reconstruction, second),
            copy_loss=torch.nn.functional.mse_loss(first, second).detach(),
            reconstruction=reconstruction,
            codes=quantized.codes,
            latents=quantized.inputs,
        )

    @torch.no_grad()
    def encode_codes(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The latent action (B, k) of each frame pair: the nearest codeword of each action vector."""
        self.check_frames(first)
        actions = self.action_vectors(self.encode(self.embed(as_float_frames(first), as_float_frames(second))))
        return self.vq.nearest(actions.reshape(-1, actions.shape[-1])).reshape(actions.shape[:2])

    # ---- checkpoints ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors``, staged in a temporary directory and renamed."""
        with staged_directory(directory) as staging:
            config = {"format": FORMAT_NAME, **self.config.to_dict()}
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
            save_file(state, str(staging / WEIGHTS_FILE))
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, attention: str | None = None, image_size: int | None = None
    ) -> LatentActionQuantizer:
        """Load a checkpoint; ``image_size`` (when given) must be the one it was trained at."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise QuantizerCheckpointError(
                f"'{directory}' is not a latent action quantizer checkpoint (it needs {CONFIG_FILE} and "
                f"{WEIGHTS_FILE}); give the final/ directory of an `agent lapa train` run"
            )
        try:
            raw = json.loads(config_path.read_text())
        except (ValueError, RecursionError) as err:  # bad JSON, bytes that are not text, nesting too deep
            raise QuantizerCheckpointError(unreadable_file_message(config_path, err)) from None
        if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT_NAME:
            raise QuantizerCheckpointError(
                f"'{directory}' holds another kind of model (its config.json has no format '{FORMAT_NAME}'); "
                "give the final/ directory of an `agent lapa train` run"
            )
        if attention is not None:
            raw["attention"] = attention
        try:
            config = merge_structured(QuantizerConfig, raw, [], str(config_path))
        except ConfigError as err:
            raise QuantizerCheckpointError(str(err)) from None
        if image_size is not None and image_size != config.image_size:
            raise QuantizerCheckpointError(
                f"the quantizer '{directory}' was trained on {config.image_size} x {config.image_size} frames, "
                f"not {image_size} x {image_size}; label at image size {config.image_size} (or leave it unset), "
                f"or train a quantizer at {image_size} px"
            )
        model = cls(config)
        try:
            model.load_state_dict(read_safetensors(directory / WEIGHTS_FILE, QuantizerCheckpointError))
        except RuntimeError as error:  # missing, unexpected or mis-shaped tensors
            raise QuantizerCheckpointError(
                f"the weights in '{directory / WEIGHTS_FILE}' do not fit its config.json "
                f"({str(error).splitlines()[0][:200]}); use the config.json saved with these weights"
            ) from None
        return model.eval()
