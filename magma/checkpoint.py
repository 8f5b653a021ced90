"""Checkpoints: our own directory format, and import of the public Magma-8B layout.

Own format: ``config.json`` (the MagmaConfig fields), ``model.safetensors`` (or shards plus
``model.safetensors.index.json`` above ``max_shard_size``), tokenizer files and
``dataset_statistics.json`` (robot action statistics, OpenVLA's file shape).
A directory is written under a temporary name and renamed when complete.

Magma-8B layout: read by the same loader, its names and config translated by
``magma.magma8b_layout``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from data_tools.config_files import ConfigError
from data_tools.errors import UserFacingError
from magma.actions import ACTION_STATISTICS_FILENAME, ActionStatistics, load_action_statistics, save_action_statistics
from magma.configuration_magma import MagmaConfig
from magma.model import MagmaForCausalLM, default_dtype

FORMAT_NAME = "magma-agent-toolkit"
CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PROCESSOR_CONFIG_FILE = "processor_config.json"


class CheckpointError(UserFacingError, ValueError):
    """A checkpoint directory that cannot be read or does not fit the model."""


# ---- saving -------------------------------------------------------------------------------------
@contextmanager
def staged_directory(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``directory`` to write into; on success it replaces ``directory``
    (an interrupted save leaves the old one, never a half-written one), on failure it is removed."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_pretrained(
    model: MagmaForCausalLM,
    directory: str | Path,
    tokenizer: Any | None = None,
    action_statistics: dict[str, ActionStatistics] | None = None,
    max_shard_size: int | str = "4GB",
    state_statistics: dict[str, ActionStatistics] | None = None,
) -> Path:
    """Write the checkpoint atomically: a temporary directory renamed over ``directory`` when done
    (``state_statistics``: the proprioceptive state's, saved beside the action statistics of the same key)."""
    with staged_directory(directory) as staging:
        config = {"format": FORMAT_NAME, "architectures": [type(model).__name__], **model.config.to_dict()}
        if tokenizer is not None:
            config["tokenizer"] = None  # the tokenizer now lives in the checkpoint itself
            tokenizer.save_pretrained(str(staging))
            write_processor_config(staging)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_torch_state_dict(state, staging, max_shard_size=max_shard_size)
        if action_statistics:
            save_action_statistics(staging / ACTION_STATISTICS_FILENAME, action_statistics, state_statistics)
    return Path(directory)


def write_processor_config(directory: Path) -> Path:
    """``processor_config.json`` naming MagmaProcessor: AutoProcessor looks there first, so a broken config
    is reported instead of being skipped for the bare tokenizer."""
    path = directory / PROCESSOR_CONFIG_FILE
    path.write_text(json.dumps({"processor_class": "MagmaProcessor"}) + "\n")
    return path


# ---- reading ------------------------------------------------------------------------------------
CORRUPT_FILE = "the file is truncated or corrupt (a copy cut short, a full disk)"
REWRITE_ADVICE = (
    f"{CORRUPT_FILE}; re-export the checkpoint (save_pretrained, or rerun the training's export), "
    "download it again, or use an earlier checkpoint"
)


def unreadable_file_message(path: str | Path, err: BaseException, advice: str = REWRITE_ADVICE) -> str:
    """One line naming a checkpoint file that cannot be read, why, and what to do about it."""
    reason = (str(err).splitlines() or [type(err).__name__])[0]
    return f"cannot read '{path}' ({reason}): {advice}"


@contextmanager
def open_safetensors(
    path: str | Path,
    device: str | torch.device = "cpu",
    error: type[UserFacingError] = CheckpointError,
    advice: str = REWRITE_ADVICE,
) -> Iterator[Any]:
    """``safe_open`` whose failures (a cut or garbled file, while opening or reading tensors) become one
    ``error`` naming the file and the fix."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            yield handle
    except (SafetensorError, OSError) as err:
        raise error(unreadable_file_message(path, err, advice)) from None


def read_safetensors(path: str | Path, error: type[UserFacingError] = CheckpointError) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a cut or garbled file is one ``error`` naming it and the fix."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise error(unreadable_file_message(path, err)) from None


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bytes that are not UTF-8 text
        raise CheckpointError(unreadable_file_message(path, err)) from None
    except RecursionError:  # arrays or objects nested beyond the parser's depth
        raise CheckpointError(f"cannot read '{path}' (it is nested too deeply to be JSON): {REWRITE_ADVICE}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot read '{path}' (it holds no JSON object): {REWRITE_ADVICE}")
    return data


def _require_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: '{directory}'")
    if not (directory / CONFIG_FILE).is_file():
        present = sorted(p.name for p in directory.iterdir())[:10]
        raise CheckpointError(
            f"'{directory}' has no {CONFIG_FILE} (it holds {present}); give a directory written by "
            "save_pretrained or a Magma-8B download"
        )


def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> file holding it, from the shard index or the single weights file."""
    index = directory / WEIGHTS_INDEX_FILE
    if index.is_file():
        mapping = read_json_object(index).get("weight_map")
        if not isinstance(mapping, dict):
            raise CheckpointError(f"'{index}' has no weight_map object: {REWRITE_ADVICE}")
        files = {name: directory / file for name, file in mapping.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if missing:
            raise CheckpointError(f"'{directory}': the shard index names files that are missing: {missing}")
        return files
    single = directory / SINGLE_WEIGHTS_FILE
    if single.is_file():
        with open_safetensors(single) as handle:
            return {name: single for name in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    raise CheckpointError(f"'{directory}' has no {SINGLE_WEIGHTS_FILE} and no {WEIGHTS_INDEX_FILE}")


def iter_tensors(files: dict[str, Path], device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Read tensors one shard at a time, so memory holds the model plus one shard at most."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with open_safetensors(path, device) as handle:
            for name in names:
                yield name, handle.get_tensor(name)


def is_magma8b_layout(raw_config: dict[str, Any]) -> bool:
    """A config.json of the public Magma-8B layout (their model_type, or their nested vision config)
    rather than one written by ``save_pretrained``."""
    return raw_config.get("format") != FORMAT_NAME and (
        raw_config.get("model_type") == "magma" or "vision_config" in raw_config
    )


def load_checkpoint_config(directory: str | Path) -> MagmaConfig:
    """The MagmaConfig of a checkpoint directory, in either layout."""
    directory = Path(directory)
    _require_directory(directory)
    raw = read_json_object(directory / CONFIG_FILE)
    if is_magma8b_layout(raw):
        from magma.magma8b_layout import magma8b_config

        files = weight_files(directory)
        try:
            return magma8b_config(directory, raw, files)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            if isinstance(err, UserFacingError):
                raise
            raise CheckpointError(
                f"'{directory}': its Magma-8B config files or weights have an unexpected shape "
                f"({type(err).__name__}: {(str(err).splitlines() or [''])[0]}); use an unmodified Magma-8B download"
            ) from None
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"'{directory / CONFIG_FILE}' is neither a {FORMAT_NAME} checkpoint nor a Magma-8B config"
        )
    fields = {key: value for key, value in raw.items() if key != "format"}
    if fields.get("tokenizer") is None and (directory / "tokenizer.json").is_file():
        fields["tokenizer"] = str(directory)
    try:
        config = MagmaConfig.from_dict(fields, source=str(directory / CONFIG_FILE))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    from magma.magma8b_layout import check_tokenizer_token_ids

    check_tokenizer_token_ids(directory, config.tokens)  # a tokenizer saved beside it must agree with its ids
    return config


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_pretrained(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MagmaForCausalLM:
    """Build the model for a checkpoint directory (own or Magma-8B layout) and load its weights."""
    directory = Path(directory)
    config = load_checkpoint_config(directory)
    config.vision.pretrained = None  # the checkpoint holds the trunk weights
    raw = read_json_object(directory / CONFIG_FILE)
    files = weight_files(directory)
    if is_magma8b_layout(raw):
        from magma.magma8b_layout import magma8b_name as rename
    else:
        rename = lambda name: name  # noqa: E731
    dtype = dtype or default_dtype(device)
    with _default_dtype(dtype), torch.device(device):
        model = MagmaForCausalLM(config)
    expected = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    unexpected = []
    for name, tensor in iter_tensors(files, device):
        ours = rename(name)
        if ours is None:
            continue
        if ours not in expected:
            unexpected.append(name)
            continue
        if ours == "projector.row_separator":
            tensor = tensor.reshape(-1)
        if tensor.shape != expected[ours].shape:
            raise CheckpointError(
                f"'{directory}': {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[ours].shape)}; the config does not match the weights"
            )
        loaded[ours] = tensor.to(dtype)
    tied = {"language_model.lm_head.weight"} if config.text.tie_word_embeddings else set()
    embed_name = "language_model.model.embed_tokens.weight"
    if tied and embed_name not in loaded and "language_model.lm_head.weight" in loaded:
        loaded[embed_name] = loaded.pop("language_model.lm_head.weight")  # deduplicated on save
    missing = sorted(set(expected) - set(loaded) - tied)
    if missing or unexpected:
        raise CheckpointError(
            f"'{directory}': weights do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    model.load_state_dict(loaded, strict=not tied)
    return model.eval()


def load_checkpoint_state_statistics(directory: str | Path) -> dict[str, ActionStatistics]:
    """The proprioceptive-state statistics saved with a checkpoint, by dataset key (empty when none)."""
    from magma.actions import load_state_statistics

    return load_state_statistics(Path(directory) / ACTION_STATISTICS_FILENAME)


def load_checkpoint_action_statistics(directory: str | Path) -> dict[str, ActionStatistics]:
    """The robot action statistics saved with a checkpoint; a missing file is an error, never a pass-through."""
    return load_action_statistics(Path(directory) / ACTION_STATISTICS_FILENAME)
