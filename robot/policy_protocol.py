"""The policy server's protocol over one websocket: openpi's, extended with optional keys.

The framing is openpi's (``openpi_client.websocket_client_policy``), so its unmodified client and ours
are interchangeable, and ours talks to openpi's servers:

1. On connect the server sends one binary frame, the metadata map. Ours is :class:`PolicySpec` plus
   ``"type": "metadata"`` and ``"protocol"`` (action space and dimension, chunk length, control rate,
   camera keys and sizes, state size, model id, action statistics); openpi's is whatever its config says.
2. The client sends one binary frame per request, the **observation map itself**; the server answers
   ``{"actions": (chunk, dim) array, "server_timing": {"infer_ms", "queue_ms", "server_ms",
   "batch_size", "prev_total_ms" (not on a connection's first reply)}}``.
3. A request the server refuses gets one **text** frame holding ``{"type": "error", "code", "message"}``
   as JSON (openpi's client raises ``RuntimeError`` with that text); our server keeps the connection open,
   openpi's closes it (1011) after sending a traceback, which our client treats as an error plus a reconnect.

Our extensions ride on it as optional keys, which an openpi peer never sends and never needs:

* a map whose ``"type"`` is ``"reset"`` (with ``"task"``), ``"metadata"`` or ``"infer"`` (with
  ``"observation"``) is a control message of this toolkit's earlier envelope, answered in kind with
  binary maps ``{"type": "reset" | "metadata" | "actions" | "error", "id": <the request's id>, ...}``. Our
  client sends ``reset`` only to servers whose metadata carries ``"protocol"``; to an openpi server a reset
  stays local, as in openpi's client.
* openpi's key names are aliases (:func:`canonical_observation`): ``observation/<name>`` is read as
  ``<name>`` and ``prompt`` as ``instruction`` (LIBERO's ``observation/image``, ``observation/wrist_image``,
  ``observation/state``, ``prompt``), unless the policy's spec names the key itself.

Observations hold ``state`` (float vector), one uint8 HxWx3 image per camera key of the metadata,
``instruction`` and anything else the policy reads (``privileged`` for the scripted expert; the robot
daemon's ``control_tick`` and ``capture_time_s``). Keys the spec does not name are handed to the policy
unchanged (it ignores what it does not read); only the spec's cameras and state are required.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_tools.errors import UserFacingError

PROTOCOL_VERSION = 2  # 2: openpi's framing (bare observation requests, text-frame errors)
CONTROL_TYPES = ("reset", "metadata", "infer")  # a request map whose "type" is one of these is a control message
OPENPI_PREFIX = "observation/"  # openpi's observation keys: "observation/image" is our "image"
KEY_ALIASES = {"prompt": "instruction"}  # openpi's text key
CAPTURE_KEYS = {"control_tick": numbers.Integral, "capture_time_s": numbers.Real}  # the robot daemon's
ERROR_CODES = (
    "malformed_request",  # not msgpack, not a map, a bytes map key, a text frame, a control message missing fields
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
    # "agent": this toolkit's server (reset messages, typed errors); "openpi": a server that speaks only
    # openpi's protocol, whose metadata need not say what it takes (cameras unknown, state_dim 0)
    server_kind: str = "agent"

    def to_metadata(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        del fields["server_kind"]  # what the client learns from the metadata, not something the server says
        return {"type": "metadata", "protocol": PROTOCOL_VERSION, **fields}

    @classmethod
    def from_metadata(cls, message: dict[str, Any]) -> PolicySpec:
        """The spec of our server's metadata, or of an openpi server's (any map: missing or ill-typed
        entries take the defaults, and ``server_kind`` says which it was)."""
        if message.get("type") == "metadata" and "protocol" in message:
            known = {f.name for f in dataclasses.fields(cls)} - {"server_kind"}
            return cls(**{key: value for key, value in message.items() if key in known})
        spec = cls(policy="openpi", model_id="", state_dim=0, server_kind="openpi")
        for name, kind in (("action_dim", int), ("chunk_length", int), ("control_hz", float), ("state_dim", int)):
            value = message.get(name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1e9:
                setattr(spec, name, kind(value))
        for name in ("policy", "model_id", "action_space"):
            if isinstance(message.get(name), str):
                setattr(spec, name, message[name])
        return spec


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


def error_text(code: str, message: str) -> str:
    """The text frame a refused observation gets (openpi's client raises RuntimeError with it)."""
    return json.dumps({"type": "error", "code": code, "message": message})


@dataclass
class Request:
    """One decoded client message: ``kind`` is "infer", "reset" or "metadata"; ``envelope`` says it came
    in this toolkit's ``{"type": ..., "id": ...}`` control envelope (answered in kind) rather than as
    openpi's bare observation."""

    kind: str
    body: dict[str, Any]
    envelope: bool = False
    request_id: Any = None


def parse_request(message: Any) -> Request:
    """The request a decoded client message makes; ProtocolError ``malformed_request`` otherwise."""
    if not isinstance(message, dict):
        raise ProtocolError(
            "malformed_request", f"a request must be a msgpack map (the observation), got {type(message).__name__}"
        )
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in CONTROL_TYPES:
        return Request("infer", message)  # openpi's framing: the map is the observation
    request_id = message.get("id")
    if kind == "infer":
        if not isinstance(message.get("observation"), dict):
            raise ProtocolError("malformed_request", "an infer envelope needs an 'observation' map")
        return Request(kind, message["observation"], True, request_id)
    if kind == "reset":
        task = message.get("task", {})
        if not isinstance(task, dict):
            raise ProtocolError("malformed_request", "a reset request's 'task' must be a map")
        return Request(kind, task, True, request_id)
    return Request(kind, {}, True, request_id)


def canonical_observation(observation: dict[str, Any], spec: PolicySpec) -> dict[str, Any]:
    """The observation under our key names: ``observation/<name>`` -> ``<name>`` and ``prompt`` ->
    ``instruction`` (openpi's names), unless the spec names the key itself. Two keys meaning the same
    entry are refused; the robot daemon's ``control_tick`` / ``capture_time_s`` must be numbers."""
    inputs = spec.cameras.keys() | {"state"}
    renamed: dict[str, Any] = {}
    for key, value in observation.items():
        name = key
        if key not in inputs:
            if key.startswith(OPENPI_PREFIX) and len(key) > len(OPENPI_PREFIX):
                name = key[len(OPENPI_PREFIX) :]
            name = KEY_ALIASES.get(name, name)
        if name in renamed:
            raise ProtocolError(
                "malformed_request",
                f"the observation has '{name}' twice (as '{key}' and under another name; openpi's "
                f"'{OPENPI_PREFIX}<name>' and 'prompt' are read as '<name>' and 'instruction'); send one",
            )
        renamed[name] = value
    for name, kind in CAPTURE_KEYS.items():
        value = renamed.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool | np.bool_)):
            raise ProtocolError(
                "malformed_request",
                f"observation '{name}' is a {type(value).__name__}; send it as a "
                f"{'whole number (the control tick)' if kind is numbers.Integral else 'number of seconds'}",
            )
    return renamed


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
            got = sorted(observation)[:20]
            raise ProtocolError(
                "bad_shape",
                f"observation '{key}' (or '{OPENPI_PREFIX}{key}') is missing or not an array; this policy needs "
                f"{kind} {shape} there (see the server's metadata message); the observation has keys {got}",
            )
        dtype_ok = value.dtype == np.uint8 if kind == "uint8" else value.dtype.kind == "f"
        if value.shape != shape or not dtype_ok:
            raise ProtocolError(
                "bad_shape",
                f"observation '{key}' is {value.dtype} {value.shape}; this policy takes {kind} {shape} "
                "(see the server's metadata message)",
            )
