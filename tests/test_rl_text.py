"""GRPO on text end to end: a fresh magma-tiny learns a verifiable reward on CPU, resumes exactly,
survives bad rewards, and the `agent rl grpo` command drives it."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from cli_in_process import agent_in_process

from data_tools.config_files import ConfigError
from magma.model import MagmaForCausalLM
from magma.rl.config import load_rl_config
from magma.rl.rewards import RewardError, resolve_reward
from magma.rl.text_task import TextTask
from magma.rl.trainer import GRPOTrainer
from magma.training.launch import accelerate_agent_command

REPO = Path(__file__).resolve().parent.parent
QUIET = ["logging.progress=false"]


def text_config(run_dir: Path, *overrides: str):
    return load_rl_config("text-digits", [f"run_dir={run_dir}", *QUIET, *overrides])


def test_mean_reward_rises_above_its_start(tmp_path):
    trainer = GRPOTrainer(text_config(tmp_path / "run", "max_steps=12"))
    summary = trainer.train()
    records = [r for r in trainer.run.read_metrics() if "reward_mean" in r]
    assert [r["step"] for r in records] == list(range(1, 13))
    first = sum(r["reward_mean"] for r in records[:3]) / 3
    last = sum(r["reward_mean"] for r in records[-3:]) / 3
    assert last > first + 0.15, (first, last)
    assert summary["eval_after"]["eval/greedy_reward"] > summary["eval_before"]["eval/greedy_reward"]
    for key in ("policy_loss", "entropy", "clip_fraction", "approx_kl", "ratio_mean", "zero_variance_group_share"):
        assert key in records[-1], key
    assert 0 < records[-1]["generation_share"] < 1
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    model = MagmaForCausalLM.from_pretrained(summary["model"])  # the export is an ordinary checkpoint
    assert model.config.text.vocab_size == 1034
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 12


def test_resume_continues_exactly(tmp_path):
    settings = ("max_steps=3", "checkpoint.every=1", "inner_epochs=2", "mini_batches=2", "micro_batch_size=16")
    settings += ("text.prompts_per_step=4", "text.eval_prompts=2")  # 32 samples a step: two mini-batches of 16
    straight = GRPOTrainer(text_config(tmp_path / "straight", *settings))
    straight.train()
    interrupted = GRPOTrainer(text_config(tmp_path / "resumed", *settings, "max_steps=2"))
    interrupted.train()
    resumed = GRPOTrainer(text_config(tmp_path / "resumed", *settings), resume=True)
    assert resumed.state.step == 2
    resumed.train()
    expected = next(r for r in straight.run.read_metrics() if r["step"] == 3 and "reward_mean" in r)
    got = next(r for r in resumed.run.read_metrics() if r["step"] == 3 and "reward_mean" in r)
    for key in ("reward_mean", "policy_loss", "clip_fraction", "approx_kl"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    assert expected["clip_fraction"] > 0 or expected["approx_kl"] > 0  # several updates per rollout: off-policy


def flaky_reward(prompt: str, completion: str, meta: dict) -> float:
    """Raises on some prompts, returns NaN on others, scores the rest."""
    number = int(prompt.rstrip(":").split()[-1])
    if number % 3 == 0:
        raise RuntimeError("the checker crashed")
    if number % 3 == 1:
        return float("nan")
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def test_bad_rewards_are_counted_and_training_goes_on(tmp_path):
    config = text_config(tmp_path / "run", "max_steps=2", "reference=initial", "algorithm.kl_coef=0.1")
    trainer = GRPOTrainer(config)
    trainer.task = TextTask(config, trainer.processor, reward=flaky_reward)
    summary = trainer.train()
    assert summary["steps"] == 2
    assert summary["skipped"]["reward_error"] > 0 and summary["skipped"]["reward_nan"] > 0
    records = [r for r in trainer.run.read_metrics() if "reward_mean" in r]
    assert all(math.isfinite(r["reward_mean"]) and r["trained_samples"] > 0 for r in records)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the starting policy
    assert records[1]["kl"] > 0


def test_config_mistakes_name_the_key_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"sampling.group_size=1: a group needs at least 2"):
        text_config(tmp_path, "sampling.group_size=1")
    with pytest.raises(ConfigError, match=r"reference='.*missing' is not a checkpoint directory"):
        text_config(tmp_path, f"reference={tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match=r"algorithm.kl_coef=0.1 needs a reference model"):
        text_config(tmp_path, "algorithm.kl_coef=0.1")
    with pytest.raises(ConfigError, match=r"algorithm.loss_agg='sum' must be one of"):
        text_config(tmp_path, "algorithm.loss_agg=sum")
    with pytest.raises(RewardError, match="unknown reward 'digits'"):
        resolve_reward("digits")


def test_agent_rl_grpo_command_in_two_processes(tmp_path):
    """`agent rl grpo` through `accelerate launch`: two CPU processes (gloo), each rolling out its own groups."""
    run_dir = tmp_path / "cli"
    args = ["rl", "grpo", "--config", "text-digits", f"run_dir={run_dir}", "max_steps=2", *QUIET]
    launch = accelerate_agent_command(REPO / "configs" / "accelerate" / "cpu-2proc.yaml", args)
    result = subprocess.run(launch, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(task text, 2 process(es))" in result.stdout and (run_dir / "final" / "config.json").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trajectories"] == 2 * 2 * 64  # two steps of 8 prompts x 8 completions in each process
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2]
    again = agent_in_process(*args)  # the refusals need no process of their own
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    bad = agent_in_process(*args[:4], "sampling.group_size=1")
    assert bad.returncode == 2 and "group_size" in bad.stderr and "Traceback" not in bad.stderr
