"""MagmaForCausalLM: ConvNeXt vision tower -> projector -> Llama-style LM (transformers).

Image features replace the ``<image>`` token embeddings (the processor has already expanded each
image placeholder into as many ``<image>`` tokens as the image has features), and the loss is
computed only at labelled positions. The model is a transformers ``PreTrainedModel`` with
``GenerationMixin``: ``generate`` is transformers' own (greedy, sampling, logits processors, stopping
criteria, streamers, KV cache), fed by ``prepare_inputs_for_generation`` below, and our constrained
action decoding is the logits processor ``magma.sampling.AllowedTokensLogitsProcessor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from data_tools.errors import UserFacingError
from magma.action_heads import ActionHeadError, ActionModules
from magma.auto_registration import register_available
from magma.configuration_magma import MagmaConfig, llama_config
from magma.projector import MultimodalProjector
from magma.vision_tower import ConvNextVisionTower

if TYPE_CHECKING:
    from transformers import Cache

IGNORE_INDEX = -100


class ImageTokenMismatchError(UserFacingError, ValueError):
    """The number of ``<image>`` tokens does not match the features of the given images."""


@dataclass
class MagmaOutput(CausalLMOutputWithPast):
    """transformers' causal-LM output plus what the labelled-rows loss gives: ``logits`` is None when
    ``labels`` are given (the vocabulary-wide logits are never built), ``num_label_tokens`` counts the
    labelled positions and ``label_predictions`` holds the argmax ids there, row-major (evaluation)."""

    num_label_tokens: int | None = None  # set whenever labels are given
    label_predictions: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None  # the label tokens' mean loss (``loss`` adds the action head's)
    action_loss: torch.Tensor | None = None  # the l1/flow head's loss over the valid chunk values
    num_action_values: int | None = None  # how many chunk values that loss averages (action_mask True x D)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens, so left and right padding give the same positions."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move right padding to the left so that every row ends with its last real token."""
    shifts = (attention_mask.flip(-1).cumsum(-1) == 0).sum(-1)  # trailing padding per row
    if int(shifts.max()) == 0:
        return input_ids, attention_mask
    ids = torch.stack([row.roll(int(s)) for row, s in zip(input_ids, shifts, strict=True)])
    mask = torch.stack([row.roll(int(s)) for row, s in zip(attention_mask, shifts, strict=True)])
    return ids, mask


