"""Own checkpoint round trips and the import of the public Magma-8B layout, on tiny checkpoints."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import save_torch_state_dict

from data_tools.config_files import ConfigError
from magma.actions import ActionStatistics, ActionStatisticsError
from magma.checkpoint import CheckpointError, load_checkpoint_action_statistics, load_checkpoint_config
from magma.config import load_config
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor
from magma.vision_tower import ConvNextVisionTower, PretrainedWeightsError


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs.as_kwargs()).logits


@pytest.fixture
def tiny_inputs(tiny_processor, image_files):
    return tiny_processor(["<image>\nWhat is shown?", "Hello"], [[image_files[0]], []])


def test_save_load_gives_identical_logits(tmp_path, tiny_model, tiny_processor, tiny_inputs):
    directory = tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer)
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer.json").is_file()
    loaded = MagmaForCausalLM.from_pretrained(directory)
    assert torch.equal(logits_of(tiny_model, tiny_inputs), logits_of(loaded, tiny_inputs))
    processor = MagmaProcessor.from_pretrained(directory)  # the tokenizer travels with the checkpoint
    assert processor.tokenizer.get_vocab() == tiny_processor.tokenizer.get_vocab()
    assert not list(tmp_path.glob(".ckpt.*")), "no staging directory left behind"


def test_large_checkpoints_are_sharded(tmp_path, tiny_model, tiny_inputs):
    directory = tiny_model.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert torch.equal(
        logits_of(tiny_model, tiny_inputs), logits_of(MagmaForCausalLM.from_pretrained(directory), tiny_inputs)
    )


def write_magma8b_layout(model: MagmaForCausalLM, directory, tokenizer_source) -> None:
    """Write `model`'s tensors the way the public Magma-8B checkpoint names and configures them."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("vision_tower.trunk."):
            name = "vision_tower.clip_vision_model.trunk." + name.removeprefix("vision_tower.trunk.")
        elif name.startswith("projector.mlp."):
            name = "multi_modal_projector.proj." + name.removeprefix("projector.mlp.")
        elif name == "projector.row_separator":
            name, tensor = "multi_modal_projector.row_seperator", tensor.reshape(1, 1, -1)
        state[name] = tensor.clone()
    # tensors of the CLIP head that Magma-8B ships and never uses
    state["vision_tower.clip_vision_model.head.mlp.fc1.weight"] = torch.zeros(4, model.config.vision.dims[-1])
    state["vision_tower.clip_vision_model.trunk.head.norm.weight"] = torch.ones(model.config.vision.dims[-1])
    save_torch_state_dict(state, directory, max_shard_size="1MB")
    text = model.config.text
    tokens = model.config.tokens
    config = {
        "architectures": ["MagmaForCausalLM"],
        "model_type": "magma",
        "image_token_index": tokens.image_token_id,
        "img_size": model.config.image.base_size,
        "pad_token_id": tokens.pad_token_id,
        "text_config": {
            "model_type": "llama",
            "vocab_size": text.vocab_size,
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "rope_theta": text.rope_theta,
            "max_position_embeddings": text.max_position_embeddings,
            "rms_norm_eps": text.rms_norm_eps,
            "bos_token_id": tokens.bos_token_id,
            "eos_token_id": tokens.eos_token_ids,
        },
        "vision_config": {
            "vision_backbone": "convnextxxlarge",
            "mm_projector_type": "mlp2x_gelu",
            "img_anyres_strategy": "crop",
            "vision_feature_layer": "clip_vis_dense",
            "mm_use_row_seperator": True,
        },
    }
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "anyres_strategy": "crop",
                "base_img_size": model.config.image.base_size,
                "num_crops": model.config.image.num_crops,
                "image_mean": model.config.image.mean,
                "image_std": model.config.image.std,
                "image_processor_type": "MagmaImageProcessor",
            }
        )
    )
    tokenizer_source.save_pretrained(str(directory))


