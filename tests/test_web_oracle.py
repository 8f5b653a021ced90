"""Bundled tasks through the real environment and its evaluators: every task's oracle trajectory
succeeds, and doing nothing fails one task of each eval type (real Chromium, the bundled sites on free ports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.web.env import WebEnv
from envs.web.grading import GradingConfig
from envs.web.oracle import WebOracle, oracle_steps
from envs.web.sites.images import bundled_site_vqa
from envs.web.sites.server import start_sites
from envs.web.tasks import load_tasks, site_urls_from_environment
from magma.agents.web_suite import WebRunOptions, WebRunSettings, run_web_suite, web_policy_factory

BUNDLED = Path(__file__).resolve().parent.parent / "envs" / "web" / "tasks" / "bundled"
SITES = ("classifieds", "shopping", "reddit")


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    sites = start_sites()
    auth = tmp_path_factory.mktemp("auth")
    env = WebEnv(auth_dir=str(auth), grading=GradingConfig(vqa_model=bundled_site_vqa))
    urls = {"CLASSIFIEDS": sites["classifieds"], "SHOPPING": sites["shopping"], "REDDIT": sites["reddit"]}
    yield sites, env, auth, urls
    env.close()
    sites.stop()


def one_task_per_eval_type(urls: dict[str, str]) -> list:
    chosen, seen = [], set()
    for site in SITES:
        steps = oracle_steps(BUNDLED / f"{site}.json")
        for task in load_tasks(BUNDLED / f"{site}.json", urls):
            key = f"{site}:{task.task_id.split(':')[-1]}"
            kinds = set(task.eval_types) - seen
            if kinds:
                seen |= kinds
                chosen.append((key, task, steps[key]))
    assert seen == {"string_match", "url_match", "program_html", "page_image_query"}
    return chosen


def run(bundled, task, policy) -> dict:
    sites, env, auth, _ = bundled
    sites.reset()
    for name in SITES:
        (auth / f"{name}_state.json").write_text(json.dumps(sites.storage_state(name)))
    observation, _ = env.reset(options={"task": task})
    policy.reset({"instruction": observation["instruction"]})
    for _ in range(30):
        observation, _, terminated, truncated, info = env.step(policy.act(observation))
        if terminated or truncated:
            return info
    raise AssertionError("the episode did not end")


class DoNothing:
    def reset(self, task: dict) -> None:
        pass

    def act(self, observation: dict) -> str:
        return "stop []"


def test_every_bundled_task_is_solved_by_its_oracle(tmp_path):
    settings = WebRunSettings(tasks=["bundled"], policy="oracle")
    options = WebRunOptions(workers=2, save_images=False)
    results = run_web_suite(settings, options, tmp_path / "run", web_policy_factory("oracle", None))
    assert len(results) >= 60
    failures = [(r["key"], r["eval_notes"], r["error"], r["early_stop"]) for r in results if r["success"] is not True]
    assert not failures
    assert all(record["failed_steps"] == 0 for record in results)


def test_doing_nothing_fails_one_task_per_eval_type(bundled):
    _, env, _, urls = bundled
    filled = site_urls_from_environment(urls)
    for key, task, steps in one_task_per_eval_type(urls):
        info = run(bundled, task, WebOracle(env, steps, filled))  # the same task is solvable from this state
        assert info["success"] is True, (key, info.get("eval_notes"), info.get("action_error"))
        idle = run(bundled, task, DoNothing())
        assert idle["success"] is False, (key, idle.get("eval_notes"))
