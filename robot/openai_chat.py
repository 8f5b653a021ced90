"""The OpenAI chat-completions API answered by a Magma model, so ``agent run --policy openai`` (and any
OpenAI client) can use a model we serve: ``POST /v1/chat/completions`` with ``messages`` whose content
is a string or a list of ``{"type": "text"}`` and ``{"type": "image_url", "image_url": {"url":
"data:image/...;base64,..."}}`` parts. Images must be data URLs: the server fetches nothing.

Served as OpenAI documents it: ``n`` choices (up to the server's ``--max-choices``), ``stop`` (a string
or up to four; generation ends at the first, which is left out), ``max_tokens`` /
``max_completion_tokens``, ``temperature`` (0: greedy), ``top_p``, and ``stream`` (server-sent
``chat.completion.chunk`` events; ``stream_options.include_usage`` adds a usage chunk). Streamed and
whole answers are built by the same :class:`ChoiceText`, so their text is the same.

A request is checked whole before the model sees it (:func:`parse_chat_request`): sampling parameters
in their OpenAI ranges, text within the server's character limit (valid Unicode), messages and content
parts within its count limit, images within its pixel limit; then the prompt is encoded and its token
length checked (:meth:`ChatModel.prepare`), all before the request waits for the inference thread. A
refusal is a :class:`ChatRequestError` naming the field (OpenAI's ``param``) and the fix. Message text
is plain text to the model: a ``<image>`` or ``<|eot_id|>`` written in a message stays text.
"""

from __future__ import annotations

import base64
import binascii
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from robot.policy_protocol import InputLimits, ProtocolError

MAX_NEW_TOKENS = 4096
DEFAULT_MAX_TOKENS = 256
DEFAULT_MAX_CHOICES = 8  # ``agent serve --max-choices``: n choices cost n rows of one generate call
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # one stop string; longer ones are no use and make every step's hold-back search longer
ChunkSink = Callable[[dict[str, Any]], None]


class ChatRequestError(ProtocolError):
    """A chat request the server refuses; ``param`` names the request field, as OpenAI's errors do."""

    def __init__(self, param: str | None, message: str, code: str = "malformed_request") -> None:
        super().__init__(code, message)
        self.param = param


@dataclass
class ChatRequest:
    """A checked chat request: turns whose content is text and image parts, their images, sampling."""

    turns: list[dict[str, Any]]
    images: list[Image.Image]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    max_tokens_param: str | None = None  # the field that set max_tokens; None: the default, cut to the context
    sample: Any = None  # the encoded prompt (``ChatModel.prepare``), made before the request is queued


def decode_data_url(url: Any, max_pixels: int, param: str = "image_url.url") -> Image.Image:
    """A ``data:image/...;base64,...`` URL as an RGB image, refused above ``max_pixels`` before decoding."""
    from magma.image_processing import ImageLoadError, load_image

    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        shown = repr(url[:40]) if isinstance(url, str) else type(url).__name__
        raise ChatRequestError(
            param,
            f"{param} must be a base64 data URL (data:image/png;base64,...), not {shown}; this server fetches "
            "nothing, so send the image bytes inline",
        )
    try:
        data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except binascii.Error as error:
        raise ChatRequestError(
            param, f"{param} is not valid base64 ({error}); encode the image file with standard base64"
        ) from None
    try:
        return load_image(data, max_pixels)
    except ImageLoadError as error:
        code = getattr(error, "code", "malformed_request")
        raise ChatRequestError(param, f"{param}: {error}", code) from None


