"""The policy server's protocol over one websocket: what each side sends, and the checks on it.

1. On connect the server sends ``{"type": "metadata", ...}`` (:class:`PolicySpec`): action space and
   dimension, chunk length, control rate, camera keys and sizes, state size, model id, action statistics.
2. The client sends ``{"type": "reset", "id": n, "task": {...}}`` at the start of an episode and
   ``{"type": "infer", "id": n, "observation": {...}}`` each time it wants actions.
3. The server answers each in order: ``{"type": "reset", "id": n}``, ``{"type": "actions", "id": n,
   "actions": (chunk, dim) array, "timing": {...}}``, or ``{"type": "error", "id": n, "code", "message"}``.

Observations hold ``state`` (float vector), one uint8 HxWx3 image per camera key of the metadata,
``instruction`` and anything else the policy reads (``privileged`` for the scripted expert).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError

PROTOCOL_VERSION = 1
ERROR_CODES = (
    "malformed_request",  # not msgpack, not a map, no or unknown "type", missing fields
    "message_too_large",  # over the server's size limit; nothing was decoded
    "bad_array",  # an array whose dtype, shape and bytes disagree
    "bad_shape",  # an observation entry of the wrong shape or dtype for this policy
    "unauthorized",  # no or a wrong bearer token
    "forbidden",  # a request from a web page of another origin, or a Host that does not name the server
    "prompt_too_long",  # text over the server's --max-prompt-chars / --max-prompt-tokens
    "image_too_large",  # an image over the server's --max-image-pixels, or not a readable image
    "overloaded",  # this client already has the most requests the server queues for one client
    "policy_error",  # the policy failed on a well-formed request
    "unsupported",  # something this server does not serve (e.g. chat without a language model)
)

TEXT_FIELDS = ("instruction", "prompt", "language_instruction")  # read as text by policies: strings only


class ProtocolError(UserFacingError, ValueError):
    """A request the server refuses; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PolicySpec:
    """What a served policy takes and gives; sent to every client as the first message."""

    policy: str
    model_id: str
    action_dim: int = 7
    action_space: str = "delta_ee"  # "delta_ee" (dx dy dz droll dpitch dyaw gripper) or "joint"
    chunk_length: int = 1
    control_hz: float = 10.0
    state_dim: int = 13  # 0: the policy reads no state
    cameras: dict[str, list[int]] = field(default_factory=dict)  # observation key -> [height, width, 3]
    action_statistics: dict[str, list] | None = None
    max_message_bytes: int = 16 * 1024 * 1024

    def to_metadata(self) -> dict[str, Any]:
        return {"type": "metadata", "protocol": PROTOCOL_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_metadata(cls, message: dict[str, Any]) -> PolicySpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in message.items() if key in names})


@dataclass
class InputLimits:
    """Bounds on what one request may ask of the model, checked before any model work."""

    max_prompt_chars: int = 16_000  # every text value of an observation, task or chat request, summed per request
    max_image_pixels: int = 4096 * 4096  # height x width of one image
    max_chat_items: int = 512  # messages and content parts of one chat request, counted together

    def check_text(self, length: int, what: str) -> None:
        if length > self.max_prompt_chars:
            raise ProtocolError(
                "prompt_too_long",
                f"{what} is {length} characters, over this server's limit of {self.max_prompt_chars}; send a "
                "shorter text, or start the server with a larger --max-prompt-chars",
            )

    def check_chat_items(self, count: int) -> None:
        if count > self.max_chat_items:
            raise ProtocolError(
                "prompt_too_long",
                f"the chat request has more than {self.max_chat_items} messages and content parts (counted "
                "together), this server's limit; send a shorter conversation, or start the server with a larger "
                "--max-chat-items",
            )


def check_request_values(body: dict[str, Any], limits: InputLimits, what: str) -> None:
    """Bound the text and the images anywhere in an observation or task (nested maps and lists too): the
    text fields a policy reads (:data:`TEXT_FIELDS`) are strings; all text together, with every other value
    (a number, a list or map entry) counted as one character, at most ``max_prompt_chars``; every
    image-like (H, W, C) uint8 array at least 1x1 and at most ``max_image_pixels``. Arrays count as one
    value: their bytes are bounded by the message size."""
    for name in TEXT_FIELDS:
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ProtocolError(
                "malformed_request",
                f"this {what}'s '{name}' is a {type(body[name]).__name__}; send it as a string",
            )
    characters = 0
    pending: list[Any] = [body]
    while pending:  # iterative: a deeply nested message cannot exhaust the stack
        value = pending.pop()
        if isinstance(value, str):
            characters += len(value)
        else:
            characters += 1
            if isinstance(value, dict):
                characters += len(value)  # each key counts too
                pending.extend(value.values())
            elif isinstance(value, list | tuple):
                pending.extend(value)
            elif isinstance(value, np.ndarray) and value.ndim == 3 and value.dtype == np.uint8:
                _check_image_array(value, limits)
        if characters > limits.max_prompt_chars:
            break  # refused: the rest need not be walked
    limits.check_text(characters, f"the text of this {what} (other values count one character each)")


def _check_image_array(image: np.ndarray, limits: InputLimits) -> None:
    height, width = image.shape[:2]
    if height < 1 or width < 1 or height * width > limits.max_image_pixels:
        raise ProtocolError(
            "image_too_large",
            f"an image of {height}x{width} pixels is outside this server's bounds (1 to "
            f"{limits.max_image_pixels} pixels); send a smaller image, or start the server with a larger "
            "--max-image-pixels",
        )


def error_reply(code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"type": "error", "id": request_id, "code": code, "message": message}


def parse_request(message: Any) -> tuple[str, Any, dict[str, Any]]:
    """(type, id, body) of a decoded client message; ProtocolError ``malformed_request`` otherwise."""
    if not isinstance(message, dict):
        raise ProtocolError("malformed_request", f"a request must be a msgpack map, got {type(message).__name__}")
    kind, request_id = message.get("type"), message.get("id")
    if kind == "infer":
        if not isinstance(message.get("observation"), dict):
            raise ProtocolError("malformed_request", "an infer request needs an 'observation' map")
        return kind, request_id, message["observation"]
    if kind == "reset":
        task = message.get("task", {})
        if not isinstance(task, dict):
            raise ProtocolError("malformed_request", "a reset request's 'task' must be a map")
        return kind, request_id, task
    if kind == "metadata":
        return kind, request_id, {}
    raise ProtocolError(
        "malformed_request", f"request type {kind!r} is unknown; send 'reset', 'infer' or 'metadata' in 'type'"
    )


def check_observation(observation: dict[str, Any], spec: PolicySpec) -> None:
    """Every camera of ``spec`` as uint8 (H, W, 3) and the state as a float vector of ``state_dim``."""
    expected: dict[str, tuple[tuple[int, ...], str]] = {
        key: (tuple(shape), "uint8") for key, shape in spec.cameras.items()
    }
    if spec.state_dim:
        expected["state"] = ((spec.state_dim,), "float")
    for key, (shape, kind) in expected.items():
        value = observation.get(key)
        if not isinstance(value, np.ndarray):
            raise ProtocolError(
                "bad_shape", f"observation '{key}' is missing or not an array; this policy needs {kind} {shape}"
            )
        dtype_ok = value.dtype == np.uint8 if kind == "uint8" else value.dtype.kind == "f"
        if value.shape != shape or not dtype_ok:
            raise ProtocolError(
                "bad_shape",
                f"observation '{key}' is {value.dtype} {value.shape}; this policy takes {kind} {shape} "
                "(see the server's metadata message)",
            )
