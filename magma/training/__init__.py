"""Magma-style pretraining and fine-tuning with accelerate, and the run scaffold all three trainers share:
``run.py`` (:class:`TrainingRun`: accelerate set up, run directory, progress, metrics, evaluation schedule,
checkpoint/resume, export, summary), ``run_config.py`` (the shared checkpoint / logging sections), then the
model trainer's own pieces: the typed run configuration, optimizer groups (per-module learning rates,
freezing, LoRA), the token-weighted optimizer step over processes and accumulation steps, evaluation."""