def chat_conversation(messages: Any, limits: InputLimits) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """OpenAI messages -> (chat turns of text and image parts, the images in order). All text is counted
    against ``limits.max_prompt_chars`` before any image is decoded."""
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages", "'messages' must be a non-empty list of {role, content}")
    limits.check_chat_items(len(messages))
    turns, image_urls, characters, items = [], [], 0, len(messages)
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise ChatRequestError(
                f"messages[{index}].role", f"messages[{index}] has role {role!r}; use system, user, assistant"
            )
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise ChatRequestError(
                f"messages[{index}].content", f"messages[{index}].content must be a string or a list of parts"
            )
        items += len(content)
        limits.check_chat_items(items)  # before the parts are walked: a million empty parts cost nothing
        parts: list[dict[str, Any]] = []
        for number, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if parts:
                parts.append({"type": "text", "text": "\n"})
            if kind == "text" and isinstance(part.get("text"), str):
                _check_unicode(part["text"], index)
                parts.append({"type": "text", "text": part["text"]})
                characters += len(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                parts.append({"type": "image"})
                image_urls.append((part["image_url"].get("url"), f"messages[{index}].content[{number}].image_url.url"))
            else:
                raise ChatRequestError(
                    f"messages[{index}].content[{number}]",
                    f"messages[{index}] has a part {str(part)[:80]}; use text or image_url parts",
                )
        turns.append({"role": role, "content": parts})
    limits.check_text(characters, "the text of the messages")
    return turns, [decode_data_url(url, limits.max_image_pixels, param) for url, param in image_urls]


def _check_unicode(text: str, index: int) -> None:
    """A text the tokenizer can read: no lone UTF-16 surrogate (a JSON ``"\\ud800"`` without its pair)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ChatRequestError(
            f"messages[{index}].content",
            f"messages[{index}] has text that is not valid Unicode ({error.reason} at character {error.start}, "
            "a lone surrogate escape such as \\ud800); send each surrogate escape with its pair",
        ) from None


def _number(request: dict[str, Any], name: str, default: float) -> float:
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ChatRequestError(name, f"'{name}' must be a finite number, not {str(value)[:40]}")
    return float(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _boolean(request: dict[str, Any], name: str, where: dict[str, Any] | None = None) -> bool:
    value = (request if where is None else where).get(name.rsplit(".", 1)[-1])
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ChatRequestError(name, f"'{name}' must be true or false (a JSON boolean), not {str(value)[:40]}")
    return value


def _stop_strings(value: Any) -> list[str]:
    """OpenAI's ``stop``: null, a string, or a list of up to four strings (none empty)."""
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise ChatRequestError(
            "stop", f'\'stop\' must be a string or a list of strings, not {str(value)[:60]}; e.g. "stop": ["\\n"]'
        )
    if len(stops) > MAX_STOP_STRINGS:
        raise ChatRequestError(
            "stop", f"'stop' has {len(stops)} strings; send at most {MAX_STOP_STRINGS} (OpenAI's limit)"
        )
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise ChatRequestError(
                "stop", f"each 'stop' string must have 1 to {MAX_STOP_CHARS} characters, not {len(stop)}"
            )
        try:
            stop.encode("utf-8")
        except UnicodeEncodeError:
            raise ChatRequestError("stop", "a 'stop' string is not valid Unicode (a lone surrogate escape)") from None
    return list(dict.fromkeys(stops))


def parse_chat_request(
    request: dict[str, Any], limits: InputLimits, max_choices: int = DEFAULT_MAX_CHOICES
) -> ChatRequest:
    """Check an OpenAI chat request (a 400-class :class:`ChatRequestError` naming the field otherwise).
    Fields this server has no use for (``user``, ``seed``, ``presence_penalty``...) are ignored, as the
    OpenAI-compatible servers do."""
    name = "max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens"
    given = request.get(name)
    max_tokens = DEFAULT_MAX_TOKENS if given is None else given
    if not _integer(max_tokens) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise ChatRequestError(
            name,
            f"'{name}' must be a whole number of tokens in 1..{MAX_NEW_TOKENS}, not {str(max_tokens)[:40]}; "
            "send one in that range (or leave it out for the default)",
        )
    temperature = _number(request, "temperature", 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise ChatRequestError("temperature", f"'temperature' must be in 0..2 (0: greedy), not {temperature}")
    top_p = _number(request, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ChatRequestError("top_p", f"'top_p' must be above 0 and at most 1, not {top_p}")
    choices = 1 if request.get("n") is None else request["n"]
    if not _integer(choices) or not 1 <= choices <= max_choices:
        raise ChatRequestError(
            "n",
            f"'n' must be an integer from 1 to {max_choices} (this server's limit, agent serve --max-choices), "
            f"not {str(choices)[:40]}; ask for fewer choices, or send several requests",
        )
    stream = _boolean(request, "stream")
    options = request.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise ChatRequestError(
            "stream_options",
            '\'stream_options\' is an object ({"include_usage": true}) and is only allowed with "stream": true',
        )
    include_usage = _boolean(request, "stream_options.include_usage", options or {})
    stops = _stop_strings(request.get("stop"))
    turns, images = chat_conversation(request.get("messages"), limits)
    return ChatRequest(
        turns,
        images,
        max_tokens,
        temperature,
        top_p,
        n=choices,
        stop=stops,
        stream=stream,
        include_usage=include_usage,
        max_tokens_param=None if given is None else name,
    )


class ChoiceText:
    """One choice's completion, token by token: text that is safe to send so far, and why it ended.

    New text is what the decoded completion gained, held back while it ends in an incomplete UTF-8
    character (the tokenizer decodes its bytes to U+FFFD) or in the start of a stop string. A stop
    string ends the choice there and is left out; an end-of-turn token ends it too. Decoding restarts
    from the last complete piece, so a long answer costs no quadratic re-decoding."""

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str], end_ids: set[int]) -> None:
        self._decode = decode
        self._stop = stop
        self._end_ids = end_ids
        self._ids: list[int] = []
        self._prefix = 0  # decoding starts here: a piece boundary, so its text is stable
        self._read = 0  # ids up to here are in ``text``
        self.text = ""  # decoded so far (complete characters only, until ``finish``)
        self.sent = 0  # characters of ``text`` handed out
        self.tokens = 0  # completion tokens, the end-of-turn token included (OpenAI's count)
        self.finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, token: int) -> str:
        """Take one generated token; the text that may be sent now ('' while holding back)."""
        if self.finished:
            return ""
        self.tokens += 1
        if token in self._end_ids:
            return self.finish("stop")
        self._ids.append(token)
        whole = self._decode(self._ids[self._prefix :])
        if whole.endswith("\ufffd"):  # the bytes of a character are still coming
            return ""
        self.text += whole[len(self._decode(self._ids[self._prefix : self._read])) :]
        self._prefix, self._read = self._read, len(self._ids)
        return self._release()

    def finish(self, reason: str) -> str:
        """End the choice (``reason`` unless a stop string ends it first); the text not yet sent."""
        if self.finished:
            return ""
        whole = self._decode(self._ids[self._prefix :])  # an incomplete last character stays U+FFFD
        self.text += whole[len(self._decode(self._ids[self._prefix : self._read])) :]
        self._read = len(self._ids)
        released = self._release(final=True)
        self.finish_reason = self.finish_reason or reason
        return released

    def _release(self, final: bool = False) -> str:
        """Text from ``sent`` up to a stop string (which ends the choice) or a possible start of one."""
        found = [index for stop in self._stop if (index := self.text.find(stop, self.sent)) >= 0]
        if found:  # a match never starts before ``sent``: every possible start was held back
            end = min(found)
            self.text, self.finish_reason = self.text[:end], "stop"
        else:
            end = len(self.text) if final else len(self.text) - self._partial_stop()
        released, self.sent = self.text[self.sent : end], end
        return released

    def _partial_stop(self) -> int:
        """The length of the longest end of ``text`` that begins a stop string (and could complete it)."""
        longest = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(self.text) - self.sent), longest, -1):
                if self.text.endswith(stop[:length]):
                    longest = length
                    break
        return longest


