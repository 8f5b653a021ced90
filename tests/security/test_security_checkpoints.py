"""Hostile checkpoint configs and command-line overrides: a config.json read from disk is literal (no
``${oc.env:...}`` interpolation), its sizes are bounded, deep or odd JSON is one message, and an override
that is not YAML is one message. Each reaches the user as one ``error:`` line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_cli import agent, assert_one_clear_error
from cli_in_process import agent_in_process

from data_tools.config_files import ConfigError
from magma.checkpoint import CheckpointError, load_checkpoint_config
from magma.config import load_config
from magma.configuration_magma import MagmaConfig
from robot.daemon_config import load_daemon_config

SECRET = "SECRET-12345"


def agent_with_secret(*args: str):
    return agent(*args, PROBE_SECRET=SECRET)


def write_checkpoint_config(directory: Path, **changes: Any) -> Path:
    """A tiny own-format checkpoint's config.json with dotted-key ``changes`` (``text__hidden_size=...``)."""
    config = {"format": "magma-agent-toolkit", **load_config("magma-tiny").to_dict()}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# ---- interpolation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["name", "tokenizer", "text__rope_scaling"])
def test_a_checkpoint_config_never_resolves_interpolations(tmp_path, monkeypatch, key):
    monkeypatch.setenv("PROBE_SECRET", SECRET)
    value: Any = "${oc.env:PROBE_SECRET}"
    if key == "text__rope_scaling":
        value = {"rope_type": "linear", "factor": "${oc.env:PROBE_SECRET}"}
    directory = write_checkpoint_config(tmp_path / "ck", **{key: value})
    with pytest.raises(CheckpointError, match="interpolation") as caught:
        load_checkpoint_config(directory)
    assert SECRET not in str(caught.value)


def test_agent_model_info_refuses_an_interpolated_name_without_printing_the_secret(tmp_path, monkeypatch):
    directory = write_checkpoint_config(tmp_path / "ck", name="${oc.env:PROBE_SECRET}")
    monkeypatch.setenv("PROBE_SECRET", SECRET)
    result = agent_in_process("model", "info", str(directory))  # the process boundary is not what is checked
    assert_one_clear_error(result, "name", "interpolation")
    assert SECRET not in result.stdout + result.stderr


def test_plain_data_is_literal_but_the_users_yaml_and_overrides_may_interpolate(monkeypatch):
    monkeypatch.setenv("PROBE_SECRET", SECRET)
    with pytest.raises(ConfigError, match="interpolation"):
        MagmaConfig.from_dict({"name": "${oc.env:PROBE_SECRET}"})
    assert load_config("magma-tiny", ["name=${oc.env:PROBE_SECRET}"]).name == SECRET  # the user's own command line


