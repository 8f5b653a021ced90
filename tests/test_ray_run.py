"""``agent run ... --engine ray``: a web run of bundled tasks on two Ray actors gives the local engine's results,
summary and report; a worker process killed during a unit is replaced and the unit retried once, one killed on
every try is recorded as ``worker_died`` and the run goes on; Ray missing, a cluster address that does not
answer, and what Ray cannot run (a searched run, the Android device) are each one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_cli import REPO, assert_one_clear_error
from cli_in_process import agent_in_process

from data_tools.errors import UserFacingError
from data_tools.ray_cluster import RAY_EXTRA
from magma.evaluation.results import read_results
from magma.evaluation.runner import RunOptions, RunUnit, run_suite


@pytest.fixture
def ray_with_this_module(ray_instance):
    """The session's Ray, with this module's workers sent by value (Ray's processes cannot import tests/)."""
    ray_instance.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_instance


TIMING_FIELDS = ("seconds", "policy_seconds", "mean_seconds", "worker")


def without_timings(value):
    """A results line or a summary with what depends on the clock or the worker left out."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in TIMING_FIELDS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


# -- a web run of bundled tasks, local and on two actors ----------------------------------------------


def test_a_web_run_on_two_ray_actors_gives_the_local_results_summary_and_report(ray_instance, tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("system Chromium not installed")
    args = ["run", "web", "--tasks", "classifieds:0-2", "--no-progress"]
    local = agent_in_process(*args, "--workers", "2", "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = agent_in_process(*args, "--engine", "ray", "--workers", "2", "--out", str(tmp_path / "ray"))
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]

    local_records, ray_records = records_of(tmp_path / "local"), records_of(tmp_path / "ray")
    by_key = {record["key"]: without_timings(record) for record in ray_records}
    assert len(by_key) == len(ray_records) == 3  # each task once
    assert by_key == {record["key"]: without_timings(record) for record in local_records}
    assert all(record["success"] is True for record in ray_records)
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("local", "ray")]
    assert without_timings(summaries[0]) == without_timings(summaries[1])
    assert "site classifieds" in on_ray.stdout and "100.0%" in on_ray.stdout
    assert 'href="trajectories/classifieds_2/index.html"' in (tmp_path / "ray" / "report.html").read_text()
    for key in by_key:  # the actors wrote each task's trajectory into the run directory themselves
        folder = tmp_path / "ray" / "trajectories" / key.replace(":", "_")
        assert (folder / "steps.jsonl").stat().st_size and (folder / "step-000.jpg").stat().st_size > 1000


# -- worker processes that die ------------------------------------------------------------------------


@dataclass
class CountedSettings:
    units: int


class DyingWorker:
    """Units finish at once, except ``doomed``: its worker process kills itself on it, the first time only
    (a marker file remembers) or on every try."""

    device_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, index: int, marker: str, doomed: str, every_time: bool) -> None:
        self.marker, self.doomed, self.every_time = Path(marker), doomed, every_time

    def run(self, attempt):
        if attempt.unit.key == self.doomed and (self.every_time or not self.marker.exists()):
            with self.marker.open("a") as file:
                file.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        attempt.result.status, attempt.result.success = "done", True
        attempt.result.answer = f"ran {attempt.unit.key}"
        return attempt.result

    def close(self) -> None:
        pass


def dying_run(out: Path, marker: Path, every_time: bool, **options) -> list[dict]:
    units = [RunUnit(f"unit-{number}", "group", ("done",)) for number in range(5)]
    return run_suite(
        units,
        CountedSettings(5),
        out,
        lambda index: DyingWorker(index, str(marker), "unit-2", every_time),
        RunOptions(workers=2, engine="ray", **options),
    )


def test_a_killed_worker_is_replaced_and_its_unit_retried_once_and_one_killed_every_time_is_counted(
    ray_with_this_module, tmp_path
):
    marker = tmp_path / "deaths.txt"
    results = dying_run(tmp_path / "once", marker, every_time=False)
    assert len(marker.read_text().splitlines()) == 1  # one process died on unit-2
    assert [result["key"] for result in results] == [f"unit-{number}" for number in range(5)]
    assert all(result["status"] == "done" and result["answer"] == f"ran {result['key']}" for result in results)
    keys = [record["key"] for record in records_of(tmp_path / "once")]
    assert sorted(keys) == [f"unit-{number}" for number in range(5)]  # each unit exactly once

    marker.unlink()
    out = tmp_path / "always"
    results = dying_run(out, marker, every_time=True, max_tries=2)
    assert len(marker.read_text().splitlines()) == 2  # max_tries processes died on it, then it was given up
    by_key = {result["key"]: result for result in results}
    assert by_key["unit-2"]["status"] == "error" and by_key["unit-2"]["error_kind"] == "worker_died"
    assert "died 2 times" in by_key["unit-2"]["error"] and "--retry-errors" in by_key["unit-2"]["error"]
    assert all(by_key[f"unit-{number}"]["status"] == "done" for number in (0, 1, 3, 4))  # the run went on
    assert sorted(record["key"] for record in records_of(out)) == [f"unit-{number}" for number in range(5)]
    assert json.loads((out / "summary.json").read_text())["overall"]["errors"] == 1
    assert (out / "report.html").exists()

    ran = []  # --resume keeps it; --resume --retry-errors runs it again (it dies no more once the marker is gone)
    dying_run(out, marker, every_time=False, resume=True, on_result=ran.append)
    assert ran == []
    dying_run(out, marker, every_time=False, resume=True, retry_errors=True, on_result=ran.append, max_tries=2)
    assert [result.key for result in ran] == ["unit-2"] and ran[0].status == "done"
    assert read_results(out)["unit-2"]["status"] == "done"


class BrokenEnvironment:
    def __init__(self, index: int) -> None:
        raise UserFacingError(f"worker {index}'s simulator is missing; install it")


def test_an_environment_that_cannot_start_in_an_actor_or_cannot_travel_there_stops_the_run(
    ray_with_this_module, tmp_path
):
    units = [RunUnit(f"unit-{number}", "group") for number in range(3)]
    with pytest.raises(UserFacingError, match="simulator is missing; install it"):
        run_suite(units, CountedSettings(3), tmp_path, BrokenEnvironment, RunOptions(workers=1, engine="ray"))
    assert read_results(tmp_path) == {}

    lock = threading.Lock()  # as a policy factory sharing one loaded model holds: it cannot travel to an actor
    with pytest.raises(UserFacingError, match=r"cannot send .* \(TypeError: cannot pickle '_thread.lock'"):
        run_suite(units, CountedSettings(3), tmp_path / "never", lambda index: lock, RunOptions(engine="ray"))
    assert not (tmp_path / "never").exists()


# -- what is refused, in one line ---------------------------------------------------------------------


def test_ray_missing_is_one_line_naming_the_extra(tmp_path):
    out = tmp_path / "never"
    without_ray = (
        "import sys; sys.modules['ray'] = None; "
        f"sys.argv = ['agent', 'run', 'web', '--tasks', 'classifieds:0', '--engine', 'ray', '--out', {str(out)!r}]; "
        "from magma.cli.app import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", without_ray], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert_one_clear_error(result, RAY_EXTRA)
    assert not out.exists()


def free_closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_address_nobody_answers_a_searched_run_and_android_on_ray_are_each_one_error(tmp_path):
    out = tmp_path / "never"
    address = f"127.0.0.1:{free_closed_port()}"
    nobody = agent_in_process("run", "web", "--engine", "ray", "--address", address, "--out", str(out))
    assert_one_clear_error(nobody, f"no Ray cluster answers at {address}", "ray start --head")
    searched = agent_in_process("run", "web", "--tasks", "classifieds:0", "--engine", "ray", "--search", "rmcts",
                                "--out", str(out))  # fmt: skip
    assert_one_clear_error(searched, "--search", "--engine local")
    android = agent_in_process("run", "android", "--device", "simulated", "--engine", "ray", "--out", str(out))
    assert_one_clear_error(android, "one device", "--engine local")
    assert not out.exists()


def test_a_magma_policy_travels_to_an_actor_as_its_checkpoint_path(ray_instance, tmp_path, tiny_model, tiny_processor):
    from magma.evaluation.web_suite import web_policy_factory

    checkpoint = tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer)
    make_policy = web_policy_factory("magma", str(checkpoint))
    payload = ray_instance.cloudpickle.dumps(make_policy)
    assert str(checkpoint).encode() in payload and len(payload) < 100_000  # the path, not the weights
    policy, copied = make_policy(None, None, None), ray_instance.cloudpickle.loads(payload)(None, None, None)
    assert copied.model is not policy.model and copied.generation_lock is not policy.generation_lock
    loaded = copied.model.state_dict()
    assert all(original.equal(loaded[name]) for name, original in policy.model.state_dict().items())
