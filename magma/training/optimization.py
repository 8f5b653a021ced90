"""What trains and how fast: freezing per module, LoRA adapters (peft), AdamW parameter groups
with per-module learning rates (no weight decay on biases and norms), and the warm-up schedule."""

from __future__ import annotations

import torch
from torch import nn

from magma.config import ConfigError
from magma.model import MagmaForCausalLM
from magma.training.config import MODULES, LoraConfig, OptimConfig

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
        module: nn.Module = getattr(model, module_name)
        train = getattr(optim, module_name).train
        for name, parameter in module.named_parameters():
            if module_name == "language_model" and lora_enabled:
                parameter.requires_grad_(LORA_MARKER in name)
            else:
                parameter.requires_grad_(train)
        counts[module_name] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return counts


def parameter_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: per module, one with weight decay (matrices) and one without (biases, norms)."""
    groups = []
    for module_name in MODULES:
        module: nn.Module = getattr(model, module_name)
        lr = getattr(optim, module_name).lr or optim.lr
        decay, no_decay = [], []
        for parameter in module.parameters():
            if parameter.requires_grad:
                (decay if parameter.ndim >= 2 else no_decay).append(parameter)
        for suffix, params, weight_decay in (("", decay, optim.weight_decay), ("/no_decay", no_decay, 0.0)):
            if params:
                groups.append(
                    {"name": f"{module_name}{suffix}", "params": params, "lr": lr, "weight_decay": weight_decay}
                )
    return groups


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


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
