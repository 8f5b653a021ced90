"""The one suite runner under `agent run`, on a simulator it did not write: Meta-World's expert over real
physics, run with one and two workers, resumed after a unit was lost, and its failures recorded per unit."""

from __future__ import annotations

import json

import pytest

import envs.metaworld  # noqa: F401  (sets MUJOCO_GL=egl before anything imports mujoco)
from magma.evaluation.results import RunDirectoryError, read_results
from magma.evaluation.runner import RunOptions
from magma.evaluation.sim_suite import SimRunSettings, run_sim_suite


def expert_factory(env, task):
    from envs.metaworld.expert import MetaWorldExpert

    return MetaWorldExpert()


def settings(**changes) -> SimRunSettings:
    base = dict(env="metaworld", tasks=["reach", "button-press"], episodes=1, image_size=32, max_steps=120)
    return SimRunSettings(**{**base, "fast_render": True, **changes})


def outcome(results):
    return [(r["key"], r["status"], r["success"], r["steps"], round(r["reward"], 6)) for r in results]


def test_two_workers_give_the_same_episodes_as_one_and_resume_runs_only_what_is_missing(tmp_path):
    one = run_sim_suite(settings(), tmp_path / "one", expert_factory, RunOptions(workers=1), videos=False)
    two = run_sim_suite(settings(), tmp_path / "two", expert_factory, RunOptions(workers=2), videos=False)
    assert [r["key"] for r in one] == ["reach:000", "button-press:000"]
    assert outcome(one) == outcome(two)  # each episode is decided by its seed, not by the worker that ran it
    assert all(r["success"] is True for r in one) and {r["worker"] for r in two} == {0, 1}
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["by_group"]["reach"]["passed"] == 1 and summary["overall"]["success_rate"] == 1.0

    results_file = tmp_path / "one" / "results.jsonl"
    lines = results_file.read_text().splitlines()
    results_file.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a kill cut the last line
    ran = []
    again = run_sim_suite(
        settings(), tmp_path / "one", expert_factory, RunOptions(resume=True, on_result=ran.append), videos=False
    )
    assert [result.key for result in ran] == ["button-press:000"]
    assert outcome(again) == outcome(one)
    with pytest.raises(RunDirectoryError, match="episodes"):
        run_sim_suite(settings(episodes=2), tmp_path / "one", expert_factory, RunOptions(resume=True))


def test_a_failing_episode_is_recorded_and_the_run_goes_on(tmp_path):
    class BrokenPolicy:
        def reset(self, task):
            pass

        def act(self, observation):
            return [0.0, 0.0]  # the wrong size: Meta-World's env refuses it

    def factory(env, task):
        return BrokenPolicy() if task == "reach" else expert_factory(env, task)

    results = run_sim_suite(settings(), tmp_path, factory, RunOptions(), videos=False)
    by_key = {r["key"]: r for r in results}
    assert by_key["reach:000"]["status"] == "error" and by_key["reach:000"]["error_kind"] == "environment"
    assert by_key["button-press:000"]["success"] is True
    assert set(read_results(tmp_path)) == {"reach:000", "button-press:000"}


def test_a_miniwob_run_scores_each_episode_by_the_page(tmp_path, chat_endpoint):
    """Through the runner, an OpenAI-compatible endpoint that clicks the right button on seed 0 and stops on
    seed 1: the page's own reward decides each episode."""
    import re

    from magma.evaluation.miniwob_suite import MiniWoBRunSettings, miniwob_policy_factory, run_miniwob_suite

    def answer(request) -> str:
        text = request["messages"][1]["content"][0]["text"]
        if len(chat_endpoint.requests) > 1:
            return "I give up. ```stop [none]```"
        wanted = re.search(r'"(.*?)"', text.split("OBJECTIVE: ", 1)[1]).group(1)
        element_id = re.search(rf"^\[(\d+)\] \[BUTTON\] \[{re.escape(wanted)}\]$", text, re.MULTILINE).group(1)
        return f"```click [{element_id}]```"

    chat_endpoint.answer = answer
    settings = MiniWoBRunSettings(tasks=["click-button"], episodes=2, model="test-model", max_steps=3)
    results = run_miniwob_suite(settings, tmp_path, miniwob_policy_factory("openai", "test-model"), RunOptions())
    assert [(r["key"], r["status"], r["success"]) for r in results] == [
        ("click-button:000", "done", True),
        ("click-button:001", "done", False),
    ]
    assert results[0]["reward"] > 0 and results[0]["intent"].startswith("Click on the")
    assert (tmp_path / "trajectories" / "click-button_000" / "steps.jsonl").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["by_group"]["click-button"]["passed"] == 1 and summary["by_group"]["click-button"]["failed"] == 1
