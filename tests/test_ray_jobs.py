"""Corpus jobs on Ray (`--engine ray`) against the local engine, on a real local Ray instance: the same
samples from real video files, a killed worker retried without duplicates, an input that kills its worker
every time counted failed while the job goes on, a killed job resumed, and the bad-input errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_jobs import screenshot

from data_tools.corpus_kinds import TomJobOptions, som_annotation_input, tom_video_input
from data_tools.jobs import InputResult, JobSpec, list_inputs, run_corpus_job
from data_tools.tracking_truth import render_truth_video
from data_tools.video import write_mp4

REPO = Path(__file__).resolve().parent.parent


def tar_members(out_dir: Path) -> dict[str, bytes]:
    """Every member of every shard, by shard and member name."""
    members = {}
    for shard in sorted(out_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                members[f"{shard.name}/{member.name}"] = tar.extractfile(member).read()
    return members


def manifest_units(out_dir: Path) -> dict[str, dict]:
    (path,) = out_dir.glob("manifest-*.json")
    units = json.loads(path.read_text())["units"]
    return {unit: {k: v for k, v in entry.items() if k != "seconds"} for unit, entry in units.items()}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-videos")
    for seed in range(3):
        write_mp4(render_truth_video(num_frames=24, size=96, seed=seed).frames, root / f"clip{seed}.mp4", fps=8)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 10)
    return root


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-screens")
    lines = []
    for index in range(6):
        buttons = [(f"Buy {index}", (10, 10, 110, 40)), (f"Help {index}", (200, 150, 300, 190))]
        screenshot(root / f"screen{index}.png", buttons)
        elements = [{"box": list(box), "kind": "button", "text": text} for text, box in buttons]
        lines.append(json.dumps({"image": f"screen{index}.png", "source": "web", "elements": elements}))
    (root / "screens.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tom_spec(videos: Path, out_dir: Path) -> JobSpec:
    options = TomJobOptions(fps=8, size=96, clips_per_video=2, tom={"grid_size": 8, "num_steps": 6, "seed": 0})
    inputs = list_inputs(videos, (".mp4",))
    return JobSpec("tom", inputs, str(out_dir), options.as_options(), samples_per_shard=3, inputs_per_unit=1)


def som_spec(screens: Path, out_dir: Path) -> JobSpec:
    inputs = list_inputs(screens, (".jsonl",), expand_jsonl=True)
    options = {"max_marks": 10, "samples_per_image": 2, "marks_on_grounding_images": False, "seed": 0}
    return JobSpec("som", inputs, str(out_dir), options, samples_per_shard=3, inputs_per_unit=3)


def test_a_tom_job_on_ray_writes_what_the_local_engine_writes(tmp_path, videos, ray_instance):
    local = run_corpus_job(tom_spec(videos, tmp_path / "local"), tom_video_input, workers=1, progress=False)
    on_ray = run_corpus_job(
        tom_spec(videos, tmp_path / "ray"), tom_video_input, workers=2, progress=False, engine="ray"
    )
    assert on_ray.inputs_ok == local.inputs_ok == 3
    assert on_ray.inputs_failed == local.inputs_failed == {"VideoReadError": 1}
    assert (on_ray.samples, on_ray.shards, on_ray.frames) == (local.samples, local.shards, local.frames)
    members = tar_members(tmp_path / "local")
    assert len(members) == 12 and tar_members(tmp_path / "ray") == members  # byte for byte, names included
    assert manifest_units(tmp_path / "ray") == manifest_units(tmp_path / "local")
    assert not list((tmp_path / "ray").glob("*.partial"))


@pytest.fixture
def ray_with_this_module(ray_instance):
    """Ray, with this module's classes pickled by value (its workers cannot import a test module)."""
    ray_instance.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_instance


class DiesOn:
    """An input function that kills its own worker process on one input: on the first ``times`` tries
    (counted in a file, as each try runs in a fresh process), or on every try with ``times=None``."""

    def __init__(self, input_suffix: str, tries_file: Path, times: int | None) -> None:
        self.input_suffix, self.tries_file, self.times = input_suffix, tries_file, times

    def __call__(self, identifier: str, options: dict, rng: np.random.Generator) -> InputResult:
        if identifier.endswith(self.input_suffix):
            tries = int(self.tries_file.read_text()) if self.tries_file.exists() else 0
            self.tries_file.write_text(str(tries + 1))
            if self.times is None or tries < self.times:
                os.kill(os.getpid(), signal.SIGKILL)
        return som_annotation_input(identifier, options, rng)


