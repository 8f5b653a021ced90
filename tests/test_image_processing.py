import numpy as np
import pytest
import torch

from magma.config import load_config
from magma.image_processing import (
    ImageLoadError,
    candidate_grids,
    image_token_count,
    load_image,
    process_image,
    select_grid,
)

MAGMA_8B_IMAGE = load_config("magma-8b").image


@pytest.mark.parametrize(
    ("width", "height", "grid"),
    [(640, 480, (1, 2)), (1920, 1080, (2, 2)), (512, 512, (1, 1)), (480, 640, (2, 1)), (300, 2000, (4, 1))],
)
def test_grid_follows_magma_best_fit_rule(width, height, grid):
    assert select_grid(width, height, MAGMA_8B_IMAGE.num_crops, MAGMA_8B_IMAGE.base_size) == grid


def test_candidate_grids_respect_crop_budget():
    grids = candidate_grids(4)
    assert set(grids) == {(r, c) for r in range(1, 5) for c in range(1, 5) if r * c <= 4}
    assert grids[0] == (1, 1)


def test_one_512_crop_is_272_tokens():
    assert image_token_count((1, 1), MAGMA_8B_IMAGE) == 16 * 17 == 272
    assert image_token_count((1, 2), MAGMA_8B_IMAGE) == 16 * 33
    assert image_token_count((2, 2), MAGMA_8B_IMAGE) == 32 * 33


def test_crops_tile_the_stretched_image():
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    image[:, 320:] = 255  # right half white: the second crop of a 1x2 grid
    crops, grid = process_image(image, MAGMA_8B_IMAGE)
    assert grid == (1, 2)
    assert crops.shape == (2, 3, 512, 512)
    mean = torch.tensor(MAGMA_8B_IMAGE.mean).view(3, 1, 1)
    std = torch.tensor(MAGMA_8B_IMAGE.std).view(3, 1, 1)
    # bilinear stretching blends a couple of columns at the seam; elsewhere each crop is one colour
    assert torch.allclose(crops[0][..., :-2], ((0 - mean) / std).expand(3, 512, 510), atol=1e-5)
    assert torch.allclose(crops[1][..., 2:], ((1 - mean) / std).expand(3, 512, 510), atol=1e-5)


def test_not_an_image_is_a_clear_error(tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is text, not pixels")
    with pytest.raises(ImageLoadError, match=r"notes\.png.*not a readable image"):
        load_image(bogus)
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="HxWx3 uint8"):
        load_image(np.zeros((4, 4), dtype=np.float32))


def test_pixel_values_follow_magmas_own_steps_up_to_the_exact_size_and_one_level_above():
    """Magma's processor turns the image into floats in [0, 1], normalises, then resizes bilinearly; ours does
    the same up to EXACT_RESIZE_MAX_PIXELS (equal values) and resizes in uint8 above it (memory-bound)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from magma.image_processing import EXACT_RESIZE_MAX_PIXELS, process_image

    config = load_config("magma-tiny").image
    mean, std = torch.tensor(config.mean).view(3, 1, 1), torch.tensor(config.std).view(3, 1, 1)
    rng = np.random.default_rng(0)
    for height, width in ((90, 300), (2100, 2100)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        crops, (rows, cols) = process_image(image, config)
        size = (rows * config.base_size, cols * config.base_size)
        theirs = (torch.from_numpy(image).permute(2, 0, 1).float() / 255.0 - mean) / std
        theirs = F.interpolate(theirs[None], size=size, mode="bilinear")[0]
        base = config.base_size
        theirs = theirs.unfold(1, base, base).unfold(2, base, base).permute(1, 2, 0, 3, 4).reshape(-1, 3, base, base)
        difference = float((crops - theirs).abs().max())
        if height * width <= EXACT_RESIZE_MAX_PIXELS:
            assert difference == 0.0
        else:
            assert difference <= 1 / (255 * min(config.std)) + 1e-6
