"""The model as transformers users expect it: Auto classes, generate's own features, peft, on tiny checkpoints
written by the tests (nothing is downloaded)."""

import json
import subprocess
import sys

import pytest
import torch
from test_checkpoint import write_magma8b_layout
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    LogitsProcessor,
    StoppingCriteria,
    TextIteratorStreamer,
)

from data_tools.config_files import ConfigError
from magma.checkpoint import CheckpointError
from magma.config import load_config
from magma.configuration_magma import MagmaConfig
from magma.model import MagmaForCausalLM
from magma.processor import ImagePlaceholderError, MagmaProcessor


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tiny_processor):
    directory = tmp_path / "tiny"
    tiny_model.save_pretrained(directory, tokenizer=tiny_processor.tokenizer)
    return directory


def test_auto_classes_open_our_checkpoints_with_the_same_numbers(checkpoint, tiny_model, image_files):
    config = AutoConfig.from_pretrained(checkpoint)
    assert isinstance(config, MagmaConfig) and config.tokenizer == str(checkpoint)  # the tokenizer saved with it
    assert {**config.to_dict(), "tokenizer": "tiny"} == tiny_model.config.to_dict()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(checkpoint)
    assert isinstance(model, MagmaForCausalLM) and isinstance(processor, MagmaProcessor)
    inputs = processor("<image>\nWhat is on the table?", [image_files[0]])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, tiny_model.eval()(**inputs).logits)
    saved = json.loads((checkpoint / "config.json").read_text())
    assert saved["model_type"] == "magma" and saved["architectures"] == ["MagmaForCausalLM"]


def test_import_magma_alone_registers_the_auto_classes(checkpoint):
    """`import magma` stays torch-free, yet the Auto classes know Magma once transformers loads them."""
    code = (
        "import sys, magma\n"
        "assert 'torch' not in sys.modules\n"
        "from transformers import AutoModelForCausalLM, AutoProcessor\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r})\n"
        f"processor = AutoProcessor.from_pretrained({str(checkpoint)!r})\n"
        "print(type(model).__name__, type(processor).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["MagmaForCausalLM", "MagmaProcessor"]
    assert "could not register" not in result.stderr


def test_auto_classes_open_the_magma8b_layout_without_remote_code(tmp_path, tiny_model, tiny_processor, image_files):
    theirs = tmp_path / "magma8b"
    theirs.mkdir()
    write_magma8b_layout(tiny_model, theirs, tiny_processor.tokenizer)
    config = AutoConfig.from_pretrained(theirs)  # the trunk sizes read off the weights, as the loader does
    assert config.vision.dims == tiny_model.config.vision.dims and config.text.hidden_size == 128
    model = AutoModelForCausalLM.from_pretrained(theirs)
    inputs = tiny_processor("<image>\nWhat?", [image_files[0]])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, tiny_model.eval()(**inputs).logits)


def test_generate_takes_transformers_logits_processors_stopping_criteria_and_streamers(tiny_model, tiny_processor):
    inputs = tiny_processor(["Hello", "Say something long."])
    prompt = inputs.input_ids.shape[1]

    class Ban(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, 300:] = float("-inf")
            return scores

    banned = tiny_model.generate(**inputs, max_new_tokens=6, do_sample=False, logits_processor=[Ban()])
    new = banned[:, prompt:]
    assert ((new < 300) | (new == tiny_model.config.tokens.pad_token_id)).all()

    class AfterThree(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= prompt + 3, dtype=torch.bool)

    stopped = tiny_model.generate(
        **inputs, max_new_tokens=10, do_sample=False, eos_token_id=[], stopping_criteria=[AfterThree()]
    )
    assert stopped.shape[1] == prompt + 3

    single = tiny_processor("Hello")
    streamer = TextIteratorStreamer(tiny_processor.tokenizer, skip_prompt=True)
    out = tiny_model.generate(**single, max_new_tokens=5, do_sample=False, eos_token_id=[], streamer=streamer)
    assert "".join(streamer) == tiny_processor.decode(out[0, single.input_ids.shape[1] :])


def test_several_sequences_per_prompt_keep_each_rows_images(tiny_model, tiny_processor, image_files):
    """num_return_sequences repeats rows; each row's crops and grids must follow it (two images of
    different grids in different rows, so a plain repeat of the crop list would misplace them)."""
    inputs = tiny_processor(["<image>\nWhat?", "<image>\nAnd this?"], [[image_files[0]], [image_files[1]]])
    given = {key: value for key, value in inputs.items() if key != "input_ids"}
    ids, expanded = tiny_model._expand_inputs_for_generation(expand_size=3, input_ids=inputs.input_ids, **given)
    assert torch.equal(ids, inputs.input_ids.repeat_interleave(3, dim=0))
    with torch.no_grad():
        once = tiny_model(**inputs).logits
        thrice = tiny_model(input_ids=ids, **expanded).logits
    torch.testing.assert_close(thrice, once.repeat_interleave(3, dim=0), atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    sampled = tiny_model.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=3)
    assert sampled.shape == (6, inputs.input_ids.shape[1] + 3)


def test_peft_lora_saves_and_loads_on_the_whole_model(tmp_path, checkpoint, tiny_processor):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = MagmaForCausalLM.from_pretrained(checkpoint)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inputs = tiny_processor("Hello there")
    with torch.no_grad():
        tuned = lora(**inputs).logits
    lora.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(MagmaForCausalLM.from_pretrained(checkpoint), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, tuned, atol=1e-6)
        assert not torch.allclose(MagmaForCausalLM.from_pretrained(checkpoint)(**inputs).logits, tuned)
    generated = reloaded.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs.input_ids.shape[1] + 3


def test_configs_of_another_model_or_unknown_keys_are_named(tmp_path, checkpoint):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="neither"):
        MagmaForCausalLM.from_pretrained(other)
    with pytest.raises(ConfigError, match="'bogus'"):
        MagmaConfig(bogus=1)
    with pytest.raises(CheckpointError, match="several devices"):
        AutoModelForCausalLM.from_pretrained(checkpoint, device_map={"": "cpu", "lm_head": "cpu"})


def test_a_tokenizer_whose_image_markers_disagree_with_the_config_is_named(tmp_path, checkpoint, tiny_processor):
    config = json.loads((checkpoint / "config.json").read_text())
    marker = config["tokens"]["image_end_token_id"]
    config["tokens"]["image_end_token_id"] = marker - 1
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="image_end_token_id") as error:
        AutoProcessor.from_pretrained(checkpoint)
    assert str(checkpoint / "config.json") in str(error.value) and str(marker) in str(error.value)
    wrong = load_config("magma-tiny", [f"tokens.image_start_token_id={marker - 2}"])
    with pytest.raises(ImagePlaceholderError, match="<image_start>"):
        MagmaProcessor(tiny_processor.tokenizer, wrong)


def test_the_processor_saves_what_auto_processor_reads(tmp_path, checkpoint, tiny_processor):
    tiny_processor.save_pretrained(tmp_path / "processor")
    assert json.loads((tmp_path / "processor" / "processor_config.json").read_text())["processor_class"] == (
        "MagmaProcessor"
    )
    reloaded = AutoProcessor.from_pretrained(checkpoint)
    assert reloaded("Hello").input_ids.tolist() == tiny_processor("Hello").input_ids.tolist()
