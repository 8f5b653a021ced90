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
