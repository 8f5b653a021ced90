"""What trains and how fast: freezing per module, LoRA adapters (peft), AdamW parameter groups
with per-module learning rates (no weight decay on biases and norms), and the warm-up schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_tools.config_files import ConfigError
from magma.training.config import MODULES, LoraConfig, OptimConfig

if TYPE_CHECKING:
    from magma.model import MagmaForCausalLM

LORA_MARKER = "lora_"


def add_lora(model: MagmaForCausalLM, lora: LoraConfig) -> None:
    """Wrap the language model's ``lora.target_modules`` linears with low-rank adapters (in place)."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
    except ImportError:
        raise ConfigError(
            "lora.enabled=true needs peft: pip install 'embodied-agent-toolkit[lora]' (or pip install peft)"
        ) from None

    peft_config = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)
    )
    inject_adapter_in_model(peft_config, model.language_model)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and put the plain layer back; returns how many.
    The result saves and loads as an ordinary checkpoint."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
            merged += 1
    return merged


def set_trainable(model: MagmaForCausalLM, optim: OptimConfig, lora_enabled: bool) -> dict[str, int]:
    """Freeze the modules with ``train: false``; with LoRA only the adapters of the language model
    train. Returns trainable parameter counts per module."""
    counts = {}
    for module_name in MODULES:
        module: nn.Module | None = getattr(model, module_name, None)
        if module is None:  # no action head
            continue
        train = getattr(optim, module_name).train
        for name, parameter in module.named_parameters():
            if module_name == "language_model" and lora_enabled:
                parameter.requires_grad_(LORA_MARKER in name)
            else:
                parameter.requires_grad_(train)
        counts[module_name] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return counts


def is_vector(name: str, parameter: nn.Parameter) -> bool:
    """Biases and norm scales: no weight decay on them."""
    return parameter.ndim < 2


def weight_decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    name: str,
    lr: float | None = None,
    no_decay: Callable[[str, nn.Parameter], bool] = is_vector,
) -> list[dict]:
    """AdamW groups of the trainable parameters: ``name`` with ``weight_decay`` and ``name/no_decay``
    without it (what ``no_decay`` picks: biases and norms by default); an empty group is left out.
    Every trainer builds its optimizer from these groups."""
    decay: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for parameter_name, parameter in named_parameters:
        if parameter.requires_grad:
            (exempt if no_decay(parameter_name, parameter) else decay).append(parameter)
    groups = []
    for suffix, params, group_decay in (("", decay, weight_decay), ("/no_decay", exempt, 0.0)):
        if params:
            groups.append({"name": f"{name}{suffix}", "params": params, "weight_decay": group_decay})
            if lr is not None:
                groups[-1]["lr"] = lr
    return groups


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: per module and its own learning rate, one with weight decay (matrices) and one
    without (biases, norms)."""
    groups = []
    for module_name in MODULES:
        module: nn.Module | None = getattr(model, module_name, None)
        if module is None:
            continue
        lr = getattr(optim, module_name).lr or optim.lr
        groups += weight_decay_groups(module.named_parameters(), optim.weight_decay, module_name, lr)
    return groups


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    # foreach: the multi-tensor update on CPU too (torch picks it on GPUs only); bitwise the same steps, and
    # on a small model's many small tensors the one-tensor-at-a-time loop was a third of the optimizer time
    return torch.optim.AdamW(
        parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, foreach=True
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int):
    """Linear warm-up, then constant or cosine (to ``lr * min_lr_ratio``), per optimizer step."""
    from transformers import get_scheduler

    if optim.schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=optim.warmup_steps)
    return get_scheduler(
        "cosine_with_min_lr",
        optimizer,
        num_warmup_steps=optim.warmup_steps,
        num_training_steps=max_steps,
        scheduler_specific_kwargs={"min_lr_rate": optim.min_lr_ratio},
    )
