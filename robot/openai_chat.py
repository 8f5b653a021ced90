"""The OpenAI chat-completions API answered by a Magma model, so ``agent run --policy openai`` (and any
OpenAI client) can use a model we serve: ``POST /v1/chat/completions`` with ``messages`` whose content
is a string or a list of ``{"type": "text"}`` and ``{"type": "image_url", "image_url": {"url":
"data:image/...;base64,..."}}`` parts. Images must be data URLs: the server fetches nothing.

A request is checked whole before the model sees it (:func:`parse_chat_request`): sampling parameters
in their OpenAI ranges, text within the server's character limit (valid Unicode), messages and content
parts within its count limit, images within its pixel limit; then the prompt is encoded and its token
length checked (:meth:`ChatModel.prepare`), all before the request waits for the inference thread. Message
text is plain text to the model: a ``<image>`` or ``<|eot_id|>`` written in a message stays text.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image

from robot.policy_protocol import InputLimits, ProtocolError

MAX_NEW_TOKENS = 4096
DEFAULT_MAX_TOKENS = 256


@dataclass
class ChatRequest:
    """A checked chat request: turns whose content is text and image parts, their images, sampling."""

    turns: list[dict[str, Any]]
    images: list[Image.Image]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    sample: Any = None  # the encoded prompt (``ChatModel.prepare``), made before the request is queued


def decode_data_url(url: Any, max_pixels: int) -> Image.Image:
    """A ``data:image/...;base64,...`` URL as an RGB image, refused above ``max_pixels`` before decoding."""
    from magma.image_processing import ImageLoadError, load_image

    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise ProtocolError(
            "malformed_request",
            "image_url.url must be a base64 data URL (data:image/png;base64,...); this server fetches nothing",
        )
    try:
        return load_image(base64.b64decode(url.split(";base64,", 1)[1], validate=True), max_pixels)
    except binascii.Error as error:
        raise ProtocolError("malformed_request", f"an image data URL is not valid base64 ({error})") from None
    except ImageLoadError as error:
        code = getattr(error, "code", "malformed_request")
        raise ProtocolError(code, f"an image data URL: {error}") from None


def chat_conversation(messages: Any, limits: InputLimits) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """OpenAI messages -> (chat turns of text and image parts, the images in order). All text is counted
    against ``limits.max_prompt_chars`` before any image is decoded."""
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("malformed_request", "'messages' must be a non-empty list of {role, content}")
    limits.check_chat_items(len(messages))
    turns, image_urls, characters, items = [], [], 0, len(messages)
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ProtocolError(
                "malformed_request", f"messages[{index}] has role {role!r}; use system, user, assistant"
            )
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise ProtocolError("malformed_request", f"messages[{index}].content must be a string or a list of parts")
        items += len(content)
        limits.check_chat_items(items)  # before the parts are walked: a million empty parts cost nothing
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if parts:
                parts.append({"type": "text", "text": "\n"})
            if kind == "text" and isinstance(part.get("text"), str):
                _check_unicode(part["text"], index)
                parts.append({"type": "text", "text": part["text"]})
                characters += len(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                parts.append({"type": "image"})
                image_urls.append(part["image_url"].get("url"))
            else:
                raise ProtocolError(
                    "malformed_request", f"messages[{index}] has a part {str(part)[:80]}; use text or image_url parts"
                )
        turns.append({"role": role, "content": parts})
    limits.check_text(characters, "the text of the messages")
    return turns, [decode_data_url(url, limits.max_image_pixels) for url in image_urls]


def _check_unicode(text: str, index: int) -> None:
    """A text the tokenizer can read: no lone UTF-16 surrogate (a JSON ``"\\ud800"`` without its pair)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ProtocolError(
            "malformed_request",
            f"messages[{index}] has text that is not valid Unicode ({error.reason} at character {error.start}, "
            "a lone surrogate escape such as \\ud800); send each surrogate escape with its pair",
        ) from None


def _number(request: dict[str, Any], name: str, default: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ProtocolError("malformed_request", f"'{name}' must be a finite number, not {str(value)[:40]}")
    return float(value)


def parse_chat_request(request: dict[str, Any], limits: InputLimits) -> ChatRequest:
    """Check an OpenAI chat request (a 400-class ProtocolError naming the field otherwise)."""
    max_tokens = request.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = request.get("max_tokens"), "max_tokens"
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise ProtocolError(
            "malformed_request", f"'{name}' must be an integer in 1..{MAX_NEW_TOKENS}, not {str(max_tokens)[:40]}"
        )
    temperature = _number(request, "temperature", 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise ProtocolError("malformed_request", f"'temperature' must be in 0..2, not {temperature}")
    top_p = _number(request, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ProtocolError("malformed_request", f"'top_p' must be above 0 and at most 1, not {top_p}")
    choices = request.get("n")
    if choices is not None and (not isinstance(choices, int) or isinstance(choices, bool) or choices != 1):
        raise ProtocolError("malformed_request", f"'n' must be 1 (this server gives one choice), not {choices!r}")
    stream = request.get("stream")
    if stream not in (None, False):
        raise ProtocolError("malformed_request", "streaming is not served; leave 'stream' unset or false")
    turns, images = chat_conversation(request.get("messages"), limits)
    return ChatRequest(turns, images, max_tokens, temperature, top_p)


class ChatModel:
    """Greedy or sampled generation with a Magma model and processor, in the OpenAI response shape."""

    def __init__(self, model: Any, processor: Any, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id

    def prepare(self, request: ChatRequest) -> ChatRequest:
        """Encode the prompt (chat template, tokens, images) and check its token length, off the inference
        thread: a request the processor refuses is refused before it is queued."""
        from magma.processor import PromptTooLongError

        request.sample = self.processor.encode(request.turns, request.images, add_generation_prompt=True)
        context = self.model.config.text.max_position_embeddings
        prompt = len(request.sample.input_ids)
        if prompt >= context:
            raise PromptTooLongError(
                f"the prompt is {prompt} tokens, the model's context {context}; shorten it or send smaller images"
            )
        request.max_tokens = min(request.max_tokens, context - prompt)  # the rest of the context: "length" there
        return request

    def complete(self, request: ChatRequest) -> dict[str, Any]:
        """Answer a checked request (run it on the inference thread; :func:`parse_chat_request` and
        :meth:`prepare` first)."""
        import torch

        sample = request.sample if request.sample is not None else self.prepare(request).sample
        inputs = self.processor.collate([sample], padding_side="left").to(self.model.device)
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs.generation_kwargs(),
                max_new_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
            )[0]
        stops = set(self.model.config.tokens.eos_token_ids)
        pad = self.model.config.tokens.pad_token_id
        generated = [token for token in tokens.tolist() if token != pad]
        stopped = bool(generated) and generated[-1] in stops
        completion = len(generated)
        text = self.processor.decode([token for token in generated if token not in stops])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop" if stopped or completion < request.max_tokens else "length",
                }
            ],
            "usage": {
                "prompt_tokens": len(sample.input_ids),
                "completion_tokens": completion,
                "total_tokens": len(sample.input_ids) + completion,
            },
        }
