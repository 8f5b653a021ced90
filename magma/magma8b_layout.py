"""The public Magma-8B checkpoint layout (microsoft/Magma-8B): read into our model's names and MagmaConfig
(import), and written back from our model so Microsoft's published modeling code loads it (export).

Magma-8B's ``config.json`` nests ``text_config`` (Llama-3) and ``vision_config``; its safetensors shards use
the names of Microsoft's remote code. The explicit table below maps them onto ours and back, without
trust_remote_code and without a patched transformers. What their code needs that ours does not hold (the
CLIP head of the open_clip vision model, a ``_segtokv`` suffix on the projector type) is written on export
with neutral values and dropped on import.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from data_tools.config_files import ConfigError
from data_tools.errors import UserFacingError
from magma.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    open_safetensors,
    read_json_object,
    staged_directory,
    weight_files,
)
from magma.config import TokenConfig
from magma.configuration_magma import HF_SETTINGS, MagmaConfig

if TYPE_CHECKING:
    from magma.model import MagmaForCausalLM

# Magma-8B tensor name prefix -> our name prefix.
MAGMA8B_TO_OURS = {
    "vision_tower.clip_vision_model.trunk.": "vision_tower.trunk.",
    "multi_modal_projector.proj.": "projector.mlp.",
    "multi_modal_projector.row_seperator": "projector.row_separator",  # sic: Magma's spelling
    "language_model.": "language_model.",
}
# Magma-8B tensors we do not use: the CLIP pooling head and classifier-head norms of the trunk.
MAGMA8B_UNUSED = (
    "vision_tower.clip_vision_model.head.",
    "vision_tower.clip_vision_model.trunk.head.",
    "multi_modal_projector.img_start_seperator",
    "multi_modal_projector.img_end_seperator",
)
# The hub repo whose code opens the layout: config.json's auto_map points there (transformers' "repo--module"
# form), so an exported directory opens with trust_remote_code=True without carrying Microsoft's code.
MAGMA8B_HUB_REPO = "microsoft/Magma-8B"
PREPROCESSOR_FILE = "preprocessor_config.json"
GENERATION_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Magma's added tokens -> the TokenConfig field holding each id.
MAGMA_SPECIAL_TOKENS = {
    "<pad>": "pad_token_id",
    "<image>": "image_token_id",
    "<image_start>": "image_start_token_id",
    "<image_end>": "image_end_token_id",
}
# Where a Magma-8B config.json holds those ids (it has no field for the image start/end markers).
MAGMA8B_TOKEN_KEYS = {"<pad>": "pad_token_id", "<image>": "image_token_index"}


@dataclass(frozen=True)
class ClipConvNextBackbone:
    """A CLIP-ConvNeXt vision model that Microsoft's code can build: it takes the open_clip model of
    ``laion/CLIP-convnext_<size>`` from the hub, so its trunk has these sizes, and its CLIP head (which Magma
    never runs) these tensors."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    norm_eps: float  # timm's convnext_xxlarge sets 1e-5; convnext_large keeps LayerNorm2d's 1e-6
    embed_dim: int  # the CLIP embedding width of the head
    head: str  # open_clip's timm_proj: "linear" (one matrix) or "mlp" (two layers)

    def head_tensors(self, channels: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The CLIP head with neutral values (identity norm, zero projection), so their loader finds every
        tensor it expects; Magma's forward uses only the trunk's stem and stages."""
        prefix = "vision_tower.clip_vision_model."
        tensors = {
            f"{prefix}trunk.head.norm.weight": torch.ones(channels, dtype=dtype),
            f"{prefix}trunk.head.norm.bias": torch.zeros(channels, dtype=dtype),
        }
        if self.head == "linear":
            tensors[f"{prefix}head.proj.weight"] = torch.zeros(self.embed_dim, channels, dtype=dtype)
        else:
            hidden = 2 * self.embed_dim
            tensors[f"{prefix}head.mlp.fc1.weight"] = torch.zeros(hidden, channels, dtype=dtype)
            tensors[f"{prefix}head.mlp.fc1.bias"] = torch.zeros(hidden, dtype=dtype)
            tensors[f"{prefix}head.mlp.fc2.weight"] = torch.zeros(self.embed_dim, hidden, dtype=dtype)
        return tensors


# Their image tower (image_tower_magma.D2CLIP_HF) knows exactly these two names.
MAGMA8B_VISION_BACKBONES = {
    "convnextxxlarge": ClipConvNextBackbone((384, 768, 1536, 3072), (3, 4, 30, 3), 1e-5, 1024, "linear"),
    "convnextlarge": ClipConvNextBackbone((192, 384, 768, 1536), (3, 3, 27, 3), 1e-6, 768, "mlp"),
}


class Magma8bExportError(UserFacingError, ValueError):
    """A model, tokenizer or target directory that cannot be written in the Magma-8B layout."""


# ---- import ---------------------------------------------------------------------------------------
def magma8b_name(name: str) -> str | None:
    """Our tensor name for a Magma-8B tensor name; None for tensors we do not use."""
    if name.startswith(MAGMA8B_UNUSED):
        return None
    for theirs, ours in MAGMA8B_TO_OURS.items():
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name  # reported as unexpected by the loader


def _tensor_shapes(files: dict[str, Path], prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, path in files.items():
        if name.startswith(prefix):
            with open_safetensors(path) as handle:
                shapes[name[len(prefix) :]] = tuple(handle.get_slice(name).get_shape())
    return shapes


def rope_from_parameters(text: dict[str, Any]) -> dict[str, Any]:
    """A Llama text config with transformers 5's ``rope_parameters`` (``{"rope_type", "rope_theta",
    "factor", ...}``) read into the ``rope_theta`` / ``rope_scaling`` fields older configs (Magma-8B's)
    spell out; a field the config sets at the top level wins."""
    parameters = text.get("rope_parameters")
    if not isinstance(parameters, dict):
        return text
    text = dict(text)
    if text.get("rope_theta") is None and parameters.get("rope_theta") is not None:
        text["rope_theta"] = parameters["rope_theta"]
    scaling = {key: value for key, value in parameters.items() if key != "rope_theta"}
    if text.get("rope_scaling") is None and scaling.get("rope_type", "default") != "default":
        text["rope_scaling"] = scaling
    return text


TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rope_scaling",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
)


def magma8b_config_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Our config fields from a Magma-8B config.json alone (``AutoConfig`` reads it this way): the vision trunk
    from ``vision_config.vision_backbone``, the projector depth from ``mm_projector_type``. ``magma8b_config``
    refines them from the directory (weights, preprocessor and tokenizer files). transformers' loading
    settings (``dtype``, ``attn_implementation``, ...) pass through."""
    text = rope_from_parameters(raw.get("text_config") or raw)
    vision = raw.get("vision_config") or {}
    defaults = TokenConfig()
    backbone = MAGMA8B_VISION_BACKBONES.get(str(vision.get("vision_backbone", "convnextxxlarge")))
    depth = re.match(r"mlp(\d+)x_gelu", str(vision.get("mm_projector_type", "")))
    tokens: dict[str, Any] = {
        "image_token_id": int(raw.get("image_token_index", defaults.image_token_id)),
        "pad_token_id": int(raw.get("pad_token_id") or defaults.pad_token_id),
    }
    if text.get("bos_token_id") is not None:
        tokens["bos_token_id"] = int(text["bos_token_id"])
    eos = text.get("eos_token_id")
    if eos is not None:
        tokens["eos_token_ids"] = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    if raw.get("tokenizer_vocab_size") is not None:
        tokens["base_vocab_size"] = int(raw["tokenizer_vocab_size"])
    fields: dict[str, Any] = {
        "name": str(raw.get("_name_or_path") or "magma-8b"),
        "vision": (
            {"dims": list(backbone.dims), "depths": list(backbone.depths), "norm_eps": backbone.norm_eps}
            if backbone
            else {}
        ),
        "projector": {"type": f"mlp{depth.group(1)}x_gelu" if depth else "mlp2x_gelu", "row_separator": True},
        "text": {key: text[key] for key in TEXT_FIELDS if text.get(key) is not None},
        "image": {
            "base_size": int(vision.get("img_size", raw.get("img_size", 512))),
            "num_crops": int(vision.get("max_num_crops", 4)),
        },
        "tokens": tokens,
    }
    return fields | {key: raw[key] for key in HF_SETTINGS if key in raw}


def magma8b_config(directory: Path, raw: dict[str, Any], files: dict[str, Path]) -> MagmaConfig:
    """Translate a Magma-8B config.json (+ preprocessor and tokenizer files) into a MagmaConfig.

    The ConvNeXt dims/depths and the projector depth are read off the weights themselves, so
    variants (ConvNeXt-L, other projector depths) load without a table of known models.
    """
    fields = magma8b_config_fields(raw)
    trunk = _tensor_shapes(files, "vision_tower.clip_vision_model.trunk.")
    if not trunk:
        raise CheckpointError(f"'{directory}': no vision_tower.clip_vision_model.trunk.* tensors in the weights")
    fields["vision"]["depths"] = [
        len({m.group(1) for key in trunk if (m := re.match(rf"stages\.{stage}\.blocks\.(\d+)\.", key))})
        for stage in range(4)
    ]
    fields["vision"]["dims"] = [trunk[f"stages.{stage}.blocks.0.conv_dw.weight"][0] for stage in range(4)]
    projector_linears = {key for key in _tensor_shapes(files, "multi_modal_projector.proj.") if key.endswith(".weight")}
    # read off the weights: Magma configs spell the type with variant suffixes
    fields["projector"]["type"] = "linear" if len(projector_linears) == 1 else f"mlp{len(projector_linears)}x_gelu"
    preprocessor = directory / PREPROCESSOR_FILE
    if preprocessor.is_file():
        image_settings = read_json_object(preprocessor)
        image = fields["image"]
        image["base_size"] = int(image_settings.get("base_img_size", image["base_size"]))
        image["num_crops"] = int(image_settings.get("num_crops", image["num_crops"]))
        image |= {ours: image_settings[key] for key, ours in (("image_mean", "mean"), ("image_std", "std"))
                  if key in image_settings}  # fmt: skip
    fields["tokens"] |= _magma8b_token_ids(directory, raw, fields["tokens"])
    fields["tokenizer"] = str(directory) if (directory / TOKENIZER_FILE).is_file() else None
    try:
        return MagmaConfig.from_dict(fields, source=f"{directory} (Magma-8B layout)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def tokenizer_token_ids(directory: Path) -> tuple[Path, dict[str, int]] | None:
    """The added tokens (text -> id) of the tokenizer files in ``directory`` and the file they were read from
    (``tokenizer.json``, else ``tokenizer_config.json``'s ``added_tokens_decoder``); None without either."""
    tokenizer_file = directory / TOKENIZER_FILE
    if tokenizer_file.is_file():
        added = read_json_object(tokenizer_file).get("added_tokens") or []
        return tokenizer_file, {str(token["content"]): int(token["id"]) for token in added}
    config_file = directory / TOKENIZER_CONFIG_FILE
    if config_file.is_file():
        decoder = read_json_object(config_file).get("added_tokens_decoder") or {}
        return config_file, {str(token["content"]): int(index) for index, token in decoder.items()}
    return None


def check_tokenizer_token_ids(directory: str | Path, tokens: Any, config_file: str | Path | None = None) -> None:
    """CheckpointError when the tokenizer files in ``directory`` give ``<pad>``, ``<image>``, ``<image_start>``
    or ``<image_end>`` another id than the config's ``tokens`` (a TokenConfig): the processor places image
    markers by the config's ids, so a disagreement would wrap each image in a second pair of markers. No
    tokenizer files, or a token the tokenizer does not define: nothing to check."""
    directory = Path(directory)
    found = tokenizer_token_ids(directory)
    if found is None:
        return
    source, added = found
    clashes = [
        (field_name, getattr(tokens, field_name), token, added[token])
        for token, field_name in MAGMA_SPECIAL_TOKENS.items()
        if token in added and added[token] != getattr(tokens, field_name)
    ]
    if clashes:
        config_file = Path(config_file) if config_file else directory / CONFIG_FILE
        said = ", ".join(f"tokens.{field_name}={ours}" for field_name, ours, _, _ in clashes)
        mapped = ", ".join(f"{token} to {theirs}" for _, _, token, theirs in clashes)
        fixed = ", ".join(f"tokens.{field_name}={theirs}" for field_name, _, _, theirs in clashes)
        raise CheckpointError(
            f"'{config_file}' says {said} but '{source}' maps {mapped}; the processor would mark images with "
            f"ids the tokenizer does not give them. Set {fixed} in '{config_file}', or save the checkpoint again "
            "with the tokenizer it was trained with"
        )


def _magma8b_token_ids(directory: Path, raw: dict[str, Any], tokens: dict[str, Any]) -> dict[str, Any]:
    """The special ids of a Magma-8B directory: from its tokenizer files, checked against config.json's
    ``image_token_index`` / ``pad_token_id``. Their config has no field for ``<image_start>``/``<image_end>``,
    so without tokenizer files those are Magma-8B's own ids, and only for a config that is Magma-8B's."""
    found = tokenizer_token_ids(directory)
    defaults = TokenConfig()
    if found is None:
        if tokens["image_token_id"] != defaults.image_token_id:
            raise CheckpointError(
                f"'{directory}' has no {TOKENIZER_FILE}, and its {CONFIG_FILE} (image_token_index="
                f"{tokens['image_token_id']}, not Magma-8B's {defaults.image_token_id}) does not say which ids "
                "<image_start> and <image_end> have; copy the tokenizer files the model was trained with into it"
            )
        return {
            field_name: getattr(defaults, field_name) for field_name in ("image_start_token_id", "image_end_token_id")
        }
    source, added = found
    clashes = [
        f"{key}={raw[key]} but {source.name} maps {token} to {added[token]}"
        for token, key in MAGMA8B_TOKEN_KEYS.items()
        if token in added and raw.get(key) is not None and int(raw[key]) != added[token]
    ]
    if clashes:
        raise CheckpointError(
            f"'{directory / CONFIG_FILE}' says {'; '.join(clashes)}: the config and the tokenizer disagree. Set "
            f"{CONFIG_FILE} to the tokenizer's ids, or copy in the tokenizer files the model was trained with"
        )
    missing = [token for token in ("<image>", "<image_start>", "<image_end>") if token not in added]
    if missing:
        raise CheckpointError(
            f"'{source}' has no added token {', '.join(missing)}; Magma prompts mark each image as "
            "<image_start><image><image_end>. Copy in the tokenizer files the model was trained with"
        )
    ids = {field_name: added[token] for token, field_name in MAGMA_SPECIAL_TOKENS.items() if token in added}
    if added:
        ids["base_vocab_size"] = int(min(added.values()))
    return ids


# ---- export ---------------------------------------------------------------------------------------
def magma8b_export_name(name: str) -> str:
    """The Magma-8B name of one of our tensor names."""
    for theirs, ours in MAGMA8B_TO_OURS.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise Magma8bExportError(f"our tensor {name} has no place in the Magma-8B layout")


def vision_backbone_name(config: MagmaConfig, vision_backbone: str | None = None) -> str:
    """The ``vision_backbone`` that Microsoft's code builds our trunk as: found from the trunk's sizes, or the
    name given (a trunk of other sizes, whose open_clip config the user provides under that hub name)."""
    vision = config.vision
    if vision_backbone is None:
        for name, backbone in MAGMA8B_VISION_BACKBONES.items():
            if (tuple(vision.dims), tuple(vision.depths)) == (backbone.dims, backbone.depths):
                vision_backbone = name
                break
        else:
            raise Magma8bExportError(
                f"the vision trunk (vision.dims={list(vision.dims)}, vision.depths={list(vision.depths)}) is neither "
                f"of the ConvNeXt trunks Microsoft's Magma code builds ({_backbone_sizes()}); export a model with one "
                "of them, or name the one whose open_clip config describes this trunk (--vision-backbone)"
            )
    backbone = MAGMA8B_VISION_BACKBONES.get(vision_backbone)
    if backbone is None:
        raise Magma8bExportError(
            f"vision backbone '{vision_backbone}' is not one Microsoft's Magma code builds; use one of "
            f"{sorted(MAGMA8B_VISION_BACKBONES)}"
        )
    if vision.norm_eps != backbone.norm_eps:
        raise Magma8bExportError(
            f"vision.norm_eps={vision.norm_eps:g}, but the {vision_backbone} trunk that Microsoft's code builds uses "
            f"{backbone.norm_eps:g}; their model would compute other features. Export a model trained with "
            f"vision.norm_eps={backbone.norm_eps:g}"
        )
    return vision_backbone


def _backbone_sizes() -> str:
    return "; ".join(
        f"{name}: dims {list(b.dims)}, depths {list(b.depths)}" for name, b in MAGMA8B_VISION_BACKBONES.items()
    )


def _check_expressible(config: MagmaConfig) -> None:
    """Magma8bExportError naming every setting of ours that Microsoft's code cannot reproduce."""
    problems = []
    if not config.projector.row_separator:
        problems.append(
            "projector.row_separator is off, but Microsoft's code appends a row separator to every row of image "
            "features"
        )
    if config.image.patch_stride != 32:
        problems.append(f"image.patch_stride={config.image.patch_stride}; their ConvNeXt trunk has stride 32")
    if config.action.parallel:
        problems.append(f"action.head={config.action.head}; Magma-8B decodes robot actions as tokens only")
    if config.action.state_dim:
        problems.append(f"action.state_dim={config.action.state_dim}; Magma-8B takes no proprioceptive state")
    if problems:
        raise Magma8bExportError(
            "the model cannot be written in the Magma-8B layout: " + "; ".join(problems) + ". Export a model "
            "without these settings"
        )


def _tokenizer_ids(tokenizer: Any, config: MagmaConfig) -> None:
    """Magma8bExportError unless the tokenizer holds Magma's added tokens with the config's ids and fits
    the embedding table."""
    added = dict(tokenizer.get_added_vocab())
    missing = [token for token in MAGMA_SPECIAL_TOKENS if token not in added]
    if missing:
        raise Magma8bExportError(
            f"the tokenizer has no added token {', '.join(missing)}; Magma's prompts and config need "
            f"{', '.join(MAGMA_SPECIAL_TOKENS)}. Export with the tokenizer the model was trained with"
        )
    clashes = [
        f"tokens.{field_name}={getattr(config.tokens, field_name)} but the tokenizer maps {token} to {added[token]}"
        for token, field_name in MAGMA_SPECIAL_TOKENS.items()
        if added[token] != getattr(config.tokens, field_name)
    ]
    if clashes:
        raise Magma8bExportError(
            "the model config and the tokenizer disagree: " + "; ".join(clashes) + ". Export with the tokenizer "
            "the model was trained with"
        )
    if len(tokenizer) > config.text.vocab_size:
        raise Magma8bExportError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the model's text.vocab_size="
            f"{config.text.vocab_size}; export with the tokenizer the model was trained with"
        )


def magma8b_state_dict(model: MagmaForCausalLM, vision_backbone: str) -> dict[str, torch.Tensor]:
    """Our tensors under Magma-8B's names, plus the CLIP head their vision model holds."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if name == "projector.row_separator":
            tensor = tensor.reshape(1, 1, -1)  # their parameter is (1, 1, hidden)
        state[magma8b_export_name(name)] = tensor.clone().contiguous()  # clone: tied weights share storage
    dtype = state["multi_modal_projector.row_seperator"].dtype
    backbone = MAGMA8B_VISION_BACKBONES[vision_backbone]
    return state | backbone.head_tensors(model.config.vision.dims[-1], dtype)


def _text_config(config: MagmaConfig, dtype: torch.dtype) -> dict[str, Any]:
    text, tokens = config.text, config.tokens
    fields = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        **{key: getattr(text, key) for key in TEXT_FIELDS if getattr(text, key) is not None},
        "bos_token_id": tokens.bos_token_id,
        "eos_token_id": list(tokens.eos_token_ids),
        "pad_token_id": tokens.pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if text.rope_scaling is not None:
        fields["rope_scaling"] = dict(text.rope_scaling)
    return fields


def magma8b_config_json(config: MagmaConfig, vision_backbone: str, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json Microsoft's ``MagmaConfig`` reads: ``text_config`` (a LlamaConfig), ``vision_config``
    (their field names) and the image token id, with ``auto_map`` pointing at their code on the hub."""
    from magma.projector import mlp_depth

    depth = mlp_depth(config.projector.type)
    return {
        "_name_or_path": config.name,
        "architectures": ["MagmaForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{MAGMA8B_HUB_REPO}--configuration_magma.MagmaConfig",
            "AutoModelForCausalLM": f"{MAGMA8B_HUB_REPO}--modeling_magma.MagmaForCausalLM",
        },
        "model_type": "magma",
        "image_token_index": config.tokens.image_token_id,
        "pad_token_id": config.tokens.pad_token_id,
        "tokenizer_vocab_size": config.tokens.base_vocab_size,  # their training reads robot-action ids below it
        "tie_word_embeddings": config.text.tie_word_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "text_config": _text_config(config, dtype),
        "vision_config": {
            "vision_backbone": vision_backbone,
            "vision_feature_layer": "clip_vis_dense",
            "img_anyres_strategy": "crop",
            "anyres_strategy": "crop",
            "img_size": config.image.base_size,
            "max_num_crops": config.image.num_crops,
            # their projector is built only for types matching ^mlp(\d+)x_gelu_segtokv(\d+)$ ("linear" is mlp1x)
            "mm_projector_type": f"mlp{depth}x_gelu_segtokv0",
            "mm_hidden_size": config.vision.dims[-1],
            "hidden_size": config.text.hidden_size,
            "mm_use_row_seperator": True,
            "mm_use_im_start_end": False,  # no unused img_start/img_end separator parameters
        },
    }


def magma8b_preprocessor_json(config: MagmaConfig) -> dict[str, Any]:
    """preprocessor_config.json for Microsoft's ``MagmaImageProcessor`` (multi-crop at ``base_img_size``)."""
    return {
        "anyres_strategy": "crop",
        "base_img_size": config.image.base_size,
        "num_crops": config.image.num_crops,
        "do_convert_rgb": True,
        "image_mean": list(config.image.mean),
        "image_std": list(config.image.std),
        "image_processor_type": "MagmaImageProcessor",
        "processor_class": "MagmaProcessor",
        "auto_map": {
            "AutoImageProcessor": f"{MAGMA8B_HUB_REPO}--image_processing_magma.MagmaImageProcessor",
            "AutoProcessor": f"{MAGMA8B_HUB_REPO}--processing_magma.MagmaProcessor",
        },
    }


def check_export_target(directory: Path) -> None:
    """Magma8bExportError when ``directory`` exists and is not a checkpoint (which the export would replace)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise Magma8bExportError(f"export target '{directory}' exists and is a file; give a directory to write")
    if any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file():
        present = sorted(path.name for path in directory.iterdir())[:5]
        raise Magma8bExportError(
            f"export target '{directory}' exists and is not a checkpoint (it holds {present}, no {CONFIG_FILE}); "
            "give a new directory, or an earlier export to replace"
        )


def export_magma8b(
    model: MagmaForCausalLM,
    directory: str | Path,
    tokenizer: Any,
    vision_backbone: str | None = None,
    max_shard_size: int | str = "4GB",
) -> Path:
    """Write ``model`` in the public Magma-8B layout: their tensor names (sharded safetensors with an index
    above ``max_shard_size``), config.json, preprocessor_config.json, generation_config.json and the tokenizer
    with Magma's added tokens. Written atomically; a model or tokenizer their code cannot reproduce is one
    Magma8bExportError before anything is written. Returns the directory."""
    target = Path(directory)
    check_export_target(target)
    config = model.config
    _check_expressible(config)
    backbone = vision_backbone_name(config, vision_backbone)
    _tokenizer_ids(tokenizer, config)
    state = magma8b_state_dict(model, backbone)
    dtype = state["multi_modal_projector.row_seperator"].dtype
    from huggingface_hub import save_torch_state_dict

    with staged_directory(target) as staging:
        save_torch_state_dict(state, staging, max_shard_size=max_shard_size)
        _write_json(staging / CONFIG_FILE, magma8b_config_json(config, backbone, dtype))
        _write_json(staging / PREPROCESSOR_FILE, magma8b_preprocessor_json(config))
        generation = {
            "bos_token_id": config.tokens.bos_token_id,
            "eos_token_id": list(config.tokens.eos_token_ids),
            "pad_token_id": config.tokens.pad_token_id,
        }
        _write_json(staging / GENERATION_FILE, generation)
        _save_tokenizer(tokenizer, staging)
    return target


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """The tokenizer's files, readable by the transformers 4.4x that Magma's code runs on: the chat template also
    in tokenizer_config.json (transformers 5 saves it as chat_template.jinja, which 4.4x does not read), and the
    tokenizer class one that 4.4x knows."""
    tokenizer.save_pretrained(str(directory))
    settings_file = directory / TOKENIZER_CONFIG_FILE
    if settings_file.is_file():
        settings = json.loads(settings_file.read_text())
        if tokenizer.chat_template and "chat_template" not in settings:
            settings["chat_template"] = tokenizer.chat_template
        # transformers 5 names its own backend class, unknown to 4.x; the fast tokenizer class is in both
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
        if isinstance(settings.get("extra_special_tokens"), list):  # 4.x reads a name -> token mapping only
            del settings["extra_special_tokens"]  # the tokens stay special in tokenizer.json
        _write_json(settings_file, settings)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def stored_dtype(directory: Path) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in (read from one tensor's header), so an export keeps it."""
    files = weight_files(directory)
    name = next((name for name in files if name.startswith("language_model.")), next(iter(files), None))
    if name is None:
        return None
    with open_safetensors(files[name]) as handle:
        stored = handle.get_slice(name).get_dtype()
    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(stored)


def export_checkpoint_magma8b(
    checkpoint: str | Path, out: str | Path, vision_backbone: str | None = None, max_shard_size: int | str = "4GB"
) -> Path:
    """Load a checkpoint (ours or Magma-8B's) in the dtype it is stored in, with its tokenizer (its own files,
    else the one its config names), and export it in the Magma-8B layout to ``out``."""
    from magma.model import MagmaForCausalLM
    from magma.tokenizer import load_tokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    check_export_target(out)  # before loading a large model
    model = MagmaForCausalLM.from_pretrained(checkpoint, dtype=stored_dtype(checkpoint))
    source = checkpoint if (checkpoint / TOKENIZER_FILE).is_file() else model.config.tokenizer
    if source is None:
        raise Magma8bExportError(
            f"'{checkpoint}' has no {TOKENIZER_FILE} and its config names no tokenizer; the Magma-8B layout "
            "carries the tokenizer: save the checkpoint with its tokenizer first"
        )
    return export_magma8b(model, out, load_tokenizer(source), vision_backbone, max_shard_size)
