"""Robot action codec: normalisation, binning, token ids and the statistics file."""

import json

import numpy as np
import pytest

from magma.actions import (
    ActionParseError,
    ActionStatistics,
    ActionStatisticsError,
    RobotActionCodec,
    load_action_statistics,
    save_action_statistics,
    select_statistics,
)

BASE_VOCAB = 32000


def make_stats(dim: int, seed: int, gripper: bool = True) -> ActionStatistics:
    rng = np.random.default_rng(seed)
    q01 = rng.uniform(-2.0, 0.0, dim)
    q99 = q01 + rng.uniform(0.1, 3.0, dim)
    mask = np.ones(dim, dtype=bool)
    if gripper:
        mask[-1] = False
    return ActionStatistics(q01=q01, q99=q99, mask=mask)


@pytest.mark.parametrize("dim", [1, 3, 7, 14])
def test_round_trip_is_within_half_a_bin(dim: int) -> None:
    for seed in range(20):
        stats = make_stats(dim, seed, gripper=False)
        codec = RobotActionCodec(stats, BASE_VOCAB)
        rng = np.random.default_rng(1000 + seed)
        actions = rng.uniform(stats.q01, stats.q99, size=(64, dim))
        decoded = codec.decode(codec.encode(actions))
        assert decoded.shape == actions.shape
        normalized_error = np.abs(codec.normalize(decoded) - codec.normalize(actions))
        assert normalized_error.max() <= codec.bin_width / 2 + 1e-12
        raw_bound = codec.bin_width / 2 * (stats.q99 - stats.q01) / 2
        assert np.all(np.abs(decoded - actions) <= raw_bound + 1e-12)


def test_round_trip_holds_at_the_range_ends() -> None:
    stats = make_stats(4, seed=0, gripper=False)
    codec = RobotActionCodec(stats, BASE_VOCAB)
    for actions in (stats.q01, stats.q99, (stats.q01 + stats.q99) / 2):
        error = np.abs(codec.normalize(codec.decode(codec.encode(actions))) - codec.normalize(actions))
        assert error.max() <= codec.bin_width / 2 + 1e-12


def test_gripper_dimension_passes_through_unnormalised() -> None:
    stats = ActionStatistics(q01=[-1.0, 10.0], q99=[1.0, 20.0], mask=[True, False])
    codec = RobotActionCodec(stats, BASE_VOCAB)
    normalized = codec.normalize(np.array([0.0, 0.5]))
    assert normalized[1] == 0.5  # not rescaled by its (ignored) q01/q99 of 10..20
    assert normalized[0] == pytest.approx(0.0)
    decoded = codec.decode(codec.encode(np.array([[0.0, -1.0], [0.0, 1.0], [0.0, 0.3]])))
    np.testing.assert_allclose(decoded[:, 1], [-1.0, 1.0, 0.3], atol=codec.bin_width / 2 + 1e-12)
    assert codec.normalize(np.array([0.0, 5.0]))[1] == 1.0  # clipped, not scaled


def test_token_ids_are_the_last_bins_of_the_base_vocabulary() -> None:
    codec = RobotActionCodec(make_stats(7, seed=1), BASE_VOCAB, num_bins=256)
    assert codec.token_range == (BASE_VOCAB - 256, BASE_VOCAB - 1)
    rng = np.random.default_rng(0)
    ids = codec.encode(rng.normal(0.0, 5.0, size=(500, 7)))
    assert ids.dtype == np.int64
    assert ids.min() >= BASE_VOCAB - 256 and ids.max() <= BASE_VOCAB - 1
    assert all(codec.is_action_token(i) for i in ids.ravel())
    assert not codec.is_action_token(BASE_VOCAB - 257) and not codec.is_action_token(BASE_VOCAB)


def test_higher_values_get_lower_ids() -> None:
    stats = ActionStatistics(q01=[-1.0], q99=[1.0], mask=[True])
    codec = RobotActionCodec(stats, BASE_VOCAB)
    values = np.linspace(-1.0, 1.0, 101)[:, None]
    ids = codec.encode(values)[:, 0]
    assert np.all(np.diff(ids) <= 0)
    assert ids[0] == BASE_VOCAB - 1  # the lowest value is the last id
    assert ids[-1] == BASE_VOCAB - 256  # the highest value is the first action id


