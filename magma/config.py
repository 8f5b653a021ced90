"""Typed model configuration: dataclasses are the source of truth, YAML files in ``configs/model``
fill them and ``key=value`` dotted overrides change them (OmegaConf structured configs)."""

from __future__ import annotations

import dataclasses
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
    problems = []
    if config.image.base_size % config.image.patch_stride:
        problems.append(f"image.base_size={config.image.base_size} is not a multiple of {config.image.patch_stride}")
    if config.image.num_crops < 1:
        problems.append("image.num_crops must be >= 1")
    if len(config.vision.dims) != 4 or len(config.vision.depths) != 4:
        problems.append("vision.dims and vision.depths need four entries (one per ConvNeXt stage)")
    text = config.text
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
