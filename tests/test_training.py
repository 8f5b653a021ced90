"""The training loop for real: magma-tiny on real WebDataset shards, real accelerate (one process
in-process, two processes through `accelerate launch` on CPU with gloo), real kills and resumes."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_in_process import agent_in_process

from data_tools.config_files import ConfigError
from data_tools.synthetic import ROBOT_STATISTICS_FILE, write_synthetic_corpus
from magma.data.shard_index import SampleRef, expand_shards, index_shard, read_raw_sample
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.training.config import OptimConfig, train_config_from
from magma.training.launch import accelerate_train_command
from magma.training.optimization import build_optimizer, build_scheduler, parameter_groups
from magma.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
AGENT = [sys.executable, "-m", "magma.cli.app"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(root, samples_per_source=32, eval_samples_per_source=8, samples_per_shard=8, image_size=48)
    return root


def source(corpus: Path, name: str, split: str = "train", **extra) -> dict:
    entry = {"name": name, "shards": [str(corpus / split / name / "*.tar")], **extra}
    if name == "robot":
        entry |= {"action_codec": "robot", "statistics": str(corpus / ROBOT_STATISTICS_FILE)}
    return entry


def run_config(run_dir: Path, sources: list[dict], **fields) -> dict:
    data = {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 16, "max_length": 256, "sources": sources}
    data |= fields.pop("data", {})
    config = {
        "name": "test",
        "model": "magma-tiny",
        "run_dir": str(run_dir),
        "max_steps": 4,
        "data": data,
        "optim": {"lr": 3e-3, "schedule": "constant", "max_grad_norm": 1.0},
        "logging": {"progress": False},
    }
    for key, value in fields.items():
        config[key] = value | config.get(key, {}) if isinstance(value, dict) else value
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_records(run_dir: Path) -> dict[int, dict]:
    return {record["step"]: record for record in metrics(run_dir) if "loss" in record}


# ---- the model learns ----------------------------------------------------------------------------
def test_tiny_model_overfits_a_handful_of_samples_and_exports_a_usable_model(tmp_path, corpus):
    handful = tmp_path / "handful"
    write_synthetic_corpus(handful, samples_per_source=4, eval_samples_per_source=1, samples_per_shard=4, seed=3)
    ui = {"name": "ui-som", "shards": [str(handful / "train" / "ui-som" / "*.tar")]}
    config = train_config_from(
        run_config(
            tmp_path / "run",
            [ui],
            max_steps=60,
            data={"eval_sources": [ui], "shuffle_buffer": 0},
            optim={"lr": 5e-3},
        ),
        [],
        "test",
    )
    summary = Trainer(config).train()
    losses = [record["loss"] for record in step_records(tmp_path / "run").values()]
    assert losses[-1] < losses[0] / 20, losses
    assert summary["eval"]["eval/ui-som/ui_exact_match"] == 1.0  # every answer of the handful is right
    assert summary["eval"]["eval/ui-som/samples"] == 4

    model = MagmaForCausalLM.from_pretrained(tmp_path / "run" / "final")
    processor = MagmaProcessor.from_pretrained(tmp_path / "run" / "final")
    shard = expand_shards(ui["shards"])[0]
    raw = read_raw_sample(SampleRef("ui-som", shard, index_shard(shard).samples[0]))
    question = raw.record["conversations"][0]["value"]
    inputs = processor(question, [raw.images[0]])
    tokens = model.generate(**inputs.generation_kwargs(), max_new_tokens=12, do_sample=False)
    answer = processor.decode(tokens[0, inputs.input_ids.shape[1] :])
    assert answer == raw.record["conversations"][1]["value"]


def write_corrupt_shard(path: Path) -> Path:
    """One sample whose PNG member is garbage and one whose JSON does not parse."""
    record = {
        "id": "broken",
        "conversations": [{"from": "human", "value": "<image>\nGo."}, {"from": "gpt", "value": "<action>"}],
        "actions": [0.0] * 7,
    }
    members = {
        "000000000.000.png": b"\x89PNG not really",
        "000000000.json": json.dumps(record).encode(),
        "000000001.json": b"{not json",
    }
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_robot_actions_train_as_tokens_and_statistics_ship_with_the_model(tmp_path, corpus):
    robot = source(corpus, "robot")
    robot["shards"].append(str(write_corrupt_shard(tmp_path / "corrupt.tar")))
    config = train_config_from(
        run_config(tmp_path / "run", [robot], max_steps=3, data={"eval_sources": [source(corpus, "robot", "eval")]}),
        [],
        "test",
    )
    summary = Trainer(config).train()
    assert summary["skipped"] == {"corrupt image": 1, "invalid json": 1}  # skipped, counted, the run went on
    assert 0.0 <= summary["eval"]["eval/robot/action_token_accuracy"] <= 1.0
    assert summary["eval"]["eval/robot/samples"] == 8
    statistics = json.loads((tmp_path / "run" / "final" / ROBOT_STATISTICS_FILE).read_text())
    assert set(statistics) == {"robot"} and statistics["robot"]["action"]["mask"][-1] is False


# ---- what trains ---------------------------------------------------------------------------------
def test_frozen_vision_tower_stays_put_and_module_learning_rates_apply(tmp_path, corpus):
    config = train_config_from(
        run_config(
            tmp_path / "run",
            [source(corpus, "ui-som")],
            max_steps=2,
            seed=7,
            optim={"vision_tower": {"train": False}, "projector": {"lr": 1e-2}},
        ),
        [],
        "test",
    )
    summary = Trainer(config).train()
    assert summary["trainable_parameters"]["vision_tower"] == 0
    torch.manual_seed(7)
    initial = MagmaForCausalLM.from_config("magma-tiny")
    trained = MagmaForCausalLM.from_pretrained(tmp_path / "run" / "final")
    for name, tensor in initial.vision_tower.state_dict().items():
        assert torch.equal(tensor, trained.vision_tower.state_dict()[name]), name
    assert not torch.equal(initial.projector.mlp[0].weight, trained.projector.mlp[0].weight)

    groups = {group["name"]: group["lr"] for group in parameter_groups(initial, config.optim)}
    assert groups["projector"] == 1e-2 and groups["language_model"] == config.optim.lr
    logged = step_records(tmp_path / "run")[2]
    assert logged["lr/projector"] == 1e-2 and "lr/vision_tower" not in logged  # frozen: no group


def test_fine_tuning_starts_from_a_checkpoint_directory(tmp_path, corpus):
    base = run_config(tmp_path / "base", [source(corpus, "robot")], max_steps=1, seed=3)
    Trainer(train_config_from(base, [], "test")).train()
    tune = run_config(
        tmp_path / "tune",
        [source(corpus, "ui-som")],
        model=str(tmp_path / "base" / "final"),
        max_steps=2,
        optim={"vision_tower": {"train": False}},
    )
    Trainer(train_config_from(tune, [], "test")).train()
    before = MagmaForCausalLM.from_pretrained(tmp_path / "base" / "final").state_dict()
    after = MagmaForCausalLM.from_pretrained(tmp_path / "tune" / "final").state_dict()
    vision = [name for name in before if name.startswith("vision_tower.")]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    assert not torch.equal(before["projector.mlp.0.weight"], after["projector.mlp.0.weight"])
    statistics = json.loads((tmp_path / "tune" / "final" / ROBOT_STATISTICS_FILE).read_text())
    assert set(statistics) == {"robot"}  # the base model's robot statistics travel on


def test_lora_trains_adapters_only_and_exports_merged_weights(tmp_path, corpus):
    config = train_config_from(
        run_config(
            tmp_path / "run",
            [source(corpus, "ui-som")],
            max_steps=3,
            lora={"enabled": True, "r": 4, "alpha": 8},
            optim={"vision_tower": {"train": False}, "projector": {"train": False}, "lr": 1e-2},
        ),
        [],
        "test",
    )
    summary = Trainer(config).train()
    text = MagmaForCausalLM.from_config("magma-tiny").config.text
    kv_width = text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    per_layer = 4 * ((text.hidden_size + text.hidden_size) * 2 + (text.hidden_size + kv_width) * 2)
    assert summary["trainable_parameters"]["language_model"] == per_layer * text.num_hidden_layers
    trained = MagmaForCausalLM.from_pretrained(tmp_path / "run" / "final")  # plain names: adapters merged
    torch.manual_seed(0)
    initial = MagmaForCausalLM.from_config("magma-tiny")
    layer = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(initial.state_dict()[layer], trained.state_dict()[layer])
    mlp = "language_model.model.layers.0.mlp.up_proj.weight"
    assert torch.equal(initial.state_dict()[mlp], trained.state_dict()[mlp])


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    model = torch.nn.Module()
    for name in ("vision_tower", "projector", "language_model"):
        setattr(model, name, torch.nn.Linear(2, 2))
    optim = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, max_steps=100)
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[10] == pytest.approx(1.0) and rates[99] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


# ---- processes -----------------------------------------------------------------------------------
def launch(config_path: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    """``agent train`` in a process of its own (``processes`` > 1: through ``accelerate launch``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        command = [*AGENT, "train", "--config", str(config_path), *extra]
    else:
        accelerate_config = REPO / "configs" / "accelerate" / "cpu-2proc.yaml"
        command = accelerate_train_command(accelerate_config, ["--config", str(config_path), *extra])
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, cwd=REPO)