def test_a_killed_worker_is_retried_and_nothing_is_written_twice(tmp_path, screens, ray_with_this_module):
    run_corpus_job(som_spec(screens, tmp_path / "local"), som_annotation_input, progress=False)
    dies_once = DiesOn(":4", tmp_path / "tries", times=1)
    summary = run_corpus_job(
        som_spec(screens, tmp_path / "ray"), dies_once, workers=2, progress=False, engine="ray", max_tries=3
    )
    assert int((tmp_path / "tries").read_text()) == 2  # killed once, then done
    assert summary.inputs_ok == 6 and summary.inputs_failed == {}
    assert tar_members(tmp_path / "ray") == tar_members(tmp_path / "local")
    assert manifest_units(tmp_path / "ray") == manifest_units(tmp_path / "local")


def test_an_input_that_kills_its_worker_every_time_is_counted_failed(tmp_path, screens, ray_with_this_module):
    always = DiesOn(":2", tmp_path / "tries", times=None)
    summary = run_corpus_job(
        som_spec(screens, tmp_path / "ray"), always, workers=2, progress=False, engine="ray", max_tries=2
    )
    assert summary.inputs_failed == {"worker_died": 1}
    assert summary.inputs_ok == 5  # the dying input's unit-mates too
    assert int((tmp_path / "tries").read_text()) == 4  # 2 tries in its unit, then 2 alone
    (entry,) = [unit for unit in manifest_units(tmp_path / "ray").values() if unit["failed"]]
    assert entry["failed"][0]["input"].endswith(":2") and "died 2 times" in entry["failed"][0]["detail"]
    samples = [name for name in tar_members(tmp_path / "ray") if name.endswith(".json")]
    assert len(samples) == len(set(samples)) == 10  # 2 a screenshot, none twice, none of the dying one


DRIVER = """
import sys, time
from pathlib import Path
from data_tools.corpus_kinds import som_annotation_input
from data_tools.jobs import JobSpec, list_inputs, run_corpus_job

def hangs_on_the_fourth(identifier, options, rng):
    if identifier.endswith(":4"):
        time.sleep(600)
    return som_annotation_input(identifier, options, rng)

screens, out = sys.argv[1], sys.argv[2]
inputs = list_inputs(screens, (".jsonl",), expand_jsonl=True)
options = {"max_marks": 10, "samples_per_image": 2, "marks_on_grounding_images": False, "seed": 0}
spec = JobSpec("som", inputs, out, options, samples_per_shard=3, inputs_per_unit=1)
run_corpus_job(spec, hangs_on_the_fourth, workers=1, progress=False, engine="ray")
"""


def test_a_killed_ray_job_resumes_with_only_its_unfinished_units(tmp_path, screens, ray_instance):
    out = tmp_path / "ray"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    driver = subprocess.Popen(
        [sys.executable, str(script), str(screens), str(out)], cwd=REPO, start_new_session=True
    )  # its own local Ray instance, in its process group
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            manifests = list(out.glob("manifest-*.json"))
            if manifests and len(json.loads(manifests[0].read_text())["units"]) == 3:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the driver ended before it could be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=120)
    spec = JobSpec(**{**som_spec(screens, out).__dict__, "inputs_per_unit": 1})
    resumed = run_corpus_job(spec, som_annotation_input, workers=2, progress=False, engine="ray")
    assert (resumed.units_skipped, resumed.units_done) == (3, 3)
    local_spec = JobSpec(**{**spec.__dict__, "out_dir": str(tmp_path / "local")})
    run_corpus_job(local_spec, som_annotation_input, progress=False)
    assert tar_members(out) == tar_members(tmp_path / "local")


def agent_data(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}\nimport sys\nfrom magma.cli.app import main\nsys.argv = ['agent', 'data', *sys.argv[1:]]\nmain()"
    command = [sys.executable, "-c", code, *args, "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_ray_missing_a_silent_address_and_a_bad_engine_are_one_line_each(tmp_path, screens):
    arguments = ("som", "--input", str(screens), "--out", str(tmp_path / "out"), "--engine", "ray")
    missing = agent_data(*arguments, prelude="import sys; sys.modules['ray'] = None")
    assert missing.returncode == 2, missing.stderr
    assert "pip install 'embodied-agent-toolkit[ray]'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    local = agent_data(*arguments[:-2], prelude="import sys; sys.modules['ray'] = None")  # never needs Ray
    assert local.returncode == 0 and "6 ok, 0 failed" in local.stdout, local.stderr[-2000:]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the job runs: nothing answers there
    silent = agent_data(*arguments, "--address", f"127.0.0.1:{port}")
    assert silent.returncode == 2, silent.stderr
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in silent.stderr
    assert "Traceback" not in silent.stderr
    bad_engine = agent_data(*arguments[:-1], "spark")
    assert bad_engine.returncode == 2 and "--engine is 'spark'; give one of local, ray" in bad_engine.stderr
