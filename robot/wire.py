"""The wire format of the policy server: openpi's msgpack_numpy (msgpack maps, numpy arrays as raw bytes
with dtype and shape), so openpi's client and server read what we write and we read theirs.

An array travels as ``{b"__ndarray__": True, b"data": <bytes>, b"dtype": "<f4", b"shape": [10, 7]}`` and
a numpy scalar as ``{b"__npgeneric__": True, b"data": 3, b"dtype": "<i8"}``, with **bytes** (msgpack bin)
keys, in that order, exactly as ``openpi_client.msgpack_numpy`` packs them. The decoder also accepts the
same maps with text keys (what this toolkit wrote before it spoke openpi's layout); any other map with a
bytes key is refused, since every other key of the protocol is text.

Nothing is ever pickled or evaluated: ``unpack`` checks the message size before decoding anything,
accepts only plain numeric dtypes, and checks that an array's bytes match its dtype and shape before
viewing them (openpi's own decoder does none of these).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from data_tools.errors import UserFacingError

ARRAY_MARKER = b"__ndarray__"
SCALAR_MARKER = b"__npgeneric__"
ALLOWED_DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
MAX_ARRAY_DIMS = 8
_ARRAY_KEYS = (ARRAY_MARKER, b"data", b"dtype", b"shape")
_SCALAR_KEYS = (SCALAR_MARKER, b"data", b"dtype")
_TEXT = {key: key.decode() for key in (*_ARRAY_KEYS, SCALAR_MARKER)}  # the text-keyed spelling of each key


class WireError(UserFacingError, ValueError):
    """A message that cannot be decoded; ``code`` is the typed error the server replies with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _checked_dtype(dtype: np.dtype) -> str:
    if dtype.str not in ALLOWED_DTYPES:
        raise WireError(
            "bad_array", f"values of dtype {dtype} cannot be sent; use a numeric or bool dtype (little-endian)"
        )
    return dtype.str


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        dtype = _checked_dtype(value.dtype)
        return {
            ARRAY_MARKER: True,
            b"data": np.ascontiguousarray(value).tobytes(),
            b"dtype": dtype,
            b"shape": list(value.shape),
        }
    if isinstance(value, np.generic):  # np.float64, np.str_, np.bytes_ never get here: msgpack packs them itself
        return {SCALAR_MARKER: True, b"data": value.item(), b"dtype": _checked_dtype(value.dtype)}
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} over the wire; use numbers, strings, lists, dicts, arrays")


def _field(value: dict, key: bytes) -> Any:
    """``value[key]`` under either spelling of the key (bytes as openpi writes it, or text)."""
    return value[key] if key in value else value.get(_TEXT[key])


def _check_keys(value: dict, keys: tuple[bytes, ...], what: str) -> None:
    if value.keys() != set(keys) and value.keys() != {_TEXT[key] for key in keys}:
        shown = sorted(repr(key) for key in value)
        names = ", ".join(key.decode() for key in keys[1:])
        raise WireError("bad_array", f"{what} needs exactly the keys {names} besides its marker; got {shown}")


def _decode_array(value: dict) -> np.ndarray:
    _check_keys(value, _ARRAY_KEYS, "an array")
    dtype, shape, data = _field(value, b"dtype"), _field(value, b"shape"), _field(value, b"data")
    if _field(value, ARRAY_MARKER) is not True:
        raise WireError("bad_array", "an array's __ndarray__ marker must be true")
    if dtype not in ALLOWED_DTYPES:
        raise WireError("bad_array", f"array dtype {dtype!r} is not accepted; use one of {sorted(ALLOWED_DTYPES)}")
    if (
        type(shape) is not list
        or len(shape) > MAX_ARRAY_DIMS
        or not all(type(n) is int and n >= 0 for n in shape)  # type(): bool is not a size
    ):
        raise WireError("bad_array", f"array shape {shape!r} is not a list of at most {MAX_ARRAY_DIMS} sizes >= 0")
    if type(data) is not bytes:
        raise WireError("bad_array", "array data must be raw bytes (msgpack bin)")
    numpy_dtype = _DTYPES[dtype]
    expected = math.prod(shape) * numpy_dtype.itemsize
    if expected != len(data):
        raise WireError(
            "bad_array", f"array of dtype {dtype} and shape {shape} needs {expected} bytes, the message has {len(data)}"
        )
    return np.frombuffer(data, dtype=numpy_dtype).reshape(shape)


def _decode_scalar(value: dict) -> np.generic:
    _check_keys(value, _SCALAR_KEYS, "a numpy scalar")
    dtype, data = _field(value, b"dtype"), _field(value, b"data")
    if _field(value, SCALAR_MARKER) is not True:
        raise WireError("bad_array", "a numpy scalar's __npgeneric__ marker must be true")
    if dtype not in ALLOWED_DTYPES:
        raise WireError("bad_array", f"scalar dtype {dtype!r} is not accepted; use one of {sorted(ALLOWED_DTYPES)}")
    if not isinstance(data, int | float):  # bool is an int
        raise WireError("bad_array", f"a numpy scalar's data must be a number, got {type(data).__name__}")
    try:
        return np.dtype(dtype).type(data)
    except (OverflowError, ValueError, TypeError):
        raise WireError("bad_array", f"the scalar {data!r} does not fit dtype {dtype}") from None


def _decode(value: dict[Any, Any]) -> Any:
    if ARRAY_MARKER in value or "__ndarray__" in value:
        return _decode_array(value)
    if SCALAR_MARKER in value or "__npgeneric__" in value:
        return _decode_scalar(value)
    for key in value:
        if isinstance(key, bytes):
            raise WireError(
                "malformed_request",
                f"map key {key[:60]!r} is bytes (msgpack bin); send map keys as strings (only the array markers "
                "of openpi's msgpack_numpy are bytes)",
            )
    return value


def pack(message: Any) -> bytes:
    """Encode a message (dicts, lists, numbers, strings, bytes, numpy arrays and scalars) as openpi does."""
    return msgpack.packb(message, default=_encode, use_bin_type=True)


def unpack(data: bytes, max_bytes: int) -> Any:
    """Decode a message of at most ``max_bytes``; WireError (``message_too_large``, ``malformed_request``
    or ``bad_array``) otherwise. Decoded arrays are read-only views of the message bytes."""
    if len(data) > max_bytes:
        raise WireError(
            "message_too_large",
            f"the message is {len(data)} bytes, over this server's limit of {max_bytes}; send smaller images "
            "or start the server with a larger --max-message-mb",
        )
    try:
        return msgpack.unpackb(data, raw=False, object_hook=_decode, strict_map_key=True)
    except WireError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as error:
        reason = str(error) or type(error).__name__
        message = f"the message is not valid msgpack ({reason}); send msgpack maps"
        raise WireError("malformed_request", message) from None
