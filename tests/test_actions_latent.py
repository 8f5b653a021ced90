"""Latent action codec: LAPA codes <-> token ids."""

import numpy as np
import pytest

from magma.actions import ActionParseError, LatentActionCodec


def test_round_trip_single_step_and_chunks() -> None:
    codec = LatentActionCodec(num_codes=4, codebook_size=8, first_token_id=128256)
    codes = np.array([0, 7, 3, 5])
    ids = codec.encode(codes)
    assert ids.tolist() == [128256, 128263, 128259, 128261]
    np.testing.assert_array_equal(codec.decode(ids), codes)
    chunk = np.random.default_rng(0).integers(0, 8, size=(6, 4))
    np.testing.assert_array_equal(codec.decode(codec.encode(chunk)), chunk)
    np.testing.assert_array_equal(codec.decode(codec.encode(chunk).reshape(-1)), chunk)


def test_reusing_base_vocab_places_codes_at_its_end() -> None:
    codec = LatentActionCodec.reusing_base_vocab(num_codes=4, codebook_size=8, base_vocab_size=32000)
    assert codec.token_range == (31992, 31999)
    assert codec.encode([7, 7, 0, 0]).tolist() == [31999, 31999, 31992, 31992]
    assert codec.is_action_token(31992) and not codec.is_action_token(31991)


def test_token_strings_name_every_code() -> None:
    codec = LatentActionCodec(num_codes=4, codebook_size=8, first_token_id=100)
    assert codec.token_strings() == [f"<latent_{i}>" for i in range(8)]


def test_out_of_range_ids_are_parse_errors() -> None:
    codec = LatentActionCodec(num_codes=2, codebook_size=8, first_token_id=100)
    for bad in ([99, 100], [100, 108]):
        with pytest.raises(ActionParseError, match="outside the latent token range") as caught:
            codec.decode(bad)
        assert caught.value.token_ids == tuple(bad)
        assert caught.value.text == str(bad)


def test_wrong_count_is_a_parse_error() -> None:
    codec = LatentActionCodec(num_codes=4, codebook_size=8, first_token_id=100)
    with pytest.raises(ActionParseError, match="not a multiple of 4"):
        codec.decode([100, 101, 102])
    with pytest.raises(ActionParseError, match="non-empty"):
        codec.decode([])


def test_encode_rejects_invalid_codes() -> None:
    codec = LatentActionCodec(num_codes=2, codebook_size=8, first_token_id=100)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        codec.encode([0, 8])
    with pytest.raises(ValueError, match="shape"):
        codec.encode([0, 1, 2])
