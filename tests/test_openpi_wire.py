"""Our msgpack codec against openpi's msgpack_numpy layout, without openpi installed: the codec below is
written from openpi-client 0.1.2's documented wire format (docs: /work/shared/INTEROP.md section 1,
bytes keys, arrays as raw C-order bytes + dtype.str + shape, numpy scalars as ``__npgeneric__``), and
the exact bytes of a uint8 [1, 2] array given there. Bad arrays and bytes map keys get one typed error."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from robot.wire import WireError, pack, unpack

# the documented bytes of np.array([1, 2], np.uint8) in openpi's msgpack_numpy
OPENPI_UINT8_1_2 = b"\x84\xc4\x0b__ndarray__\xc3\xc4\x04data\xc4\x02\x01\x02\xc4\x05dtype\xa3|u1\xc4\x05shape\x91\x02"


def openpi_default(value):
    """openpi's pack hook, as documented: bytes keys, in this order; V/O/complex dtypes refused."""
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind in "VOc":
        raise ValueError(f"Unsupported dtype: {value.dtype}")
    if isinstance(value, np.ndarray):
        return {b"__ndarray__": True, b"data": value.tobytes(), b"dtype": value.dtype.str, b"shape": value.shape}
    if isinstance(value, np.generic):
        return {b"__npgeneric__": True, b"data": value.item(), b"dtype": value.dtype.str}
    return value


def openpi_hook(value: dict):
    """openpi's unpack hook, as documented: only the bytes markers are recognised."""
    if b"__ndarray__" in value:
        return np.ndarray(buffer=value[b"data"], dtype=np.dtype(value[b"dtype"]), shape=value[b"shape"])
    if b"__npgeneric__" in value:
        return np.dtype(value[b"dtype"]).type(value[b"data"])
    return value


def openpi_pack(message) -> bytes:
    return msgpack.Packer(default=openpi_default).pack(message)


def openpi_unpack(data: bytes):
    return msgpack.unpackb(data, object_hook=openpi_hook)


def libero_observation() -> dict:
    rng = np.random.default_rng(0)
    return {
        "observation/image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": "put the bowl on the plate",
    }


def test_our_encoding_is_openpis_byte_for_byte():
    assert openpi_pack(np.array([1, 2], np.uint8)) == OPENPI_UINT8_1_2  # the fixture matches the document
    assert pack(np.array([1, 2], np.uint8)) == OPENPI_UINT8_1_2
    message = {
        "actions": np.arange(70, dtype=np.float32).reshape(10, 7),
        "server_timing": {"infer_ms": 1.5},
        "mixed": [np.float32(0.5), np.int64(-3), np.bool_(True), np.float64(2.0), np.zeros((2, 0), np.int16)],
        "flags": np.array([True, False]),
        "transposed": np.arange(6, dtype=np.float64).reshape(2, 3).T,  # not C-contiguous: sent in C order
    }
    assert pack(message) == openpi_pack(message)
    decoded = openpi_unpack(pack(message))  # what openpi's client reads from our server
    assert decoded["actions"].shape == (10, 7) and decoded["actions"].dtype == np.float32
    assert np.array_equal(decoded["transposed"], message["transposed"])
    assert [type(value) for value in decoded["mixed"][:4]] == [np.float32, np.int64, np.bool_, float]


def test_we_decode_what_openpi_encodes_and_still_read_text_keys():
    observation = {**libero_observation(), "control_tick": np.int64(41), "capture_time_s": np.float32(12.5)}
    decoded = unpack(openpi_pack(observation), max_bytes=1 << 20)
    for key in ("observation/image", "observation/wrist_image", "observation/state"):
        assert np.array_equal(decoded[key], observation[key]) and decoded[key].dtype == observation[key].dtype
        assert not decoded[key].flags.writeable  # a read-only view of the message, as openpi's decoder gives
    assert decoded["prompt"] == "put the bowl on the plate"
    assert decoded["control_tick"] == 41 and isinstance(decoded["control_tick"], np.int64)
    assert decoded["capture_time_s"] == np.float32(12.5)
    text_keys = msgpack.packb({"state": {"__ndarray__": True, "data": b"\x00" * 8, "dtype": "<f4", "shape": [2]}})
    assert unpack(text_keys, max_bytes=1 << 20)["state"].tolist() == [0.0, 0.0]  # this toolkit's older layout


def array(changes: dict | None = None) -> dict:
    """A float32 [2] array in openpi's layout, with some fields changed."""
    fields = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [2]}
    return {**fields, **(changes or {})}


BAD_MESSAGES = {
    "bytes map key": ({b"state": np.zeros(2, np.float32)}, "malformed_request", "send map keys as strings"),
    "integer map key": ({1: "a"}, "malformed_request", "not valid msgpack"),
    "lying byte count": ({"state": array({b"data": b"\x00" * 7})}, "bad_array", "needs 8 bytes"),
    "object dtype": ({"state": array({b"dtype": "|O"})}, "bad_array", "not accepted"),
    "big-endian dtype": ({"state": array({b"dtype": ">f4"})}, "bad_array", "not accepted"),
    "bool in shape": ({"state": array({b"shape": [True, 2]})}, "bad_array", "sizes >= 0"),
    "negative shape": ({"state": array({b"shape": [-2]})}, "bad_array", "sizes >= 0"),
    "text data": ({"state": array({b"data": "ab"})}, "bad_array", "raw bytes"),
    "extra key": ({"state": {**array(), b"strides": [4]}}, "bad_array", "exactly the keys"),
    "false marker": ({"state": array({b"__ndarray__": False})}, "bad_array", "marker must be true"),
    "scalar overflow": (
        {"tick": {b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}},
        "bad_array",
        "does not fit",
    ),
    "scalar of text": (
        {"tick": {b"__npgeneric__": True, b"data": "1", b"dtype": "<i8"}},
        "bad_array",
        "must be a number",
    ),
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_bad_arrays_and_bytes_keys_get_one_typed_error(name):
    message, code, words = BAD_MESSAGES[name]
    raw = msgpack.packb(message, default=openpi_default, strict_types=False)
    with pytest.raises(WireError, match=words) as refused:
        unpack(raw, max_bytes=1 << 20)
    assert refused.value.code == code


def test_the_size_is_checked_before_anything_is_decoded():
    with pytest.raises(WireError, match="--max-message-mb") as refused:
        unpack(b"\xc1" * 2000, max_bytes=1000)  # not msgpack either: never looked at
    assert refused.value.code == "message_too_large"
    with pytest.raises(WireError, match="cannot be sent"):
        pack({"a": np.array([1 + 2j])})  # complex, like openpi's packer refuses
