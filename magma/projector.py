"""The multimodal projector: ``mlp{N}x_gelu`` from vision features to the LM width, and the
stitching of an image's crops into one token grid with a learned separator after every row."""

from __future__ import annotations

import re

import torch
from torch import nn

from data_tools.config_files import ConfigError
from magma.config import ProjectorConfig


def mlp_depth(projector_type: str) -> int:
    if projector_type == "linear":
        return 1
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"projector.type '{projector_type}' is not supported; use 'linear' or 'mlp<N>x_gelu'")
    return int(match.group(1))


class MultimodalProjector(nn.Module):
    def __init__(self, config: ProjectorConfig, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
        for _ in range(mlp_depth(config.type) - 1):
            layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
        self.mlp = nn.Sequential(*layers)
        self.row_separator = nn.Parameter(torch.zeros(text_dim)) if config.row_separator else None

    def forward(self, crop_features: torch.Tensor) -> torch.Tensor:
        """(crops, C, h, w) vision features -> (crops, h, w, D) projected features."""
        return self.mlp(crop_features.permute(0, 2, 3, 1))

    def stitch(self, crops: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(rows*cols, h, w, D) crops of one image -> (rows*h * (cols*w + 1), D) tokens, row-major."""
        rows, cols = grid
        _, h, w, dim = crops.shape
        image = crops.view(rows, cols, h, w, dim).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, dim)
        if self.row_separator is not None:
            separator = self.row_separator.to(image.dtype).expand(rows * h, 1, dim)
            image = torch.cat([image, separator], dim=1)
        return image.reshape(-1, dim)
