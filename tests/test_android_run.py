"""``agent run --env android`` on the simulated phone: the scripted agent completes the simulated app's tasks
with results, summary, report and training shards; resume; a chat-endpoint policy reading the prompt; a
device unplugged mid-run; an adb server that is not there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from data_tools.sample_format import validate_sample
from envs.android.actions import parse_android_action
from envs.android.simulated_device import SimulatedAdbServer
from magma.evaluation.android_suite import (
    AndroidRunOptions,
    AndroidRunSettings,
    android_policy_factory,
    run_android_suite,
)
from magma.training.launch import free_port

AGENT = [sys.executable, "-m", "magma.cli.app"]


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=1200)


def results_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def test_scripted_agent_completes_the_simulated_app_with_report_shards_and_resume(tmp_path):
    out, shards = tmp_path / "run", tmp_path / "shards"
    finished = agent("run", "android", "--device", "simulated", "--out", str(out), "--record", str(shards))
    assert finished.returncode == 0, finished.stderr
    results = results_of(out)
    assert [r["key"] for r in results] == [
        "dark_mode", "save_note", "favourite_item_12", "delete_item_2", "reset_cancelled", "count_saved"
    ]  # fmt: skip
    assert all(r["success"] is True and r["failed_steps"] == 0 for r in results), results
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["passed"] == 6 and summary["by_group"]["settings"]["tasks"] == 2
    assert "Android run report" in (out / "report.html").read_text()
    page = (out / "trajectories" / "save_note" / "index.html").read_text()
    assert "step-000.jpg" in page and "type [Bob &amp; Alice&#39;s 100% plan] [1]" in page
    # every executed step became a sample of the contract, with its Set-of-Mark screenshot
    (shard,) = sorted(shards.glob("android-*.tar"))
    with tarfile.open(shard) as archive:
        names = archive.getnames()
        records = [json.load(archive.extractfile(name)) for name in names if name.endswith(".json")]
    assert len(records) == sum(r["steps"] for r in results) - len(results) + 6  # terminal steps too
    for record in records:
        validate_sample(record, 1)
        answer = record["conversations"][-1]["value"]
        assert parse_android_action(answer).describe() == record["meta"]["action"]
    assert sum(name.endswith(".png") for name in names) == len(records)
    assert '{"TAP": {"MARK": 2}}' in {r["conversations"][-1]["value"].strip("`") for r in records}
    # a resumed run reruns nothing; other settings are refused with one message
    again = agent("run", "android", "--device", "simulated", "--out", str(out), "--resume")
    assert again.returncode == 0 and len(results_of(out)) == 6
    other = agent("run", "android", "--device", "simulated", "--out", str(out), "--resume", "--max-steps", "3")
    assert other.returncode == 2 and "max_steps" in other.stderr and "Traceback" not in other.stderr


def test_no_adb_server_is_one_message_and_writes_nothing(tmp_path):
    port = free_port()
    finished = agent("run", "android", "--adb", f"127.0.0.1:{port}", "--out", str(tmp_path / "run"))
    assert finished.returncode == 2 and f"no adb server at 127.0.0.1:{port}" in finished.stderr
    assert "Traceback" not in finished.stderr and not (tmp_path / "run").exists()


def test_device_unplugged_mid_run_errors_the_rest_and_the_run_goes_on(tmp_path):
    with SimulatedAdbServer() as server:
        device = server.add_device()
        scripted = android_policy_factory("scripted", None)
        started: list[str] = []

        def factory(env, task):
            started.append(task.task_id)
            if len(started) == 2:
                server.remove_device(device.serial)
            return scripted(env, task)

        settings = AndroidRunSettings(device=device.serial)
        results = run_android_suite(settings, AndroidRunOptions(adb_port=server.port), tmp_path / "run", factory)
    assert results[0]["status"] == "done" and results[0]["success"] is True
    assert all(r["status"] == "error" and "went away" in r["error"] for r in results[1:]) and len(results) == 6
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["overall"]["errors"] == 5


def _android_chat(request: dict) -> str:
    """A chat 'model' that reads the Android prompt's listing like an agent would."""
    text = request["messages"][-1]["content"][0]["text"]
    marks = {label: int(number) for number, label in re.findall(r"^\[(\d+)\] \[\w+\] \[([^\]]*)\]", text, re.M)}
    if "GOAL: Turn on dark mode" not in text:
        reply = "I do not know."  # never an action: an early stop after 3 replies
    elif "[Dark mode] [checked]" in text:
        reply = 'Done.\n```{"SET_TASK_STATUS": "COMPLETE"}```'
    elif "Dark mode" in marks:
        action = json.dumps({"action_type": "click", "index": marks["Dark mode"]})
        reply = f"Tap the switch.\n```{action}```"
    else:
        reply = f"```{json.dumps({'TAP': {'MARK': marks['Settings']}})}```"
    return reply


def test_openai_policy_reads_the_android_prompt_and_stops_early(chat_endpoint, tmp_path):
    chat_endpoint.answer = _android_chat
    tasks = json.loads(Path("envs/android/tasks/sim_app.json").read_text())
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([tasks[0], tasks[4]]))  # dark_mode, reset_cancelled
    settings = AndroidRunSettings(tasks=str(path), policy="openai", model="m", device="simulated")
    factory = android_policy_factory("openai", "m")
    dark, reset = run_android_suite(settings, AndroidRunOptions(), tmp_path / "run", factory)
    assert dark["success"] is True and dark["steps"] == 3 and dark["failed_steps"] == 0
    assert reset["success"] is False and "no parsable action in 3" in reset["early_stop"]
    first = chat_endpoint.requests[0][1]["messages"]
    assert first[0]["role"] == "system" and '{"TAP": {"MARK": id}}' in first[0]["content"]
    assert first[1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "APP: com.example.simapp/com.example.simapp.MainActivity" in first[1]["content"][0]["text"]
    later = chat_endpoint.requests[1][1]["messages"][1]["content"][0]["text"]
    assert 'PREVIOUS ACTIONS:\n1. {"TAP": {"MARK": 2}}' in later  # the history holds the model's own actions
