"""The OpenAI chat-completions API answered by a Magma model, so ``agent run --policy openai`` (and any
OpenAI client) can use a model we serve: ``POST /v1/chat/completions`` with ``messages`` whose content
is a string or a list of ``{"type": "text"}`` and ``{"type": "image_url", "image_url": {"url":
"data:image/...;base64,..."}}`` parts. Images must be data URLs: the server fetches nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import uuid
from typing import Any

from PIL import Image, UnidentifiedImageError

from robot.policy_protocol import ProtocolError

IMAGE_PLACEHOLDER = "<image>"
MAX_NEW_TOKENS = 4096


def decode_data_url(url: Any) -> Image.Image:
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise ProtocolError(
            "malformed_request",
            "image_url.url must be a base64 data URL (data:image/png;base64,...); this server fetches nothing",
        )
    try:
        return Image.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1], validate=True))).convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError) as error:
        raise ProtocolError(
            "malformed_request", f"an image data URL does not hold a readable image ({error})"
        ) from None


def chat_conversation(messages: Any) -> tuple[list[dict[str, str]], list[Image.Image]]:
    """OpenAI messages -> (chat turns with one ``<image>`` per image, in order; the images)."""
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("malformed_request", "'messages' must be a non-empty list of {role, content}")
    turns, images = [], []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ProtocolError(
                "malformed_request", f"messages[{index}] has role {role!r}; use system, user, assistant"
            )
        if isinstance(content, str):
            turns.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ProtocolError("malformed_request", f"messages[{index}].content must be a string or a list of parts")
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                pieces.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(decode_data_url(part["image_url"].get("url")))
                pieces.append(IMAGE_PLACEHOLDER)
            else:
                raise ProtocolError(
                    "malformed_request", f"messages[{index}] has a part {str(part)[:80]}; use text or image_url parts"
                )
        turns.append({"role": role, "content": "\n".join(pieces)})
    return turns, images


class ChatModel:
    """Greedy or sampled generation with a Magma model and processor, in the OpenAI response shape."""

    def __init__(self, model: Any, processor: Any, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        import torch

        turns, images = chat_conversation(request.get("messages"))
        max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or 256
        temperature = request.get("temperature", 1.0)
        top_p = request.get("top_p", 1.0)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise ProtocolError("malformed_request", f"max_tokens must be an integer in 1..{MAX_NEW_TOKENS}")
        if not isinstance(temperature, int | float) or not isinstance(top_p, int | float):
            raise ProtocolError("malformed_request", "temperature and top_p must be numbers")
        sample = self.processor.encode(turns, images, add_generation_prompt=True)
        inputs = self.processor.collate([sample], padding_side="left").to(self.model.device)
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs.generation_kwargs(),
                max_new_tokens=max_tokens,
                temperature=float(temperature),
                top_p=float(top_p),
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
                    "finish_reason": "stop" if stopped or completion < max_tokens else "length",
                }
            ],
            "usage": {
                "prompt_tokens": len(sample.input_ids),
                "completion_tokens": completion,
                "total_tokens": len(sample.input_ids) + completion,
            },
        }