def train_in_process(config_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``agent train`` in this process (the same entry point, without a new interpreter's imports)."""
    return agent_in_process("train", "--config", str(config_path), *extra)


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, corpus):
    ordered = {"split": "samples", "shuffle_buffer": 0, "shuffle_shards": False}
    one = run_config(tmp_path / "one", [source(corpus, "ui-som")], max_steps=4, data={"batch_size": 4, **ordered})
    two = run_config(tmp_path / "two", [source(corpus, "ui-som")], max_steps=4, data={"batch_size": 2, **ordered})
    for name, config, run in (("one", one, train_in_process), ("two", two, lambda path: launch(path, 2))):
        result = run(write_yaml(tmp_path / f"{name}.yaml", config))
        assert result.returncode == 0, result.stderr[-3000:]
    single, double = step_records(tmp_path / "one"), step_records(tmp_path / "two")
    assert sorted(single) == sorted(double) == [1, 2, 3, 4]
    for step in single:
        assert double[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4, abs=1e-5), step
        assert double[step]["label_tokens"] == single[step]["label_tokens"]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["samples"] == 16


def test_killed_run_resumes_exactly(tmp_path, corpus):
    sources = [source(corpus, "ui-som", weight=0.5), source(corpus, "robot", weight=0.5)]
    fields = {"max_steps": 24, "checkpoint": {"every": 4, "keep": 2}, "data": {"num_workers": 2}}
    straight = write_yaml(tmp_path / "straight.yaml", run_config(tmp_path / "straight", sources, **fields))
    assert train_in_process(straight).returncode == 0  # the reference; the killed run is a process of its own

    config = write_yaml(tmp_path / "killed.yaml", run_config(tmp_path / "killed", sources, **fields))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    stderr_path = tmp_path / "killed.stderr"
    with stderr_path.open("w") as stderr:  # a file, not a pipe: an unread pipe that fills up would stall the run
        process = subprocess.Popen(
            [*AGENT, "train", "--config", str(config)],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    checkpoint = tmp_path / "killed" / "checkpoints" / "step-00000008"
    deadline = time.monotonic() + 1800  # a condition polled with a generous bound (loaded machines are slow)
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the poll interval of the condition above, not a wait for an event
    os.killpg(process.pid, signal.SIGKILL)  # the trainer and its dataloader workers, mid-run
    process.wait()
    assert checkpoint.exists(), stderr_path.read_text()[-3000:]

    resumed = train_in_process(config, "--resume")  # the kill needed a process of its own, the resume does not
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = step_records(tmp_path / "straight"), step_records(tmp_path / "killed")
    assert sorted(got) == list(range(1, 25))
    for step in expected:
        assert got[step]["batch_digest"] == expected[step]["batch_digest"], step  # the same batches
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5, abs=1e-6), step
        assert got[step]["lr/language_model"] == pytest.approx(expected[step]["lr/language_model"]), step


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_one_clear_message_and_nothing_is_overwritten(tmp_path, corpus):
    good = run_config(tmp_path / "run", [source(corpus, "ui-som")], max_steps=1)
    path = write_yaml(tmp_path / "good.yaml", good)

    missing = train_in_process(path, "data.sources.0.shards=[/nowhere/shard-*.tar]")
    assert missing.returncode == 2 and "/nowhere/shard-*.tar" in missing.stderr
    assert "Traceback" not in missing.stderr

    unknown = train_in_process(path, "optim.learning_rate=1e-4")
    assert unknown.returncode == 2 and "learning_rate" in unknown.stderr and "Traceback" not in unknown.stderr

    with pytest.raises(ConfigError, match="weight"):
        train_config_from(good, ["data.sources.0.weight=0"], "test")

    assert train_in_process(path).returncode == 0
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    metrics_before = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train_in_process(path)
    assert again.returncode == 2 and "--resume" in again.stderr
    other = train_in_process(path, "--resume", "optim.lr=0.5")
    assert other.returncode == 2 and "optim.lr" in other.stderr and "another config" in other.stderr
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics_before


def test_accumulation_matches_one_big_batch(tmp_path, corpus):
    ordered = {"split": "samples", "shuffle_buffer": 0, "shuffle_shards": False}
    sources = [source(corpus, "ui-som")]
    big = run_config(tmp_path / "big", sources, max_steps=3, data={"batch_size": 4, **ordered})
    accumulated = run_config(
        tmp_path / "accumulated", sources, max_steps=3, grad_accum_steps=2, data={"batch_size": 2, **ordered}
    )
    Trainer(train_config_from(big, [], "test")).train()
    Trainer(train_config_from(accumulated, [], "test")).train()
    expected, got = step_records(tmp_path / "big"), step_records(tmp_path / "accumulated")
    for step in expected:
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5), step
        assert got[step]["batch_digest"] == expected[step]["batch_digest"], step


