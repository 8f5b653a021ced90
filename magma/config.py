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
from typing import TYPE_CHECKING, Any

from data_tools.config_files import ConfigError, check_number, count_problems, load_config_file, merge_structured

if TYPE_CHECKING:
    from magma.configuration_magma import MagmaConfig

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


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


ACTION_HEADS = ("tokens", "l1", "flow")


@dataclass
class ActionHeadConfig:
    """How the model outputs robot actions. ``tokens`` (Magma/OpenVLA, the default and Magma-8B's): 256-bin
    action tokens decoded one by one. ``l1`` (OpenVLA-OFT's parallel decoding): ``chunk_length`` query
    positions whose final hidden states a small MLP maps to a (chunk_length, action_dim) chunk in one forward
    pass, trained with L1. ``flow`` (pi0/SmolVLA's action expert): a small transformer over the chunk,
    conditioned on those hidden states, trained with flow matching and sampled in ``flow_steps`` Euler steps.
    ``state_dim`` > 0 feeds the robot's proprioceptive state (normalised with the dataset statistics) into the
    sequence as one projected position before the actions, for every head."""

    head: str = "tokens"
    chunk_length: int = 1  # actions per answer (H)
    action_dim: int = 0  # D; l1/flow need it (tokens takes it from the action statistics)
    state_dim: int = 0  # proprioceptive state size; 0: no state input
    hidden_size: int = 256  # width of the l1 MLP / the flow expert
    flow_layers: int = 2  # transformer layers of the flow expert
    flow_steps: int = 10  # Euler integration steps when sampling a flow chunk
    loss_weight: float = 1.0  # the head's loss next to the LM loss: loss = lm + loss_weight * head

    @property
    def parallel(self) -> bool:
        """A head that decodes the whole chunk in one forward pass (l1, flow)."""
        return self.head != "tokens"


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
    action: ActionHeadConfig = field(default_factory=ActionHeadConfig)


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
    problems += action_head_problems(config.action)
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


def action_head_problems(action: ActionHeadConfig) -> list[str]:
    """The problems of the ``action`` group, each naming its key and the fix."""
    problems: list[str] = []
    if action.head not in ACTION_HEADS:
        problems.append(f"action.head={action.head!r} is not one of {ACTION_HEADS}")
    limits = {"action.chunk_length": (action.chunk_length, 1, 256), "action.flow_steps": (action.flow_steps, 1, 1000)}
    limits |= {"action.action_dim": (action.action_dim, 0, 4096), "action.state_dim": (action.state_dim, 0, 4096)}
    limits |= {"action.hidden_size": (action.hidden_size, 1, 65536), "action.flow_layers": (action.flow_layers, 1, 64)}
    for key, (value, low, high) in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{key}={value!r} must be a whole number from {low} to {high}")
    if action.head in ("l1", "flow") and action.action_dim == 0:
        problems.append(
            f"action.head={action.head} needs action.action_dim (the size of one action, e.g. 4 for Meta-World, "
            "7 for a 7-DoF arm with gripper)"
        )
    check_number(problems, "action.loss_weight", action.loss_weight, low=0, hint="e.g. 1.0")
    return problems


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


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> MagmaConfig:
    """Load a model config from a YAML file or preset name, applying ``key=value`` overrides."""
    from magma.configuration_magma import MagmaConfig  # transformers (and torch) only when a model is built

    schema = load_config_file(MagmaSchema, name_or_path, CONFIG_DIR, "model", overrides, _validate)
    return MagmaConfig.from_schema(schema)
