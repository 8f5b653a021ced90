"""`agent demo` at its smallest size (one task, one demonstration, a few training steps, one held-out
episode per policy): every stage connects, from Meta-World's expert to the daemon and a report whose
videos Chromium plays; a second run reuses every stage; a foreign or differently made output directory
is refused untouched; a failing stage names itself, why, and the command that reruns just it.
Real Meta-World, real training, a real policy server and daemon, real Chromium."""

from __future__ import annotations

import json
import shutil

import pytest
from agent_cli import agent, assert_one_clear_error

from data_tools.lerobot_dataset import LeRobotDatasetReader
from magma.cli.demo import STAGES, Demo, DemoDirectoryError, DemoSettings

SMALLEST = ["--tasks", "drawer-close", "--episodes", "1", "--eval-episodes", "1", "--train-steps", "3",
            "--max-steps", "8"]  # fmt: skip


def smallest_settings() -> DemoSettings:
    return DemoSettings(tasks=["drawer-close"], episodes=1, eval_episodes=1, train_steps=3, max_steps=8)


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    shot = out.parent / "report.png"
    result = agent("demo", "--out", str(out), *SMALLEST, "--screenshot", str(shot))
    assert result.returncode == 0, result.stderr[-4000:]
    return out, shot, result


def test_every_stage_runs_and_connects_into_one_report(finished_demo):
    out, shot, result = finished_demo
    for number, stage in enumerate(STAGES, 1):
        assert f"[demo {number}/{len(STAGES)}] {stage}: done in" in result.stderr, result.stderr[-3000:]
    assert "metaworld-demo-tiny:" in result.stderr  # agent train's own progress bar
    # 1. expert demonstrations as LeRobot v3, from seeds the evaluation never uses
    reader = LeRobotDatasetReader(out / "data" / "demonstrations")
    assert reader.num_episodes == 1 and reader.tasks[0] == "Close the drawer."
    # 2. training metrics; 3. the three policies on held-out seed 0
    assert (out / "train" / "final" / "config.json").is_file() and (out / "untrained" / "config.json").is_file()
    assert len((out / "train" / "metrics.jsonl").read_text().splitlines()) >= 1
    evaluation = json.loads((out / "stages" / "evaluate.json").read_text())["success"]
    assert {arm: evaluation[arm]["drawer-close"]["episodes"] for arm in evaluation} == {
        "trained": 1,
        "untrained": 1,
        "expert": 1,
    }
    # 4. the daemon drove the arm with the served policy and recorded the episode
    daemon = json.loads((out / "stages" / "daemon.json").read_text())
    assert 1 <= daemon["steps"] <= 8 and daemon["safe_stops"] == 0
    assert LeRobotDatasetReader(daemon["dataset"]).num_episodes == 1
    # 5. the report: table, loss curve, videos that Chromium decoded, the daemon's timing, larger-scale commands
    page = (out / "report.html").read_text()
    assert "<svg" in page and "<polyline" in page and "observation to action" in page
    assert "accelerate launch" in page and "--tasks MT10" in page
    assert page.count("<video") == 3 and "screenshot:" in result.stderr
    assert "(3 of 3 videos decoded)" in result.stderr, result.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    assert "report  :" in result.stdout and "drawer-close" in result.stdout


def test_a_second_run_reuses_every_finished_stage(finished_demo):
    out, _, _ = finished_demo
    before = (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    results = Demo(smallest_settings(), out, log=lines.append).run()
    assert [line.split(":")[0] for line in lines] == [f"[demo {n}/{len(STAGES)}] {s}" for n, s in enumerate(STAGES, 1)]
    assert all("done before, reused" in line for line in lines), lines
    assert set(results) == set(STAGES)
    assert (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns == before


def test_a_foreign_or_differently_made_directory_is_refused_untouched(tmp_path, finished_demo):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DemoDirectoryError, match="not an `agent demo` run"):
        Demo(smallest_settings(), foreign, log=lambda line: None).run()
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]

    out, _, _ = finished_demo
    other = smallest_settings()
    other.episodes = 2
    with pytest.raises(DemoDirectoryError, match="other settings") as refused:
        Demo(other, out, log=lambda line: None).run()
    assert "episodes 1 -> 2" in str(refused.value)


def test_a_failing_stage_names_itself_and_the_command_that_reruns_it(tmp_path, finished_demo):
    out, _, _ = finished_demo
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "data" / "shards")  # the training data is gone: the train stage cannot run
    result = agent("demo", "--out", str(broken), *SMALLEST, "--only", "train")
    assert_one_clear_error(result, "demo stage 2/5 'train' failed", "shards")
    assert f"agent demo --out {broken} --tasks drawer-close" in result.stderr and "--only train" in result.stderr
    assert not (broken / "stages" / "evaluate.json").exists()  # made from the training this run redid