class ChatModel:
    """Generation with a Magma model and processor in the OpenAI response shape, whole or streamed."""

    def __init__(self, model: Any, processor: Any, model_id: str) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self._allowed: torch.Tensor | None = None  # the token ids a completion may contain, made once

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
        if request.max_tokens_param is not None and prompt + request.max_tokens > context:
            raise ChatRequestError(
                request.max_tokens_param,
                f"'{request.max_tokens_param}' is {request.max_tokens} but the prompt is {prompt} tokens of the "
                f"model's context of {context}; ask for at most {context - prompt} tokens or shorten the prompt",
            )
        request.max_tokens = min(request.max_tokens, context - prompt)  # the default: the rest of the context
        return request

    def complete(
        self, request: ChatRequest, send: ChunkSink | None = None, cancelled: threading.Event | None = None
    ) -> dict[str, Any]:
        """Answer a checked request (run it on the inference thread; :func:`parse_chat_request` and
        :meth:`prepare` first). With ``send``, each ``chat.completion.chunk`` goes to it as the tokens come;
        ``cancelled`` (the client left) ends generation at the next step. Returns the whole completion."""
        sample = request.sample if request.sample is not None else self.prepare(request).sample
        tokens = self.model.config.tokens
        decode = self._decoder()
        choices = [ChoiceText(decode, request.stop, set(tokens.eos_token_ids)) for _ in range(request.n)]
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
            if send is not None:
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                send(self._reply(reply_id, created, "chat.completion.chunk", [choice], request.include_usage))

        def on_text(index: int, text: str) -> None:
            if text:
                chunk(index, {"content": text})

        for index in range(request.n):
            chunk(index, {"role": "assistant", "content": ""})
        self.generate(request, choices, on_text, cancelled)
        for index, choice in enumerate(choices):
            on_text(index, choice.finish("length"))
            chunk(index, {}, choice.finish_reason)
        completion = sum(choice.tokens for choice in choices)
        usage = {
            "prompt_tokens": len(sample.input_ids),
            "completion_tokens": completion,
            "total_tokens": len(sample.input_ids) + completion,
        }
        if send is not None and request.include_usage:
            send({**self._reply(reply_id, created, "chat.completion.chunk", []), "usage": usage})
        messages = [
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(choices)
        ]
        return {**self._reply(reply_id, created, "chat.completion", messages), "usage": usage}

    def generate(
        self,
        request: ChatRequest,
        choices: list[ChoiceText],
        on_text: Callable[[int, str], None],
        cancelled: threading.Event | None = None,
    ) -> None:
        """One transformers ``generate`` call for the request's ``n`` choices (the prompt repeated ``n``
        times, so greedy and sampled decoding take one path): each step's tokens go through a streamer to
        ``choices``, their new text to ``on_text``, and a choice that has ended (a stop string; every row
        once the client has left) stops its row. Padding and image tokens are never chosen."""
        from magma.sampling import AllowedTokensLogitsProcessor, allowed_tokens, sampling_settings

        if self._allowed is None:
            self._allowed = allowed_tokens(self.model.config)
        inputs = self.processor.collate([request.sample] * request.n, padding_side="left").to(self.model.device)
        tokens = self.model.config.tokens
        with torch.inference_mode():
            self.model.generate(
                **inputs.generation_kwargs(),
                **sampling_settings(request.temperature, request.top_p),
                max_new_tokens=request.max_tokens,
                eos_token_id=list(tokens.eos_token_ids),
                pad_token_id=tokens.pad_token_id,
                logits_processor=LogitsProcessorList([AllowedTokensLogitsProcessor(self._allowed)]),
                streamer=_ChoiceStreamer(choices, on_text),
                stopping_criteria=StoppingCriteriaList([_ChoicesEnded(choices, cancelled)]),
            )

    def _decoder(self) -> Callable[[list[int]], str]:
        """Token ids -> text, specials dropped and no space clean-up (which would make text decoded piece by
        piece differ from the whole)."""
        tokenizer = self.processor.tokenizer
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _reply(
        self, reply_id: str, created: int, kind: str, choices: list[dict[str, Any]], usage_slot: bool = False
    ) -> dict[str, Any]:
        reply = {"id": reply_id, "object": kind, "created": created, "model": self.model_id, "choices": choices}
        return {**reply, "usage": None} if usage_slot else reply


