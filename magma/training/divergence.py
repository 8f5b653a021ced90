"""Stopping a run that diverged: a non-finite loss or gradient norm ends training before the update
is applied, and non-finite weights are never written as a checkpoint or an export. Every process
takes part in each check (the flag is reduced over processes), so all of them stop together and
none waits forever in a collective. Used by ``agent train``, ``agent rl grpo`` and ``agent lapa train``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from data_tools.errors import UserFacingError

if TYPE_CHECKING:
    from magma.training.run_directory import RunDirectory

LIKELY_CAUSES = (
    "likely causes: a learning rate too high for this model (lower optim.lr or add optim.warmup_steps), "
    "a sample with extreme or corrupt values, or fp16 overflow (use mixed_precision=bf16)"
)


class TrainingDivergedError(UserFacingError, ArithmeticError):
    """The loss, the gradients or the weights of a run stopped being finite numbers."""


def any_process(accelerator: Any, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (a collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), "sum") > 0)


def is_finite(value: float | torch.Tensor | None) -> bool:
    """True for None (not measured) and for finite numbers or all-finite tensors."""
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(value)


def _shown(value: float | torch.Tensor | None) -> str:
    if isinstance(value, torch.Tensor):
        value = float(value.detach().float().sum()) if value.numel() > 1 else float(value)
    return "-" if value is None else f"{value:g}"


def last_checkpoint_note(run: RunDirectory) -> str:
    """Where the run can go on from: its newest complete checkpoint (they are written only while finite)."""
    steps = run.checkpoint_steps()
    if not steps:
        return f"No checkpoint was written in '{run.root}' and nothing was exported"
    return (
        f"Nothing was exported; the last good checkpoint, {run.checkpoint_path(steps[-1])}, is kept and "
        "`--resume` continues from it (a changed optim.* needs a new run_dir)"
    )


def stop_if_diverged(
    accelerator: Any,
    step: int,
    losses: dict[str, float | torch.Tensor | None],
    run: RunDirectory,
    grad_norm: float | torch.Tensor | None = None,
    consequence: str = "so this step's update was not applied",
) -> None:
    """Raise :class:`TrainingDivergedError` on every process when a loss or the gradient norm is not finite
    on any process; call it before ``optimizer.step()`` so the bad update is never applied. Under fp16 the
    loss scaler owns overflowing gradients (it skips that step and lowers the scale), so only losses count."""
    values = dict(losses)
    if getattr(accelerator, "scaler", None) is None:
        values["gradient norm"] = grad_norm
    bad = {name: value for name, value in values.items() if not is_finite(value)}
    if not any_process(accelerator, bool(bad)):
        return
    what = ", ".join(f"{name} {_shown(value)}" for name, value in bad.items()) or "a value on another process"
    raise TrainingDivergedError(
        f"training stopped at step {step}: {what} (not finite), {consequence}; "
        f"{LIKELY_CAUSES}. {last_checkpoint_note(run)}"
    )


def refuse_non_finite_weights(
    accelerator: Any, parameters: Iterable[torch.Tensor], step: int, what: str, run: RunDirectory
) -> None:
    """Raise :class:`TrainingDivergedError` on every process, before ``what`` is written, when any weight
    (this process's parameters or shards) is NaN or infinite on any process."""
    with torch.no_grad():
        bad = any(not bool(torch.isfinite(p).all()) for p in parameters if p.numel())
    if any_process(accelerator, bad):
        raise TrainingDivergedError(
            f"training stopped at step {step}: the weights hold NaN or infinite values, so the {what} was not "
            f"written; {LIKELY_CAUSES}. {last_checkpoint_note(run)}"
        )
