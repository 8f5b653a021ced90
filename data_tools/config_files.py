"""Config files of every kind, read one way: a preset name or a YAML path, OmegaConf structured merge into a
dataclass schema, dotted ``key=value`` overrides, then the kind's validator; every mistake is one
ConfigError naming the file or key and the fix. The bottom layer (no torch, nothing of ours above
``data_tools``), so the model, trainer, LAPA and robot daemon configs all use it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_tools.errors import UserFacingError

T = TypeVar("T")
LITERAL_MISMATCH = re.compile(r"Invalid value .*, expected one of (\[.*\])$")  # OmegaConf on a Literal field


class ConfigError(UserFacingError, ValueError):
    """A model configuration that cannot be used: unknown key, bad value, missing file."""


def merge_structured(schema: type[T], data: Any, overrides: list[str], source: str) -> T:
    """Fill dataclass ``schema`` from ``data`` then dotted ``key=value`` overrides; an unknown key or a
    bad value is a ConfigError naming the source, the key and where the valid keys are defined.

    Plain Python ``data`` (JSON read from a checkpoint, a request body) is taken literally: a string holding
    an OmegaConf interpolation ``${...}`` is refused, as resolving it would read environment variables
    (``${oc.env:...}``) or other keys. OmegaConf trees (the user's own YAML, read by ``read_yaml``) and
    command-line overrides may interpolate, e.g. ``run_dir: runs/${name}``."""
    if not isinstance(data, DictConfig | ListConfig):
        refuse_interpolations(data, source)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        for override in overrides:
            key, equals, text = override.partition("=")
            if not equals or not key:
                raise ConfigError(f"{source}: override '{override}' is not key=value (e.g. optim.lr=3e-5)")
            OmegaConf.update(merged, key, _override_value(override, text, source), merge=True)  # list items as a.0.b
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        first_line = str(err).splitlines()[0]
        choices = LITERAL_MISMATCH.match(first_line)
        if key and choices:  # a typing.Literal field: the house wording, as the validators write it
            raise ConfigError(f"{source}: {key}={err.value!r} must be one of {choices.group(1)}") from None
        raise ConfigError(
            f"{source}: {first_line}"
            + (f" (key '{key}')" if key else "")
            + f". Fix the key or value; the valid keys are the fields of {schema.__module__}.{schema.__name__}."
        ) from None
    except RecursionError:
        raise ConfigError(f"{source}: a value is nested too deeply to be a config; fix or re-export it") from None


def _override_value(override: str, text: str, source: str) -> Any:
    """The YAML-typed value of an override (3, 1e-5, [a, b], true); text that is not YAML is a ConfigError."""
    try:
        return OmegaConf.from_dotlist([f"value={text}"]).value
    except yaml.YAMLError as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        key = override.partition("=")[0]
        raise ConfigError(
            f"{source}: override '{override}': the value is not valid YAML ({reason}); quote it to give a string, "
            f"e.g. '{key}=\"{text}\"'"
        ) from None


def refuse_interpolations(data: Any, source: str) -> None:
    """Raise a ConfigError naming every key whose string (or name) holds ``${``: data read from disk or the
    network is literal, never resolved."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "${" in value:
                found.append(path or "<top level>")
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and "${" in key:
                    found.append(name)
                stack.append((name, item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}.{index}", item) for index, item in enumerate(value))
    if found:
        raise ConfigError(
            f"{source}: the value of {', '.join(sorted(found)[:5])} holds an OmegaConf interpolation '${{...}}'; "
            "a config read from a checkpoint or a request is taken literally and may not use one (it could read "
            "environment variables). Replace it with the literal value, or re-export the checkpoint"
        )


def check_number(
    problems: list[str],
    key: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    hint: str = "",
) -> None:
    """Append a problem to ``problems`` unless ``value`` is a finite number within the bounds
    (``low_open`` / ``high_open``: the bound itself is excluded; ``optional``: None is allowed).
    NaN and infinities are never accepted: every comparison with NaN is false, so a plain
    ``value <= 0`` test lets it through."""
    if value is None and optional:
        return
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "") + (" or null" if optional else "")
    valid = (
        value is not None
        and math.isfinite(value)
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if not valid:
        problems.append(f"{key}={value} must be {wanted}" + (f" ({hint})" if hint else ""))


def count_problems(
    problems: list[str], minimum: int, counts: dict[str, int | None], maximum: dict[str, int] | None = None
) -> None:
    """Append a problem for each integer setting (dotted key -> value) below ``minimum`` or above its
    ``maximum`` (looked up by key, or by key without its list index: ``vision.dims.2`` -> ``vision.dims``);
    None is not set."""
    for key, value in counts.items():
        if value is None:
            continue
        high = (maximum or {}).get(key, (maximum or {}).get(key.rpartition(".")[0]))
        if value < minimum or (high is not None and value > high):
            problems.append(f"{key}={value} must be >= {minimum}" + (f" and <= {high}" if high is not None else ""))


def seed_problems(problems: list[str], seeds: dict[str, int]) -> None:
    """Append a problem for each seed numpy and torch would refuse (they take 0 <= seed < 2**32)."""
    for key, seed in seeds.items():
        if not 0 <= seed < 2**32:
            problems.append(f"{key}={seed} must be in [0, 2**32)")


def config_from(
    schema: type[T], data: Any, overrides: list[str], source: str, validate: Callable[[T, str], None] | None = None
) -> T:
    """Fill dataclass ``schema`` from a dict or OmegaConf tree and ``key=value`` overrides, then ``validate``
    it (a function that raises one ConfigError listing every problem). A plain dict may interpolate
    (``run_dir: runs/${name}``) as a YAML file does: it is the caller's own config, not data read from disk."""
    tree = OmegaConf.create(data) if isinstance(data, dict) else data
    config = merge_structured(schema, tree, overrides, source)
    if validate is not None:
        validate(config, source)
    return config


def load_config_file(
    schema: type[T],
    name_or_path: str | Path,
    directory: Path,
    kind: str,
    overrides: list[str] | None = None,
    validate: Callable[[T, str], None] | None = None,
) -> T:
    """The one loader of every YAML kind: a preset name (``directory/NAME.yaml``) or a YAML path, filled into
    ``schema`` with ``key=value`` overrides and validated; every mistake is one ConfigError."""
    path = find_config_file(name_or_path, directory, kind)
    return config_from(schema, read_yaml(path, kind), overrides or [], str(path), validate)


def read_yaml(path: Path, kind: str) -> Any:
    """The OmegaConf tree of a YAML file; a missing or unreadable file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"no {kind} config at '{path}'")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not a readable YAML file ({err})") from None


def find_config_file(name_or_path: str | Path, directory: Path, kind: str) -> Path:
    """A YAML path, or a name such as ``magma-tiny`` looked up in ``directory``; ConfigError lists the
    names there when neither exists."""
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} or path.exists()):
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ConfigError(f"no {kind} config at '{path}'. Give a YAML path or one of the presets: {names}")
    return path


def nested_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for each value that differs between two nested dicts (a key
    missing on one side reads as None), in key order: what a resume compares its settings with."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += nested_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append((f"{prefix}{key}", old, new))
    return differences
