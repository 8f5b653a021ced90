"""MagmaProcessor: conversations + images -> model inputs.

It renders the chat template, tokenizes, expands every ``<image>`` placeholder into as many
``<image>`` tokens as that image yields features (wrapped in ``<image_start>``/``<image_end>``),
masks labels so that loss falls on assistant turns only, and collates batches with left or right
padding (position ids come from the attention mask, so both paddings give the same positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_tools.sample_format import ACTION_PLACEHOLDER, IMAGE_PLACEHOLDER
from magma.config import MagmaConfig
from magma.errors import UserFacingError
from magma.image_processing import ImageInput, image_token_count, process_image
from magma.model import IGNORE_INDEX, positions_from_mask
from magma.tokenizer import load_tokenizer

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class ImagePlaceholderError(UserFacingError, ValueError):
    """The text's ``<image>`` placeholders do not match the images given."""


class ConversationError(UserFacingError, ValueError):
    """A conversation that is not in the LLaVA-style sample format."""


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    crops: list[torch.Tensor] = field(default_factory=list)  # one (rows*cols, 3, H, W) tensor per image
    grids: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ModelInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_grids: torch.Tensor | None = None

    def to(self, device: str | torch.device, pixel_dtype: torch.dtype | None = None) -> ModelInputs:
        moved = {name: (value.to(device) if value is not None else None) for name, value in vars(self).items()}
        if pixel_dtype is not None and moved["pixel_values"] is not None:
            moved["pixel_values"] = moved["pixel_values"].to(pixel_dtype)
        return ModelInputs(**moved)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MagmaForCausalLM.forward``."""
        return {name: value for name, value in vars(self).items() if value is not None}

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MagmaForCausalLM.generate`` (it derives positions itself)."""
        keep = ("input_ids", "attention_mask", "pixel_values", "image_grids")
        return {name: value for name, value in self.as_kwargs().items() if name in keep}


