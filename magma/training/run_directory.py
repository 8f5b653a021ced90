"""A run directory: the resolved config, metrics as JSON lines, checkpoints written atomically
(``checkpoints/.step-N.tmp`` renamed to ``checkpoints/step-N`` when complete), the final model.

    runs/NAME/config.yaml  metrics.jsonl  summary.json  checkpoints/step-00000100/  final/
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data_tools.atomic_files import write_json_atomically
from data_tools.config_files import read_yaml
from data_tools.errors import UserFacingError
from magma.training.run_config import RunConfig, config_differences

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE_FILE = "trainer_state.json"


class RunDirectoryError(UserFacingError, ValueError):
    """A run directory that cannot be started or resumed as asked."""


def read_checkpoint_json(path: Path) -> Any:
    """A JSON file of a checkpoint; a missing, cut or garbled one is a CheckpointError naming it."""
    from magma.checkpoint import CORRUPT_FILE, CheckpointError, unreadable_file_message

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(unreadable_file_message(path, err, CORRUPT_FILE)) from None


def check_checkpoint_files(directory: Path) -> None:
    """Every file accelerate wrote into ``directory`` is whole: a safetensors header that covers its file,
    a torch file (``.bin``, ``.pkl``, ``.pt``) that is a complete zip archive. Cheap: reads headers and
    zip directories only. A broken file is a CheckpointError naming it."""
    from magma.checkpoint import CORRUPT_FILE, CheckpointError, open_safetensors

    for path in sorted(directory.rglob("*")):
        if path.suffix == ".safetensors":
            with open_safetensors(path, advice=CORRUPT_FILE):
                pass
        elif path.suffix in (".bin", ".pkl", ".pt") and not zipfile.is_zipfile(path):
            raise CheckpointError(f"cannot read '{path}' (not a complete torch file): {CORRUPT_FILE}")


class RunDirectory:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "config.yaml"
        self.metrics_path = self.root / "metrics.jsonl"
        self.summary_path = self.root / "summary.json"
        self.checkpoints = self.root / "checkpoints"
        self.final_model = self.root / "final"

    # ---- starting and resuming ----------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (temporary directories are not checkpoints)."""
        if not self.checkpoints.is_dir():
            return []
        steps = []
        for path in self.checkpoints.iterdir():
            if path.name.startswith(CHECKPOINT_PREFIX) and (path / TRAINER_STATE_FILE).is_file():
                steps.append(int(path.name.removeprefix(CHECKPOINT_PREFIX)))
        return sorted(steps)

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def check_fresh(self) -> None:
        """Refuse to start a new run in a directory that holds one, so nothing is overwritten."""
        if self.checkpoint_steps() or self.metrics_path.exists():
            raise RunDirectoryError(
                f"'{self.root}' already holds a run (checkpoints or metrics); pass --resume to continue it, "
                "or choose another run_dir=... (nothing was overwritten)"
            )

    def start(self, config: RunConfig) -> None:
        """Create the directory of a fresh run and record its resolved config."""
        self.check_fresh()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.config_path.with_name(".config.yaml.tmp")
        OmegaConf.save(OmegaConf.create(config.to_dict()), staging)
        os.replace(staging, self.config_path)

    def check_resumable(self, config: RunConfig) -> int:
        """The step of the checkpoint to resume from; refuses another run's directory or config."""
        if not self.config_path.is_file():
            raise RunDirectoryError(
                f"cannot resume: '{self.root}' holds no run (no config.yaml); start it without --resume"
            )
        saved = OmegaConf.to_container(read_yaml(self.config_path, "run"))
        differences = config_differences(saved, config.to_dict())  # type: ignore[arg-type]
        if differences:
            raise RunDirectoryError(
                f"cannot resume '{self.root}': it was started with another config ({'; '.join(differences[:5])}). "
                "Resume with the same config (only max_steps, checkpoint.*, eval.*, logging.*, rollout.* may change) "
                "or start a new run_dir"
            )
        steps = self.checkpoint_steps()
        return steps[-1] if steps else 0

    # ---- metrics ------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def truncate_metrics_after(self, step: int) -> None:
        """Drop metric lines of steps after ``step`` (written by a run that was killed before its next
        checkpoint), so that a resumed run's metrics read as one uninterrupted run."""
        if not self.metrics_path.exists():
            return
        kept = [
            line
            for line in self.metrics_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        staging = self.metrics_path.with_name(".metrics.jsonl.tmp")
        staging.write_text("".join(f"{line}\n" for line in kept))
        os.replace(staging, self.metrics_path)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    # ---- checkpoints --------------------------------------------------------------------------
    def staging_path(self, step: int) -> Path:
        return self.checkpoints / f".{CHECKPOINT_PREFIX}{step:08d}.tmp"

    def publish_checkpoint(self, step: int, keep: int) -> Path:
        """Rename the complete staging directory into place, then prune to the ``keep`` newest."""
        final = self.checkpoint_path(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.staging_path(step), final)
        for old in self.checkpoint_steps()[:-keep] if keep > 0 else []:
            shutil.rmtree(self.checkpoint_path(old), ignore_errors=True)
        return final

    def save_accelerate_checkpoint(
        self,
        accelerator: Any,
        step: int,
        trainer_state: dict[str, Any],
        keep: int,
        per_process: dict[str, Any] | None = None,
    ) -> None:
        """accelerate's state (model, optimizer, scheduler, RNG of every process), ``per_process`` files
        (name -> JSON payload, written by each process) and the trainer counters, staged in a temporary
        directory and renamed when complete. Every process calls it."""
        staging = self.staging_path(step)
        if accelerator.is_main_process:
            staging.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        for name, payload in (per_process or {}).items():
            write_json_atomically(staging / name, payload)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomically(staging / TRAINER_STATE_FILE, trainer_state)
            self.publish_checkpoint(step, keep)
        accelerator.wait_for_everyone()

    def load_accelerate_checkpoint(
        self, accelerator: Any, step: int, per_process: list[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore accelerate's state from checkpoint ``step``; returns the trainer counters and this
        process's ``per_process`` files (name -> payload). A truncated or corrupt file is one
        RunDirectoryError naming it and the way on, raised on every process. Every process calls it."""
        from magma.training.divergence import any_process

        checkpoint = self.checkpoint_path(step)
        problem = None
        trainer_state: dict[str, Any] = {}
        files: dict[str, Any] = {}
        try:
            check_checkpoint_files(checkpoint)
            accelerator.load_state(str(checkpoint))
            trainer_state = read_checkpoint_json(checkpoint / TRAINER_STATE_FILE)
            files = {name: read_checkpoint_json(checkpoint / name) for name in per_process or []}
        except UserFacingError as err:
            problem = str(err)
        except (OSError, RuntimeError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            problem = f"cannot load '{checkpoint}' ({type(err).__name__}: {reason})"
        if any_process(accelerator, problem is not None):
            earlier = [s for s in self.checkpoint_steps() if s < step]
            raise RunDirectoryError(
                f"{problem or f'another process could not load {checkpoint}'}. Cannot resume from it: move "
                f"'{checkpoint}' out of '{self.checkpoints}' and pass --resume again to continue from "
                + (f"the checkpoint of step {earlier[-1]}" if earlier else "the start (no earlier checkpoint)")
                + ", or start a new run_dir"
            )
        return trainer_state, files

    def remove_stale_staging(self) -> None:
        """Temporary checkpoint directories left by a killed run."""
        if self.checkpoints.is_dir():
            for path in self.checkpoints.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
                shutil.rmtree(path, ignore_errors=True)
