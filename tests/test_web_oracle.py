"""Bundled tasks through the real environment and its evaluators: every task's oracle trajectory
succeeds through `agent run`'s suite runner (real Chromium, the bundled sites on free ports, two workers).
That doing nothing fails every task is checked in test_web_sites.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from magma.evaluation.web_suite import WebRunOptions, WebRunSettings, run_web_suite, web_policy_factory


def test_every_bundled_task_is_solved_by_its_oracle(tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("system Chromium not installed")
    settings = WebRunSettings(tasks=["bundled"], policy="oracle")
    options = WebRunOptions(workers=2, save_images=False)
    results = run_web_suite(settings, options, tmp_path / "run", web_policy_factory("oracle", None))
    assert len(results) >= 60
    failures = [(r["key"], r["eval_notes"], r["error"], r["early_stop"]) for r in results if r["success"] is not True]
    assert not failures
    assert all(record["failed_steps"] == 0 for record in results)
