"""Typed model configuration: dataclasses are the source of truth, YAML files in ``configs/model``
fill them and ``key=value`` dotted overrides change them (OmegaConf structured configs)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from magma.errors import UserFacingError

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

T = TypeVar("T")

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
class MagmaConfig:
    name: str = "magma-8b"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    tokenizer: str | None = None  # a tokenizer directory, or "tiny" for the bundled test tokenizer

    def tokens_per_crop_side(self) -> int:
        return self.image.base_size // self.image.patch_stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> MagmaConfig:
        return _build(data, [], source)


def merge_structured(schema: type[T], data: Any, overrides: list[str], source: str) -> T:
    """Fill dataclass ``schema`` from ``data`` then dotted ``key=value`` overrides; an unknown key or a
    bad value is a ConfigError naming the source, the key and where the valid keys are defined."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
        for override in overrides:
            key, equals, text = override.partition("=")
            if not equals or not key:
                raise ConfigError(f"{source}: override '{override}' is not key=value (e.g. optim.lr=3e-5)")
            value = OmegaConf.from_dotlist([f"value={text}"]).value  # YAML typing: 3, 1e-5, [a, b], true
            OmegaConf.update(merged, key, value, merge=True)  # dotted keys; list items as sources.0.weight
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        first_line = str(err).splitlines()[0]
        raise ConfigError(
            f"{source}: {first_line}"
            + (f" (key '{key}')" if key else "")
            + f". Fix the key or value; the valid keys are the fields of {schema.__module__}.{schema.__name__}."
        ) from None


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


def count_problems(problems: list[str], minimum: int, counts: dict[str, int | None]) -> None:
    """Append a problem for each integer setting (dotted key -> value) below ``minimum``; None is not set."""
    for key, value in counts.items():
        if value is not None and value < minimum:
            problems.append(f"{key}={value} must be >= {minimum}")


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


def _build(data: dict[str, Any] | Any, overrides: list[str], source: str) -> MagmaConfig:
    config = merge_structured(MagmaConfig, data, overrides, source)
    _validate(config, source)
    return config


def _validate(config: MagmaConfig, source: str) -> None:
    problems: list[str] = []
    text = config.text
    sizes = {
        "image.base_size": config.image.base_size,
        "image.patch_stride": config.image.patch_stride,
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
    count_problems(problems, 1, sizes)
    count_problems(problems, 0, {f"vision.depths.{index}": depth for index, depth in enumerate(config.vision.depths)})
    check_number(problems, "text.rms_norm_eps", text.rms_norm_eps, low=0, low_open=True, hint="e.g. 1e-5")
    check_number(problems, "text.rope_theta", text.rope_theta, low=0, low_open=True, hint="e.g. 500000")
    check_number(problems, "vision.norm_eps", config.vision.norm_eps, low=0, low_open=True, hint="e.g. 1e-5")
    check_number(problems, "vision.drop_path_rate", config.vision.drop_path_rate, low=0, high=1, high_open=True)
    check_number(problems, "vision.layer_scale_init", config.vision.layer_scale_init)
    for index, std in enumerate(config.image.std):
        check_number(problems, f"image.std.{index}", std, low=0, low_open=True)
    if problems:  # the checks below divide by these sizes
        raise ConfigError(f"{source}: " + "; ".join(problems))
    if config.image.base_size % config.image.patch_stride:
        problems.append(f"image.base_size={config.image.base_size} is not a multiple of {config.image.patch_stride}")
    if config.image.num_crops < 1:
        problems.append("image.num_crops must be >= 1")
    if len(config.vision.dims) != 4 or len(config.vision.depths) != 4:
        problems.append("vision.dims and vision.depths need four entries (one per ConvNeXt stage)")
    if text.hidden_size % text.num_attention_heads and text.head_dim is None:
        problems.append("text.hidden_size must be divisible by text.num_attention_heads")
    if text.num_attention_heads % text.num_key_value_heads:
        problems.append("text.num_attention_heads must be a multiple of text.num_key_value_heads")
    special = [
        config.tokens.pad_token_id,
        config.tokens.image_token_id,
        config.tokens.image_start_token_id,
        config.tokens.image_end_token_id,
    ]
    if max(special) >= text.vocab_size:
        problems.append(f"special token id {max(special)} does not fit text.vocab_size={text.vocab_size}")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))


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
    path = find_config_file(name_or_path, CONFIG_DIR, "model")
    return _build(read_yaml(path, "model"), overrides or [], str(path))
