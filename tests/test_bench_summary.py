"""`make bench`'s summary: figures recorded by the benches' own `emit`, one table of ratios against goals."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str) -> ModuleType:
    """bench/NAME.py loaded by path: putting bench/ on sys.path would shadow the data_tools package
    (bench/data_tools.py) in every process the suite spawns afterwards."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


report = bench_module("report")
summary = bench_module("summary")


def test_emitted_figures_reach_the_table_with_their_goals(tmp_path, monkeypatch, capsys):
    records = tmp_path / "records.jsonl"
    monkeypatch.setenv(report.RECORDS_VARIABLE, str(records))
    report.emit("web_env_step", 90.0, "ms", "raw Playwright", 1.3, goal="<= 1.5")
    report.emit("grpo_samples_per_s", 50.0, "completions/s", "TRL", 1.2, goal=">= 1.5")
    report.emit("no_ratio_figure", 3.0, "s")
    report.emit("web_env_step", 120.0, "ms", "raw Playwright", 1.4, goal="<= 1.5")  # printed again: the last wins
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    recorded = [json.loads(line) for line in records.read_text().splitlines()]
    assert [record["name"] for record in printed] == [record["name"] for record in recorded]
    assert len(printed[0]["load"]) == 3 and printed[0]["goal"] == "<= 1.5" and "goal" not in printed[2]

    assert summary.main([str(records)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2  # the figure without a ratio is left out; the repeated one shows once
    assert rows[0].startswith("| web_env_step | 120 ms | raw Playwright | 1.40 | <= 1.5 | yes |")
    assert rows[1].startswith("| grpo_samples_per_s | 50 completions/s | TRL | 1.20 | >= 1.5 | **no** |")
    assert "1 goal(s) met, 1 missed: grpo_samples_per_s" in out

    assert summary.main([str(records), "--all"]) == 0
    assert "| no_ratio_figure | 3 s |" in capsys.readouterr().out


def test_docs_block_is_rewritten_and_bad_input_is_one_error(tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    records.write_text(
        "progress line a bench printed\n"
        + json.dumps({"name": "x", "value": 2, "unit": "ms", "baseline": "b", "ratio": 0.5, "goal": "<= 1"})
        + "\n"
    )
    page = tmp_path / "performance.md"
    page.write_text(f"# Performance\n\n{summary.DOCS_START}\nold table\n{summary.DOCS_END}\n\nrest\n")
    assert summary.main([str(records), "--docs", str(page)]) == 0
    text = page.read_text()
    assert "old table" not in text and "| x | 2 ms | b | 0.50 | <= 1 | yes |" in text and text.endswith("\nrest\n")

    page.write_text("no markers\n")
    assert summary.main([str(records), "--docs", str(page)]) == 2
    assert "needs exactly one pair of summary markers" in capsys.readouterr().err
    assert page.read_text() == "no markers\n"  # nothing lost

    records.write_text(json.dumps({"name": "x", "value": 1, "unit": "ms", "ratio": 1, "goal": "about 2"}) + "\n")
    assert summary.main([str(records)]) == 2
    assert "goal 'about 2' is not '<op> <number>'" in capsys.readouterr().err
    assert summary.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "run `make bench`" in capsys.readouterr().err


def test_the_performance_page_has_one_summary_block():
    text = (ROOT / "docs" / "performance.md").read_text()
    assert text.count(summary.DOCS_START) == 1 and text.count(summary.DOCS_END) == 1


@pytest.mark.parametrize("goal, ratio, met", [("<= 1.5", 1.5, True), ("<= 1.5", 1.51, False), (">= 3", 7.5, True)])
def test_goal_reading(goal, ratio, met):
    assert summary.goal_holds(goal, ratio) is met


def test_summary_runs_as_a_script(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"name": "y", "value": 1, "unit": "ms", "ratio": 2.0}) + "\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "summary.py"), str(records)], capture_output=True, text=True, check=True
    )
    assert "| y | 1 ms |  | 2.00 |" in done.stdout


def test_gpu_figures_script_refuses_a_machine_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the script for real")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_figures.sh"), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PY": sys.executable},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no CUDA device visible to {sys.executable}; run this script on a GPU machine "
        "(the CPU figures: make bench)"
    ]
