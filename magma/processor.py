"""MagmaProcessor: conversations + images -> model inputs.

It renders the chat template, tokenizes, expands every ``<image>`` placeholder into as many
``<image>`` tokens as that image yields features (wrapped in ``<image_start>``/``<image_end>``),
masks labels so that loss falls on assistant turns only, and collates batches with left or right
padding (position ids come from the attention mask, so both paddings give the same positions).

Text is never trusted to hold special tokens. Only the chat template's own specials and the
processor's placeholders become special ids; a ``<image>``, ``<|eot_id|>`` or ``<action>`` written
inside message text (a chat message, page text, an instruction) is tokenized as the plain text it is.
A message's content is either a string in the training-sample format (its ``<image>`` and
``<action>`` are placeholders) or a list of parts, ``{"type": "text", "text": ...}`` (plain text,
whatever it holds) and ``{"type": "image"}`` (an image's place), for text that comes from outside.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from tokenizers import Tokenizer
from transformers import ProcessorMixin

from data_tools.errors import UserFacingError
from data_tools.sample_format import ACTION_PLACEHOLDER, IMAGE_PLACEHOLDER
from magma.action_heads import NO_SLOT, STATE_SLOT, query_slot
from magma.auto_registration import register_available
from magma.config import ActionHeadConfig
from magma.configuration_magma import MagmaConfig
from magma.image_processing import DEFAULT_MAX_IMAGE_PIXELS, ImageInput, image_token_count, process_image
from magma.model import IGNORE_INDEX, positions_from_mask
from magma.tokenizer import load_tokenizer

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IMAGE_PART = {"type": "image"}
IMAGE_START, IMAGE_END = "<image_start>", "<image_end>"  # Magma's image markers, as its tokenizer spells them
NEUTRAL_CHARACTER = "\x00"  # stands in for each character of untrusted text while specials are located
ContentPart = dict[str, Any]
Content = str | Sequence[ContentPart]


class ImagePlaceholderError(UserFacingError, ValueError):
    """The text's ``<image>`` placeholders do not match the images given."""


class ConversationError(UserFacingError, ValueError):
    """A conversation that is not in the LLaVA-style sample format."""


class PromptTooLongError(UserFacingError, ValueError):
    """A prompt of more text tokens than the processor's ``max_prompt_tokens``."""

    code = "prompt_too_long"  # the policy server's error code for it


def text_part(text: str) -> ContentPart:
    """A content part of plain text: whatever special-token strings it holds stay text."""
    return {"type": "text", "text": text}


def prompt_content(template: str, **fields: Any) -> list[ContentPart]:
    """A trusted prompt template filled with untrusted ``fields``: the template's ``<image>`` placeholders
    become image parts, and the filled-in values are plain text (a ``<image>`` in a field stays text)."""
    parts: list[ContentPart] = []
    for index, piece in enumerate(template.split(IMAGE_PLACEHOLDER)):
        if index:
            parts.append(dict(IMAGE_PART))
        if piece:
            parts.append(text_part(piece.format(**fields)))
    return parts


def _is_content(content: Any) -> bool:
    if isinstance(content, str):
        return True
    if not isinstance(content, list | tuple):
        return False
    return all(
        isinstance(part, dict)
        and (part.get("type") == "image" or (part.get("type") == "text" and isinstance(part.get("text"), str)))
        for part in content
    )


def _slot_marker(slot: int) -> int:
    """The stand-in id of a state/query slot while a sample is tokenized (never a real token id)."""
    return -2 - slot


