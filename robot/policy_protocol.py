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
    "policy_error",  # the policy failed on a well-formed request
    "unsupported",  # something this server does not serve (e.g. chat without a language model)
)


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
