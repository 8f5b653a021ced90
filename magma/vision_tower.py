"""The vision tower: a timm ConvNeXt trunk (stem + four stages), giving a stride-32 feature map."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from timm.models.convnext import ConvNeXt
from torch import nn

from data_tools.errors import UserFacingError
from magma.config import VisionConfig

# Prefixes under which ConvNeXt trunk weights appear in the files we accept as `pretrained=`.
PRETRAINED_TRUNK_PREFIXES = (
    "vision_tower.clip_vision_model.trunk.",  # a Magma-8B checkpoint
    "visual.trunk.",  # an open_clip CLIP-ConvNeXt checkpoint
    "trunk.",  # our own vision tower
    "",  # a bare timm ConvNeXt
)


class PretrainedWeightsError(UserFacingError, ValueError):
    """A `pretrained=` weights file that is missing or does not fit the trunk."""


class ConvNextVisionTower(nn.Module):
    """Pixels (N, 3, H, W) -> features (N, dims[-1], H/32, W/32)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ConvNeXt(
            depths=tuple(config.depths),
            dims=tuple(config.dims),
            ls_init_value=config.layer_scale_init,
            drop_path_rate=config.drop_path_rate,
            norm_eps=config.norm_eps,
            num_classes=0,
            global_pool="",
        )
        # Magma uses stem + stages only; the classifier head would be dead weight (and unused
        # parameters break DDP), so it is removed.
        self.trunk.head = nn.Identity()
        self.set_gradient_checkpointing(config.gradient_checkpointing)
        if config.pretrained:
            self.load_pretrained(config.pretrained)

    @property
    def feature_dim(self) -> int:
        return self.config.dims[-1]

    def set_gradient_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.trunk.stem(pixel_values)
        return self.trunk.stages(x)

    def load_pretrained(self, path: str | Path) -> None:
        """Load trunk weights from a local open_clip / timm / Magma file (safetensors or torch)."""
        state = read_state_dict(Path(path))
        wanted = self.trunk.state_dict()
        for prefix in PRETRAINED_TRUNK_PREFIXES:
            found = {
                k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix) :] in wanted
            }
            if found:
                break
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise PretrainedWeightsError(
                f"'{path}' has no ConvNeXt trunk weights for {len(missing)} tensors (e.g. {missing[:3]}); "
                f"expected keys under one of {[p or '<no prefix>' for p in PRETRAINED_TRUNK_PREFIXES]}"
            )
        for name, tensor in found.items():
            if tensor.shape != wanted[name].shape:
                raise PretrainedWeightsError(
                    f"'{path}': {name} has shape {tuple(tensor.shape)}, the trunk expects "
                    f"{tuple(wanted[name].shape)}; check vision.dims/depths against the weights"
                )
        self.trunk.load_state_dict(found, strict=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch state-dict file (weights only, never pickled code)."""
    if not path.is_file():
        raise PretrainedWeightsError(f"weights file not found: '{path}'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as error:
        raise PretrainedWeightsError(
            f"cannot read weights from '{path}' ({type(error).__name__}: {str(error)[:200]}); the file is cut or "
            "is not a safetensors/torch state dict: download or export it again"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"'{path}' does not hold a state dict")
    return state