def test_bf16_autocast_gradient_checkpointing_and_tensorboard(tmp_path, corpus):
    config = run_config(
        tmp_path / "run",
        [source(corpus, "ui-som"), source(corpus, "video-tom")],
        max_steps=2,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        logging={"trackers": ["tensorboard"]},
    )
    summary = Trainer(train_config_from(config, [], "test")).train()
    assert summary["final_loss"] is not None and summary["final_loss"] == summary["final_loss"]  # not NaN
    assert list((tmp_path / "run").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    trained = MagmaForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not trained.config.text.gradient_checkpointing  # a training setting, not part of the model


def test_action_token_accuracy_counts_exactly_the_action_tokens_predicted(tiny_model, tiny_processor):
    """The eval metric against an independent count: the argmax of the full logits at each labelled action
    position (the scorer reads the labelled-rows predictions instead), and a hand-set prediction."""
    from magma.data.records import TrainBatch
    from magma.training.evaluation import BatchScorer, EvalTotals

    base = tiny_processor.config.tokens.base_vocab_size
    actions = [base - 1, base - 40, base - 7, base - 200, base - 3, base - 90, base - 128]
    robot = tiny_processor.encode(
        [{"from": "human", "value": "Pick up the cup."}, {"from": "gpt", "value": "<action>"}],
        action_token_ids=actions,
    )
    chat = tiny_processor.encode([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there."}])
    inputs = tiny_processor.collate([robot, chat])
    batch = TrainBatch(inputs=inputs, sample_ids=["r", "c"], sources=["robot", "chat"])
    with torch.no_grad():
        out = tiny_model.eval()(**inputs.as_kwargs(), return_label_predictions=True)
        logits = tiny_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
    targets = inputs.labels[:, 1:]
    is_action = (targets >= base - 256) & (targets < base)
    assert int(is_action.sum()) == len(actions) and bool(is_action[1].sum() == 0)
    expected = int((logits[:, :-1].argmax(-1) == targets)[is_action].sum())
    scorer = BatchScorer(tiny_processor.tokenizer, base, action_sources={"robot"})
    totals = EvalTotals()
    scorer.add(totals, batch, out.loss, out.num_label_tokens, out.label_predictions)
    assert (totals.action_tokens, totals.action_correct) == (len(actions), expected)
    # predictions that get the first three actions (and every other labelled token) right: exactly 3 of 7
    forced = out.label_predictions.clone()
    row_zero = int((targets[0] != -100).sum())
    gold = targets[0][targets[0] != -100]
    gold_is_action = is_action[0][targets[0] != -100]  # among the row's labelled tokens
    first_action = int(gold_is_action.nonzero()[0])
    wrong = (gold + 1) % tiny_processor.config.text.vocab_size
    right = (torch.arange(row_zero) < first_action + 3) | ~gold_is_action  # the end-of-turn token is right too
    forced[:row_zero] = torch.where(right, gold, wrong)
    totals = EvalTotals()
    scorer.add(totals, batch, out.loss, out.num_label_tokens, forced)
    assert totals.metrics("eval")["eval/action_token_accuracy"] == pytest.approx(3 / 7)
