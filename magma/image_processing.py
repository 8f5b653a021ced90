"""Magma's any-resolution multi-crop image processing.

An image is matched to the crop grid that keeps the most of its resolution (candidate grids
(rows, cols) with rows * cols <= num_crops), stretched to that grid and cut into base-size crops.
The vision trunk sees each crop; the projector stitches their features back into one grid.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from data_tools.errors import UserFacingError
from magma.config import ImageConfig

ImageInput = str | Path | Image.Image | np.ndarray | bytes
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # far above what the model sees (a few 512-pixel crops)
# Images up to this size are resized as Magma's processor does (in float, after normalising): exact values,
# for a transient float copy of at most 4 MP x 3 x 4 bytes (48 MB) twice.
EXACT_RESIZE_MAX_PIXELS = 4 * 1024 * 1024


class ImageLoadError(UserFacingError, ValueError):
    """An input that is not a readable image."""


class ImageTooLargeError(ImageLoadError):
    """An image over the pixel budget (or a decompression bomb), refused before it is decoded."""

    code = "image_too_large"  # the policy server's error code for it


def load_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a path, encoded image bytes, PIL image or HxWx3 uint8 array as an RGB PIL image.

    An image of more than ``max_pixels`` pixels is refused before it is decoded (the size comes from the
    header), so a small file that claims a huge canvas (a decompression bomb) costs nothing."""
    if isinstance(source, Image.Image):
        check_image_size(source.width, source.height, max_pixels, "the image")
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] not in (3, 4) or source.dtype != np.uint8:
            raise ImageLoadError(
                f"image array has shape {source.shape} and dtype {source.dtype}; expected HxWx3 uint8 (RGB)"
            )
        check_image_size(source.shape[1], source.shape[0], max_pixels, "the image array")
        return Image.fromarray(source[..., :3])
    if isinstance(source, bytes):
        what, opened = f"{len(source)} bytes", io.BytesIO(source)
        hint = "give PNG, JPEG or WebP bytes"
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(f"image file not found: '{path}'")
        what, opened, hint = f"'{path}'", path, "give a PNG, JPEG or WebP file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(opened)
        try:
            check_image_size(image.width, image.height, max_pixels, what)
            image.load()
        except BaseException:
            image.close()
            raise
        if image.mode == "RGB":
            return image  # loaded, its file closed: no second copy of a large image
        with image:
            return image.convert("RGB")
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"{what}: a decompression bomb (a canvas far larger than the file); send a smaller image"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(
            f"{what} {'are' if isinstance(source, bytes) else 'is'} not a readable image "
            f"({err.__class__.__name__}); {hint}"
        ) from None


def check_image_size(width: int, height: int, max_pixels: int, what: str) -> None:
    """ImageLoadError unless the image has at least one pixel; ImageTooLargeError above ``max_pixels``."""
    if width < 1 or height < 1:
        raise ImageLoadError(f"{what} is {width}x{height} pixels; an image needs at least one pixel")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "send a smaller image (the model sees at most a few megapixels) or raise max_image_pixels "
            "(agent serve --max-image-pixels)"
        )


def rgb_array(image: Image.Image, band_pixels: int = 1 << 20) -> np.ndarray:
    """An RGB image as an (H, W, 3) uint8 array, copied band by band: ``np.asarray`` of a large image
    holds two extra copies of it at once (Pillow joins the pieces of ``tobytes``)."""
    pixels = np.empty((image.height, image.width, 3), dtype=np.uint8)
    rows = max(1, band_pixels // max(1, image.width))
    for top in range(0, image.height, rows):
        bottom = min(image.height, top + rows)
        pixels[top:bottom] = np.asarray(image.crop((0, top, image.width, bottom)))
    return pixels


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


def process_image(
    image: ImageInput, config: ImageConfig, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image -> (crops of shape (rows*cols, 3, base, base), (rows, cols)).

    Up to ``EXACT_RESIZE_MAX_PIXELS`` the steps are Magma's own (to float in [0, 1], normalise, then
    bilinear resize), so pixel values equal its processor's. A larger image is stretched while still
    uint8 and only then converted to float, so it never exists as float32 (four times its decoded size,
    twice over with normalisation); its values then differ from Magma's by at most one 8-bit level."""
    rgb = load_image(image, max_pixels)
    rows, cols = select_grid(rgb.width, rgb.height, config.num_crops, config.base_size)
    size = (rows * config.base_size, cols * config.base_size)
    exact = rgb.width * rgb.height <= EXACT_RESIZE_MAX_PIXELS
    pixels = torch.from_numpy(rgb_array(rgb)).permute(2, 0, 1)
    del rgb
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    if exact:
        normalised = (pixels.float() / 255.0 - mean) / std
        stretched = F.interpolate(normalised[None], size=size, mode="bilinear", align_corners=False)[0]
    else:
        stretched = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]
        stretched = (stretched.float() / 255.0 - mean) / std
    del pixels
    base = config.base_size
    crops = stretched.unfold(1, base, base).unfold(2, base, base)  # (3, rows, cols, base, base)
    crops = crops.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, base, base)
    return crops.contiguous(), (rows, cols)
