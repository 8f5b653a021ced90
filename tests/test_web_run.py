"""`agent run --env visualwebarena` end to end: real Chromium, the bundled sites started by the run itself,
parallel workers, a run killed mid-way and resumed, the HTML report; the OpenAI-compatible policy against
a local chat endpoint; the Magma policy on a tiny checkpoint; VWA's early-stop rules; task selection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_in_process import agent_in_process

from data_tools.errors import UserFacingError
from envs.web.task_selection import parse_id_list, select_tasks
from envs.web.tasks import TaskConfigError, load_task_images
from magma.evaluation.results import RunDirectoryError
from magma.evaluation.ui_episode import EarlyStopRules
from magma.evaluation.web_suite import (
    WebRunOptions,
    WebRunSettings,
    check_tasks_runnable,
    run_web_suite,
    web_policy_factory,
)

if not Path("/usr/bin/chromium").exists():
    pytest.skip("system Chromium not installed", allow_module_level=True)

AGENT = [sys.executable, "-m", "magma.cli.app"]
VWA_DIR = Path(__file__).resolve().parents[2] / "shared" / "vwa"


def results_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


# -- task selection and early stops (no browser) -------------------------------------------------------


def test_task_specs_select_bundled_and_official_tasks():
    assert parse_id_list("0-2,7") == {0, 1, 2, 7}
    keys = [task.key for task in select_tasks(["classifieds:0-2", "reddit:5", "classifieds:1"])]
    assert keys == ["classifieds:0", "classifieds:1", "classifieds:2", "reddit:5"]
    assert len(select_tasks(["bundled"])) >= 60
    official = select_tasks([f"{VWA_DIR / 'test_reddit.raw.json'}:0-3"])
    assert [task.key for task in official] == ["test_reddit:0", "test_reddit:1", "test_reddit:2", "test_reddit:3"]
    assert not official[0].bundled and official[0].site == "reddit"
    for bad, words in [
        ("nowhere.json", "no such file"),
        ("shopping:9999", "no task with id"),
        ("shopping:5-2", "backwards"),
    ]:
        with pytest.raises(TaskConfigError, match=words):
            select_tasks([bad])


def test_runs_that_cannot_work_are_refused_before_a_browser_starts(monkeypatch):
    monkeypatch.delenv("REDDIT", raising=False)
    official = select_tasks([f"{VWA_DIR / 'test_reddit.raw.json'}:0"])
    with pytest.raises(UserFacingError, match="oracle trajectory"):
        check_tasks_runnable(official, WebRunSettings(policy="oracle"))
    with pytest.raises(TaskConfigError, match="REDDIT"):
        check_tasks_runnable(official, WebRunSettings(policy="openai"))
    with pytest.raises(UserFacingError, match="--model"):
        web_policy_factory("magma", None)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(UserFacingError, match="--model NAME"):
        web_policy_factory("openai", None)


def test_task_images_load_as_arrays_and_a_missing_one_names_the_fix():
    task = next(task for task in select_tasks(["shopping"]) if task.config.get("image")).web_task(
        {"__SHOPPING__": "http://127.0.0.1:1"}
    )
    images = load_task_images(task)
    assert images and images[0].ndim == 3 and images[0].shape[2] == 3
    official = select_tasks([f"{VWA_DIR / 'test_shopping.raw.json'}"])
    with_image = next(task for task in official if task.config.get("image"))
    with pytest.raises(TaskConfigError, match="--images-root"):
        load_task_images(with_image.web_task({"__SHOPPING__": "http://127.0.0.1:1"}))


def test_vwa_early_stop_rules():
    rules = EarlyStopRules(parse_failures=3, repeated_actions=5)
    assert rules.reason([None, None]) is None
    assert "no parsable action" in rules.reason(["click [1]", None, None, None])
    assert rules.reason(["scroll [down]"] * 4) is None
    assert "5 times in a row" in rules.reason(["scroll [down]"] * 5)
    assert rules.reason(["scroll [down]"] * 4 + ["click [2]"]) is None
    typed = "type [3] [shoes] [1]"
    assert "type action" in rules.reason([typed, "click [1]", typed, "go_back", typed, "click [4]", typed, typed])


# -- the CLI over the bundled suite -------------------------------------------------------------------


def test_agent_run_visualwebarena_workers_kill_resume_and_report(tmp_path):
    out = tmp_path / "run"
    args = ["run", "web", "--tasks", "classifieds:0-4", "--tasks", "reddit:14", "--workers", "2"]
    process = subprocess.Popen([*AGENT, *args, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if (out / "results.jsonl").exists() and len(results_of(out)) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {record["key"] for record in results_of(out)}
    assert 2 <= len(finished) < 6

    refused = agent_in_process(*args, "--out", str(out))  # the kill above needed a process; the rest do not
    assert refused.returncode == 2 and "--resume" in refused.stderr
    changed = agent_in_process(*args, "--max-steps", "5", "--out", str(out), "--resume")
    assert changed.returncode == 2 and "max_steps" in changed.stderr

    resumed = agent_in_process(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rerun = {line.split()[1] for line in resumed.stderr.splitlines() if line.startswith(("ok", "fail"))}
    assert rerun and not rerun & finished  # finished tasks are not run again
    records = results_of(out)
    keys = [record["key"] for record in records]
    assert sorted(keys) == sorted({*keys}) and len(keys) == 6
    assert all(record["success"] is True and record["status"] == "done" for record in records), records
    assert {record["worker"] for record in records} <= {0, 1}
    assert "site classifieds" in resumed.stdout and "100.0%" in resumed.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["passed"] == 6 and summary["by_eval_type"]["page_image_query"]["tasks"] == 1
    report = (out / "report.html").read_text()
    assert 'href="trajectories/reddit_14/index.html"' in report
    episode = (out / "trajectories" / "reddit_14" / "index.html").read_text()
    assert "step-000.jpg" in episode and "input-0.jpg" in episode and "Parsed action" in episode
    steps = [json.loads(line) for line in (out / "trajectories" / "reddit_14" / "steps.jsonl").read_text().splitlines()]
    assert steps[-1]["action"] == "stop []" and all(step["timings"]["policy"] >= 0 for step in steps)
    assert (out / "trajectories" / "reddit_14" / "step-000.jpg").stat().st_size > 1000


# -- the OpenAI-compatible policy against a local chat endpoint ---------------------------------------


def _scripted_chat(script):
    """A chat 'model' answering the policy from ``script(objective, prompt)`` and judging fuzzy answers."""

    def answer(request: dict) -> str:
        user = request["messages"][-1]["content"]
        if isinstance(user, str):  # a grading question (the fuzzy judge)
            return "correct" if "cannot" in user.split("Predicted answer:")[-1] else "incorrect"
        text = user[0]["text"]
        return script(text.split("\n", 1)[0].removeprefix("OBJECTIVE: "), text)

    return answer


def test_openai_policy_answers_parses_and_stops_early_and_a_judge_grades(chat_endpoint, tmp_path):
    tasks = select_tasks(["classifieds:0-2", "classifieds:15"])
    answers = {task.config["intent"]: task.oracle[-1].get("answer", "") for task in tasks}

    def script(objective: str, text: str) -> str:
        if objective == tasks[0].config["intent"]:
            answer = answers[objective]
            return f"The answer is on the page.\nIn summary, the next action I will perform is ```stop [{answer}]```"
        if objective == tasks[1].config["intent"]:
            return "I am not sure what to do."  # never an action: VWA stops after 3 such replies
        if objective == tasks[3].config["intent"]:  # an unanswerable task (fuzzy_match "N/A")
            return "In summary, the next action I will perform is ```stop [This cannot be done on this site]```"
        return "In summary, the next action I will perform is ```scroll [down]```"  # 5 in a row: early stop

    chat_endpoint.answer = _scripted_chat(script)
    settings = WebRunSettings(tasks=["classifieds:0-2", "classifieds:15"], policy="openai", model="test-model")
    factory = web_policy_factory("openai", "test-model")
    results = run_web_suite(settings, WebRunOptions(), tmp_path / "run", factory)
    by_key = {record["key"]: record for record in results}
    assert by_key["classifieds:0"]["success"] is True and by_key["classifieds:0"]["steps"] == 1
    assert by_key["classifieds:1"]["success"] is False and "no parsable action" in by_key["classifieds:1"]["early_stop"]
    assert by_key["classifieds:1"]["failed_steps"] == 3
    assert "5 times in a row" in by_key["classifieds:2"]["early_stop"]
    assert by_key["classifieds:15"]["success"] is None and by_key["classifieds:15"]["eval_status"] == "needs_judge"
    judged = WebRunSettings(tasks=["classifieds:15"], policy="openai", model="test-model", judge_model="judge")
    (record,) = run_web_suite(judged, WebRunOptions(), tmp_path / "judged", factory)
    assert record["success"] is True  # the judge (the same endpoint) accepted the paraphrase of N/A
    authorization, request = chat_endpoint.requests[0]
    assert authorization == "Bearer test-key" and request["model"] == "test-model"
    content = request["messages"][1]["content"]
    assert request["messages"][0]["role"] == "system" and "stop [answer]" in request["messages"][0]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "[A]" in content[0]["text"] or "[LINK]" in content[0]["text"] or "ELEMENTS:" in content[0]["text"]
    prompts = [r["messages"][1]["content"] for _, r in chat_endpoint.requests]
    later = [p for p in prompts if not isinstance(p, str) and "PREVIOUS ACTIONS:\n1. scroll [down]" in p[0]["text"]]
    assert later  # the history reaches the prompt


def test_unreachable_chat_endpoint_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    from magma.policies.openai_chat import ChatClient, ChatEndpointError

    client = ChatClient("m", retries=0, timeout_s=2)
    with pytest.raises(ChatEndpointError, match="OPENAI_BASE_URL"):
        client.complete([{"role": "user", "content": "hi"}])
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ChatEndpointError, match="OPENAI_API_KEY"):
        ChatClient("m")
    with pytest.raises(RunDirectoryError):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "file").write_text("x")
        run_web_suite(
            WebRunSettings(tasks=["reddit:0"]), WebRunOptions(), tmp_path / "busy", web_policy_factory("oracle", None)
        )


# -- the Magma policy -----------------------------------------------------------------------------------


def test_magma_web_policy_runs_a_task_from_a_checkpoint(tiny_model, tiny_processor, tmp_path):
    checkpoint = tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer)
    out = tmp_path / "run"
    result = agent_in_process(
        "run",
        "web",
        "--policy",
        "magma",
        "--model",
        str(checkpoint),
        "--tasks",
        "shopping:0",
        "--max-steps",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = results_of(out)
    assert record["status"] == "done" and record["success"] is False and record["steps"] >= 1
    steps = [
        json.loads(line) for line in (out / "trajectories" / "shopping_0" / "steps.jsonl").read_text().splitlines()
    ]
    assert steps[0]["reply"] and steps[0]["timings"]["policy"] > 0  # the untrained model's text is kept