@dataclass(frozen=True)
class ActionLayout:
    """What a sample's ``<action>`` placeholder (training) or the end of a prompt (inference) holds besides
    action tokens: one state slot (the model takes proprioception) and ``queries`` action-query slots (the
    l1/flow heads read the chunk off them)."""

    state: bool = False
    queries: int = 0

    @classmethod
    def of(cls, action: ActionHeadConfig) -> ActionLayout:
        return cls(state=action.state_dim > 0, queries=action.chunk_length if action.parallel else 0)

    def expansion(self, action_token_ids: Sequence[int] | None = None) -> list[int]:
        """Slot markers, then the action tokens (token head) or the query markers (l1/flow heads)."""
        ids = [_slot_marker(STATE_SLOT)] if self.state else []
        if self.queries:
            return ids + [_slot_marker(query_slot(step)) for step in range(self.queries)]
        return ids + [int(token) for token in action_token_ids or ()]


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    crops: list[torch.Tensor] = field(default_factory=list)  # one (rows*cols, 3, H, W) tensor per image
    grids: list[tuple[int, int]] = field(default_factory=list)
    slots: list[int] | None = None  # per token: NO_SLOT, STATE_SLOT or an action query (magma.action_heads)
    state: list[float] | None = None  # the normalised proprioceptive state of the state slot
    action_targets: list[list[float]] | None = None  # (H, D) normalised chunk, l1/flow heads
    action_mask: list[bool] | None = None  # (H,) False for steps padded past the episode's end

    def mark_slots(self, pad_token_id: int) -> None:
        """Turn slot markers into ``slots`` (their ids become padding, their labels ignored)."""
        if not any(token < 0 for token in self.input_ids):
            return
        self.slots = [-2 - token if token < 0 else NO_SLOT for token in self.input_ids]
        self.labels = [
            IGNORE_INDEX if token < 0 else label for token, label in zip(self.input_ids, self.labels, strict=True)
        ]
        self.input_ids = [pad_token_id if token < 0 else token for token in self.input_ids]


@dataclass(eq=False)
class ModelInputs(Mapping):
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_grids: torch.Tensor | None = None
    action_slots: torch.Tensor | None = None  # (B, L) long: NO_SLOT, STATE_SLOT or query step + 1
    states: torch.Tensor | None = None  # (B, S) normalised proprioceptive states
    action_targets: torch.Tensor | None = None  # (B, H, D) normalised chunks
    action_mask: torch.Tensor | None = None  # (B, H) bool, False past an episode's end

    def to(self, device: str | torch.device, pixel_dtype: torch.dtype | None = None) -> ModelInputs:
        moved = {name: (value.to(device) if value is not None else None) for name, value in vars(self).items()}
        if pixel_dtype is not None and moved["pixel_values"] is not None:
            moved["pixel_values"] = moved["pixel_values"].to(pixel_dtype)
        return ModelInputs(**moved)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MagmaForCausalLM.forward``."""
        return {name: value for name, value in vars(self).items() if value is not None}

    # a read-only mapping of the given fields, as transformers' BatchFeature is: ``model(**inputs)``,
    # ``model.generate(**inputs)``
    def __getitem__(self, name: str) -> torch.Tensor:
        value = vars(self).get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_kwargs())

    def __len__(self) -> int:
        return len(self.as_kwargs())

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MagmaForCausalLM.generate`` (it derives positions itself)."""
        keep = ("input_ids", "attention_mask", "pixel_values", "image_grids", "action_slots", "states")
        return {name: value for name, value in self.as_kwargs().items() if name in keep}


