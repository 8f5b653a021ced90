"""Hostile inputs and hard stops against the corpus jobs (`agent data som`), run for real: a malformed or
hostile line is counted by reason and the job goes on; killing a multi-worker job leaves no worker behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from local_servers import wait_for
from PIL import Image, ImageDraw

from data_tools.jobs import CorpusJobError, InputResult, JobSpec, list_inputs, run_corpus_job
from data_tools.jsonl_lines import MAX_JSON_LINE_BYTES
from data_tools.som import SomInputError
from data_tools.som_samples import som_samples_from_annotation

AGENT = [sys.executable, "-m", "magma.cli.app", "data"]
REPO = Path(__file__).resolve().parents[2]
BOUND_S = 600  # generous: machines loaded by other work run several times slower


def agent_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args, "--no-progress"], capture_output=True, text=True, timeout=1800, cwd=REPO)


@contextlib.contextmanager
def process_group_cleaned_up(job: subprocess.Popen):
    """Whatever the test asserts, kill what is left of the job's own process group afterwards."""
    try:
        yield
    finally:
        for pid in _live_members(job.pid):
            os.kill(pid, signal.SIGKILL)  # only this test's job's own process group
        if job.poll() is None:
            job.kill()
            job.wait()


def screenshot(path: Path, size: tuple[int, int] = (320, 240)) -> list[dict]:
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    elements = []
    for index in range(6):
        box = [10 + 50 * index, 10, 50 + 50 * index, 40]
        draw.rectangle(box, fill=(60, 120, 220))
        elements.append({"box": box, "kind": "button", "text": f"Button {index}"})
    image.save(path)
    return elements


def good_line(image: str, elements: list[dict]) -> str:
    return json.dumps({"image": image, "source": "web", "elements": elements})