# ---- sizes and shapes -------------------------------------------------------------------------------------
HOSTILE_CONFIGS = {
    "huge_layers": ({"text__num_hidden_layers": 10**9}, "text.num_hidden_layers"),
    "huge_hidden": ({"text__hidden_size": 10**12, "text__intermediate_size": 10**12}, "text.hidden_size"),
    "huge_vocab": ({"text__vocab_size": 2**40}, "text.vocab_size"),
    "huge_heads": ({"text__num_attention_heads": 2**20, "text__num_key_value_heads": 2**20}, "num_attention_heads"),
    "huge_positions": ({"text__max_position_embeddings": 10**12}, "text.max_position_embeddings"),
    "huge_depth": ({"vision__depths": [1, 1, 10**8, 1]}, "vision.depths.2"),
    "huge_dim": ({"vision__dims": [32, 64, 128, 10**9]}, "vision.dims.3"),
    "huge_num_crops": ({"image__num_crops": 10**9}, "image.num_crops"),
    "huge_base_size": ({"image__base_size": 10**9}, "image.base_size"),
    "huge_pixels": ({"image__base_size": 4096, "image__num_crops": 64}, "pixels per image"),
    "huge_parameters": (
        {"text__num_hidden_layers": 1024, "text__hidden_size": 65536, "text__intermediate_size": 262144},
        "parameters",
    ),
    "mean_length": ({"image__mean": [0.5]}, "image.mean"),
    "std_length": ({"image__std": [0.5, 0.5, 0.5, 0.5]}, "image.std"),
    "negative_token": ({"tokens__pad_token_id": -5}, "tokens.pad_token_id"),
    "rope_type": ({"text__rope_scaling": {"type": "evil", "factor": -1}}, "text.rope_scaling"),
    "rope_factor": ({"text__rope_scaling": {"type": "linear", "factor": -1}}, "text.rope_scaling.factor"),
    "rope_missing_key": ({"text__rope_scaling": {"type": "linear"}}, "text.rope_scaling"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_checkpoint_sizes_are_bounded_at_load(tmp_path, case):
    changes, key = HOSTILE_CONFIGS[case]
    directory = write_checkpoint_config(tmp_path / case, **changes)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_checkpoint_config(directory)


def test_agent_model_info_on_a_hostile_checkpoint_is_one_message(tmp_path):
    # the same check as above, once through the CLI: before, this case ran until memory ran out
    directory = write_checkpoint_config(tmp_path / "huge_num_crops", **HOSTILE_CONFIGS["huge_num_crops"][0])
    assert_one_clear_error(agent_with_secret("model", "info", str(directory)), "image.num_crops")


def test_a_deeply_nested_config_json_is_one_message(tmp_path):
    directory = tmp_path / "deep"
    directory.mkdir()
    (directory / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint_config(directory)
    assert_one_clear_error(agent_with_secret("model", "info", str(directory)), "nested too deeply")


def test_a_value_nested_deep_inside_a_readable_config_is_one_message(tmp_path):
    value: Any = "x"
    for _ in range(700):  # below the JSON parser's limit, deep enough for OmegaConf's recursion
        value = [value]
    directory = write_checkpoint_config(tmp_path / "deep_value", text__rope_scaling={"factor": value})
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint_config(directory)


def test_agent_train_with_a_hostile_checkpoint_as_model_is_one_message(tmp_path):
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    odd_rope = write_checkpoint_config(tmp_path / "rope", text__rope_scaling={"type": "evil", "factor": -1})
    for directory, expected in ((deep, "nested too deeply"), (odd_rope, "evil")):
        run_dir = tmp_path / f"run-{directory.name}"
        result = agent("train", "--config", "pretrain-tiny", f"model={directory}", f"run_dir={run_dir}")
        assert_one_clear_error(result, expected)


def test_the_presets_still_load():
    for name in ("magma-tiny", "magma-100m", "magma-8b"):
        assert load_config(name).name == name


# ---- overrides that are not YAML --------------------------------------------------------------------------
@pytest.mark.parametrize("override", ["optim.lr=*", "name=@x", "name=[a", "name={a: "])
def test_an_override_that_is_not_yaml_is_a_config_error(override):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("magma-tiny", [override])


def test_agent_train_and_robot_run_report_a_bad_override_in_one_line():
    assert_one_clear_error(agent_in_process("train", "--config", "pretrain-tiny", "optim.lr=*"), "optim.lr=*", "quote")
    assert_one_clear_error(agent_in_process("robot", "run", "--config", "sim-tabletop", "name=@x"), "name=@x", "quote")
    with pytest.raises(ConfigError, match="quote"):
        load_daemon_config("sim-tabletop", ["name=@x"])


def test_deeply_nested_action_statistics_and_quantizer_configs_are_one_message(tmp_path):
    from lapa.quantizer import LatentActionQuantizer, QuantizerCheckpointError
    from magma.actions.robot import ActionStatisticsError, load_action_statistics

    statistics = tmp_path / "dataset_statistics.json"
    statistics.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ActionStatisticsError, match="not valid JSON"):
        load_action_statistics(statistics)
    quantizer = tmp_path / "quantizer"
    quantizer.mkdir()
    (quantizer / "config.json").write_text("{" + '"a":' * 100_000 + "1" + "}" * 100_000)
    (quantizer / "model.safetensors").write_bytes(b"")
    with pytest.raises(QuantizerCheckpointError):
        LatentActionQuantizer.from_pretrained(quantizer)
