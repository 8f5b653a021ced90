"""Export to the public Magma-8B layout (microsoft/Magma-8B) and the special token ids of both layouts, on tiny
checkpoints: import -> export -> import is lossless, and what the layout cannot hold is one clear error.

(Microsoft's own code loading an export is checked by ``scripts/interop_magma.py``, in its own venv.)
"""

import json

import pytest
import torch
from agent_cli import assert_one_clear_error
from cli_in_process import agent_in_process
from safetensors import safe_open

from magma.checkpoint import CheckpointError, load_checkpoint_config, weight_files
from magma.config import load_config
from magma.magma8b_layout import Magma8bExportError, check_tokenizer_token_ids, export_magma8b
from magma.model import MagmaForCausalLM

TINY_BACKBONE = "convnextxxlarge"  # the hub name whose open_clip config would describe the tiny trunk


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs.as_kwargs()).logits


def stored_tensors(directory):
    tensors = {}
    for name, path in weight_files(directory).items():
        with safe_open(str(path), framework="pt") as handle:
            tensors[name] = handle.get_tensor(name)
    return tensors


def config_fields(model):
    """The config as a checkpoint holds it, less the tokenizer's location (the directory it was read from)."""
    return {key: value for key, value in model.config.to_dict().items() if key != "tokenizer"}


@pytest.fixture
def tiny_inputs(tiny_processor, image_files):
    return tiny_processor(["<image>\nWhat is shown?", "<image>\nAnd here?"], [[image_files[0]], [image_files[1]]])


