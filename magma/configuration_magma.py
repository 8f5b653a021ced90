"""``MagmaConfig``: the model config as a transformers ``PreTrainedConfig`` (``model_type = "magma"``), so
``AutoConfig`` / ``AutoModelForCausalLM`` open our checkpoints and a Magma-8B download without remote code.

Its fields are the typed groups of ``magma.config.MagmaSchema``; this module adds what transformers
reads (the language model's ``LlamaConfig`` for generation, ``to_dict`` for config.json).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from transformers import LlamaConfig, PreTrainedConfig

from magma.auto_registration import register_available
from magma.config import MagmaSchema, build_schema, llama_text_config

SCHEMA_FIELDS = tuple(item.name for item in dataclasses.fields(MagmaSchema))
# keys a config.json may hold besides the schema: written by transformers or by save_pretrained
PASSIVE_KEYS = ("format", "model_type", "transformers_version", "architectures", "auto_map", "_name_or_path")
# transformers' own settings, passed to PreTrainedConfig (from_pretrained's keyword arguments land here)
HF_SETTINGS = (
    "dtype",
    "torch_dtype",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "attn_implementation",
    "name_or_path",
    "use_cache",
)


class MagmaConfig(PreTrainedConfig):
    """The model config, a transformers ``PreTrainedConfig`` (``model_type = "magma"``): ``AutoConfig`` opens
    our checkpoints and a Magma-8B download, and the fields are the typed groups of :class:`MagmaSchema`
    (``config.text.hidden_size``, ``config.tokens.image_token_id``, ...), validated on construction.

    ``MagmaConfig(**fields)`` takes our fields (as config.json holds them) or the Magma-8B config.json
    fields as they are (``text_config``, ``vision_config``, ``image_token_index``); an unknown key is a
    ConfigError naming it."""

    model_type = "magma"

    def __init__(self, **fields: Any) -> None:
        source = str(fields.pop("config_source", "MagmaConfig(...)"))
        if "text_config" in fields or "vision_config" in fields:
            from magma.magma8b_layout import magma8b_config_fields

            fields = magma8b_config_fields(fields)
        hf_settings = {key: fields.pop(key) for key in HF_SETTINGS if key in fields}
        for key in PASSIVE_KEYS:
            fields.pop(key, None)
        schema = build_schema(fields, [], source)
        self.set_schema(schema)  # before transformers' own checks, which read the text config
        super().__init__(**hf_settings)
        self.set_schema(schema)

    def set_schema(self, schema: MagmaSchema) -> None:
        self.name = schema.name
        self.vision = schema.vision
        self.projector = schema.projector
        self.text = schema.text
        self.image = schema.image
        self.tokens = schema.tokens
        self.tokenizer = schema.tokenizer
        self.action = schema.action
        self.__dict__["tie_word_embeddings"] = schema.text.tie_word_embeddings  # read by PreTrainedModel

    def schema(self) -> MagmaSchema:
        return MagmaSchema(**{name: getattr(self, name) for name in SCHEMA_FIELDS})

    @classmethod
    def from_schema(cls, schema: MagmaSchema) -> MagmaConfig:
        """A config holding an already validated schema (``load_config``, ``from_dict``)."""
        config = cls.__new__(cls)
        config.set_schema(schema)
        PreTrainedConfig.__init__(config)
        config.set_schema(schema)
        return config

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], source: str = "<dict>", **kwargs: Any) -> MagmaConfig:  # type: ignore[override]
        """Our fields (or Magma-8B's) as a config; ``kwargs`` are transformers' loading settings (``dtype``,
        ``attn_implementation``, ``return_unused_kwargs``) as ``AutoConfig.from_pretrained`` passes them."""
        return_unused = kwargs.pop("return_unused_kwargs", False)
        for key in ("_from_auto", "_from_pipeline"):
            kwargs.pop(key, None)
        settings = {key: value for key, value in kwargs.items() if key in HF_SETTINGS}
        unused = {key: value for key, value in kwargs.items() if key not in HF_SETTINGS}
        directory = Path(str(settings.get("name_or_path") or ""))
        if settings.get("name_or_path") and (directory / "config.json").is_file():
            # AutoConfig.from_pretrained(DIR): read the directory as the model loader does (the tokenizer
            # beside it, a Magma-8B trunk's sizes off its weights), then transformers' settings
            from magma.checkpoint import load_checkpoint_config

            config = load_checkpoint_config(directory)
            if settings.get("attn_implementation"):
                config.text.attn_implementation = settings["attn_implementation"]
        else:
            config = cls(**{**config_dict, **settings, "config_source": source})
        return (config, unused) if return_unused else config

    def to_dict(self) -> dict[str, Any]:
        """The fields as config.json holds them (plus ``model_type``, which ``AutoConfig`` dispatches on)."""
        return {"model_type": self.model_type, **dataclasses.asdict(self.schema())}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MagmaConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclasses it holds

    def __repr__(self) -> str:
        return f"MagmaConfig(name={self.name!r}, text.hidden_size={self.text.hidden_size})"

    def tokens_per_crop_side(self) -> int:
        return self.image.base_size // self.image.patch_stride

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PreTrainedConfig:
        """The language model's ``LlamaConfig`` (generation reads its cache layout and special ids)."""
        return llama_config(self)


def llama_config(config: MagmaConfig) -> LlamaConfig:
    """The ``transformers.LlamaConfig`` of the language model, with the special ids generation reads."""
    return llama_text_config(config.text, config.tokens)


register_available()  # transformers' Auto classes, now that this module is complete (magma.auto_registration)
