"""The wire format of the policy server: msgpack maps, numpy arrays as raw bytes with dtype and shape.

An array travels as ``{"__ndarray__": True, "data": <bytes>, "dtype": "<f4", "shape": [10, 7]}`` (the
layout of openpi's msgpack_numpy, with text keys where openpi uses bytes keys). Nothing is ever pickled
or evaluated: ``unpack`` checks the message size before decoding anything, accepts only plain numeric
dtypes, and checks that an array's bytes match its dtype and shape before viewing them.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from data_tools.errors import UserFacingError

ARRAY_MARKER = "__ndarray__"
ALLOWED_DTYPES = frozenset({"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"})
MAX_ARRAY_DIMS = 8


class WireError(UserFacingError, ValueError):
    """A message that cannot be decoded; ``code`` is the typed error the server replies with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        if value.dtype.str not in ALLOWED_DTYPES:
            raise WireError("bad_array", f"arrays of dtype {value.dtype} cannot be sent; use a numeric dtype")
        return {
            ARRAY_MARKER: True,
            "data": np.ascontiguousarray(value).tobytes(),
            "dtype": value.dtype.str,
            "shape": list(value.shape),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} over the wire; use numbers, strings, lists, dicts, arrays")


def _decode(value: dict[str, Any]) -> Any:
    if value.get(ARRAY_MARKER) is not True:
        return value
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if set(value) != {ARRAY_MARKER, "data", "dtype", "shape"}:
        raise WireError("bad_array", f"an array needs exactly the keys data, dtype, shape; got {sorted(value)}")
    if dtype not in ALLOWED_DTYPES:
        raise WireError("bad_array", f"array dtype {dtype!r} is not accepted; use one of {sorted(ALLOWED_DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_ARRAY_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise WireError("bad_array", f"array shape {shape!r} is not a list of at most {MAX_ARRAY_DIMS} sizes >= 0")
    if not isinstance(data, bytes):
        raise WireError("bad_array", "array data must be raw bytes (msgpack bin)")
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if expected != len(data):
        raise WireError(
            "bad_array", f"array of dtype {dtype} and shape {shape} needs {expected} bytes, the message has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def pack(message: Any) -> bytes:
    """Encode a message (dicts, lists, numbers, strings, bytes, numpy arrays)."""
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
        raise WireError("malformed_request", f"the message is not valid msgpack ({error}); send msgpack maps") from None
