"""Typed model configuration: dataclasses are the source of truth, YAML files in ``configs/model``
fill them and ``key=value`` dotted overrides change them (OmegaConf structured configs).

Torch-free on purpose (the robot daemon and the LAPA recipes read configs with these helpers);
``magma.configuration_magma.MagmaConfig`` is the transformers config class that holds a validated
:class:`MagmaSchema`."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magma.errors import UserFacingError

if TYPE_CHECKING:
    from magma.configuration_magma import MagmaConfig

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

T = TypeVar("T")

# Upper bounds far above any published model (Llama-3.1-405B: hidden 16384, 126 layers, 128 heads, 128k
# context), so a config.json with absurd sizes is one ConfigError at load, not memory exhausted building it.
SIZE_LIMITS: dict[str, int] = {
    "image.base_size": 4096,
    "image.patch_stride": 4096,
    "image.num_crops": 256,
    "text.vocab_size": 2**21,
    "text.hidden_size": 65536,
    "text.intermediate_size": 262144,
    "text.num_hidden_layers": 1024,
    "text.num_attention_heads": 1024,
    "text.num_key_value_heads": 1024,
    "text.head_dim": 4096,
    "text.max_position_embeddings": 2**24,
    "vision.dims": 16384,
    "vision.depths": 256,
}
MAX_IMAGE_PIXELS = 2**26  # image.num_crops x image.base_size^2: 64 crops of 1024 px
MAX_PARAMETERS = 10**12  # the language model's estimated parameter count

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "model"


class ConfigError(UserFacingError, ValueError):
    """A model configuration that cannot be used: unknown key, bad value, missing file."""


@dataclass
class VisionConfig:
    """ConvNeXt trunk (timm): stem + four stages, a stride-32 feature map."""

    dims: list[int] = field(default_factory=lambda: [384, 768, 1536, 3072])
    depths: list[int] = field(default_factory=lambda: [3, 4, 30, 3])
    layer_scale_init: float = 1e-6
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-5
    pretrained: str | None = None  # local open_clip / timm weights file; never downloaded
    gradient_checkpointing: bool = False

    @property
    def feature_dim(self) -> int:
        return self.dims[-1]


@dataclass
class ProjectorConfig:
    """``mlp{N}x_gelu`` from vision features to the LM width, plus a learned row separator."""

    type: str = "mlp2x_gelu"
    row_separator: bool = True


@dataclass
class TextConfig:
    """A Llama-style decoder, built with ``transformers.LlamaForCausalLM``."""

    vocab_size: int = 128261
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 8192
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False


@dataclass
class ImageConfig:
    """Magma's any-resolution multi-crop: grids (rows, cols) with rows*cols <= num_crops."""

    base_size: int = 512
    num_crops: int = 4
    mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    patch_stride: int = 32  # the vision trunk's total stride


@dataclass
class TokenConfig:
    """Special token ids; defaults are the public Magma-8B (Llama-3 tokenizer) ids."""

    base_vocab_size: int = 128000  # ids below this are the base vocabulary (robot bins reuse its last 256)
    bos_token_id: int = 128000
    eos_token_ids: list[int] = field(default_factory=lambda: [128001, 128009])
    pad_token_id: int = 128256
    image_token_id: int = 128257
    image_start_token_id: int = 128259
    image_end_token_id: int = 128260


@dataclass
class MagmaSchema:
    """The fields of a model config, as OmegaConf checks them: presets in ``configs/model``, ``key=value``
    overrides and a checkpoint's config.json are merged into this dataclass, then validated, then held by
    :class:`MagmaConfig`."""

    name: str = "magma-8b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    tokenizer: str | None = None  # a tokenizer directory, or "tiny" for the bundled test tokenizer


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


