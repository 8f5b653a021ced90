"""A web policy backed by any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, our own
``agent serve``): the web prompt as a system and a user message with the images as data URLs.

The endpoint comes from ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``) and the key from
``OPENAI_API_KEY`` (needed for any host but a loopback one). Rate limits and server errors are retried
with back-off; a reply that cannot be had after that raises :class:`ChatEndpointError` naming the URL.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from data_tools.errors import UserFacingError
from magma.policies.web import WEB_SYSTEM_PROMPT, WebHistory, WebPrompt, web_prompt

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ChatEndpointError(UserFacingError, ConnectionError):
    """The chat endpoint is unreachable, refuses the key, or answers something that is not a chat completion."""


def image_data_url(image: np.ndarray | Image.Image, max_side: int = 1280, quality: int = 85) -> str:
    """A JPEG data URL of an image, its longer side at most ``max_side`` pixels."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture = picture.convert("RGB")
    if max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(system: str, user: str, images: list[np.ndarray], max_side: int = 1280) -> list[dict[str, Any]]:
    """OpenAI chat messages: the system text, then the user text followed by its images."""
    content: list[dict[str, Any]] = [{"type": "text", "text": user}]
    content += [{"type": "image_url", "image_url": {"url": image_data_url(image, max_side)}} for image in images]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


class ChatClient:
    """``complete(messages) -> str`` over HTTP with retries; no SDK needed."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout_s: float = 120.0,
        retries: int = 4,
    ) -> None:
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        if not self.api_key and urlparse(self.base_url).hostname not in LOOPBACK_HOSTS:
            raise ChatEndpointError(
                f"no API key for {self.base_url}; set OPENAI_API_KEY (or OPENAI_BASE_URL to a local endpoint)"
            )
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.retries = retries

    def with_limits(self, timeout_s: float | None = None, retries: int | None = None) -> ChatClient:
        """A copy with another request timeout and retry count (None keeps this client's); this one is unchanged."""
        limited = copy.copy(self)
        limited.timeout_s = self.timeout_s if timeout_s is None else timeout_s
        limited.retries = self.retries if retries is None else retries
        return limited

    def complete(self, messages: list[dict[str, Any]]) -> str:
        return self._choices(self._post(messages, 1), 1)[0]

    def complete_many(self, messages: list[dict[str, Any]], n: int) -> list[str]:
        """``n`` replies to the same messages (candidates for search): one request for ``n`` choices; an
        endpoint that returns fewer (many serve one choice per request) is asked again for the rest."""
        replies: list[str] = []
        while len(replies) < n:
            wanted = n - len(replies)
            replies += self._choices(self._post(messages, wanted), wanted)
        return replies[:n]

    def _post(self, messages: list[dict[str, Any]], n: int) -> Any:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if n > 1:
            payload["n"] = n
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.url
        delay = 1.0
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                detail = error.read()[:300].decode("utf-8", "replace")
                if error.code in RETRY_STATUSES and attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise ChatEndpointError(
                    f"{url} answered HTTP {error.code}: {detail}; check the model name and key"
                ) from error
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as error:
                if attempt < self.retries and not isinstance(error, ValueError):
                    time.sleep(delay)
                    delay *= 2
                    continue
                if isinstance(error, ValueError):
                    raise ChatEndpointError(f"{url} answered something that is not JSON: {error}") from error
                raise ChatEndpointError(
                    f"cannot reach {url}: {error}; start the server or set OPENAI_BASE_URL to a reachable endpoint"
                ) from error
        raise AssertionError("unreachable")  # the loop returns or raises

    def _choices(self, reply: Any, most: int) -> list[str]:
        try:
            choices = reply["choices"]
            texts = [str(choice["message"]["content"] or "") for choice in choices[:most]]
        except (KeyError, IndexError, TypeError) as error:
            raise ChatEndpointError(
                f"{self.url} answered without choices[0].message.content: {str(reply)[:200]}"
            ) from error
        if not texts:
            raise ChatEndpointError(f"{self.url} answered no choices: {str(reply)[:200]}")
        return texts

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"


class OpenAIChatPolicy:
    """The web prompt (or another env's ``prompt`` function, same signature as ``web_prompt``) sent to a chat
    endpoint each step; ``act`` returns the model's whole reply."""

    def __init__(
        self,
        client: ChatClient,
        system: str = WEB_SYSTEM_PROMPT,
        max_image_side: int = 1280,
        prompt: Callable[..., WebPrompt] = web_prompt,
    ) -> None:
        self.client = client
        self.system = system
        self.prompt = prompt
        self.max_image_side = max_image_side
        self.history = WebHistory()

    def reset(self, task: dict[str, Any]) -> None:
        self.history.reset(task)

    def act(self, observation: dict[str, Any]) -> str:
        prompt = self.prompt(observation, self.history.task, self.history.actions, self.system)
        reply = self.client.complete(chat_messages(prompt.system, prompt.user, prompt.images, self.max_image_side))
        self.history.record(reply)
        return reply
