"""The public Magma-8B checkpoint layout (microsoft/Magma-8B): its tensor names, config.json,
preprocessor and tokenizer files, read into our model's names and MagmaConfig.

Magma-8B's ``config.json`` nests ``text_config`` (Llama-3) and ``vision_config``; its safetensors
shards use the names of Microsoft's remote code. The explicit table below maps them onto ours,
without trust_remote_code and without a patched transformers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from magma.checkpoint import CheckpointError, open_safetensors, read_json_object
from magma.config import ConfigError, MagmaConfig

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


def magma8b_config(directory: Path, raw: dict[str, Any], files: dict[str, Path]) -> MagmaConfig:
    """Translate a Magma-8B config.json (+ preprocessor and tokenizer files) into a MagmaConfig.

    The ConvNeXt dims/depths and the projector depth are read off the weights themselves, so
    variants (ConvNeXt-L, other projector depths) load without a table of known models.
    """
    text = rope_from_parameters(raw.get("text_config") or raw)
    vision = raw.get("vision_config") or {}
    trunk = _tensor_shapes(files, "vision_tower.clip_vision_model.trunk.")
    if not trunk:
        raise CheckpointError(f"'{directory}': no vision_tower.clip_vision_model.trunk.* tensors in the weights")
    depths = [
        len({m.group(1) for key in trunk if (m := re.match(rf"stages\.{stage}\.blocks\.(\d+)\.", key))})
        for stage in range(4)
    ]
    dims = [trunk[f"stages.{stage}.blocks.0.conv_dw.weight"][0] for stage in range(4)]
    projector_linears = {key for key in _tensor_shapes(files, "multi_modal_projector.proj.") if key.endswith(".weight")}
    preprocessor = directory / "preprocessor_config.json"
    image_settings = read_json_object(preprocessor) if preprocessor.is_file() else {}
    tokens = _magma8b_token_ids(directory, raw)
    fields = {
        "name": str(raw.get("_name_or_path") or directory.name),
        "vision": {"dims": dims, "depths": depths},
        "projector": {
            # read off the weights: Magma configs spell the type with variant suffixes
            "type": "linear" if len(projector_linears) == 1 else f"mlp{len(projector_linears)}x_gelu",
            "row_separator": True,
        },
        "text": {
            key: text[key]
            for key in (
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
            if text.get(key) is not None
        },
        "image": {
            "base_size": int(image_settings.get("base_img_size", vision.get("img_size", raw.get("img_size", 512)))),
            "num_crops": int(image_settings.get("num_crops", vision.get("max_num_crops", 4))),
            **({"mean": image_settings["image_mean"]} if "image_mean" in image_settings else {}),
            **({"std": image_settings["image_std"]} if "image_std" in image_settings else {}),
        },
        "tokens": tokens,
        "tokenizer": str(directory) if (directory / "tokenizer.json").is_file() else None,
    }
    try:
        return MagmaConfig.from_dict(fields, source=f"{directory} (Magma-8B layout)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _magma8b_token_ids(directory: Path, raw: dict[str, Any]) -> dict[str, Any]:
    defaults = MagmaConfig().tokens
    tokens: dict[str, Any] = {
        "image_token_id": int(raw.get("image_token_index", defaults.image_token_id)),
        "pad_token_id": int(raw.get("pad_token_id") or defaults.pad_token_id),
    }
    text = raw.get("text_config") or raw
    if text.get("bos_token_id") is not None:
        tokens["bos_token_id"] = int(text["bos_token_id"])
    generation = directory / "generation_config.json"
    eos = read_json_object(generation).get("eos_token_id") if generation.is_file() else text.get("eos_token_id")
    if eos is not None:
        tokens["eos_token_ids"] = [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.is_file():
        added = {t["content"]: t["id"] for t in read_json_object(tokenizer_file).get("added_tokens", [])}
        for name, field_name in (("<image_start>", "image_start_token_id"), ("<image_end>", "image_end_token_id")):
            if name in added:
                tokens[field_name] = int(added[name])
        if added:
            tokens["base_vocab_size"] = int(min(added.values()))
    return tokens