def optimizer_problems(
    prefix: str,
    *,
    lr: float,
    weight_decay: float,
    betas: list[float],
    warmup_steps: int,
    max_grad_norm: float,
    eps: float | None = None,
) -> list[str]:
    """The problems of an AdamW setting (every trainer's ``optim`` section), each naming its key."""
    problems: list[str] = []
    check_number(problems, f"{prefix}.lr", lr, low=0, low_open=True, hint="e.g. 1e-5; the learning rate")
    check_number(problems, f"{prefix}.weight_decay", weight_decay, low=0, hint="0 disables it; e.g. 0.01")
    if len(betas) != 2:
        problems.append(f"{prefix}.betas={list(betas)} must be two numbers, e.g. [0.9, 0.999]")
    for index, beta in enumerate(betas[:2]):
        check_number(problems, f"{prefix}.betas.{index}", beta, low=0, high=1, high_open=True, hint="e.g. 0.9")
    if eps is not None:
        check_number(problems, f"{prefix}.eps", eps, low=0, low_open=True, hint="e.g. 1e-8")
    if warmup_steps < 0:
        problems.append(f"{prefix}.warmup_steps={warmup_steps} must be >= 0")
    check_number(problems, f"{prefix}.max_grad_norm", max_grad_norm, low=0, hint="0 disables clipping; e.g. 1.0")
    return problems


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


