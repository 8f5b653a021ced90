"""Suite runs against tasks that fail on their own: one bad task is recorded with its reason and the run goes
on; ``--resume`` does not rerun it unless asked; a streak of failures stops the run and is rerun. Real
Chromium, a local site on 127.0.0.1 whose /stall path never answers, and a local chat endpoint that answers
one task without ``choices`` and another with HTTP 500."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from local_servers import QuietHandler, send_body, serve_http, stop_http

from magma.evaluation.results import EpisodeResult, RunDirectoryError, read_results
from magma.evaluation.runner import ResultLog, finish_run, prepare_run_directory
from magma.evaluation.task_failures import FailureStreak, RunStoppedError, should_run
from magma.evaluation.web_suite import WebRunOptions, WebRunSettings, run_web_suite

needs_chromium = pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="system Chromium not installed")

STALL_BOUND_S = 600  # the stalled page's handler gives up at teardown at the latest


class _Site(QuietHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/stall"):
            self.server.stall_hits.append(self.path)
            self.server.release.wait(STALL_BOUND_S)  # never finishes loading until the test releases it
        with contextlib.suppress(OSError):  # the browser may have given up on a stalled page long ago
            send_body(self, "<html><body><p>All is fine here</p></body></html>", "text/html; charset=utf-8")


class _Chat(QuietHandler):
    """An OpenAI-compatible endpoint: ``server.behaviour(objective)`` says "ok", "no choices" or "500"."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = request["messages"][-1]["content"][0]["text"]
        behaviour = self.server.behaviour(text.split("\n", 1)[0].removeprefix("OBJECTIVE: "))
        if behaviour == "500":
            self.send_error(500, "model crashed")
            return
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "```stop [fine]```"}}]}
        send_body(self, json.dumps({"error": "overloaded"} if behaviour == "no choices" else reply), "application/json")