class MagmaPreTrainedModel(PreTrainedModel):
    """What transformers needs to know of the model class: its config, what it supports, how to initialise."""

    config_class = MagmaConfig
    config: MagmaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _no_split_modules: ClassVar[list[str]] = ["LlamaDecoderLayer", "ConvNeXtBlock"]

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Every part initialises itself when built (timm's ConvNeXt, the projector, the LM's own post_init);
        nothing is re-initialised on top, so a model built from a config matches the one built before."""


class MagmaForCausalLM(MagmaPreTrainedModel, GenerationMixin):
    def __init__(self, config: MagmaConfig) -> None:
        super().__init__(config)
        self.vision_tower = ConvNextVisionTower(config.vision)
        self.projector = MultimodalProjector(config.projector, config.vision.feature_dim, config.text.hidden_size)
        self.language_model = LlamaForCausalLM(llama_config(config))
        self.action_head = self.build_action_head()
        if config.text.gradient_checkpointing:
            self.language_model.activation_checkpointing_enable()
        self.post_init()

    def build_action_head(self) -> ActionModules | None:
        """The state projector and chunk head ``config.action`` asks for (None for the plain token head)."""
        action = self.config.action
        return ActionModules(action, self.config.text.hidden_size) if action.parallel or action.state_dim else None

    def set_action_head(self, **fields: Any) -> None:
        """Change ``config.action`` (``head``, ``chunk_length``, ``state_dim``, ...) and build the new parts with
        fresh weights: a fine-tune from a token-head checkpoint to the l1 or flow head. Everything else keeps
        its weights."""
        import dataclasses

        from data_tools.config_files import ConfigError
        from magma.config import action_head_problems

        action = dataclasses.replace(self.config.action, **fields)
        problems = action_head_problems(action)
        if problems:
            raise ConfigError("; ".join(problems))
        self.config.action = action
        reference = self.language_model.lm_head.weight
        head = self.build_action_head()
        self.action_head = None if head is None else head.to(device=reference.device, dtype=reference.dtype)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # ---- construction and checkpoints -------------------------------------------------------
    @classmethod
    def from_config(cls, name_or_path: str | Path, overrides: list[str] | None = None) -> MagmaForCausalLM:
        from magma.config import load_config

        return cls(load_config(name_or_path, overrides))

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> MagmaForCausalLM:
        """Load our own checkpoint or a directory in the public Magma-8B layout (``AutoModelForCausalLM``
        comes here too). transformers' ``torch_dtype``/``dtype`` (a dtype, its name or "auto") and a
        single-device ``device_map`` are honoured; the loader reads one shard at a time and names any
        tensor that is missing, extra or of the wrong shape."""
        from magma.checkpoint import CheckpointError, load_pretrained

        dtype = dtype if dtype is not None else kwargs.pop("torch_dtype", None)
        if isinstance(dtype, str):
            dtype = None if dtype == "auto" else getattr(torch, dtype, None)
        device_map = kwargs.pop("device_map", None)
        if isinstance(device_map, dict):
            raise CheckpointError(
                "device_map with several devices is not supported for Magma checkpoints; give one device "
                "(device_map='cuda' or device='cuda') or use accelerate's dispatch on the loaded model"
            )
        device = device or (device_map if device_map not in (None, "auto") else None) or "cpu"
        return load_pretrained(pretrained_model_name_or_path, device=device, dtype=dtype)

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | Path, *, is_main_process: bool = True, **extras: Any
    ) -> Path:
        """Write config.json + safetensors (sharded when large), atomically; ``extras`` are
        ``magma.checkpoint.save_pretrained``'s (``tokenizer``, ``action_statistics``, ``max_shard_size``).
        transformers' ``safe_serialization`` is accepted (always safetensors)."""
        from magma.checkpoint import save_pretrained

        extras.pop("safe_serialization", None)
        if not is_main_process:
            return Path(save_directory)
        return save_pretrained(self, save_directory, **extras)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per module, in the order data flows through them."""
        lm = self.language_model
        parts = {
            "vision_tower": self.vision_tower,
            "projector": self.projector,
            "language_model.embed_tokens": lm.model.embed_tokens,
            "language_model.layers": lm.model.layers,
            "language_model.norm": lm.model.norm,
        }
        if self.action_head is not None:
            parts["action_head"] = self.action_head
        counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
        if not self.config.text.tie_word_embeddings:
            counts["language_model.lm_head"] = lm.lm_head.weight.numel()
        counts["total"] = sum(counts.values())
        return counts

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ---- forward ----------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, image_grids: torch.Tensor) -> torch.Tensor:
        """All crops of all images -> (total image tokens, hidden): stitched per image, in order."""
        grids = [tuple(int(v) for v in grid) for grid in image_grids.tolist()]
        crops_per_image = [rows * cols for rows, cols in grids]
        if sum(crops_per_image) != pixel_values.shape[0]:
            raise ImageTokenMismatchError(
                f"image_grids describe {sum(crops_per_image)} crops but pixel_values holds {pixel_values.shape[0]}"
            )
        features = self.vision_tower(pixel_values.to(self.vision_tower.trunk.stem[0].weight.dtype))
        projected = self.projector(features)
        images = projected.split(crops_per_image, dim=0)
        return torch.cat([self.projector.stitch(crops, grid) for crops, grid in zip(images, grids, strict=True)])

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        action_slots: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features written at the ``<image>`` positions, and the projected state
        and action queries at their ``action_slots`` (``magma.action_heads``)."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if action_slots is not None and bool((action_slots >= 0).any()):
            if self.action_head is None:
                raise ActionHeadError(
                    "the input has state or action-query slots but the model has neither (action.head=tokens, "
                    "action.state_dim=0)"
                )
            embeds = self.action_head.place(embeds, action_slots, states)
        image_slots = input_ids == self.config.tokens.image_token_id
        num_slots = int(image_slots.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if num_slots:
                raise ImageTokenMismatchError(f"the input has {num_slots} <image> tokens but no images were given")
            return embeds
        if image_grids is None:
            raise ImageTokenMismatchError("pixel_values were given without image_grids (rows, cols per image)")
        features = self.encode_images(pixel_values, image_grids)
        if features.shape[0] != num_slots:
            raise ImageTokenMismatchError(
                f"the input has {num_slots} <image> tokens but the images give {features.shape[0]} features; "
                "build inputs with MagmaProcessor, which expands each <image> placeholder"
            )
        return embeds.masked_scatter(image_slots.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_label_predictions: bool = False,
        action_slots: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        action_targets: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MagmaOutput:
        """Logits (``logits_to_keep``: only the last rows), or with ``labels`` and/or ``action_targets`` the
        loss: the mean over labelled positions plus ``action.loss_weight`` x the l1/flow head's loss over the
        chunk steps ``action_mask`` keeps. Position ids default to those of the attention mask (left or right
        padding alike). ``action_slots`` and ``states`` place the state and action queries (see
        ``magma.action_heads``); decoding steps after a prefill carry no slots."""
        if action_slots is not None and input_ids is not None and action_slots.shape != input_ids.shape:
            action_slots = None  # a decoding step of generate: the slots were the prompt's
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids, pixel_values, image_grids, action_slots, states)
        if position_ids is None and attention_mask is not None:  # the mask covers cached tokens too
            position_ids = positions_from_mask(attention_mask)[:, -inputs_embeds.shape[1] :]
        out = self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        if labels is not None or action_targets is not None:
            if labels is not None:
                lm_loss, count, predictions = self.labelled_loss(hidden, labels, return_label_predictions)
            else:
                lm_loss, count, predictions = hidden.sum() * 0.0, 0, None
            action_loss, action_values = None, None
            reaches_head = action_targets is not None and action_slots is not None
            if self.training and torch.is_grad_enabled():  # on the LM loss, which the trainer always backpropagates
                lm_loss = lm_loss + self.unused_path_zero(pixel_values is None, not reaches_head)
            loss = lm_loss
            if reaches_head:
                if self.action_head is None or self.action_head.decoder is None:
                    raise ActionHeadError(
                        "action_targets were given but the model has no chunk head "
                        f"(action.head={self.config.action.head})"
                    )
                mask = action_mask if action_mask is not None else action_targets.new_ones(action_targets.shape[:2])
                action_loss, action_values = self.action_head.loss(hidden, action_slots, action_targets, mask.bool())
                loss = loss + self.config.action.loss_weight * action_loss
            return MagmaOutput(
                loss=loss,
                cache=out.cache,
                num_label_tokens=count,
                label_predictions=predictions,
                lm_loss=lm_loss,
                action_loss=action_loss,
                num_action_values=action_values,
            )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return MagmaOutput(logits=self.language_model.lm_head(hidden), cache=out.cache)

    def unused_path_zero(self, no_images: bool, no_action_loss: bool) -> torch.Tensor:
        """0 x (sum of the trainable weights this batch did not reach: the vision tower and projector without
        images, the action modules without chunk targets): every trainable parameter still gets a gradient,
        so DDP needs no ``find_unused_parameters`` on mixed data."""
        modules = [self.vision_tower, self.projector] if no_images else []
        if no_action_loss and self.action_head is not None:
            modules.append(self.action_head)
        zero = self.language_model.lm_head.weight.new_zeros(())
        for module in modules:
            for parameter in module.parameters():
                if parameter.requires_grad:
                    zero = zero + parameter.sum() * 0.0
        return zero

    @torch.inference_mode()
    def action_chunk(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        action_slots: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **unused: Any,
    ) -> torch.Tensor:
        """The l1/flow head's normalised action chunks (B, H, D) in one forward pass of the language model
        (the flow head then integrates its own small expert ``action.flow_steps`` times)."""
        if self.action_head is None or self.action_head.decoder is None:
            raise ActionHeadError(
                f"the model decodes actions as tokens (action.head={self.config.action.head}); use generate"
            )
        embeds = self.embed(input_ids, pixel_values, image_grids, action_slots, states)
        hidden = self.language_model.model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask)
        ).last_hidden_state
        return self.action_head.sample(hidden, action_slots, generator).float()

    def labelled_loss(
        self, hidden: torch.Tensor, labels: torch.Tensor, return_predictions: bool = False
    ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """Mean next-token cross-entropy over labelled positions only: the LM head runs on those rows
        alone, so the (batch x length x vocab) logits tensor is never built. Optionally also the
        argmax prediction at each of those positions."""
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        count = int(selected.sum())
        if count == 0:
            return hidden.sum() * 0.0, 0, (targets[selected] if return_predictions else None)
        logits = self.language_model.lm_head(hidden[:, :-1][selected])
        predictions = logits.argmax(dim=-1) if return_predictions else None
        return F.cross_entropy(logits.float(), targets[selected]), count, predictions

    # ---- generation (transformers' generate) ------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """transformers' preparation, with the image grids sent only where the pixel values are (prefill,
        or every step without a cache): decoding steps never re-encode images."""
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        if inputs.get("pixel_values") is None:
            inputs.pop("image_grids", None)
        return inputs

    def _expand_inputs_for_generation(  # transformers' hook for num_return_sequences and beams
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """Rows are repeated by transformers; the crops and grids of each row's images are repeated here
        with their row (they are listed per image, not per row, so a plain repeat would misplace them)."""
        pixel_values, image_grids = kwargs.pop("pixel_values", None), kwargs.pop("image_grids", None)
        input_ids, kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **kwargs
        )
        if pixel_values is not None and image_grids is not None and expand_size > 1:
            pixel_values, image_grids = self.repeat_images_per_row(input_ids, pixel_values, image_grids, expand_size)
        if pixel_values is not None:
            kwargs["pixel_values"], kwargs["image_grids"] = pixel_values, image_grids
        return input_ids, kwargs

    def repeat_images_per_row(
        self, expanded_ids: torch.Tensor, pixel_values: torch.Tensor, image_grids: torch.Tensor, times: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops and grids listed per image, in row order, repeated ``times`` per row (row r's images are
        the next ones whose features fill that row's ``<image>`` tokens)."""
        from magma.image_processing import image_token_count

        grids = [tuple(int(v) for v in grid) for grid in image_grids.tolist()]
        features = [image_token_count(grid, self.config.image, self.config.projector.row_separator) for grid in grids]
        crops = [rows * cols for rows, cols in grids]
        slots_per_row = (expanded_ids[::times] == self.config.tokens.image_token_id).sum(-1).tolist()
        crop_starts = [sum(crops[:index]) for index in range(len(crops) + 1)]
        pixel_parts, grid_parts, image = [], [], 0
        for slots in slots_per_row:
            first = image
            while slots > 0 and image < len(grids):
                slots -= features[image]
                image += 1
            row_pixels = pixel_values[crop_starts[first] : crop_starts[image]]
            pixel_parts += [row_pixels] * times
            grid_parts += [image_grids[first:image]] * times
        return torch.cat(pixel_parts), torch.cat(grid_parts)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        """transformers' ``generate``; right-padded prompts are moved to left padding first (every row must
        end with its last real token), so collated training batches can be passed as they are."""
        attention_mask = kwargs.get("attention_mask")
        if input_ids is not None and attention_mask is not None:
            input_ids, kwargs["attention_mask"] = left_align(input_ids, attention_mask)
        return super().generate(input_ids, **kwargs)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


register_available()  # transformers' Auto classes, now that this module is complete (magma.auto_registration)