def normalise_conversation(conversation: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """LLaVA ``{"from", "value"}`` or chat ``{"role", "content"}`` turns -> chat messages (content: a
    string or a list of text and image parts)."""
    messages = []
    for index, turn in enumerate(conversation):
        role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if role not in ROLE_NAMES or not _is_content(content):
            raise ConversationError(
                f"turn {index} is {str(turn)[:200]}; expected {{'from': 'human'|'gpt'|'system', 'value': str}} "
                "or {'role': 'user'|'assistant'|'system', 'content': str or a list of "
                "{'type': 'text', 'text': str} and {'type': 'image'} parts}"
            )
        messages.append({"role": ROLE_NAMES[role], "content": content})
    return messages


class MagmaProcessor(ProcessorMixin):
    """Conversations + images -> model inputs (see the module docstring). ``max_prompt_tokens`` (None: no
    limit) bounds the text tokens of one prompt and ``max_image_pixels`` the pixels of one image; both are
    checked before any model work.

    A transformers ``ProcessorMixin`` (``AutoProcessor.from_pretrained(DIR)`` gives one) holding the
    tokenizer; the image settings and token ids come from the model config saved beside it."""

    def __init__(self, tokenizer: Any, config: MagmaConfig) -> None:
        super().__init__(tokenizer=tokenizer)
        self.config = config
        self.tokens = config.tokens
        self.max_prompt_tokens: int | None = None
        self.max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
        found = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if found != self.tokens.image_token_id:
            raise ImagePlaceholderError(
                f"the tokenizer maps {IMAGE_PLACEHOLDER} to {found}, the config says "
                f"tokens.image_token_id={self.tokens.image_token_id}; use the tokenizer saved with the model"
            )
        added = tokenizer.get_added_vocab()
        for token, field_name in ((IMAGE_START, "image_start_token_id"), (IMAGE_END, "image_end_token_id")):
            # a disagreement would leave the prompt's marker as text and wrap each image in a second pair
            if token in added and added[token] != getattr(self.tokens, field_name):
                raise ImagePlaceholderError(
                    f"the tokenizer maps {token} to {added[token]}, the config says tokens.{field_name}="
                    f"{getattr(self.tokens, field_name)}; use the tokenizer saved with the model or fix the config"
                )
        # A private copy of the tokenizer that reads every special-token string as text; specials are
        # placed by id (``_tokenize``), so the shared tokenizer's settings are never toggled.
        self._plain_tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._plain_tokenizer.encode_special_tokens = True
        self._special_ids = dict(tokenizer.get_added_vocab())
        structural = sorted({*self._special_ids, ACTION_PLACEHOLDER}, key=len, reverse=True)
        self._structural = re.compile("|".join(re.escape(token) for token in structural))
        image_start, image_end = (
            token if token in added else tokenizer.convert_ids_to_tokens(getattr(self.tokens, field_name))
            for token, field_name in ((IMAGE_START, "image_start_token_id"), (IMAGE_END, "image_end_token_id"))
        )
        # the placeholders of the training-sample format (string content): <image> (Magma's own prompts
        # wrap it in <image_start>...<image_end>) and <action>
        self._sample_placeholders = re.compile(
            f"(?:{re.escape(image_start)})?{re.escape(IMAGE_PLACEHOLDER)}(?:{re.escape(image_end)})?"
            f"|{re.escape(ACTION_PLACEHOLDER)}"
        )

    @classmethod
    def from_config(cls, config: MagmaConfig, tokenizer_dir: str | Path | None = None) -> MagmaProcessor:
        source = tokenizer_dir or config.tokenizer
        if source is None:
            raise ValueError(f"config '{config.name}' names no tokenizer; pass tokenizer_dir")
        return cls(load_tokenizer(source), config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> MagmaProcessor:  # type: ignore[override]
        """The processor of a checkpoint directory (ours or Magma-8B's): its tokenizer and config.
        transformers' loading keywords (``trust_remote_code``, ...) are accepted and have no effect."""
        from magma.checkpoint import load_checkpoint_config

        directory = Path(pretrained_model_name_or_path)
        return cls(load_tokenizer(directory), load_checkpoint_config(directory))

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:  # type: ignore[override]
        """The tokenizer files and ``processor_config.json`` naming this class (``push_to_hub`` comes here
        too); ``MagmaForCausalLM.save_pretrained`` writes the model config the processor reads."""
        from magma.checkpoint import write_processor_config

        directory = Path(save_directory)
        saved = list(self.tokenizer.save_pretrained(str(directory)))
        return [*saved, str(write_processor_config(directory))]

    # ---- one sample -----------------------------------------------------------------------
    def encode(
        self,
        conversation: Sequence[dict[str, Any]],
        images: Sequence[ImageInput] = (),
        add_generation_prompt: bool = False,
        action_token_ids: Sequence[int] | None = None,
        action_layout: ActionLayout | None = None,
    ) -> EncodedSample:
        """Tokenize one conversation; labels cover assistant turns (content and end-of-turn token).

        ``action_token_ids`` (robot bins or latent codes, already encoded by an action codec) are written
        in place of the one ``<action>`` placeholder of an assistant turn, as tokens, not as text, so they
        never pass through the tokenizer's merges. ``action_layout`` puts the state slot before them, or
        (l1/flow heads) the action-query slots instead of them; slots are never labelled.
        """
        if action_layout is not None and (action_token_ids is not None or action_layout.queries):
            action_token_ids = action_layout.expansion(action_token_ids)
        messages = normalise_conversation(conversation)
        contents = [self._content_pieces(message["content"]) for message in messages]
        real = [
            {"role": message["role"], "content": "".join(piece for piece, _ in pieces)}
            for message, pieces in zip(messages, contents, strict=True)
        ]
        neutral = [
            {
                "role": message["role"],
                "content": "".join(
                    piece if trusted else re.sub(r"\S", NEUTRAL_CHARACTER, piece) for piece, trusted in pieces
                ),
            }
            for message, pieces in zip(messages, contents, strict=True)
        ]
        text = self._render(real, add_generation_prompt)
        layout = self._render(neutral, add_generation_prompt)
        if len(layout) != len(text):
            raise ConversationError(
                "the tokenizer's chat template changes the message text it renders; use a template that "
                "inserts each message's content as it is"
            )
        ids, starts = self._tokenize(text, layout, action_token_ids)
        self._check_length(len(ids))  # before the spans: their cost grows with the square of the turns
        spans = self._assistant_spans(real, text)
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
            crops, grid = process_image(images[image_index], self.config.image, self.max_image_pixels)
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
            self._check_length(len(sample.input_ids) + len(ids) - position - 1, "with its images ")
        sample.mark_slots(self.tokens.pad_token_id)
        return sample

    def _check_length(self, length: int, what: str = "") -> None:
        """PromptTooLongError when ``length`` tokens exceed ``max_prompt_tokens`` (checked before image work)."""
        if self.max_prompt_tokens is not None and length > self.max_prompt_tokens:
            raise PromptTooLongError(
                f"{what}the prompt is {length} tokens, over the limit of {self.max_prompt_tokens}; shorten the "
                "text or send fewer or smaller images, or raise max_prompt_tokens (agent serve --max-prompt-tokens)"
            )

    def _content_pieces(self, content: Content) -> list[tuple[str, bool]]:
        """(text, trusted) pieces of one message's content: trusted pieces are placeholders."""
        if not isinstance(content, str):
            return [(IMAGE_PLACEHOLDER, True) if part["type"] == "image" else (part["text"], False) for part in content]
        pieces, cursor = [], 0
        for match in self._sample_placeholders.finditer(content):
            pieces += [(content[cursor : match.start()], False), (match.group(), True)]
            cursor = match.end()
        return [*pieces, (content[cursor:], False)]

    def _tokenize(self, text: str, layout: str, action_token_ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` and the character offset where each begins.

        ``layout`` is ``text`` with every character of untrusted text neutralised: the special tokens and
        placeholders found in it are the template's and the processor's own, and become ids; everything
        between them is tokenized as plain text. The one ``<action>`` placeholder, if any, becomes
        ``action_token_ids`` (each placed at the placeholder's offset), as tokens, never through merges."""
        matches = list(self._structural.finditer(layout))
        slots = sum(1 for match in matches if match.group() == ACTION_PLACEHOLDER)
        if slots != (0 if action_token_ids is None else 1):
            raise ConversationError(
                f"the conversation has {slots} {ACTION_PLACEHOLDER} placeholders and "
                f"{'no' if action_token_ids is None else len(action_token_ids)} action tokens; "
                f"put exactly one {ACTION_PLACEHOLDER} in an assistant turn when a sample has actions"
            )
        ids: list[int] = []
        starts: list[int] = []
        cursor = 0
        for match in matches:
            self._tokenize_plain(text[cursor : match.start()], cursor, ids, starts)
            if match.group() == ACTION_PLACEHOLDER:
                ids.extend(int(token) for token in action_token_ids)  # type: ignore[union-attr]
                starts.extend([match.start()] * len(action_token_ids))  # type: ignore[arg-type]
            else:
                ids.append(self._special_ids[match.group()])
                starts.append(match.start())
            cursor = match.end()
        self._tokenize_plain(text[cursor:], cursor, ids, starts)
        return ids, starts

    def _tokenize_plain(self, piece: str, offset: int, ids: list[int], starts: list[int]) -> None:
        if piece:
            encoding = self._plain_tokenizer.encode(piece, add_special_tokens=False)
            ids.extend(encoding.ids)
            starts.extend(offset + begin for begin, _ in encoding.offsets)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        if not messages:
            raise ConversationError("the conversation has no messages; send at least one user message")
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except (ValueError, TypeError, TemplateError) as error:  # the template's own raise_exception, too
            raise ConversationError(f"the chat template cannot render this conversation: {error}") from None

    def _assistant_spans(self, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """Character spans of assistant turns in ``text``, found by rendering growing prefixes."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if index == 0:  # the template cannot render the empty conversation before it
                raise ConversationError(
                    "the conversation starts with an assistant turn; start it with a system or user message"
                )
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
            **_collate_action_fields(samples, length, padding_side),
        )

    def __call__(
        self,
        prompts: Content | Sequence[Content],
        images: Sequence[Sequence[ImageInput]] | Sequence[ImageInput] | None = None,
        system: str | None = None,
        action_layout: ActionLayout | None = None,
        states: Sequence[Sequence[float]] | None = None,
    ) -> ModelInputs:
        """Generation inputs, left-padded: one prompt or several, each a string with ``<image>`` placeholders
        or a list of content parts (``prompt_content`` builds one from a template and untrusted values).
        ``action_layout`` ends every prompt with the state slot (``states``: one normalised state per prompt)
        and the action queries, as the ``<action>`` placeholder of a training sample begins."""
        single = isinstance(prompts, str) or (
            isinstance(prompts, list | tuple) and bool(prompts) and isinstance(prompts[0], dict)
        )
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
        if action_layout is not None and (action_layout.state or action_layout.queries):
            if action_layout.state and (states is None or len(states) != len(samples)):
                raise ValueError(f"the model takes a state: give one per prompt ({len(samples)})")
            for index, sample in enumerate(samples):
                expansion = action_layout.expansion()
                sample.input_ids += expansion
                sample.labels += [IGNORE_INDEX] * len(expansion)
                sample.mark_slots(self.tokens.pad_token_id)
                sample.state = None if states is None else [float(value) for value in states[index]]
        return self.collate(samples, padding_side="left")

    def decode(self, token_ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _collate_action_fields(samples: Sequence[EncodedSample], length: int, padding_side: str) -> dict[str, Any]:
    """``action_slots``, ``states``, ``action_targets`` and ``action_mask`` of a batch, each only where some
    sample has it (rows without get no slots, zero states and all-False masks)."""
    fields: dict[str, Any] = {}
    if any(sample.slots is not None for sample in samples):
        slots = torch.full((len(samples), length), NO_SLOT, dtype=torch.long)
        for row, sample in enumerate(samples):
            if sample.slots is not None:
                n = len(sample.slots)
                span = slice(0, n) if padding_side == "right" else slice(length - n, length)
                slots[row, span] = torch.tensor(sample.slots, dtype=torch.long)
        fields["action_slots"] = slots
    with_state = [sample.state for sample in samples if sample.state is not None]
    if with_state:
        states = torch.zeros((len(samples), len(with_state[0])), dtype=torch.float32)
        for row, sample in enumerate(samples):
            if sample.state is not None:
                states[row] = torch.tensor(sample.state, dtype=torch.float32)
        fields["states"] = states
    with_targets = [sample.action_targets for sample in samples if sample.action_targets is not None]
    if with_targets:
        steps, dims = len(with_targets[0]), len(with_targets[0][0])
        targets = torch.zeros((len(samples), steps, dims), dtype=torch.float32)
        mask = torch.zeros((len(samples), steps), dtype=torch.bool)
        for row, sample in enumerate(samples):
            if sample.action_targets is not None:
                targets[row] = torch.tensor(sample.action_targets, dtype=torch.float32)
                mask[row] = torch.tensor(sample.action_mask or [True] * steps, dtype=torch.bool)
        fields["action_targets"], fields["action_mask"] = targets, mask
    return fields


register_available()  # transformers' Auto classes, now that this module is complete (magma.auto_registration)