def test_matches_the_magma_openvla_discretisation() -> None:
    stats = ActionStatistics(q01=[-1.0], q99=[1.0], mask=[True])
    codec = RobotActionCodec(stats, BASE_VOCAB)
    values = np.random.default_rng(3).uniform(-1.0, 1.0, 1000)
    edges = np.linspace(-1, 1, 256)
    centres = (edges[:-1] + edges[1:]) / 2
    expected_ids = BASE_VOCAB - np.digitize(values, edges)
    np.testing.assert_array_equal(codec.encode(values[:, None])[:, 0], expected_ids)
    expected_values = centres[np.clip(BASE_VOCAB - expected_ids - 1, 0, 254)]
    np.testing.assert_allclose(codec.decode(expected_ids[:, None])[:, 0], expected_values)


def test_values_beyond_q01_q99_are_clipped() -> None:
    stats = ActionStatistics(q01=[0.0, -1.0], q99=[1.0, 1.0], mask=[True, True])
    codec = RobotActionCodec(stats, BASE_VOCAB)
    np.testing.assert_array_equal(codec.normalize(np.array([5.0, -7.0])), [1.0, -1.0])
    np.testing.assert_array_equal(codec.encode(np.array([5.0, -7.0])), codec.encode(np.array([1.0, -1.0])))
    decoded = codec.decode(codec.encode(np.array([5.0, -7.0])))
    assert 0.99 <= decoded[0] <= 1.0 and -1.0 <= decoded[1] <= -0.99


def test_zero_range_dimension_decodes_to_q01() -> None:
    stats = ActionStatistics(q01=[0.25, -1.0], q99=[0.25, 1.0], mask=[True, True])
    codec = RobotActionCodec(stats, BASE_VOCAB)
    assert codec.normalize(np.array([3.0, 0.0]))[0] == 0.0
    assert codec.decode(codec.encode(np.array([3.0, 0.0])))[0] == pytest.approx(0.25)


def test_shapes_of_single_steps_and_chunks() -> None:
    codec = RobotActionCodec(make_stats(7, seed=2), BASE_VOCAB)
    one_step = np.zeros(7)
    assert codec.encode(one_step).shape == (7,)
    assert codec.decode(codec.encode(one_step)).shape == (7,)
    chunk = np.zeros((5, 7))
    assert codec.encode(chunk).shape == (5, 7)
    assert codec.decode(codec.encode(chunk)).shape == (5, 7)
    assert codec.decode(codec.encode(chunk).reshape(-1)).shape == (5, 7)  # flat generated ids
    with pytest.raises(ValueError, match=r"\(\.\.\., 7\)"):
        codec.encode(np.zeros(6))


def test_decode_rejects_non_action_ids_and_wrong_counts() -> None:
    codec = RobotActionCodec(make_stats(7, seed=3), BASE_VOCAB)
    good = codec.encode(np.zeros(7)).tolist()
    bad = [*good[:6], 13]
    with pytest.raises(ActionParseError, match="outside the action token range") as caught:
        codec.decode(bad)
    assert caught.value.token_ids == tuple(bad)
    assert "13" in caught.value.text and "13" in str(caught.value)
    with pytest.raises(ActionParseError, match="not a multiple"):
        codec.decode(good[:6])
    with pytest.raises(ActionParseError, match="integer token ids"):
        codec.decode([])


def test_statistics_round_trip_through_the_file(tmp_path) -> None:
    stats = {
        "bridge_orig": ActionStatistics.compute(
            np.random.default_rng(0).normal(size=(200, 7)), mask=[True] * 6 + [False]
        ),
        "libero_spatial_no_noops": make_stats(7, seed=4),
    }
    path = tmp_path / "ckpt" / "dataset_statistics.json"
    save_action_statistics(path, stats)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    on_disk = json.loads(path.read_text())
    assert set(on_disk["bridge_orig"]["action"]) == {"q01", "q99", "mask", "mean", "std", "min", "max"}
    loaded = load_action_statistics(path)
    assert loaded.keys() == stats.keys()
    for key, original in stats.items():
        assert loaded[key].to_dict() == original.to_dict()


