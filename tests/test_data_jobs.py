"""`agent data tom|som` for real: mp4 files and annotated screenshots written by the test, worker
processes, machine ranks, resuming, and bad inputs counted in the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_tools.corpus_kinds import ANNOTATION_EXTENSIONS, som_annotation_input
from data_tools.jobs import JobSpec, list_inputs, run_corpus_job
from data_tools.sample_format import validate_sample
from data_tools.tracking_truth import render_truth_video
from data_tools.video import write_mp4
from magma.actions import parse_ui_action
from magma.data.shard_index import SampleRef, expand_shards, index_shard, read_raw_sample

AGENT = [sys.executable, "-m", "magma.cli.app", "data"]
REPO = Path(__file__).resolve().parent.parent


def agent_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args, "--no-progress"], capture_output=True, text=True, timeout=1200, cwd=REPO)


def read_samples(out_dir: Path) -> list:
    samples = []
    for shard in expand_shards([str(out_dir / "*.tar")]):
        for indexed in index_shard(shard).samples:
            raw = read_raw_sample(SampleRef("job", shard, indexed))
            validate_sample(raw.record, len(raw.images))
            samples.append(raw)
    return samples


def screenshot(path: Path, buttons: list[tuple[str, tuple[int, int, int, int]]]) -> Path:
    image = Image.new("RGB", (320, 240), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    for text, box in buttons:
        draw.rectangle(box, fill=(60, 120, 220))
        draw.text((box[0] + 4, box[1] + 4), text, fill=(255, 255, 255))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def annotations(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("screens")
    lines = []
    for index in range(6):
        buttons = [
            (f"Search {index}", (10, 10, 110, 40)),
            (f"Sign in {index}", (200, 10, 300, 40)),
            (f"Cart {index}", (10, 150, 110, 180)),
        ]
        image = screenshot(root / f"screen{index}.png", buttons)
        elements = [{"box": list(box), "kind": "button", "text": text} for text, box in buttons]
        lines.append(json.dumps({"image": image.name, "source": "web", "elements": elements}))
    lines.insert(3, json.dumps({"image": "missing.png", "source": "web", "elements": []}))
    (root / "screens.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    for seed in range(2):
        write_mp4(render_truth_video(num_frames=40, size=128, seed=seed).frames, root / f"clip{seed}.mp4", fps=8)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    write_mp4(render_truth_video(num_frames=6, size=128, seed=5).frames, root / "short.mp4", fps=8)
    write_mp4(np.full((40, 128, 128, 3), 127, np.uint8), root / "blank.mp4", fps=8)  # nothing to track
    return root


def test_som_job_writes_valid_shards_counts_bad_lines_and_resumes(tmp_path, annotations):
    out = tmp_path / "som"
    result = agent_data(
        "som",
        "--input",
        str(annotations),
        "--out",
        str(out),
        "--workers",
        "2",
        "--inputs-per-unit",
        "2",
        "--samples-per-shard",
        "3",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6 ok, 1 failed (unreadable_image 1)" in result.stdout
    samples = read_samples(out)
    assert len(samples) == 12  # 2 samples per screenshot
    assert all(len(raw.images) == 1 for raw in samples)
    for raw in samples:
        if raw.record["meta"].get("task") == "som_action":
            parse_ui_action(raw.record["conversations"][1]["value"], "som")
    shards_before = sorted(path.name for path in out.glob("*.tar"))

    again = agent_data(
        "som",
        "--input",
        str(annotations),
        "--out",
        str(out),
        "--workers",
        "2",
        "--inputs-per-unit",
        "2",
        "--samples-per-shard",
        "3",
    )
    assert again.returncode == 0 and "0 done now, 4 done before" in again.stdout
    assert sorted(path.name for path in out.glob("*.tar")) == shards_before


def test_a_killed_unit_is_redone_and_its_leftovers_removed(tmp_path, annotations):
    inputs = list_inputs(annotations, ANNOTATION_EXTENSIONS, expand_jsonl=True)
    spec = JobSpec(kind="som", inputs=inputs, out_dir=str(tmp_path / "out"), inputs_per_unit=2, samples_per_shard=2)
    first = run_corpus_job(spec, som_annotation_input, workers=1, progress=False)
    manifest_path = tmp_path / "out" / "manifest-rank0-of-1.json"
    manifest = json.loads(manifest_path.read_text())
    lost = manifest["units"].pop("1")  # as if the run died before recording unit 1
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "out" / lost["shards"][0]).write_bytes(b"half a shard")
    (tmp_path / "out" / f"{spec.shard_prefix(1)}-000009.tar.partial").write_bytes(b"temporary")
    second = run_corpus_job(spec, som_annotation_input, workers=1, progress=False)
    assert second.units_done == 1 and second.units_skipped == first.units_done - 1
    assert second.samples == first.samples and second.inputs_failed == first.inputs_failed
    assert not list((tmp_path / "out").glob("*.partial"))
    assert len(read_samples(tmp_path / "out")) == first.samples


def test_machines_share_a_corpus_by_rank_without_overlap(tmp_path, annotations):
    ids = []
    for rank in (0, 1):
        result = agent_data(
            "som",
            "--input",
            str(annotations),
            "--out",
            str(tmp_path / "out"),
            "--rank",
            str(rank),
            "--world-size",
            "2",
            "--inputs-per-unit",
            "1",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / "out" / f"manifest-rank{rank}-of-2.json").exists()
    ids = [raw.record["id"] for raw in read_samples(tmp_path / "out")]
    single = agent_data("som", "--input", str(annotations), "--out", str(tmp_path / "single"), "--inputs-per-unit", "1")
    assert single.returncode == 0
    assert sorted(ids) == sorted(raw.record["id"] for raw in read_samples(tmp_path / "single"))
    assert len(ids) == len(set(ids))


def test_tom_job_over_videos_counts_unreadable_and_short_ones(tmp_path, videos):
    out = tmp_path / "tom"
    result = agent_data(
        "tom",
        "--input",
        str(videos),
        "--out",
        str(out),
        "--workers",
        "2",
        "--inputs-per-unit",
        "1",
        "--fps",
        "8",
        "--size",
        "128",
        "--clips-per-video",
        "2",
        "--grid-size",
        "10",
        "--num-steps",
        "8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 ok, 3 failed" in result.stdout
    for reason in ("VideoReadError 1", "ClipTooShortError 1", "NoTrackableTextureError 1"):
        assert reason in result.stdout, result.stdout
    samples = read_samples(out)
    assert len(samples) == 4  # 2 clips of each good video
    for raw in samples:
        image = np.asarray(Image.open(__import__("io").BytesIO(raw.images[0])))
        assert image.shape[0] == 128  # the decoded short side
        assert "8" in raw.record["conversations"][0]["value"]  # the number of future steps is asked for


def test_an_output_directory_of_another_job_is_refused(tmp_path, annotations):
    out = tmp_path / "out"
    assert agent_data("som", "--input", str(annotations), "--out", str(out)).returncode == 0
    other = agent_data("som", "--input", str(annotations), "--out", str(out), "--max-marks", "5")
    assert other.returncode == 2 and "another job" in other.stderr and "Traceback" not in other.stderr
    missing = agent_data("som", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "nowhere" in missing.stderr
