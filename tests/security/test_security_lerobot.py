"""Hostile LeRobotDataset metadata and columns, on real recorded datasets: path templates that would reach
attributes or allocate gigabytes, deep or broken JSON, columns of the wrong type or shape and NaN actions are
one DatasetLayoutError naming the file and the fix; the CLI prints it without a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.lerobot_dataset import DatasetLayoutError, FeatureSpec, LeRobotDatasetReader, LeRobotDatasetWriter
from data_tools.sample_format import SampleFormatError, validate_sample

REPO = Path(__file__).resolve().parents[2]
CAMERA = "observation.images.front"
DATA_FILE = "data/chunk-000/file-000.parquet"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    features = {"observation.state": FeatureSpec("float32", (3,)), "action": FeatureSpec("float32", (3,))}
    root = tmp_path_factory.mktemp("lerobot") / "ds"
    writer = LeRobotDatasetWriter(
        root, robot_type="sim", fps=10, features=features, cameras=[CAMERA], image_size=(32, 32)
    )
    for step in range(6):
        frame = np.full((32, 32, 3), 40 * step, dtype=np.uint8)
        writer.add_frame(np.zeros(3), np.full(3, 0.1 * step), {CAMERA: frame}, "pick the cube")
    writer.save_episode()
    return writer.finalize()


def _edit_info(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        info = json.loads((root / "meta/info.json").read_text())
        change(info)
        (root / "meta/info.json").write_text(json.dumps(info))

    return edit


def _write(relative: str, data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / relative).write_bytes(data)


def _action_column(values: pa.Array) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        table = pq.read_table(root / DATA_FILE)
        table = table.set_column(table.column_names.index("action"), "action", values)
        pq.write_table(table, root / DATA_FILE)

    return edit


HOSTILE = {
    "data_path_attribute": (
        _edit_info(lambda i: i.update(data_path="data/{chunk_index.__class__}.parquet")),
        "data_path",
    ),
    "data_path_width": (
        _edit_info(lambda i: i.update(data_path="data/{chunk_index:0>2000000000}.parquet")),
        "data_path",
    ),
    "data_path_unknown": (_edit_info(lambda i: i.update(data_path="data/{secret}.parquet")), "data_path"),
    "data_path_outside": (_edit_info(lambda i: i.update(data_path="../../{chunk_index}.parquet")), "outside"),
    "video_path_width": (_edit_info(lambda i: i.update(video_path="videos/{video_key:>2000000000}.mp4")), "video_path"),
    "info_deep": (_write("meta/info.json", b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "info_list": (_write("meta/info.json", b"[]"), "not an object"),
    "info_not_utf8": (_write("meta/info.json", b"\xff\xfe"), "not valid JSON"),
    "stats_empty_file": (_write("meta/stats.json", b""), "not valid JSON"),
    "stats_deep": (_write("meta/stats.json", b"[" * 100_000), "stats.json"),
    "action_strings": (lambda root: _action_column(pa.array(["x"] * 6))(root), "not numbers"),
    "action_short": (lambda root: _action_column(pa.array([[1.0]] * 6))(root), "does not match"),
    "action_nan": (
        lambda root: _action_column(pa.array([[float("nan")] * 3] * 6, pa.list_(pa.float32(), 3)))(root),
        "NaN",
    ),
}


def _damaged(recorded: Path, tmp_path: Path, case: str) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(recorded, root)
    HOSTILE[case][0](root)
    return root


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata_and_columns_are_one_clear_error(recorded, tmp_path, case):
    root = _damaged(recorded, tmp_path, case)
    with pytest.raises(DatasetLayoutError, match=HOSTILE[case][1]):
        reader = LeRobotDatasetReader(root)
        reader.episode(0)


@pytest.mark.parametrize("case", ["data_path_width", "info_deep", "action_nan"])
def test_the_cli_prints_the_error_without_a_traceback(recorded, tmp_path, case):
    root = _damaged(recorded, tmp_path, case)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "magma.cli.app",
        "data",
        "lerobot-shards",
        "--dataset",
        str(root),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and HOSTILE[case][1] in result.stderr
    assert not list(out.glob("*.tar"))


def test_an_intact_dataset_still_reads(recorded):
    episode = LeRobotDatasetReader(recorded).episode(0)
    assert episode.actions.shape == (6, 3) and np.isfinite(episode.actions).all()


@pytest.mark.parametrize("actions", [[float("nan"), 0.0], [[0.0], [float("inf")]], [1e309], [[1.0], 2.0]])
def test_the_sample_contract_refuses_non_finite_actions(actions):
    record = {"id": "a", "conversations": [{"from": "human", "value": "go"}, {"from": "gpt", "value": "<action>"}]}
    with pytest.raises(SampleFormatError, match="finite"):
        validate_sample({**record, "actions": actions}, 0)
    validate_sample({**record, "actions": [0.5, -1, 3]}, 0)
