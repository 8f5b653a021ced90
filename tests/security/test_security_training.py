"""Hostile and faulty inputs to the three trainers (`agent train`, `agent rl grpo`, `agent lapa train`) and
to checkpoint loading: nonsense numbers in a config, a run that diverges, and weights files that are cut
short or garbled. Each ends in one clear message and exit status 2; nothing non-finite is exported."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from agent_cli import assert_one_clear_error
from cli_in_process import agent_in_process
from safetensors.torch import load_file

from data_tools.config_files import ConfigError
from data_tools.synthetic import write_synthetic_corpus
from lapa.config import quantizer_train_config_from
from lapa.quantizer import LatentActionQuantizer, QuantizerCheckpointError
from lapa.synthetic_motion import write_motion_videos
from lapa.training import QuantizerTrainer
from magma.checkpoint import CheckpointError
from magma.model import MagmaForCausalLM
from magma.rl.config import load_rl_config
from magma.rl.trainer import GRPOTrainer
from magma.training.config import train_config_from
from magma.training.divergence import TrainingDivergedError
from magma.training.launch import accelerate_train_command
from magma.training.run_directory import RunDirectoryError
from magma.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 1800  # a generous bound for a machine loaded by other work, never a measure of speed
QUANTIZER = {
    "image_size": 32,
    "patch_size": 8,
    "dim": 32,
    "heads": 4,
    "spatial_layers": 1,
    "temporal_layers": 1,
    "decoder_layers": 1,
    "quant_dim": 8,
    "codebook_size": 8,
    "num_codes": 4,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(root, samples_per_source=8, eval_samples_per_source=2, samples_per_shard=8, image_size=48)
    return root


def train_config(corpus: Path, run_dir: Path, **fields) -> dict:
    config = {
        "name": "probe",
        "model": "magma-tiny",
        "run_dir": str(run_dir),
        "max_steps": 4,
        "data": {
            "batch_size": 2,
            "num_workers": 0,
            "shuffle_buffer": 0,
            "max_length": 256,
            "sources": [{"name": "ui-som", "shards": [str(corpus / "train" / "ui-som" / "*.tar")]}],
        },
        "optim": {"lr": 3e-3, "schedule": "constant", "max_grad_norm": 1.0},
        "logging": {"progress": False},
    }
    for key, value in fields.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def checkpoint_names(run_dir: Path) -> list[str]:
    return (
        sorted(path.name for path in (run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").is_dir() else []
    )


# ---- nonsense numbers in a config ---------------------------------------------------------------
@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0", "-inf"])
def test_a_learning_rate_that_is_not_a_positive_number_is_refused_at_load(lr):
    with pytest.raises(ConfigError, match=r"optim\.lr=.*must be a finite number > 0"):
        train_config_from({"name": "probe", "model": "magma-tiny"}, [f"optim.lr={lr}"], "probe")


def test_a_learning_rate_that_is_not_a_positive_number_is_one_line_through_the_cli():
    result = agent_in_process(
        "train", "--config", "pretrain-tiny", "optim.lr=inf"
    )  # was: exit 0, an all-NaN checkpoint
    assert_one_clear_error(result, "optim.lr=", "must be a finite number > 0")


def test_rl_and_lapa_refuse_non_finite_numbers_through_the_cli():
    assert_one_clear_error(agent_in_process("rl", "grpo", "--config", "text-digits", "optim.lr=inf"), "optim.lr=inf")
    lapa = agent_in_process(
        "lapa", "train", "--config", "lapa-tiny", "optim.lr=nan", "quantizer.heads=0", "data.window_s=-1"
    )
    assert_one_clear_error(lapa, "optim.lr=nan", "quantizer.heads=0 must be >= 1", "data.window_s=-1.0")


def test_every_numeric_problem_of_a_config_is_listed_at_once(corpus, tmp_path):
    base = train_config(corpus, tmp_path / "run")
    bad = [
        "optim.lr=nan",
        "optim.weight_decay=-0.1",
        "optim.betas=[1.0,0.999]",
        "optim.eps=0",
        "optim.warmup_steps=-5",
        "optim.min_lr_ratio=1.5",
        "optim.max_grad_norm=inf",
        "optim.projector.lr=-1e-4",
        "logging.every=0",
        "checkpoint.every=-1",
        "seed=-3",
    ]
    with pytest.raises(ConfigError) as caught:
        train_config_from(base, bad, "probe")
    for key in [override.partition("=")[0] for override in bad]:
        assert key.replace("optim.betas", "optim.betas.0") in str(caught.value), key

    rl_bad = ["sampling.temperature=nan", "sampling.top_p=0", "algorithm.clip_low=-0.2", "algorithm.kl_coef=inf"]
    with pytest.raises(ConfigError) as caught:
        load_rl_config("text-digits", [f"run_dir={tmp_path / 'rl'}", *rl_bad])
    for key in ("sampling.temperature", "sampling.top_p", "algorithm.clip_low", "algorithm.kl_coef"):
        assert key in str(caught.value), key

    with pytest.raises(ConfigError, match=r"text.num_attention_heads=0 must be >= 1"):
        MagmaForCausalLM.from_config("magma-tiny", ["text.num_attention_heads=0"])


# ---- a run that diverges ------------------------------------------------------------------------
def test_a_diverging_run_stops_with_a_message_exports_nothing_and_keeps_its_last_good_checkpoint(corpus, tmp_path):
    """lr=1e30 passes validation (a finite positive number) but blows the weights up in one step."""
    run_dir = tmp_path / "run"
    path = write_yaml(
        tmp_path / "diverge.yaml", train_config(corpus, run_dir, optim={"lr": 1e30}, checkpoint={"every": 1})
    )
    result = agent_in_process("train", "--config", str(path))
    assert_one_clear_error(
        result, "training stopped at step", "not finite", "mixed_precision=bf16", "last good checkpoint"
    )
    assert not (run_dir / "final").exists() and not (run_dir / "summary.json").exists()
    stopped_at = int(result.stderr.split("training stopped at step ")[1].split(":")[0])
    checkpoints = checkpoint_names(run_dir)
    assert checkpoints and all(int(name.removeprefix("step-")) < stopped_at for name in checkpoints)
    weights = load_file(str(run_dir / "checkpoints" / checkpoints[-1] / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())  # the last checkpoint is finite
    # ... and resumable: --resume loads it and stops at the same step with the same message
    resumed = agent_in_process("train", "--config", str(path), "--resume")
    assert_one_clear_error(resumed, f"training stopped at step {stopped_at}")
    assert checkpoint_names(run_dir) == checkpoints and not (run_dir / "final").exists()


def test_two_processes_that_diverge_stop_together_instead_of_hanging(corpus, tmp_path):
    """Every process takes part in the divergence check (a reduced flag), so all of them stop at the same
    step with the message; the launcher returns instead of waiting on a process stuck in a collective."""
    run_dir = tmp_path / "two"
    config = train_config(corpus, run_dir, optim={"lr": 1e30}, data={"batch_size": 1})
    path = write_yaml(tmp_path / "two.yaml", config)
    command = accelerate_train_command(REPO / "configs" / "accelerate" / "cpu-2proc.yaml", ["--config", str(path)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode != 0
    messages = [line for line in result.stderr.splitlines() if line.startswith("error: training stopped at step")]
    steps = {message.split(":")[1] for message in messages}  # "error: training stopped at step N: ..."
    assert len(messages) == 2 and len(steps) == 1, result.stderr[-3000:]  # both processes, at the same step
    assert not (run_dir / "final").exists() and not (run_dir / "summary.json").exists()


def test_non_finite_weights_are_never_written_as_checkpoint_or_export(corpus, tmp_path):
    """The second line of defence: a model whose weights went NaN (here: set so on the real trainer) is
    refused at the checkpoint and at the final export, and nothing is half-written."""
    trainer = Trainer(train_config_from(train_config(corpus, tmp_path / "run", max_steps=1), [], "probe"))
    with torch.no_grad():
        trainer.accelerator.unwrap_model(trainer.model).projector.mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="weights hold NaN or infinite values, so the checkpoint"):
        trainer.save_checkpoint()
    with pytest.raises(TrainingDivergedError, match="so the final model was not written"):
        trainer.export()
    assert checkpoint_names(tmp_path / "run") == [] and not (tmp_path / "run" / "final").exists()
    assert not list((tmp_path / "run").glob(".final*"))


@pytest.mark.parametrize("later", ["alike", "failing"])
def test_a_diverged_policy_is_checked_before_a_checkpoint_even_after_a_step_that_trained_nothing(tmp_path, later):
    """Step 1 trains with a learning rate far too high and writes nothing; in step 2 the groups all score
    alike (dynamic sampling drops them) or the reward fails on every sample (none is scored), so nothing
    trains and no loss is checked; its checkpoint must still not be the diverged policy."""
    from magma.rl.rewards import resolve_reward
    from magma.rl.text_task import TextTask

    overrides = [f"run_dir={tmp_path / 'rl'}", "logging.progress=false", "max_steps=3", "optim.lr=1e30"]
    overrides += ["checkpoint.every=2", "eval.every=0", "algorithm.drop_zero_variance_groups=true"]
    config = load_rl_config("text-digits", overrides)
    trainer = GRPOTrainer(config)
    digits = resolve_reward("digit_fraction")

    def first_step_only(prompt: str, text: str, meta: dict) -> float:
        if trainer.state.step == 0:
            return digits(prompt, text, meta)
        if later == "failing":
            raise ValueError("this reward fails after step 1")
        return 0.0

    trainer.task = TextTask(config, trainer.processor, reward=first_step_only)
    with pytest.raises(TrainingDivergedError, match="training stopped at step 2: log-probs of the updated policy"):
        trainer.train()
    assert trainer.state.step == 1 and checkpoint_names(tmp_path / "rl") == []
    assert not (tmp_path / "rl" / "final").exists()


def test_rl_and_lapa_runs_that_diverge_stop_before_anything_non_finite_is_written(tmp_path):
    rl = load_rl_config(
        "text-digits",
        [f"run_dir={tmp_path / 'rl'}", "logging.progress=false", "max_steps=3", "optim.lr=1e30", "checkpoint.every=1"],
    )
    with pytest.raises(TrainingDivergedError, match="training stopped at step 1: log-probs of the updated policy"):
        GRPOTrainer(rl).train()  # stopped before the step's checkpoint
    assert not (tmp_path / "rl" / "final").exists() and checkpoint_names(tmp_path / "rl") == []
    # without a checkpoint or evaluation due, the next rollout samples from the overflowing policy (no
    # crash) and that step's loss check stops the run before its update
    quiet = [f"run_dir={tmp_path / 'rl-quiet'}", "logging.progress=false", "max_steps=4", "optim.lr=1e30"]
    quiet += ["checkpoint.every=0", "eval.every=0"]
    with pytest.raises(TrainingDivergedError, match=r"training stopped at step 2: .*not finite"):
        GRPOTrainer(load_rl_config("text-digits", quiet)).train()
    assert not (tmp_path / "rl-quiet" / "final").exists() and checkpoint_names(tmp_path / "rl-quiet") == []

    videos = tmp_path / "videos"
    write_motion_videos(videos, count=4, size=32, frames=12, fps=10.0, seed=0)
    lapa = {
        "run_dir": str(tmp_path / "lapa"),
        "max_steps": 6,
        "batch_size": 8,
        "quantizer": QUANTIZER,
        "data": {"videos": [str(videos)], "window_s": 0.2},
        "optim": {"lr": 1e30},
        "codebook": {"every": 2},
        "checkpoint": {"every": 1},
        "logging": {"every": 1, "progress": False},
    }
    with pytest.raises(TrainingDivergedError, match=r"reconstruction loss nan.*not finite"):
        QuantizerTrainer(quantizer_train_config_from(lapa, [], "probe")).train()
    assert not (tmp_path / "lapa" / "final").exists()


# ---- cut and garbled checkpoints -----------------------------------------------------------------
def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_cut_or_garbled_model_checkpoint_is_one_message_naming_the_file(tmp_path, tiny_model, tiny_processor):
    damages = {
        "cut in half": cut_in_half,
        "zeros": lambda path: path.write_bytes(bytes(path.stat().st_size)),
        "wrong header": lambda path: path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:]),
        "empty": lambda path: path.write_bytes(b""),
    }
    for name, damage in damages.items():
        directory = tiny_model.save_pretrained(tmp_path / name, tokenizer=tiny_processor.tokenizer)
        damage(directory / "model.safetensors")
        with pytest.raises(CheckpointError, match=r"cannot read '.*model\.safetensors'.*re-export"):
            MagmaForCausalLM.from_pretrained(directory)

    sharded = tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    cut_in_half(shard)
    with pytest.raises(CheckpointError, match=rf"cannot read '.*{shard.name}'"):
        MagmaForCausalLM.from_pretrained(sharded)
    (sharded / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"index\.json' \(it holds no JSON object\)"):
        MagmaForCausalLM.from_pretrained(sharded)
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": [1]}')
    with pytest.raises(CheckpointError, match="has no weight_map object"):
        MagmaForCausalLM.from_pretrained(sharded)
    garbled_config = tiny_model.save_pretrained(tmp_path / "config")
    (garbled_config / "config.json").write_bytes(b"\x89\xff\x00 not json")
    with pytest.raises(CheckpointError, match=r"cannot read '.*config\.json'"):
        MagmaForCausalLM.from_pretrained(garbled_config)

    quantizer = LatentActionQuantizer(quantizer_train_config_from({"quantizer": QUANTIZER}, [], "probe").quantizer)
    lapa_directory = quantizer.save_pretrained(tmp_path / "quantizer")
    cut_in_half(lapa_directory / "model.safetensors")
    with pytest.raises(QuantizerCheckpointError, match=r"cannot read '.*model\.safetensors'.*re-export"):
        LatentActionQuantizer.from_pretrained(lapa_directory)

    other = dict(QUANTIZER, dim=QUANTIZER["dim"] * 2)
    mismatched = quantizer.save_pretrained(tmp_path / "mismatched")
    config_path = mismatched / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **other}))
    with pytest.raises(QuantizerCheckpointError, match=r"do not fit its config\.json"):
        LatentActionQuantizer.from_pretrained(mismatched)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cut_pretrained_vision_weights_are_one_message_naming_the_file(tmp_path, tiny_model, suffix):
    from safetensors.torch import save_file

    from magma.vision_tower import PretrainedWeightsError, read_state_dict

    state = {name: tensor.contiguous() for name, tensor in tiny_model.state_dict().items() if "vision" in name}
    path = tmp_path / f"trunk{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    assert read_state_dict(path).keys() == state.keys()
    cut_in_half(path)
    with pytest.raises(PretrainedWeightsError, match=rf"cannot read weights from '.*trunk\{suffix}'.*again"):
        read_state_dict(path)


def test_fine_tuning_from_a_cut_checkpoint_is_one_line_through_the_cli(corpus, tmp_path, tiny_model, tiny_processor):
    directory = tiny_model.save_pretrained(tmp_path / "base", tokenizer=tiny_processor.tokenizer)
    cut_in_half(directory / "model.safetensors")
    path = write_yaml(tmp_path / "tune.yaml", train_config(corpus, tmp_path / "run", model=str(directory)))
    assert_one_clear_error(
        agent_in_process("train", "--config", str(path)), str(directory / "model.safetensors"), "re-export"
    )


@pytest.fixture(scope="module")
def two_checkpoint_run(corpus, tmp_path_factory):
    """A run with checkpoints at steps 1 and 2, trained once; each test damages its own copy."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    Trainer(
        train_config_from(train_config(corpus, run_dir, max_steps=2, checkpoint={"every": 1, "keep": 2}), [], "probe")
    ).train()
    assert checkpoint_names(run_dir) == ["step-00000001", "step-00000002"]
    return run_dir


