"""Magma-style pretraining and fine-tuning with accelerate: the typed run configuration, optimizer
groups (per-module learning rates, freezing, LoRA), the training loop with token-weighted loss
over processes and accumulation steps, evaluation, and run directories with exact resume."""