def test_hostile_annotation_lines_are_counted_by_reason_and_the_job_goes_on(tmp_path):
    elements = screenshot(tmp_path / "screen.png")
    good = good_line("screen.png", elements)
    hostile = [
        "[" * 100_000,  # RecursionError in the JSON decoder (the case)
        '{"image": "screen.png", "dom": ' + "[" * 50_000 + "]" * 50_000 + "}",  # deep, and valid JSON
        '{"image": "screen.png", "elements": [' + "9" * 5000 + "]}",  # an integer longer than Python reads
        '{"image": "screen.png", "elements": "\xff\xfe',  # not UTF-8 (written as latin-1 below)
        "{" + " " * (MAX_JSON_LINE_BYTES + 10) + "}",  # longer than the line bound
        '{"image": "screen.png", "elements": [{"box": [NaN, 0, 1e309, "x"]}]}',
        '{"image": "/dev/zero", "elements": []}',
        '"just a string"',
        "\x00\x00\x00",
    ]
    lines = [good, *hostile, good]
    (tmp_path / "screens.jsonl").write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    out = tmp_path / "out"
    result = agent_data(
        "som", "--input", str(tmp_path / "screens.jsonl"), "--out", str(out), "--workers", "2", "--inputs-per-unit", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "inputs   : 2 ok, 9 failed" in result.stdout, result.stdout
    assert "malformed_json" in result.stdout and "line_too_long" in result.stdout
    manifest = json.loads((out / "manifest-rank0-of-1.json").read_text())
    failed = [failure for unit in manifest["units"].values() for failure in unit["failed"]]
    assert sorted(int(failure["input"].rsplit(":", 1)[1]) for failure in failed) == list(range(2, 11))
    assert all(failure["detail"] for failure in failed)


def test_any_error_an_input_raises_is_counted_not_fatal(tmp_path):
    """A per-input function (here the test's own) that raises something other than a typed error."""
    inputs = [str(tmp_path / f"input{index}") for index in range(6)]

    def fragile(identifier: str, options: dict, rng: np.random.Generator) -> InputResult:
        index = int(identifier[-1])
        if index == 1:
            raise RecursionError("maximum recursion depth exceeded")
        if index == 2:
            raise MemoryError()
        if index == 3:
            raise KeyError("surprise")
        answer = {"from": "gpt", "value": "ok"}
        good = {"id": identifier, "conversations": [{"from": "human", "value": "hi"}, answer]}
        if index == 4:  # its second sample breaks the format: the input is written whole or not at all
            return InputResult(samples=[(good, []), ({"id": identifier, "conversations": [answer]}, [np.zeros(1)])])
        return InputResult(samples=[(good, [])], frames=1)

    spec = JobSpec(kind="som", inputs=inputs, out_dir=str(tmp_path / "out"), inputs_per_unit=2)
    summary = run_corpus_job(spec, fragile, workers=1, progress=False)
    assert summary.inputs_ok == 2 and summary.samples == 2
    assert summary.inputs_failed == {"RecursionError": 1, "MemoryError": 1, "KeyError": 1, "invalid_sample": 1}


def test_a_huge_screenshot_is_refused_from_its_header_before_decoding(tmp_path):
    Image.new("1", (10_000, 6_000)).save(tmp_path / "huge.png")  # 60 million pixels in a few kB
    annotation = {"image": "huge.png", "elements": [{"box": [0, 0, 100, 100], "kind": "button", "text": "x"}]}
    with pytest.raises(SomInputError, match="million pixels") as caught:
        som_samples_from_annotation(annotation, base_dir=tmp_path)
    assert caught.value.reason == "image_too_large"


def test_unreadable_list_files_and_corrupt_manifests_are_clear_errors(tmp_path):
    bad_list = tmp_path / "inputs.txt"
    bad_list.write_bytes(b"screen.png\n\xff\xfe\n")
    with pytest.raises(CorpusJobError, match="UTF-8"):
        list_inputs(bad_list, (".jsonl",))
    elements = screenshot(tmp_path / "screen.png")
    (tmp_path / "a.jsonl").write_text(good_line("screen.png", elements) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest-rank0-of-1.json").write_text("[" * 100_000)
    result = agent_data("som", "--input", str(tmp_path / "a.jsonl"), "--out", str(out))
    assert result.returncode == 2 and "manifest" in result.stderr and "Traceback" not in result.stderr


def test_jsonl_listing_and_reading_agree_on_line_numbers(tmp_path):
    elements = screenshot(tmp_path / "screen.png")
    good = good_line("screen.png", elements).encode()
    # \r inside a line, blank and whitespace-only lines, no newline at the end
    (tmp_path / "a.jsonl").write_bytes(b"\n".join([b"", good, b"  \t", b'{"x": "a\rb"}', b"", good]))
    assert [item.rsplit(":", 1)[1] for item in list_inputs(tmp_path / "a.jsonl", (".jsonl",), True)] == [
        "2",
        "4",
        "6",
    ]


# ------------------------------------------------------------------------------------------- hard stops


def _live_members(group: int) -> set[int]:
    """Processes of the process group ``group`` that have not exited (zombies count as exited)."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            members.add(int(entry))
    return members


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory) -> Path:
    """Enough work (large screenshots) that a two-worker job is still busy when the test stops it."""
    root = tmp_path_factory.mktemp("slow")
    elements = screenshot(root / "big.png", (1600, 1200))
    (root / "screens.jsonl").write_text("\n".join(good_line("big.png", elements) for _ in range(600)) + "\n")
    return root / "screens.jsonl"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stopping_a_multi_worker_job_leaves_no_worker_running(tmp_path, slow_corpus, stop):
    out = tmp_path / "out"
    command = [*AGENT, "som", "-i", str(slow_corpus), "-o", str(out), "--workers", "2", "--inputs-per-unit", "1"]
    with open(tmp_path / "log", "wb") as log:
        job = subprocess.Popen(
            [*command, "--no-progress"],
            cwd=REPO,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group, which the test scans for workers
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if this shell ignores Ctrl-C
        )
    with process_group_cleaned_up(job):
        workers = wait_for(
            lambda: (_live_members(job.pid) - {job.pid}) if job.poll() is None else {"ended"},
            what="the job's worker processes",
        )
        assert workers != {"ended"}, f"the job ended before it could be stopped: {(tmp_path / 'log').read_text()}"
        wait_for(lambda: any(out.glob("*.tar")) or job.poll() is not None, what="the first shard")
        assert job.poll() is None, "the job ended before it could be stopped; give it more work"
        os.kill(job.pid, stop)
        job.wait(timeout=BOUND_S)
        wait_for(lambda: not _live_members(job.pid), what=f"the workers {sorted(workers)} to exit after {stop.name}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_worker_killed_by_the_system_ends_the_job_with_one_clear_message(tmp_path, slow_corpus):
    out = tmp_path / "out"
    command = [*AGENT, "som", "-i", str(slow_corpus), "-o", str(out), "--workers", "2", "--inputs-per-unit", "1"]
    job = subprocess.Popen(
        [*command, "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with process_group_cleaned_up(job):
        wait_for(lambda: any(out.glob("*.tar")) or job.poll() is not None, what="the first shard")
        workers = _live_members(job.pid) - {job.pid}
        assert job.poll() is None and workers, "the job ended before a worker could be killed; give it more work"
        os.kill(min(workers), signal.SIGKILL)  # as the kernel's OOM killer would
        _, stderr = job.communicate(timeout=BOUND_S)
        assert job.returncode == 2 and "a worker process died" in stderr and "Traceback" not in stderr, stderr
        wait_for(lambda: not _live_members(job.pid), what="the other workers to exit")


# ------------------------------------------------------------------------------ files an annotation names


def test_annotation_files_that_are_not_regular_or_too_large_are_counted_not_read(tmp_path):
    """A FIFO (which blocks a plain read forever), a character device (endless bytes) and an oversized file
    named by 'image' or 'android_xml' are counted by reason; the job ends and the good lines are written."""
    elements = screenshot(tmp_path / "screen.png")
    os.mkfifo(tmp_path / "hierarchy.fifo")
    os.mkfifo(tmp_path / "screen.fifo")
    with open(tmp_path / "huge.xml", "wb") as file:  # sparse: 17 MiB on paper, nothing on disk
        file.truncate(17 * 2**20)
    good = good_line("screen.png", elements)
    hostile = [
        {"image": "screen.png", "android_xml": "hierarchy.fifo"},
        {"image": "screen.png", "android_xml": "/dev/zero"},
        {"image": "screen.png", "android_xml": "huge.xml"},
        {"image": "screen.fifo", "elements": elements},
        {"image": "/dev/zero", "elements": elements},
        {"image": ".", "elements": elements},
    ]
    (tmp_path / "a.jsonl").write_text("\n".join([good, *map(json.dumps, hostile), good]) + "\n")
    out = tmp_path / "out"
    job = subprocess.Popen(
        [*AGENT, "som", "--input", str(tmp_path / "a.jsonl"), "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    with process_group_cleaned_up(job):
        stdout, stderr = job.communicate(timeout=BOUND_S)
    assert job.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "inputs   : 2 ok, 6 failed (file_too_large 1, not_a_file 5)" in stdout, stdout


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--inputs-per-unit", "0", "--inputs-per-unit is 0"),
        ("--samples-per-shard", "0", "--samples-per-shard is 0"),
        ("--workers", "100000", "--workers is 100000"),
        ("--workers", "0", "--workers is 0"),
    ],
)
def test_impossible_job_sizes_are_one_clear_error(tmp_path, option, value, message):
    elements = screenshot(tmp_path / "screen.png")
    (tmp_path / "a.jsonl").write_text(good_line("screen.png", elements) + "\n")
    result = agent_data("som", "--input", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "out"), option, value)
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.tar"))