@pytest.fixture
def site(monkeypatch):
    server = serve_http(_Site)
    server.stall_hits, server.release = [], threading.Event()
    monkeypatch.setenv("SHOPPING", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.release.set()
    stop_http(server)


@pytest.fixture
def chat(monkeypatch):
    server = serve_http(_Chat)
    server.behaviour = lambda objective: "ok"
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    yield server
    stop_http(server)


def quick_openai_policy():
    """The OpenAI-compatible web policy with one retry after 1 s (the default backs off for 15 s)."""
    from magma.policies.openai_chat import ChatClient, OpenAIChatPolicy

    client = ChatClient("m", retries=1)
    return lambda env, selected, urls: OpenAIChatPolicy(client)


def _task(task_id: int, intent: str, start_url: str, eval_type: str = "string_match") -> dict:
    return {
        "task_id": task_id,
        "intent": intent,
        "sites": ["shopping"],
        "start_url": start_url,
        "eval": {"eval_types": [eval_type], "reference_answers": {"exact_match": "fine"}},
    }


def _write_tasks(path: Path, tasks: list[dict]) -> Path:
    path.write_text(json.dumps(tasks))
    return path


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


@needs_chromium
def test_bad_tasks_are_recorded_the_others_run_and_resume_skips_them_unless_asked(site, chat, tmp_path):
    tasks = _write_tasks(
        tmp_path / "tasks.json",
        [
            _task(0, "Say fine first", "__SHOPPING__/"),
            _task(1, "A start page that never loads", "__SHOPPING__/stall"),
            _task(2, "A local file", "file:///etc/passwd"),
            _task(3, "An endpoint reply without choices", "__SHOPPING__/"),
            _task(4, "An endpoint that fails", "__SHOPPING__/"),
            _task(5, "An unknown grader", "__SHOPPING__/", eval_type="telepathy"),
            _task(6, "Say fine last", "__SHOPPING__/"),
        ],
    )
    chat.behaviour = lambda objective: {"An endpoint reply without choices": "no choices"}.get(
        objective, "500" if objective == "An endpoint that fails" else "ok"
    )
    settings = WebRunSettings(tasks=[str(tasks)], policy="openai", model="m")
    options = WebRunOptions(save_images=False)
    out = tmp_path / "run"
    results = run_web_suite(settings, options, out, quick_openai_policy())
    by_id = {record["key"].rsplit(":", 1)[1]: record for record in results}
    assert len(by_id) == 7
    for good in ("0", "6"):
        assert by_id[good]["status"] == "done" and by_id[good]["success"] is True, by_id[good]
    expected = {
        "1": ("start_page", "cannot open start URL"),
        "2": ("start_page", "only http"),
        "3": ("policy", "without choices"),
        "4": ("policy", "HTTP 500"),
        "5": ("task", "telepathy"),
    }
    for key, (kind, words) in expected.items():
        record = by_id[key]
        assert record["status"] == "error" and record["error_kind"] == kind and words in record["error"], record
        assert "Traceback" not in record["error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["errors"] == 5 and summary["errors_by_kind"] == {"policy": 2, "start_page": 2, "task": 1}
    assert "start_page: cannot open start URL" in (out / "trajectories" / "tasks_1" / "index.html").read_text()

    stalls = len(site.stall_hits)
    lines = len(_lines(out))
    rerun: list[str] = []
    again = run_web_suite(
        settings, options, out, quick_openai_policy(), resume=True, on_result=lambda r: rerun.append(r.key)
    )
    assert rerun == [] and len(_lines(out)) == lines and len(site.stall_hits) == stalls
    assert [record["status"] for record in again] == [record["status"] for record in results]

    site.release.set()  # the site and the endpoint are fixed: --retry-errors reruns the failed tasks
    chat.behaviour = lambda objective: "ok"
    retried = WebRunOptions(save_images=False, retry_errors=True)
    final = run_web_suite(
        settings, retried, out, quick_openai_policy(), resume=True, on_result=lambda r: rerun.append(r.key)
    )
    assert sorted(key.rsplit(":", 1)[1] for key in rerun) == ["1", "2", "3", "4", "5"]
    by_id = {record["key"].rsplit(":", 1)[1]: record for record in final}
    assert all(by_id[key]["success"] is True for key in ("0", "1", "3", "4", "6")), final
    assert by_id["2"]["error_kind"] == "start_page" and by_id["5"]["error_kind"] == "task"


@needs_chromium
def test_a_streak_of_failures_stops_the_run_and_resume_reruns_those_tasks(site, chat, tmp_path):
    tasks = _write_tasks(
        tmp_path / "tasks.json",
        [_task(number, f"Task {number}", "__SHOPPING__/") for number in range(4)],
    )
    chat.behaviour = lambda objective: "no choices"  # an endpoint that answers nothing usable to anyone
    settings = WebRunSettings(tasks=[str(tasks)], policy="openai", model="m")
    out = tmp_path / "run"
    options = WebRunOptions(save_images=False, max_consecutive_errors=2)
    with pytest.raises(RunStoppedError, match="2 tasks in a row failed \\(policy\\)"):
        run_web_suite(settings, options, out, quick_openai_policy())
    last = {record["key"]: record for record in _lines(out)}
    assert len(last) == 2 and all(record["error_kind"] == "run_stopped" for record in last.values())
    assert (out / "summary.json").exists() and (out / "report.html").exists()
    chat.behaviour = lambda objective: "ok"
    results = run_web_suite(settings, options, out, quick_openai_policy(), resume=True)
    assert len(results) == 4 and all(record["success"] is True for record in results)


def test_resume_rules_and_the_streak_counter():
    assert should_run(None, retry_errors=False)  # killed mid-task: no line, run again
    assert not should_run({"status": "done"}, retry_errors=True)
    assert not should_run({"status": "error", "error_kind": "policy"}, retry_errors=False)
    assert should_run({"status": "error", "error_kind": "policy"}, retry_errors=True)
    assert should_run({"status": "error", "error_kind": "device"}, retry_errors=False)
    assert should_run({"status": "error", "error_kind": "run_stopped"}, retry_errors=False)
    streak = FailureStreak(limit=3)
    assert not streak.add("a", "error", "policy") and not streak.add("b", "error", "task")
    assert not streak.add("c", "error", "task") and not streak.add("d", "done", None)
    assert not streak.add("e", "error", "task") and not streak.add("f", "error", "task")
    assert streak.add("g", "error", "task") and streak.keys == ["e", "f", "g"]
    assert not FailureStreak(limit=0).add("a", "error", "policy")


# ---- a run directory edited or damaged by hand, a crash or a disk: --resume says what is wrong, never a traceback

_GOOD = {
    "key": "classifieds:0",
    "intent": "Say fine",
    "site": "classifieds",
    "eval_types": ["string_match"],
    "status": "done",
    "success": True,
    "steps": 2,
    "seconds": 0.5,
}
_BAD_LINES = [
    b"[1, 2]",  # not an object
    b'{"status": "done"}',  # no key
    b'{"key": [1], "status": "done"}',  # a key that is not text
    b'{"key": "classifieds:1", "status": "done"}\xff\xfe',  # not UTF-8
    b'{"key": "classifieds:1", "status": "done", "success": "yes", "steps": "many", "seconds": "x", "site": null}',
    b'{"key": "classifieds:1", "status": "done", "steps": true}',  # a bool is not a step count
    b'{"key": "classifieds:1", "status": "done", "success": true, "steps": NaN, "seconds": Infinity}',
    b'{"key": "classifieds:1", "status": "pwned", "error_kind": "task"}',
    b'{"key": "classifieds:1", "status": "done", "eval_notes": [{"x": 1}]}',
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser's recursion limit
]


def _run_directory(tmp_path: Path) -> tuple[Path, WebRunSettings]:
    settings = WebRunSettings(tasks=["classifieds:0-1"])
    out = tmp_path / "run"
    prepare_run_directory(out, settings, resume=False)
    return out, settings


def test_damaged_result_lines_are_skipped_and_their_tasks_count_as_not_finished(tmp_path, caplog):
    out, settings = _run_directory(tmp_path)
    cut = json.dumps({**_GOOD, "key": "classifieds:1"}).encode()[:60]  # a line cut by a crash, no newline
    (out / "results.jsonl").write_bytes(b"\n".join([json.dumps(_GOOD).encode(), *_BAD_LINES, cut]))

    done = prepare_run_directory(out, settings, resume=True)
    assert list(done) == ["classifieds:0"] and done["classifieds:0"]["success"] is True
    assert "skipped 11 line(s)" in caplog.text
    assert should_run(done.get("classifieds:1"), retry_errors=False)  # --resume runs it again

    # the next result is a line of its own, not glued to the cut one
    log = ResultLog(out / "results.jsonl", None)
    log.write(EpisodeResult("classifieds:1", "<script>alert(1)</script>", "classifieds", ["url_match"], "done"))
    assert set(read_results(out)) == {"classifieds:0", "classifieds:1"}

    # a hand-written line with only a key and a status: summary and report use defaults for the rest
    with (out / "results.jsonl").open("a") as file:
        file.write(json.dumps({"key": "classifieds:1", "status": "error"}) + "\n")
    results = finish_run(out, ["classifieds:0", "classifieds:1"])
    assert [record["status"] for record in results] == ["done", "error"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["passed"] == 1 and summary["overall"]["errors"] == 1
    assert "classifieds:1" in (out / "report.html").read_text()


def test_damaged_steps_lines_do_not_break_the_report(tmp_path):
    out, _ = _run_directory(tmp_path)
    (out / "results.jsonl").write_text(json.dumps(_GOOD) + "\n")
    steps = out / "trajectories" / "classifieds_0" / "steps.jsonl"
    steps.parent.mkdir(parents=True)
    steps.write_bytes(b'[1]\n{"step": 1, "timings": {"policy": NaN}}\n\xff\n{"step": 2, "url": "<b>x</b>"}\n{"st')
    finish_run(out, ["classifieds:0"])
    page = (steps.parent / "index.html").read_text()
    assert "Step 1" in page and "Step 2" in page and "&lt;b&gt;x&lt;/b&gt;" in page


@pytest.mark.parametrize(
    "damage",
    [b"{not json", b"[]", b"", b"\xff", b'"a string"', b"[" * 100_000, "directory"],
    ids=["garbage", "list", "empty", "bad-utf8", "string", "deep", "directory"],
)
def test_a_damaged_run_json_is_one_clear_error(tmp_path, damage):
    out, settings = _run_directory(tmp_path)
    (out / "run.json").unlink()
    if damage == "directory":
        (out / "run.json").mkdir()
    else:
        (out / "run.json").write_bytes(damage)
    with pytest.raises(RunDirectoryError, match=r"run\.json.*(damaged|not a regular file).*another --out"):
        prepare_run_directory(out, settings, resume=True)


@pytest.mark.parametrize("name", ["results.jsonl", "summary.json", "report.html"])
def test_a_run_file_that_is_a_directory_is_one_clear_error_before_any_task_runs(tmp_path, name):
    out, settings = _run_directory(tmp_path)
    (out / name).unlink(missing_ok=True)
    (out / name).mkdir()
    with pytest.raises(RunDirectoryError, match=f"{name}.*not a regular file.*another --out"):
        prepare_run_directory(out, settings, resume=True)


def test_resume_of_a_damaged_run_directory_from_the_cli_is_one_message(tmp_path):
    out, _ = _run_directory(tmp_path)
    (out / "run.json").write_bytes(b"[]")
    agent = Path(sys.executable).with_name("agent")
    command = [str(agent), "run", "web", "--tasks", "classifieds:0-1", "--out", str(out)]
    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr and "run.json is damaged" in finished.stderr