def test_import_export_import_is_lossless(tmp_path, tiny_model, tiny_processor, tiny_inputs):
    first = export_magma8b(tiny_model, tmp_path / "first", tiny_processor.tokenizer, vision_backbone=TINY_BACKBONE)
    imported = MagmaForCausalLM.from_pretrained(first)
    assert torch.equal(logits_of(imported, tiny_inputs), logits_of(tiny_model, tiny_inputs))

    second = export_magma8b(
        imported, tmp_path / "second", imported_tokenizer(first), vision_backbone=TINY_BACKBONE, max_shard_size="1MB"
    )
    index = json.loads((second / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "sharded above max_shard_size"
    again = MagmaForCausalLM.from_pretrained(second)
    ours, theirs = imported.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert config_fields(again) == config_fields(imported)
    assert torch.equal(logits_of(again, tiny_inputs), logits_of(imported, tiny_inputs))
    first_files, second_files = stored_tensors(first), stored_tensors(second)
    assert first_files.keys() == second_files.keys()
    assert all(torch.equal(first_files[name], second_files[name]) for name in first_files)
    assert not list(tmp_path.glob(".first.*")) and not list(tmp_path.glob(".second.*")), "no staging left"


def imported_tokenizer(directory):
    from magma.tokenizer import load_tokenizer

    return load_tokenizer(directory)


def test_export_writes_their_names_config_and_tokenizer(tmp_path, tiny_model, tiny_processor):
    directory = export_magma8b(tiny_model, tmp_path / "magma", tiny_processor.tokenizer, vision_backbone=TINY_BACKBONE)
    names = set(stored_tensors(directory))
    assert "multi_modal_projector.row_seperator" in names and "multi_modal_projector.proj.2.weight" in names
    assert "vision_tower.clip_vision_model.trunk.stem.0.weight" in names
    # the CLIP head their open_clip vision model holds, so their loader reports no missing tensor
    head = {"vision_tower.clip_vision_model.head.proj.weight", "vision_tower.clip_vision_model.trunk.head.norm.weight"}
    assert head <= names
    assert not any(name.startswith(("vision_tower.trunk.", "projector.")) for name in names)
    config = json.loads((directory / "config.json").read_text())
    tokens = tiny_model.config.tokens
    assert config["model_type"] == "magma" and config["image_token_index"] == tokens.image_token_id
    assert config["auto_map"]["AutoModelForCausalLM"] == "microsoft/Magma-8B--modeling_magma.MagmaForCausalLM"
    vision = config["vision_config"]
    assert vision["mm_projector_type"] == "mlp2x_gelu_segtokv0" and vision["vision_backbone"] == TINY_BACKBONE
    assert vision["mm_hidden_size"] == tiny_model.config.vision.dims[-1]
    assert config["text_config"]["hidden_size"] == tiny_model.config.text.hidden_size
    preprocessor = json.loads((directory / "preprocessor_config.json").read_text())
    assert preprocessor["base_img_size"] == tiny_model.config.image.base_size
    assert json.loads((directory / "generation_config.json").read_text())["eos_token_id"] == tokens.eos_token_ids
    added = {t["content"]: t["id"] for t in json.loads((directory / "tokenizer.json").read_text())["added_tokens"]}
    assert added["<image_start>"] == tokens.image_start_token_id and added["<image_end>"] == tokens.image_end_token_id
    assert "chat_template" in json.loads((directory / "tokenizer_config.json").read_text())


def test_variants_survive_the_round_trip(tmp_path, tiny_processor, tiny_inputs):
    overrides = [
        "projector.type=linear",
        "text.tie_word_embeddings=true",
        'text.rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, '
        '"original_max_position_embeddings": 64}',
    ]
    torch.manual_seed(1)
    model = MagmaForCausalLM(load_config("magma-tiny", overrides)).eval()
    directory = export_magma8b(model, tmp_path / "magma", tiny_processor.tokenizer, vision_backbone=TINY_BACKBONE)
    imported = MagmaForCausalLM.from_pretrained(directory)
    assert imported.config.projector.type == "linear" and imported.config.text.tie_word_embeddings
    assert dict(imported.config.text.rope_scaling) == dict(model.config.text.rope_scaling)
    assert torch.equal(logits_of(imported, tiny_inputs), logits_of(model, tiny_inputs))


def test_what_the_layout_cannot_hold_is_one_clear_error(tmp_path, tiny_model, tiny_processor):
    tokenizer = tiny_processor.tokenizer
    with pytest.raises(Magma8bExportError, match=r"vision\.dims=\[32, 64, 128, 256\].*--vision-backbone"):
        export_magma8b(tiny_model, tmp_path / "a", tokenizer)
    with pytest.raises(Magma8bExportError, match=r"norm_eps=1e-05.*convnextlarge.*1e-06"):
        export_magma8b(tiny_model, tmp_path / "a", tokenizer, vision_backbone="convnextlarge")
    without_separator = MagmaForCausalLM(load_config("magma-tiny", ["projector.row_separator=false"]))
    with pytest.raises(Magma8bExportError, match="row_separator"):
        export_magma8b(without_separator, tmp_path / "a", tokenizer, vision_backbone=TINY_BACKBONE)
    other_ids = MagmaForCausalLM(load_config("magma-tiny", ["tokens.image_end_token_id=1031"]))
    with pytest.raises(Magma8bExportError, match=r"tokens\.image_end_token_id=1031.*<image_end> to 1033"):
        export_magma8b(other_ids, tmp_path / "a", tokenizer, vision_backbone=TINY_BACKBONE)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*")), "nothing half-written"
    not_a_checkpoint = tmp_path / "notes"
    not_a_checkpoint.mkdir()
    (not_a_checkpoint / "todo.txt").write_text("keep me")
    with pytest.raises(Magma8bExportError, match="is not a checkpoint"):
        export_magma8b(tiny_model, not_a_checkpoint, tokenizer, vision_backbone=TINY_BACKBONE)
    assert (not_a_checkpoint / "todo.txt").read_text() == "keep me"


def test_cli_exports_a_checkpoint(tmp_path, tiny_model, tiny_processor, tiny_inputs):
    checkpoint = tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer)
    out = tmp_path / "magma-hf"
    result = agent_in_process(
        "model", "export", str(checkpoint), str(out), "--layout", "magma-hf", "--vision-backbone", "convnextxxlarge"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(
        logits_of(MagmaForCausalLM.from_pretrained(out), tiny_inputs), logits_of(tiny_model, tiny_inputs)
    )
    refused = agent_in_process("model", "export", str(checkpoint), str(tmp_path / "other"), "--layout", "magma-hf")
    assert_one_clear_error(refused, "vision.dims", "--vision-backbone")


# ---- <image_start>/<image_end> and the other special ids ---------------------------------------------
def test_magma8b_ids_come_from_the_tokenizer_and_are_checked(tmp_path, tiny_model, tiny_processor):
    directory = export_magma8b(tiny_model, tmp_path / "magma", tiny_processor.tokenizer, vision_backbone=TINY_BACKBONE)
    tokens = load_checkpoint_config(directory).tokens
    assert (tokens.image_start_token_id, tokens.image_end_token_id) == (1032, 1033)  # not Magma-8B's 128259/128260
    raw = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(raw | {"image_token_index": 1031}))
    with pytest.raises(CheckpointError, match=r"config\.json' says image_token_index=1031 but tokenizer\.json maps "):
        load_checkpoint_config(directory)
    (directory / "config.json").write_text(json.dumps(raw))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json.*<image_start> and <image_end>.*copy the tokenizer"):
        load_checkpoint_config(directory)


def test_own_checkpoint_ids_are_checked_against_its_tokenizer(tmp_path, tiny_model, tiny_processor):
    directory = tiny_model.save_pretrained(tmp_path / "ckpt", tokenizer=tiny_processor.tokenizer)
    check_tokenizer_token_ids(directory, load_checkpoint_config(directory).tokens)  # agree: no error
    raw = json.loads((directory / "config.json").read_text())
    raw["tokens"]["image_start_token_id"] = 1031
    (directory / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as caught:
        check_tokenizer_token_ids(directory, load_checkpoint_config(directory).tokens)
    message = str(caught.value)
    assert "config.json' says tokens.image_start_token_id=1031" in message
    assert "tokenizer.json' maps <image_start> to 1032" in message
    assert "Set tokens.image_start_token_id=1032" in message