def normalise_conversation(conversation: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """LLaVA ``{"from", "value"}`` or chat ``{"role", "content"}`` turns -> chat messages."""
    messages = []
    for index, turn in enumerate(conversation):
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in ROLE_NAMES or not isinstance(content, str):
            raise ConversationError(
                f"turn {index} is {turn!r}; expected {{'from': 'human'|'gpt'|'system', 'value': str}} "
                "or {'role': 'user'|'assistant'|'system', 'content': str}"
            )
        messages.append({"role": ROLE_NAMES[role], "content": content})
    return messages


class MagmaProcessor:
    def __init__(self, tokenizer: Any, config: MagmaConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.tokens = config.tokens
        found = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if found != self.tokens.image_token_id:
            raise ImagePlaceholderError(
                f"the tokenizer maps {IMAGE_PLACEHOLDER} to {found}, the config says "
                f"tokens.image_token_id={self.tokens.image_token_id}; use the tokenizer saved with the model"
            )

    @classmethod
    def from_config(cls, config: MagmaConfig, tokenizer_dir: str | Path | None = None) -> MagmaProcessor:
        source = tokenizer_dir or config.tokenizer
        if source is None:
            raise ValueError(f"config '{config.name}' names no tokenizer; pass tokenizer_dir")
        return cls(load_tokenizer(source), config)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MagmaProcessor:
        from magma.checkpoint import load_checkpoint_config

        return cls(load_tokenizer(directory), load_checkpoint_config(directory))

    # ---- one sample -----------------------------------------------------------------------
    def encode(
        self,
        conversation: Sequence[dict[str, str]],
        images: Sequence[ImageInput] = (),
        add_generation_prompt: bool = False,
        action_token_ids: Sequence[int] | None = None,
    ) -> EncodedSample:
        """Tokenize one conversation; labels cover assistant turns (content and end-of-turn token).

        ``action_token_ids`` (robot bins or latent codes, already encoded by an action codec) are written
        in place of the one ``<action>`` placeholder of an assistant turn, as tokens, not as text, so they
        never pass through the tokenizer's merges.
        """
        messages = normalise_conversation(conversation)
        text = self._render(messages, add_generation_prompt)
        spans = self._assistant_spans(messages, text)
        ids, starts = self._tokenize_around_action(text, action_token_ids)
        labels = [
            token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
            for token, begin in zip(ids, starts, strict=True)
        ]
        placeholders = sum(1 for token in ids if token == self.tokens.image_token_id)
        if placeholders != len(images):
            raise ImagePlaceholderError(
                f"the conversation has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images "
                f"were given; put one {IMAGE_PLACEHOLDER} in the text for each image, in order"
            )
        sample = EncodedSample(input_ids=[], labels=[])
        image_index = 0
        for position, (token, label) in enumerate(zip(ids, labels, strict=True)):
            if token != self.tokens.image_token_id:
                sample.input_ids.append(token)
                sample.labels.append(label)
                continue
            crops, grid = process_image(images[image_index], self.config.image)
            image_index += 1
            sample.crops.append(crops)
            sample.grids.append(grid)
            count = image_token_count(grid, self.config.image, self.config.projector.row_separator)
            opened = position > 0 and ids[position - 1] == self.tokens.image_start_token_id
            closed = position + 1 < len(ids) and ids[position + 1] == self.tokens.image_end_token_id
            expansion = [] if opened else [self.tokens.image_start_token_id]
            expansion += [self.tokens.image_token_id] * count
            expansion += [] if closed else [self.tokens.image_end_token_id]
            sample.input_ids.extend(expansion)
            sample.labels.extend([IGNORE_INDEX] * len(expansion))
        return sample

    def _tokenize_around_action(self, text: str, action_token_ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` and the character offset where each begins; the ``<action>``
        placeholder, if any, becomes ``action_token_ids`` (each placed at the placeholder's offset)."""
        pieces = text.split(ACTION_PLACEHOLDER)
        if action_token_ids is None and len(pieces) == 1:
            pieces_with_actions: list[str | None] = [text]
        elif action_token_ids is not None and len(pieces) == 2:
            pieces_with_actions = [pieces[0], None, pieces[1]]
        else:
            raise ConversationError(
                f"the conversation has {len(pieces) - 1} {ACTION_PLACEHOLDER} placeholders and "
                f"{'no' if action_token_ids is None else len(action_token_ids)} action tokens; "
                f"put exactly one {ACTION_PLACEHOLDER} in an assistant turn when a sample has actions"
            )
        ids: list[int] = []
        starts: list[int] = []
        offset = 0
        for piece in pieces_with_actions:
            if piece is None:
                ids.extend(int(token) for token in action_token_ids)  # type: ignore[union-attr]
                starts.extend([offset] * len(action_token_ids))  # type: ignore[arg-type]
                offset += len(ACTION_PLACEHOLDER)
                continue
            if piece:
                encoding = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                ids.extend(encoding["input_ids"])
                starts.extend(offset + begin for begin, _ in encoding["offset_mapping"])
            offset += len(piece)
        return ids, starts

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _assistant_spans(self, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]]:
        """Character spans of assistant turns in ``text``, found by rendering growing prefixes."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:index], add_generation_prompt=True)
            through = self._render(messages[: index + 1], add_generation_prompt=False)
            if not (text.startswith(before) and text.startswith(through)):
                raise ConversationError("the chat template does not render conversations prefix by prefix")
            spans.append((len(before), len(through)))
        return spans

    # ---- batches --------------------------------------------------------------------------
    def collate(self, samples: Sequence[EncodedSample], padding_side: str = "right") -> ModelInputs:
        """Pad to the longest sample; with labels only if any sample has a labelled token."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        length = max(len(sample.input_ids) for sample in samples)
        ids = torch.full((len(samples), length), self.tokens.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            ids[row, span] = torch.tensor(sample.input_ids, dtype=torch.long)
            labels[row, span] = torch.tensor(sample.labels, dtype=torch.long)
            mask[row, span] = 1
        crops = [crop for sample in samples for crop in sample.crops]
        grids = [grid for sample in samples for grid in sample.grids]
        return ModelInputs(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            labels=labels if bool((labels != IGNORE_INDEX).any()) else None,
            pixel_values=torch.cat(crops) if crops else None,
            image_grids=torch.tensor(grids, dtype=torch.long) if grids else None,
        )

    def __call__(
        self,
        prompts: str | Sequence[str],
        images: Sequence[Sequence[ImageInput]] | Sequence[ImageInput] | None = None,
        system: str | None = None,
    ) -> ModelInputs:
        """Generation inputs: user prompt(s) with ``<image>`` placeholders, left-padded."""
        single = isinstance(prompts, str)
        prompt_list = [prompts] if single else list(prompts)
        if images is None:
            image_lists: list[Sequence[ImageInput]] = [[] for _ in prompt_list]
        elif single:
            image_lists = [images]  # type: ignore[list-item]
        else:
            image_lists = list(images)  # type: ignore[arg-type]
        if len(image_lists) != len(prompt_list):
            raise ImagePlaceholderError(f"{len(prompt_list)} prompts but {len(image_lists)} image lists")
        samples = []
        for prompt, prompt_images in zip(prompt_list, image_lists, strict=True):
            turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            samples.append(self.encode(turns, prompt_images, add_generation_prompt=True))
        return self.collate(samples, padding_side="left")

    def decode(self, token_ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