def test_compute_gives_percentiles_and_moments() -> None:
    actions = np.arange(1001, dtype=float)[:, None] * np.array([1.0, -2.0])
    stats = ActionStatistics.compute(actions)
    np.testing.assert_allclose(stats.q01, [10.0, -1980.0])
    np.testing.assert_allclose(stats.q99, [990.0, -20.0])
    np.testing.assert_allclose(stats.mean, [500.0, -1000.0])
    assert stats.mask.tolist() == [True, True]


def test_missing_statistic_key_names_it() -> None:
    with pytest.raises(ActionStatisticsError) as caught:
        ActionStatistics.from_dict({"q01": [0.0], "mask": [True]})
    assert caught.value.key == "q99"
    message = str(caught.value)
    assert "'q99'" in message and "'q01'" in message and "dataset_statistics.json" in message
    assert not message.startswith('"')  # KeyError's quoting is not used
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


def test_missing_mask_is_an_error_unless_a_default_is_given() -> None:
    with pytest.raises(ActionStatisticsError, match="mask"):
        ActionStatistics.from_dict({"q01": [0.0, 0.0], "q99": [1.0, 1.0]})
    stats = ActionStatistics.from_dict({"q01": [0.0, 0.0], "q99": [1.0, 1.0]}, default_mask=[True, False])
    assert stats.mask.tolist() == [True, False]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"q01": [0.0, 0.0], "q99": [1.0], "mask": [True, True]}, "q99"),
        ({"q01": [0.0], "q99": [1.0], "mask": [True, False]}, "mask"),
        ({"q01": [1.0], "q99": [0.0], "mask": [True]}, "q99"),
        ({"q01": ["a"], "q99": [0.0], "mask": [True]}, "q01"),
        ({"q01": [0.0], "q99": [float("nan")], "mask": [True]}, "q99"),
        ({"q01": [0.0], "q99": [1.0], "mask": [2]}, "mask"),
    ],
)
def test_invalid_statistics_are_rejected(data: dict, key: str) -> None:
    with pytest.raises(ActionStatisticsError) as caught:
        ActionStatistics.from_dict(data)
    assert caught.value.key == key


def test_select_statistics_names_the_available_keys() -> None:
    stats = {"bridge_orig": make_stats(7, 0), "fractal": make_stats(7, 1)}
    assert select_statistics(stats, "fractal") is stats["fractal"]
    with pytest.raises(ActionStatisticsError) as caught:
        select_statistics(stats, "libero")
    assert caught.value.key == "libero"
    assert "'libero'" in str(caught.value) and "'bridge_orig'" in str(caught.value)
    with pytest.raises(ActionStatisticsError, match=r"choose one.*'fractal'"):
        select_statistics(stats, None)
    assert select_statistics({"only": stats["fractal"]}, None) is stats["fractal"]


def test_missing_or_corrupt_statistics_file(tmp_path) -> None:
    missing = tmp_path / "dataset_statistics.json"
    with pytest.raises(ActionStatisticsError, match="not found") as caught:
        load_action_statistics(missing)
    assert str(missing) in str(caught.value)
    missing.write_text("{not json")
    with pytest.raises(ActionStatisticsError, match="not valid JSON"):
        load_action_statistics(missing)
    missing.write_text(json.dumps({"bridge_orig": {"proprio": {}}}))
    with pytest.raises(ActionStatisticsError, match=r"'bridge_orig'.*no 'action'"):
        load_action_statistics(missing)
    missing.write_text(json.dumps({"bridge_orig": {"action": {"q01": [0.0], "mask": [True]}}}))
    with pytest.raises(ActionStatisticsError, match=r"missing 'q99' \(dataset 'bridge_orig' in ") as caught:
        load_action_statistics(missing)
    assert caught.value.key == "q99"
