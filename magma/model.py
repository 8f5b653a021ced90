"""MagmaForCausalLM: ConvNeXt vision tower -> projector -> Llama-style LM (transformers).

Image features replace the ``<image>`` token embeddings (the processor has already expanded each
image placeholder into as many ``<image>`` tokens as the image has features), the loss is
computed only at labelled positions, and ``generate`` does prefill + KV-cache decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from magma.config import MagmaConfig
from magma.errors import UserFacingError
from magma.projector import MultimodalProjector
from magma.sampling import mask_logits, sample_next_token
from magma.vision_tower import ConvNextVisionTower

if TYPE_CHECKING:
    from transformers import Cache

IGNORE_INDEX = -100


class ImageTokenMismatchError(UserFacingError, ValueError):
    """The number of ``<image>`` tokens does not match the features of the given images."""


@dataclass
class MagmaOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # None when labels are given: logits are never materialised
    cache: Cache | None = None
    num_label_tokens: int = 0
    label_predictions: torch.Tensor | None = None  # argmax ids at the labelled positions, row-major (evaluation)


def llama_config(config: MagmaConfig) -> LlamaConfig:
    text = config.text
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
        rope_scaling=None if text.rope_scaling is None else dict(text.rope_scaling),  # transformers adds to it
        tie_word_embeddings=text.tie_word_embeddings,
        pad_token_id=config.tokens.pad_token_id,
        bos_token_id=config.tokens.bos_token_id,
        eos_token_id=list(config.tokens.eos_token_ids),
    )
    llama._attn_implementation = text.attn_implementation
    return llama


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


class MagmaForCausalLM(nn.Module):
    def __init__(self, config: MagmaConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = ConvNextVisionTower(config.vision)
        self.projector = MultimodalProjector(config.projector, config.vision.feature_dim, config.text.hidden_size)
        self.language_model = LlamaForCausalLM(llama_config(config))
        if config.text.gradient_checkpointing:
            self.language_model.activation_checkpointing_enable()

    # ---- construction and checkpoints -------------------------------------------------------
    @classmethod
    def from_config(cls, name_or_path: str | Path, overrides: list[str] | None = None) -> MagmaForCausalLM:
        from magma.config import load_config

        return cls(load_config(name_or_path, overrides))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> MagmaForCausalLM:
        """Load our own checkpoint or a directory in the public Magma-8B layout."""
        from magma.checkpoint import load_pretrained

        return load_pretrained(directory, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | Path, **extras) -> Path:
        """Write config.json + safetensors (sharded when large); see ``magma.checkpoint.save_pretrained``."""
        from magma.checkpoint import save_pretrained

        return save_pretrained(self, directory, **extras)

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
    ) -> torch.Tensor:
        """Token embeddings with image features written at the ``<image>`` positions."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
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
        use_cache: bool = False,
        logits_to_keep: int = 0,
        return_label_predictions: bool = False,
    ) -> MagmaOutput:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds = self.embed(input_ids, pixel_values, image_grids)
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
        if labels is not None:
            loss, count, predictions = self.labelled_loss(hidden, labels, return_label_predictions)
            if pixel_values is None and self.training and torch.is_grad_enabled():
                loss = loss + self.image_path_zero()
            return MagmaOutput(loss=loss, cache=out.cache, num_label_tokens=count, label_predictions=predictions)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return MagmaOutput(logits=self.language_model.lm_head(hidden), cache=out.cache)

    def image_path_zero(self) -> torch.Tensor:
        """0 x (sum of the trainable vision tower and projector weights): a batch without images still
        reaches every trainable parameter, so DDP needs no ``find_unused_parameters`` on mixed data."""
        zero = self.language_model.lm_head.weight.new_zeros(())
        for parameter in (*self.vision_tower.parameters(), *self.projector.parameters()):
            if parameter.requires_grad:
                zero = zero + parameter.sum() * 0.0
        return zero

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

    # ---- generation -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prefill once, then decode token by token (KV cache unless ``use_cache=False``).
        ``allowed`` (vocab,) bool restricts the tokens chosen (``magma.sampling.allowed_tokens``).

        Returns (batch, new tokens); a row that hit a stop token is padded with the pad id after it.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask = left_align(input_ids, attention_mask)
        stops = torch.tensor(
            stop_token_ids if stop_token_ids is not None else self.config.tokens.eos_token_ids,
            dtype=torch.long,
            device=input_ids.device,
        )
        pad_id = self.config.tokens.pad_token_id
        embed_tokens = self.language_model.get_input_embeddings()

        embeds = self.embed(input_ids, pixel_values, image_grids)
        position_ids = positions_from_mask(attention_mask)
        cache = DynamicCache(config=self.language_model.config) if use_cache else None
        out = self.forward(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=1,
        )
        last_position = position_ids[:, -1:]
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1] if allowed is None else mask_logits(out.logits[:, -1], allowed)
            token = sample_next_token(logits, temperature, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            new_tokens.append(token)
            finished |= torch.isin(token, stops)
            if bool(finished.all()) or len(new_tokens) == max_new_tokens:
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            last_position = last_position + 1
            token_embeds = embed_tokens(token[:, None])
            if use_cache:
                out = self.forward(
                    inputs_embeds=token_embeds,
                    attention_mask=attention_mask,
                    position_ids=last_position,
                    cache=out.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            else:  # recompute the whole sequence every step (the baseline the cache is measured against)
                embeds = torch.cat([embeds, token_embeds], dim=1)
                position_ids = torch.cat([position_ids, last_position], dim=1)
                out = self.forward(
                    inputs_embeds=embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    logits_to_keep=1,
                )
        if not new_tokens:
            return input_ids.new_zeros((input_ids.shape[0], 0))
        return torch.stack(new_tokens, dim=1)


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
