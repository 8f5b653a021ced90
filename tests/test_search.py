"""Reflective MCTS (``agent run ... --search rmcts``) on real environments: the bundled web sites in Chromium
(their data reset for every backtrack) and MiniWoB++ pages; the replay check; a reset failing mid-search;
the value model failing; resume and bad options."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from agent_cli import assert_one_clear_error
from cli_in_process import agent_in_process

from envs.android.tasks import BUNDLED_TASKS as BUNDLED_ANDROID_TASKS
from envs.miniwob.env import MiniWoBEnv
from envs.web.browser import ChromiumBrowser
from magma.search.candidates import RandomUIPolicy
from magma.search.environments import MiniWoBSearchEnvironment
from magma.search.rmcts import ReflectiveMCTS, SearchBudget
from magma.search.tree import TREE_FILE, SearchTree
from magma.search.values import GraderValue

if not Path("/usr/bin/chromium").exists():
    pytest.skip("system Chromium not installed", allow_module_level=True)


def results_of(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {record["key"]: record for record in map(json.loads, filter(None, lines))}


@pytest.fixture(scope="module")
def browser():
    with ChromiumBrowser() as running:
        yield running


@pytest.fixture(scope="module")
def miniwob(browser):
    environment = MiniWoBEnv(browser=browser, max_steps=4)
    yield environment
    environment.close()


def test_search_with_the_grader_value_finds_the_oracle_path_a_noisy_oracle_misses(tmp_path):
    """A url_match task and a program_html task that changes the shop's data (so every backtrack must reset the
    sites): the oracle that acts at random half the time fails alone and succeeds with search."""
    tasks = ["classifieds:1", "shopping:18"]
    common = ["--tasks", *tasks[:1], "--tasks", tasks[1], "--policy", "oracle", "--oracle-noise", "0.5", "--seed", "3"]
    common += ["--max-steps", "6", "--no-progress"]
    alone = agent_in_process("run", "web", *common, "--out", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr[-3000:]
    searched = agent_in_process(
        "run", "web", *common, "--search", "rmcts", "--search-simulations", "3", "--search-branching", "4",
        "--search-depth", "2", "--out", str(tmp_path / "searched"),
    )  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-3000:]
    without, with_search = results_of(tmp_path / "alone"), results_of(tmp_path / "searched")
    assert not all(without[key]["success"] for key in tasks), without  # the weak policy alone fails somewhere
    for key in tasks:
        record = with_search[key]
        assert record["success"] is True, record
        stats = record["search"]
        assert stats["privileged_value"] == 1 and stats["simulations"] >= 3 and stats["replays"] >= 1
        assert stats["replay_match_share"] == 1.0  # the bundled sites reset exactly: every replay matched
        folder = tmp_path / "searched" / "trajectories" / key.replace(":", "_")
        tree = SearchTree.load(folder)
        assert tree.privileged and tree.value_kind == "grader"
        executed = [tree.nodes[index] for index in tree.executed]
        assert executed[-1].terminal and executed[-1].value == 1.0
        assert [node.action for node in executed[1:]] == [
            json.loads(line)["action"] for line in (folder / "steps.jsonl").read_text().splitlines()
        ]  # the recorded episode is the executed path, replayed and graded by the environment
        assert (folder / tree.nodes[0].image).is_file()
    run = json.loads((tmp_path / "searched" / "run.json").read_text())
    assert run["search"]["simulations"] == 3 and run["oracle_noise"] == 0.5


def test_search_lifts_a_random_policy_on_miniwob_and_a_resume_keeps_the_budget(tmp_path):
    options = ["--tasks", "click-link,focus-text", "--episodes", "2", "--policy", "random", "--max-steps", "4"]
    options += ["--no-progress", "--seed", "1"]
    alone = agent_in_process("run", "miniwob", *options, "--out", str(tmp_path / "alone"))
    searched_options = [*options, "--search", "rmcts", "--search-simulations", "10", "--out", str(tmp_path / "s")]
    searched = agent_in_process("run", "miniwob", *searched_options)
    assert alone.returncode == 0 and searched.returncode == 0, searched.stderr[-3000:]
    passed_alone = sum(bool(record["success"]) for record in results_of(tmp_path / "alone").values())
    records = results_of(tmp_path / "s")
    assert sum(bool(record["success"]) for record in records.values()) == 4 > passed_alone
    assert all(record["search"]["environment_steps"] > record["steps"] for record in records.values())
    report = (tmp_path / "s" / "report.html").read_text()
    assert "click-link:000" in report
    traces = agent_in_process("data", "search-traces", str(tmp_path / "s"), "--out", str(tmp_path / "traces"))
    assert traces.returncode == 0, traces.stderr[-3000:]
    manifest = json.loads((tmp_path / "traces" / "search_traces.json").read_text())
    assert manifest["samples"] >= 4, manifest  # at least one sample per searched task
    again = agent_in_process("run", "miniwob", *searched_options, "--resume")
    assert again.returncode == 0 and results_of(tmp_path / "s") == records  # nothing ran again
    other = [*options, "--search", "rmcts", "--search-simulations", "3", "--out", str(tmp_path / "s"), "--resume"]
    assert_one_clear_error(agent_in_process("run", "miniwob", *other), "search.simulations differ")


class DriftingSeeds(MiniWoBSearchEnvironment):
    """A MiniWoB++ task whose restart draws another seed each time: a replay cannot reach the same page."""

    def restart(self) -> dict[str, Any]:
        self.seed += 1
        return super().restart()


class FailingRestart(MiniWoBSearchEnvironment):
    """A task whose environment cannot be reset after the first start (a site that went away)."""

    restarts = 0

    def restart(self) -> dict[str, Any]:
        self.restarts += 1
        if self.restarts > 1:
            raise ConnectionError("the task page stopped answering")
        return super().restart()


def test_a_replay_that_reaches_another_state_is_counted(miniwob):
    search = ReflectiveMCTS(
        DriftingSeeds(miniwob, "click-button-sequence", 0), RandomUIPolicy(0), GraderValue(), SearchBudget(8, 2, 4)
    )
    outcome = search.run({"instruction": "?"})
    stats = outcome.tree.stats
    assert stats.replays >= 1 and stats.replay_mismatches >= 1
    mismatched = [backtrack for backtrack in outcome.tree.backtracks if not backtrack.matched]
    assert mismatched and ("another listing" in mismatched[0].note or "replayed URL" in mismatched[0].note)
    assert outcome.tree.to_json()["stats"]["replay_match_share"] < 1.0


def test_a_reset_failing_mid_search_ends_the_search_and_keeps_the_path(miniwob):
    environment = FailingRestart(miniwob, "click-button-sequence", 0)
    outcome = ReflectiveMCTS(environment, RandomUIPolicy(0), GraderValue(), SearchBudget(8, 2, 4)).run({})
    assert outcome.ended_early and "could not be reset" in outcome.ended_early
    assert "stopped answering" in outcome.ended_early and outcome.tree.stats.restart_failures == 1
    assert outcome.tree.nodes[0].reached and len(outcome.tree.executed) >= 1


def test_an_unreachable_value_model_falls_back_to_the_policy_and_the_run_goes_on(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        unused_port = probe.getsockname()[1]
    out = tmp_path / "run"
    result = agent_in_process(
        "run", "miniwob", "--tasks", "click-button", "--episodes", "1", "--policy", "random", "--max-steps", "3",
        "--search", "rmcts", "--search-simulations", "2", "--value", "model", "--value-model", "judge",
        "--value-base-url", f"http://127.0.0.1:{unused_port}/v1", "--no-reflections", "--no-progress",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = results_of(out).values()
    assert record["status"] == "done" and record["search"]["value_failures"] >= 1
    assert any("the policy's own choice stood in" in note for note in record["eval_notes"])
    tree = json.loads((out / "trajectories" / "click-button_000" / TREE_FILE).read_text())
    assert not tree["privileged"] and {node["value_source"] for node in tree["nodes"] if node["value"] is not None} == {
        "policy-prior"
    }


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--search", "rmcts", "--search-simulations", "0"], ["simulations must be at least 1", "--search none"]),
        (["--search", "rmcts", "--search-branching", "0"], ["branching must be at least 1"]),
        (["--search", "bfs"], ["'bfs' is not a search method"]),
        (["--search", "rmcts", "--value", "model"], ["--value-model"]),
        (["--policy", "random", "--oracle-noise", "0.5"], ["--oracle-noise", "--policy oracle"]),
        (["--oracle-noise", "1.5"], ["probability in [0, 1]"]),
    ],
)
def test_bad_search_options_are_one_clear_error(tmp_path, options, words):
    result = agent_in_process("run", "web", "--tasks", "classifieds:1", *options, "--out", str(tmp_path / "r"))
    assert_one_clear_error(result, *words)
    assert not (tmp_path / "r").exists()


def test_search_on_the_simulated_phone_lifts_a_noisy_scripted_policy(tmp_path):
    """Android: backtracking runs each task's setup again (force stop, clear data, launch) and replays taps."""
    wanted = ("dark_mode", "delete_item_2")
    tasks = [task for task in json.loads(BUNDLED_ANDROID_TASKS.read_text()) if task.get("task_id") in wanted]
    assert len(tasks) == 2
    task_file = tmp_path / "tasks.json"
    task_file.write_text(json.dumps(tasks))
    options = ["--device", "simulated", "--tasks", str(task_file), "--policy", "scripted", "--scripted-noise", "0.5"]
    options += ["--no-progress"]
    alone = agent_in_process("run", "android", *options, "--out", str(tmp_path / "alone"))
    searched = agent_in_process(
        "run", "android", *options, "--search", "rmcts", "--search-simulations", "5", "--out", str(tmp_path / "s")
    )
    assert alone.returncode == 0 and searched.returncode == 0, searched.stderr[-3000:]
    records = results_of(tmp_path / "s")
    assert all(record["success"] for record in records.values()), records
    assert not all(record["success"] for record in results_of(tmp_path / "alone").values())
    assert all(record["search"]["replay_match_share"] in (None, 1.0) for record in records.values())
    tree = SearchTree.load(tmp_path / "s" / "trajectories" / "dark_mode")
    assert tree.nodes[tree.executed[-1]].terminal and tree.nodes[tree.executed[-1]].value == 1.0


