"""The `agent` console script: its help and one bad input through a real subprocess, as a user runs it;
the rest through the same ``main`` inside the test process (``tests/cli_in_process.py``), which spares an
interpreter's seconds of imports per call."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_in_process import agent_in_process

AGENT = [str(Path(sys.executable).with_name("agent"))]


def agent(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(AGENT + list(args), capture_output=True, text=True, timeout=1200, cwd=cwd, env=env)


@pytest.fixture
def wide_terminal(monkeypatch):
    """The in-process calls' tables at the width the subprocess gets (``COLUMNS=200``)."""
    monkeypatch.setenv("COLUMNS", "200")


def test_help_lists_every_subcommand():
    result = agent("--help")
    assert result.returncode == 0
    for name in ("run", "train", "data", "lapa", "rl", "serve", "robot", "sites", "model"):
        assert f" {name} " in result.stdout, name


def test_model_info_for_magma_8b_config(wide_terminal):
    result = agent_in_process("model", "info", "magma-8b", "--image-size", "640x480", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 8.0e9 < report["parameters"]["total"] < 9.5e9
    assert report["image_tokens"] == [{"size": "640x480", "grid": [1, 2], "crops": 2, "tokens": 528}]
    assert report["codecs"]["robot"]["token_ids"] == [127744, 127999]


def test_model_info_for_a_checkpoint(tmp_path, tiny_model, wide_terminal):
    directory = tiny_model.save_pretrained(tmp_path / "ckpt")
    result = agent_in_process("model", "info", str(directory))
    assert result.returncode == 0, result.stderr
    assert "language_model.layers" in result.stdout and "72 tokens" in result.stdout


def test_model_demo_learns_its_answer_and_prints_parameters(wide_terminal):
    """The demo trains magma-tiny on one image+prompt+answer, then generates: the whole path end to end."""
    result = agent_in_process("model", "demo", "--fit-steps", "30", "--fit-answer", "The blue cup.")
    assert result.returncode == 0, result.stderr
    assert "answer  : 'The blue cup.'" in result.stdout
    assert "vision_tower" in result.stdout and "total" in result.stdout


def test_bad_input_is_one_clear_line(tmp_path, wide_terminal):
    not_image = tmp_path / "photo.png"
    not_image.write_text("hello")
    cases = [
        (("model", "info", "magma-tiny", "--set", "vision.bogus=1"), "vision.bogus"),
        (("model", "info", "no-such-model"), "presets"),
        (("model", "demo", "--fit-steps", "0", "--image", str(not_image)), "not a readable image"),
        (("model", "info", str(tmp_path)), "no config.json"),
    ]
    for number, (args, expected) in enumerate(cases):
        result = agent(*args) if number == 0 else agent_in_process(*args)  # the first as a user's process
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