def test_magma8b_layout_import_matches_our_names(tmp_path, tiny_model, tiny_processor, tiny_inputs):
    ours = tiny_model.save_pretrained(tmp_path / "ours")
    theirs = tmp_path / "magma8b"
    theirs.mkdir()
    write_magma8b_layout(tiny_model, theirs, tiny_processor.tokenizer)
    config = load_checkpoint_config(theirs)
    assert config.vision.dims == tiny_model.config.vision.dims
    assert config.vision.depths == tiny_model.config.vision.depths
    assert config.tokens.image_start_token_id == tiny_model.config.tokens.image_start_token_id
    assert config.tokens.base_vocab_size == tiny_model.config.tokens.base_vocab_size
    imported = MagmaForCausalLM.from_pretrained(theirs)
    native = MagmaForCausalLM.from_pretrained(ours)
    assert torch.equal(logits_of(imported, tiny_inputs), logits_of(native, tiny_inputs))
    processor = MagmaProcessor.from_pretrained(theirs)
    assert processor.config.image.base_size == tiny_model.config.image.base_size


def test_magma8b_layout_reads_rope_from_transformers_5_rope_parameters(tmp_path, tiny_model, tiny_processor):
    theirs = tmp_path / "magma8b"
    theirs.mkdir()
    write_magma8b_layout(tiny_model, theirs, tiny_processor.tokenizer)
    raw = json.loads((theirs / "config.json").read_text())
    text = raw["text_config"]
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    text["rope_parameters"] = {"rope_theta": 123456.0, **scaling, "original_max_position_embeddings": 64}
    del text["rope_theta"]
    (theirs / "config.json").write_text(json.dumps(raw))
    config = load_checkpoint_config(theirs)
    assert config.text.rope_theta == 123456.0
    assert dict(config.text.rope_scaling) == {**scaling, "original_max_position_embeddings": 64}


def test_checkpoint_directory_problems_are_named(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not found"):
        MagmaForCausalLM.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        MagmaForCausalLM.from_pretrained(empty)
    directory = tiny_model.save_pretrained(tmp_path / "ckpt")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        MagmaForCausalLM.from_pretrained(directory)


def test_weights_that_do_not_fit_the_config_are_named(tmp_path, tiny_model):
    directory = tiny_model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    config["text"]["num_hidden_layers"] = 2
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unexpected"):
        MagmaForCausalLM.from_pretrained(directory)


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"vision\.kernel"):
        load_config("magma-tiny", ["vision.kernel=7"])
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("name: x\ntext:\n  hidden_sise: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*text\.hidden_sise"):
        load_config(yaml_file)
    with pytest.raises(ConfigError, match="presets"):
        load_config("magma-huge")


def test_vision_pretrained_loads_open_clip_weights(tmp_path, tiny_config):
    source = ConvNextVisionTower(tiny_config.vision)
    open_clip_style = {f"visual.trunk.{k}": v for k, v in source.trunk.state_dict().items()}
    open_clip_style["visual.head.proj.weight"] = torch.zeros(2, 2)
    torch.save(open_clip_style, tmp_path / "open_clip.pt")
    tiny_config.vision.pretrained = str(tmp_path / "open_clip.pt")
    try:
        loaded = ConvNextVisionTower(tiny_config.vision)
        pixels = torch.randn(1, 3, 64, 64)
        assert torch.equal(source(pixels), loaded(pixels))
        tiny_config.vision.pretrained = str(tmp_path / "missing.safetensors")
        with pytest.raises(PretrainedWeightsError, match="not found"):
            ConvNextVisionTower(tiny_config.vision)
    finally:
        tiny_config.vision.pretrained = None


def test_action_statistics_travel_with_the_checkpoint(tmp_path, tiny_model):
    stats = ActionStatistics.compute(np.random.default_rng(0).normal(size=(500, 7)), mask=[True] * 6 + [False])
    directory = tiny_model.save_pretrained(tmp_path / "ckpt", action_statistics={"bridge": stats})
    loaded = load_checkpoint_action_statistics(directory)
    np.testing.assert_allclose(loaded["bridge"].q99, stats.q99)
    assert loaded["bridge"].mask.tolist() == [True] * 6 + [False]
    bare = tiny_model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ActionStatisticsError, match="dataset_statistics"):
        load_checkpoint_action_statistics(bare)