def test_the_magma_model_proposes_sampled_candidates(tiny_model, tiny_processor, tmp_path):
    checkpoint = tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer)
    out = tmp_path / "run"
    result = agent_in_process(
        "run", "miniwob", "--tasks", "click-button", "--episodes", "1", "--policy", "magma", "--model",
        str(checkpoint), "--max-steps", "1", "--search", "rmcts", "--search-simulations", "2",
        "--search-branching", "3", "--no-reflections", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = results_of(out).values()
    assert record["status"] == "done" and record["search"]["proposals"] >= 1
    tree = SearchTree.load(out / "trajectories" / "click-button_000")
    children = [tree.nodes[index] for index in tree.nodes[0].children]
    assert children and all(child.reply for child in children)  # the untrained model's sampled text is kept
    assert abs(sum(child.prior for child in children) - 1.0) < 1e-6 or len(children) < 3


def test_a_chat_policy_searched_with_a_chat_value_model(chat_endpoint, tmp_path):
    """One local endpoint serves two models: the actor proposes a wrong and the right button in turn, and the
    judge scores a state 0.9 when the path clicked the right one (0 for an episode the wrong click ended); the
    search executes the right click, reflects on the wrong one and shows that lesson in the next episode."""
    right: dict[str, str] = {}
    actor_calls = []

    def answer(request: dict[str, Any]) -> str:
        text = request["messages"][1]["content"][0]["text"]
        if request["model"] == "actor":
            wanted = re.search(r'"(.+?)"', text.split("OBJECTIVE: ", 1)[1].splitlines()[0]).group(1)
            buttons = re.findall(r"\[(\d+)\] \[BUTTON\] \[(.*)\]", text)
            right["id"] = next(element for element, label in buttons if label == wanted)
            wrong = next((element for element, label in buttons if label != wanted), right["id"])
            actor_calls.append(request.get("n", 1))
            element = wrong if len(actor_calls) % 2 else right["id"]
            return f"Trying a button. In summary, the next action I will perform is ```click [{element}]```"
        if "ACTIONS SO FAR:" not in text:  # the reflection request: the lesson in one sentence
            return "Click the button whose label the task quotes, not another one."
        clicked_right = "id" in right and f"click [{right['id']}]" in text.split("ACTIONS SO FAR:", 1)[1]
        score = 0.9 if clicked_right else 0.0 if "The agent has STOPPED" in text else 0.1
        return f"The path so far. SCORE: {score}"

    failures = []

    def checked(request: dict[str, Any]) -> str:
        try:
            return answer(request)
        except Exception as error:
            failures.append(f"{error!r} {request['model']}")
            raise

    chat_endpoint.answer = checked
    out = tmp_path / "run"
    result = agent_in_process(
        "run", "miniwob", "--tasks", "click-button", "--episodes", "2", "--policy", "openai", "--model", "actor",
        "--max-steps", "2", "--search", "rmcts", "--search-simulations", "3", "--search-branching", "3",
        "--value", "model", "--value-model", "judge", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not failures, failures
    records = results_of(out)
    assert all(record["success"] is True and record["search"]["privileged_value"] == 0 for record in records.values())
    assert actor_calls[0] == 3  # one request for 3 choices; the endpoint gives one, so it is asked again
    tree = SearchTree.load(out / "trajectories" / "click-button_000")
    assert tree.value_kind == "model" and not tree.privileged
    assert tree.nodes[tree.executed[1]].value == 0.9  # the click the judge scored right
    assert {node.value_source for node in tree.nodes if node.reached} == {"model"}
    lessons = [json.loads(line)["lesson"] for line in (out / "reflections.jsonl").read_text().splitlines()]
    assert lessons[0] == "Click the button whose label the task quotes, not another one."  # the judge wrote it
    assert SearchTree.load(out / "trajectories" / "click-button_001").reflections_used[0] == lessons[0]