@pytest.mark.parametrize("broken", ["optimizer.bin", "trainer_state.json"])
def test_resuming_from_a_cut_state_file_names_it_and_the_earlier_checkpoint(
    corpus, tmp_path, two_checkpoint_run, broken
):
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoint_run, run_dir)
    cut_in_half(run_dir / "checkpoints" / "step-00000002" / broken)
    config = train_config(corpus, run_dir, max_steps=3, checkpoint={"every": 1, "keep": 2})
    with pytest.raises(RunDirectoryError, match=rf"{re.escape(broken)}.*the checkpoint of step 1"):
        Trainer(train_config_from(config, [], "probe"), resume=True)


def test_resuming_from_a_cut_checkpoint_names_the_file_and_the_earlier_checkpoint(corpus, tmp_path, two_checkpoint_run):
    broken = "model.safetensors"
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoint_run, run_dir)
    config = train_config(corpus, run_dir, max_steps=2, checkpoint={"every": 1, "keep": 2})
    cut_in_half(run_dir / "checkpoints" / "step-00000002" / broken)

    path = write_yaml(tmp_path / "resume.yaml", config | {"max_steps": 3})
    result = agent_in_process("train", "--config", str(path), "--resume")
    assert_one_clear_error(result, broken, "step-00000002", "the checkpoint of step 1", "--resume")
    assert (run_dir / "checkpoints" / "step-00000002").is_dir()  # nothing was deleted for the user

    # the way on that the message names: move the broken checkpoint away and resume from the one before
    (run_dir / "checkpoints" / "step-00000002").rename(tmp_path / "broken-step-2")
    again = agent_in_process("train", "--config", str(path), "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