class _ChoiceStreamer(BaseStreamer):
    """transformers' streamer hook for ``n`` rows: the prompt first (skipped), then each step's (batch,)
    tokens, one per choice, whose new text goes to ``on_text(index, text)``."""

    def __init__(self, choices: list[ChoiceText], on_text: Callable[[int, str], None]) -> None:
        self.choices, self.on_text = choices, on_text

    def put(self, value: Any) -> None:
        if value.dim() > 1:  # the prompt, (batch, length)
            return
        for index, token in enumerate(value.tolist()):
            self.on_text(index, self.choices[index].add(token))

    def end(self) -> None:
        """Nothing: the caller ends each choice once generate returns (``ChoiceText.finish``)."""


class _ChoicesEnded(StoppingCriteria):
    """Stops the rows whose choice has ended (a stop string, an end-of-turn token), and every row once the
    client has left. It may see a step before the streamer does; a row then runs one step more, whose
    token its finished choice ignores."""

    def __init__(self, choices: list[ChoiceText], cancelled: threading.Event | None) -> None:
        self.choices, self.cancelled = choices, cancelled

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        left = self.cancelled is not None and self.cancelled.is_set()
        ended = [left or choice.finished for choice in self.choices]
        return torch.tensor(ended, dtype=torch.bool, device=input_ids.device)
