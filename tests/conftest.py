"""Shared fixtures: the real tiny model, its processor and real image files written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magma.config import MagmaConfig, load_config
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_config() -> MagmaConfig:
    return load_config("magma-tiny")


@pytest.fixture
def tiny_model(tiny_config: MagmaConfig) -> MagmaForCausalLM:
    torch.manual_seed(0)
    model = MagmaForCausalLM(tiny_config).eval()
    with torch.no_grad():  # a non-zero separator, so that its placement is visible in outputs
        model.projector.row_separator.normal_()
    return model


@pytest.fixture(scope="session")
def tiny_processor(tiny_config: MagmaConfig) -> MagmaProcessor:
    return MagmaProcessor.from_config(tiny_config)


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    return [write_image(tmp_path / "wide.png", 200, 100, 1), write_image(tmp_path / "tall.jpg", 100, 200, 2)]