def read_yaml(path: Path, kind: str) -> Any:
    """The OmegaConf tree of a YAML file; a missing or unreadable file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"no {kind} config at '{path}'")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not a readable YAML file ({err})") from None


def build_schema(data: dict[str, Any] | Any, overrides: list[str], source: str) -> MagmaSchema:
    schema = merge_structured(MagmaSchema, data, overrides, source)
    _validate(schema, source)
    return schema


def _validate(config: MagmaSchema, source: str) -> None:
    problems: list[str] = []
    text = config.text
    sizes = {
        "image.base_size": config.image.base_size,
        "image.patch_stride": config.image.patch_stride,
        "image.num_crops": config.image.num_crops,
        "text.vocab_size": text.vocab_size,
        "text.hidden_size": text.hidden_size,
        "text.intermediate_size": text.intermediate_size,
        "text.num_hidden_layers": text.num_hidden_layers,
        "text.num_attention_heads": text.num_attention_heads,
        "text.num_key_value_heads": text.num_key_value_heads,
        "text.head_dim": text.head_dim,
        "text.max_position_embeddings": text.max_position_embeddings,
    }
    sizes |= {f"vision.dims.{index}": dim for index, dim in enumerate(config.vision.dims)}
    count_problems(problems, 1, sizes, SIZE_LIMITS)
    depths = {f"vision.depths.{index}": depth for index, depth in enumerate(config.vision.depths)}
    count_problems(problems, 0, depths, SIZE_LIMITS)
    tokens = dataclasses.asdict(config.tokens)
    token_ids = {f"tokens.{key}": value for key, value in tokens.items() if key != "eos_token_ids"}
    token_ids |= {f"tokens.eos_token_ids.{index}": value for index, value in enumerate(config.tokens.eos_token_ids)}
    count_problems(problems, 0, token_ids)
    check_number(problems, "text.rms_norm_eps", text.rms_norm_eps, low=0, low_open=True, hint="e.g. 1e-5")
    check_number(problems, "text.rope_theta", text.rope_theta, low=0, low_open=True, hint="e.g. 500000")
    check_number(problems, "vision.norm_eps", config.vision.norm_eps, low=0, low_open=True, hint="e.g. 1e-5")
    check_number(problems, "vision.drop_path_rate", config.vision.drop_path_rate, low=0, high=1, high_open=True)
    check_number(problems, "vision.layer_scale_init", config.vision.layer_scale_init)
    for name, values in (("mean", config.image.mean), ("std", config.image.std)):
        if len(values) != 3:
            problems.append(f"image.{name}={list(values)} must be three numbers, one per RGB channel")
        for index, value in enumerate(values):
            check_number(problems, f"image.{name}.{index}", value, low=0, low_open=name == "std")
    if problems:  # the checks below divide by these sizes
        raise ConfigError(f"{source}: " + "; ".join(problems))
    if config.image.base_size % config.image.patch_stride:
        problems.append(f"image.base_size={config.image.base_size} is not a multiple of {config.image.patch_stride}")
    pixels = config.image.num_crops * config.image.base_size**2
    if pixels > MAX_IMAGE_PIXELS:
        problems.append(
            f"image.num_crops x image.base_size^2 = {pixels} pixels per image, more than {MAX_IMAGE_PIXELS}; "
            "lower image.num_crops or image.base_size"
        )
    if len(config.vision.dims) != 4 or len(config.vision.depths) != 4:
        problems.append("vision.dims and vision.depths need four entries (one per ConvNeXt stage)")
    if text.hidden_size % text.num_attention_heads and text.head_dim is None:
        problems.append("text.hidden_size must be divisible by text.num_attention_heads")
    if text.num_attention_heads % text.num_key_value_heads:
        problems.append("text.num_attention_heads must be a multiple of text.num_key_value_heads")
    head_dim = text.head_dim or text.hidden_size // text.num_attention_heads
    parameters = (
        text.num_hidden_layers
        * (
            text.hidden_size * head_dim * (text.num_attention_heads * 2 + text.num_key_value_heads * 2)
            + 3 * text.hidden_size * text.intermediate_size
        )
        + 2 * text.vocab_size * text.hidden_size
    )
    if parameters > MAX_PARAMETERS:
        problems.append(
            f"the text sizes give about {parameters:.2e} language-model parameters, more than {MAX_PARAMETERS:.0e}; "
            "lower text.num_hidden_layers, text.hidden_size, text.intermediate_size or text.vocab_size"
        )
    special = {key: value for key, value in token_ids.items() if key != "tokens.base_vocab_size"}
    outside = {key: value for key, value in special.items() if value >= text.vocab_size}
    if outside:
        problems.append(f"token ids {outside} do not fit text.vocab_size={text.vocab_size}")
    if not problems:
        problems += rope_scaling_problems(text)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


def llama_text_config(text: TextConfig, tokens: TokenConfig | None = None) -> Any:
    """The ``transformers.LlamaConfig`` of the language model (imported here: this module stays torch-free)."""
    from transformers import LlamaConfig

    llama = LlamaConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        rope_theta=text.rope_theta,
        rope_scaling=copy.deepcopy(text.rope_scaling),  # LlamaConfig adds keys to the dict it is given
        tie_word_embeddings=text.tie_word_embeddings,
        **(
            {}
            if tokens is None
            else {
                "pad_token_id": tokens.pad_token_id,
                "bos_token_id": tokens.bos_token_id,
                "eos_token_id": list(tokens.eos_token_ids),
            }
        ),
    )
    llama._attn_implementation = text.attn_implementation
    return llama


def rope_scaling_problems(text: TextConfig) -> list[str]:
    """The problems of ``text.rope_scaling``: a RoPE type transformers knows, a finite positive factor, and the
    keys that type needs (the inverse frequencies are computed once, as the model will)."""
    if text.rope_scaling is None:
        return []
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = dict(text.rope_scaling)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    known = ["default", *ROPE_INIT_FUNCTIONS]
    if kind not in known:
        return [f"text.rope_scaling type {kind!r} is not one of {known}; fix it or set text.rope_scaling to null"]
    factor = scaling.get("factor")
    if factor is not None and (
        isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) or factor <= 0
    ):
        return [f"text.rope_scaling.factor={factor!r} must be a finite number > 0, e.g. 8.0"]
    try:
        llama = llama_text_config(text)
        if kind != "default":
            ROPE_INIT_FUNCTIONS[kind](llama, "cpu")
    except (KeyError, ValueError, TypeError, ArithmeticError, RuntimeError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        return [f"text.rope_scaling={text.rope_scaling} cannot be used ({reason}); fix it or set it to null"]
    return []


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


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> MagmaConfig:
    """Load a model config from a YAML file or preset name, applying ``key=value`` overrides."""
    from magma.configuration_magma import MagmaConfig  # transformers (and torch) only when a model is built

    path = find_config_file(name_or_path, CONFIG_DIR, "model")
    return MagmaConfig.from_schema(build_schema(read_yaml(path, "model"), overrides or [], str(path)))
