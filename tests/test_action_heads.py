"""Action chunks with the token, l1 and flow heads and proprioception: a tiny model of each head overfits a
handful of chunks, padding masks drop exactly the padded steps, save -> load gives the same chunk, and the
whole path runs from a LeRobot dataset through ``agent train`` to a policy answering chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_in_process import agent_in_process
from test_lerobot_dataset import record

from data_tools.config_files import ConfigError
from data_tools.lerobot_dataset import LeRobotDatasetReader, episodes_to_shards
from magma.action_heads import ActionHeadError
from magma.actions import ActionStatistics, RobotActionCodec
from magma.config import load_config
from magma.data.config import DataConfig, SourceConfig
from magma.data.encoding import DataSourceError, SampleEncoder
from magma.data.records import RawSample
from magma.magma8b_layout import Magma8bExportError, export_magma8b
from magma.model import MagmaForCausalLM
from magma.policies.robot import MagmaRobotPolicy
from magma.processor import ActionLayout, MagmaProcessor

CHUNK, ACTION_DIM, STATE_DIM = 4, 3, 2
SMALL = ["text.num_hidden_layers=2", "action.hidden_size=128", "image.base_size=64", "image.num_crops=1"]


def chunk_model(head: str, **extra: int) -> tuple[MagmaForCausalLM, MagmaProcessor]:
    fields = {"chunk_length": CHUNK, "action_dim": ACTION_DIM, "state_dim": STATE_DIM, **extra}
    overrides = [f"action.head={head}", *(f"action.{key}={value}" for key, value in fields.items()), *SMALL]
    torch.manual_seed(0)
    model = MagmaForCausalLM(load_config("magma-tiny", overrides))
    return model, MagmaProcessor.from_config(model.config)


def statistics(dims: int) -> ActionStatistics:
    return ActionStatistics(q01=-np.ones(dims), q99=np.ones(dims), mask=np.ones(dims, dtype=bool))


def chunk_batch(processor: MagmaProcessor, targets: np.ndarray, states: np.ndarray, codec: RobotActionCodec | None):
    """One sample per target chunk: a text prompt naming it, its state, and the chunk (targets or tokens)."""
    layout = ActionLayout.of(processor.config.action)
    samples = []
    for index, (target, state) in enumerate(zip(targets, states, strict=True)):
        turns = [{"from": "human", "value": f"reach goal {index}"}, {"from": "gpt", "value": "<action>"}]
        tokens = None if codec is None else codec.encode(target).ravel().tolist()
        sample = processor.encode(turns, action_token_ids=tokens, action_layout=layout)
        sample.state = state.tolist()
        if codec is None:
            sample.action_targets, sample.action_mask = target.tolist(), [True] * CHUNK
        samples.append(sample)
    return processor.collate(samples)


def policy_for(model: MagmaForCausalLM, processor: MagmaProcessor, seed: int = 0) -> MagmaRobotPolicy:
    codec = RobotActionCodec(statistics(ACTION_DIM), model.config.tokens.base_vocab_size)
    return MagmaRobotPolicy(
        model,
        processor,
        codec,
        prompt="{instruction}",
        state_statistics=statistics(STATE_DIM),
        generator=torch.Generator().manual_seed(seed),
    )


def fixed_flow_loss(model: MagmaForCausalLM, batch) -> float:
    """The flow head's loss at the same noise and times (0.2 .. 1.0) before and after training (its training
    loss is noisy, and near t = 0 its target is unpredictable by design)."""
    with torch.no_grad():
        hidden = model.language_model.model(
            inputs_embeds=model.embed(batch.input_ids, action_slots=batch.action_slots, states=batch.states),
            attention_mask=batch.attention_mask,
        ).last_hidden_state
        condition = model.action_head.query_hidden(hidden, batch.action_slots)
        generator = torch.Generator().manual_seed(123)
        losses = []
        for t in (0.2, 0.4, 0.6, 0.8, 1.0):
            noise = torch.randn(batch.action_targets.shape, generator=generator)
            times = torch.full((len(noise),), t)
            noisy = t * noise + (1 - t) * batch.action_targets
            velocity = model.action_head.decoder.velocity(noisy, times, condition)
            losses.append(float(((velocity - (noise - batch.action_targets)) ** 2).mean()))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("head", ["tokens", "l1", "flow"])
def test_a_tiny_model_of_each_head_overfits_a_handful_of_chunks(head: str):
    rng = np.random.default_rng(0)
    targets = rng.uniform(-0.9, 0.9, (4, CHUNK, ACTION_DIM))
    states = rng.uniform(-1, 1, (4, STATE_DIM))
    model, processor = chunk_model(head)
    codec = RobotActionCodec(statistics(ACTION_DIM), model.config.tokens.base_vocab_size) if head == "tokens" else None
    batch = chunk_batch(processor, targets, states, codec)
    used = [parameter for name, parameter in model.named_parameters() if not name.startswith("vision_tower")]
    optimizer = torch.optim.AdamW(used, lr=2e-3 if head == "flow" else 1e-3)  # text prompts: no image
    steps = {"tokens": 120, "l1": 200, "flow": 250}[head]
    model.train()
    before = fixed_flow_loss(model, batch) if head == "flow" else None
    losses = []
    for _ in range(steps):
        out = model(**batch.as_kwargs())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(float((out.action_loss if head != "tokens" else out.lm_loss).detach()))
    model.eval()
    if head == "flow":
        after = fixed_flow_loss(model, batch)
        assert after <= before / 10, (before, after)
    else:
        assert losses[-1] <= losses[0] / 10, (losses[0], losses[-1])
    policy = policy_for(model, processor)
    chunks = policy.act_batch([{"image": None, "state": s} for s in states], [f"reach goal {i}" for i in range(4)])
    error = np.abs(np.stack(chunks) - targets)
    assert error.mean() < {"tokens": 0.05, "l1": 0.08, "flow": 0.2}[head], error.mean()
    assert chunks[0].shape == (CHUNK, ACTION_DIM)


def test_padding_masks_drop_exactly_the_padded_steps():
    model, processor = chunk_model("l1")
    rng = np.random.default_rng(1)
    targets, states = rng.uniform(-0.5, 0.5, (2, CHUNK, ACTION_DIM)), rng.uniform(-1, 1, (2, STATE_DIM))
    batch = chunk_batch(processor, targets, states, None)
    batch.action_mask[0, 2:] = False  # row 0 ran out of episode after two steps
    model.eval()
    with torch.no_grad():
        base = model(**batch.as_kwargs())
        padded_changed = batch.action_targets.clone()
        padded_changed[0, 2:] += 5.0
        same = model(**{**batch.as_kwargs(), "action_targets": padded_changed})
        valid_changed = batch.action_targets.clone()
        valid_changed[0, 1] += 5.0
        moved = model(**{**batch.as_kwargs(), "action_targets": valid_changed})
    assert base.num_action_values == (2 + CHUNK) * ACTION_DIM
    assert float(same.action_loss) == pytest.approx(float(base.action_loss), abs=1e-7)
    assert float(moved.action_loss) > float(base.action_loss) + 0.5
    batch.action_mask[:] = False
    with torch.no_grad():
        empty = model(**batch.as_kwargs())
    assert empty.num_action_values == 0 and float(empty.action_loss) == 0.0


@pytest.mark.parametrize("head", ["l1", "flow", "tokens"])
def test_save_then_load_gives_the_same_chunk(head: str, tmp_path: Path):
    model, processor = chunk_model(head)
    observation = {"image": None, "state": [0.3, -0.2]}
    before = policy_for(model, processor, seed=7).act_batch([observation], ["reach goal 0"])[0]
    model.save_pretrained(
        tmp_path / "ckpt",
        tokenizer=processor.tokenizer,
        action_statistics={"demo": statistics(ACTION_DIM)},
        state_statistics={"demo": statistics(STATE_DIM)},
    )
    saved = json.loads((tmp_path / "ckpt" / "dataset_statistics.json").read_text())
    assert set(saved["demo"]) == {"action", "state"}
    loaded = MagmaRobotPolicy.from_pretrained(tmp_path / "ckpt", prompt="{instruction}")
    loaded.generator = torch.Generator().manual_seed(7)
    after = loaded.act_batch([observation], ["reach goal 0"])[0]
    assert loaded.model.config.action == model.config.action
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert after.shape == (CHUNK, ACTION_DIM)


def test_bad_requests_of_a_head_name_the_field_and_the_fix(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"action\.head=l1 needs action\.action_dim"):
        load_config("magma-tiny", ["action.head=l1"])
    with pytest.raises(ConfigError, match=r"action\.head='mlp' is not one of"):
        load_config("magma-tiny", ["action.head=mlp"])
    tokens_only = MagmaForCausalLM(load_config("magma-tiny", SMALL))
    processor = MagmaProcessor.from_config(tokens_only.config)
    tokens_only.save_pretrained(
        tmp_path / "tokens", tokenizer=processor.tokenizer, action_statistics={"d": statistics(3)}
    )
    with pytest.raises(ActionHeadError, match=r"has action\.head=tokens; fine-tune it with .*action_head=l1"):
        MagmaRobotPolicy.from_pretrained(tmp_path / "tokens", action_head="l1")
    model, processor = chunk_model("l1")
    policy = policy_for(model, processor)
    with pytest.raises(ActionHeadError, match="observation has no 'state'"):
        policy.act_batch([{"image": None}], ["reach"])
    with pytest.raises(ActionHeadError, match="'state' has 3 values, the model takes 2"):
        policy.act_batch([{"image": None, "state": [1, 2, 3]}], ["reach"])
    with pytest.raises(Magma8bExportError, match=r"action\.head=l1; Magma-8B decodes robot actions as tokens only"):
        export_magma8b(model, tmp_path / "export", processor.tokenizer)


def encoder_for(tmp_path: Path, **action: int) -> SampleEncoder:
    statistics_file = tmp_path / "statistics.json"
    statistics_file.write_text(
        json.dumps({"demo": {"action": statistics(ACTION_DIM).to_dict(), "state": statistics(STATE_DIM).to_dict()}})
    )
    _, processor = chunk_model("l1", **action)
    source = SourceConfig(name="demo", shards=["unused.tar"], action_codec="robot", statistics=str(statistics_file))
    return SampleEncoder(processor, DataConfig(sources=[source]))


def test_a_chunk_or_state_the_data_cannot_fill_is_one_clear_error(tmp_path: Path):
    with pytest.raises(DataSourceError, match=r"2-D state .* action.state_dim=5; set action.state_dim=2"):
        encoder_for(tmp_path, state_dim=5)
    with pytest.raises(DataSourceError, match=r"3-D actions .* action.action_dim=6; set action.action_dim=3"):
        encoder_for(tmp_path, action_dim=6)
    encoder = encoder_for(tmp_path)
    record_two_rows = {
        "id": "s0",
        "conversations": [{"from": "human", "value": "reach"}, {"from": "gpt", "value": "<action>"}],
        "actions": [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]],
        "action_mask": [True, False],
        "state": [0.0, 0.0],
    }
    with pytest.raises(
        DataSourceError, match=r"chunk_length=4 but .* carries 2 future action\(s\); .*--chunk-length 4"
    ):
        encoder(RawSample(source="demo", shard="s.tar", key="0", record=record_two_rows))
    without_state = record_two_rows | {"actions": [[0.1, 0.2, 0.3]] * 4, "action_mask": [True] * 4}
    del without_state["state"]
    with pytest.raises(DataSourceError, match="has no 'state'; rebuild the shards"):
        encoder(RawSample(source="demo", shard="s.tar", key="0", record=without_state))


def test_lerobot_episodes_train_the_l1_head_with_state_and_serve_chunks(tmp_path: Path):
    dataset = record(tmp_path / "so100_demo")
    _, statistics_file = episodes_to_shards(LeRobotDatasetReader(dataset), tmp_path / "shards", chunk_length=CHUNK)
    saved = json.loads(statistics_file.read_text())["so100_demo"]
    assert saved["state"]["mask"] == [True] * 4
    source = {"name": "so100", "shards": [str(tmp_path / "shards" / "*.tar")], "action_codec": "robot"}
    source |= {"statistics": str(statistics_file)}
    config = {
        "name": "chunks",
        "model": "magma-tiny",
        "model_overrides": SMALL,
        "run_dir": str(tmp_path / "run"),
        "max_steps": 3,
        "action_head": "l1",
        "chunk_length": CHUNK,
        "use_state": True,
        "data": {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 8, "max_length": 256, "sources": [source]},
        "optim": {"lr": 1e-3, "schedule": "constant", "vision_tower": {"train": False}},
        "lora": {"enabled": True, "r": 4, "alpha": 8},  # LoRA on the LM; the new head trains whole
        "logging": {"progress": False},
    }
    (tmp_path / "chunks.yaml").write_text(yaml.safe_dump(config))
    result = agent_in_process("train", "--config", str(tmp_path / "chunks.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "action_loss" in line]
    assert len(steps) == 3 and all(line["action_values"] > 0 for line in steps)
    trainable = json.loads((tmp_path / "run" / "summary.json").read_text())["trainable_parameters"]
    assert trainable["vision_tower"] == 0 and trainable["action_head"] > 0
    assert 0 < trainable["language_model"] < 50_000  # adapters only
    policy = MagmaRobotPolicy.from_pretrained(tmp_path / "run" / "final")
    assert policy.model.config.action.head == "l1" and policy.model.config.action.state_dim == 4
    policy.reset({"instruction": "pick up the red cube"})
    chunk = policy.act({"image": np.zeros((48, 64, 3), np.uint8), "state": np.zeros(4)})
    assert chunk.shape == (CHUNK, 4) and np.all(np.isfinite(chunk))

    too_long = config | {"chunk_length": 8, "run_dir": str(tmp_path / "run8")}
    (tmp_path / "chunks8.yaml").write_text(yaml.safe_dump(too_long))
    refused = agent_in_process("train", "--config", str(tmp_path / "chunks8.yaml"))
    assert refused.returncode == 2
    assert "action.chunk_length=8 but" in refused.stderr and "--chunk-length 8" in refused.stderr
