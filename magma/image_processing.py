"""Magma's any-resolution multi-crop image processing.

An image is matched to the crop grid that keeps the most of its resolution (candidate grids
(rows, cols) with rows * cols <= num_crops), stretched to that grid and cut into base-size crops.
The vision trunk sees each crop; the projector stitches their features back into one grid.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from magma.config import ImageConfig
from magma.errors import UserFacingError

ImageInput = str | Path | Image.Image | np.ndarray | bytes


class ImageLoadError(UserFacingError, ValueError):
    """An input that is not a readable image."""


def load_image(source: ImageInput) -> Image.Image:
    """Open a path, encoded image bytes, PIL image or HxWx3 uint8 array as an RGB PIL image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, bytes):
        try:
            with Image.open(io.BytesIO(source)) as image:
                image.load()
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ImageLoadError(
                f"{len(source)} bytes that are not a readable image ({err.__class__.__name__}); "
                "give PNG, JPEG or WebP bytes"
            ) from None
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] not in (3, 4) or source.dtype != np.uint8:
            raise ImageLoadError(
                f"image array has shape {source.shape} and dtype {source.dtype}; expected HxWx3 uint8 (RGB)"
            )
        return Image.fromarray(source[..., :3])
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: '{path}'")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ImageLoadError(
            f"'{path}' is not a readable image ({err.__class__.__name__}); give a PNG, JPEG or WebP file"
        ) from None


def candidate_grids(num_crops: int) -> list[tuple[int, int]]:
    """Grids as (rows, cols), in Magma's search order (width multiple outer, height multiple inner)."""
    grids = []
    for cols in range(1, num_crops + 1):
        for rows in range(1, num_crops // cols + 1):
            grids.append((rows, cols))
    return grids


def select_grid(width: int, height: int, num_crops: int, base_size: int) -> tuple[int, int]:
    """The best-fit grid: most effective (undistorted) resolution, then least wasted area."""
    best, best_effective, best_wasted = (1, 1), 0, float("inf")
    for rows, cols in candidate_grids(num_crops):
        grid_w, grid_h = cols * base_size, rows * base_size
        scale = min(grid_w / width, grid_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = grid_w * grid_h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (rows, cols), effective, wasted
    return best


def image_token_count(grid: tuple[int, int], config: ImageConfig, row_separator: bool = True) -> int:
    """Tokens one image becomes: feature rows x (feature cols + 1 row separator)."""
    side = config.base_size // config.patch_stride
    rows, cols = grid[0] * side, grid[1] * side
    return rows * (cols + (1 if row_separator else 0))


def process_image(image: ImageInput, config: ImageConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image -> (crops of shape (rows*cols, 3, base, base), (rows, cols))."""
    rgb = load_image(image)
    rows, cols = select_grid(rgb.width, rgb.height, config.num_crops, config.base_size)
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    pixels = (pixels - mean) / std
    size = (rows * config.base_size, cols * config.base_size)
    stretched = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)[0]
    base = config.base_size
    crops = stretched.unfold(1, base, base).unfold(2, base, base)  # (3, rows, cols, base, base)
    crops = crops.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, base, base)
    return crops.contiguous(), (rows, cols)
