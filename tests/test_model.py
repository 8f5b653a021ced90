import pytest
import torch
from transformers import TextIteratorStreamer

from magma.config import load_config
from magma.model import ImageTokenMismatchError, MagmaForCausalLM
from magma.sampling import AllowedTokensLogitsProcessor, allowed_tokens, sampling_settings


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_forward_backward_reaches_every_module(tiny_model, tiny_processor, image_files):
    tiny_model.train()
    batch = tiny_processor.collate(
        [
            tiny_processor.encode(conversation("<image>\n<image>\nWhich is taller?", "The second."), image_files),
            tiny_processor.encode(conversation("Count to three.", "One, two, three.")),
        ]
    )
    out = tiny_model(**batch.as_kwargs())
    assert out.logits is None  # the full logits tensor is never built when labels are given
    assert out.num_label_tokens == int((batch.labels[:, 1:] != -100).sum())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in (
        "vision_tower.trunk.stem.0.weight",
        "projector.mlp.0.weight",
        "projector.row_separator",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.lm_head.weight",
    ):
        grad = tiny_model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_labelled_loss_equals_full_logits_cross_entropy(tiny_model, tiny_processor, image_files):
    batch = tiny_processor.collate(
        [
            tiny_processor.encode(conversation("<image>\nWhat is it?", "Noise, mostly."), image_files[:1]),
            tiny_processor.encode(conversation("Hi", "Hello there.")),
        ]
    )
    with torch.no_grad():
        loss = tiny_model(**batch.as_kwargs()).loss
        logits = tiny_model(**{k: v for k, v in batch.as_kwargs().items() if k != "labels"}).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch.labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


def test_image_features_land_at_image_tokens(tiny_model, tiny_processor, image_files):
    """Changing the image changes outputs only from the first image token on (causal check)."""
    inputs = [tiny_processor(["<image>\nDescribe."], [[image]]) for image in image_files[:1] * 2]
    inputs[1].pixel_values = inputs[1].pixel_values.flip(-1)
    with torch.no_grad():
        logits = [tiny_model(**i.as_kwargs()).logits for i in inputs]
    first_image = int((inputs[0].input_ids[0] == tiny_model.config.tokens.image_token_id).nonzero()[0])
    torch.testing.assert_close(logits[0][:, :first_image], logits[1][:, :first_image])
    assert not torch.allclose(logits[0][:, first_image:], logits[1][:, first_image:])


def test_cached_generation_matches_uncached_greedy(tiny_model, tiny_processor, image_files):
    inputs = tiny_processor(
        ["<image>\nWhat is shown?", "Name a colour.", "<image>\n<image>\nCompare them."],
        [[image_files[0]], [], image_files],
    )
    kwargs = inputs.generation_kwargs()
    prompt = kwargs["input_ids"].shape[1]
    cached = new_tokens(tiny_model, kwargs, max_new_tokens=12, use_cache=True)
    uncached = new_tokens(tiny_model, kwargs, max_new_tokens=12, use_cache=False)
    assert cached.shape == (3, 12) and prompt > 0
    assert torch.equal(cached, uncached)
    # the same tokens as the plain loop: the whole sequence through forward, argmax of the last position
    assert torch.equal(cached, greedy_by_forward(tiny_model, kwargs, 12))
    # a left-padded batch gives each row what it gives alone
    alone = new_tokens(tiny_model, tiny_processor("Name a colour.").generation_kwargs(), max_new_tokens=12)
    assert torch.equal(alone[0], cached[1])


def new_tokens(model, kwargs, **settings):
    """transformers' greedy generate (no stop tokens unless given), the prompt cut off."""
    out = model.generate(**kwargs, **{"do_sample": False, "eos_token_id": [], **settings})
    return out[:, kwargs["input_ids"].shape[1] :]


def greedy_by_forward(model, kwargs, count):
    """The reference decoding loop: no cache, no generation machinery, the whole sequence every step."""
    ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
    images = {key: kwargs[key] for key in ("pixel_values", "image_grids") if key in kwargs}
    for _ in range(count):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, **images).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids[:, -count:]


def test_right_padded_prompts_are_realigned_for_generation(tiny_model, tiny_processor):
    prompts = [
        tiny_processor.encode([{"role": "user", "content": text}], add_generation_prompt=True)
        for text in ("Hi", "What should the robot pick up next?")
    ]
    left = tiny_processor.collate(prompts, "left").generation_kwargs()
    right = tiny_processor.collate(prompts, "right").generation_kwargs()
    assert torch.equal(new_tokens(tiny_model, left, max_new_tokens=6), new_tokens(tiny_model, right, max_new_tokens=6))


def test_stop_tokens_sampling_streamers_and_constrained_decoding(tiny_model, tiny_processor):
    kwargs = tiny_processor(["Hello", "Say something long."]).generation_kwargs()
    greedy = new_tokens(tiny_model, kwargs, max_new_tokens=8)
    stop = int(greedy[0, 2])
    stopped = new_tokens(tiny_model, kwargs, max_new_tokens=8, eos_token_id=[stop])
    first_stop = int((stopped[0] == stop).nonzero()[0])
    assert torch.equal(stopped[0, : first_stop + 1], greedy[0, : first_stop + 1])
    assert (stopped[0, first_stop + 1 :] == tiny_model.config.tokens.pad_token_id).all()

    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return tiny_model.generate(**kwargs, max_new_tokens=8, eos_token_id=[], **sampling_settings(1.0, 0.9))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert sampling_settings(0.0)["do_sample"] is False

    # transformers' streamer sees the prompt, then every new token as it is chosen
    single = tiny_processor("Hello").generation_kwargs()
    streamer = TextIteratorStreamer(tiny_processor.tokenizer, skip_prompt=True)
    out = tiny_model.generate(**single, max_new_tokens=6, do_sample=False, eos_token_id=[], streamer=streamer)
    assert "".join(streamer) == tiny_processor.decode(out[0, single["input_ids"].shape[1] :])

    # our constrained decoding is a logits processor: only the allowed ids come out
    allowed = allowed_tokens(tiny_model.config, (300, 309))
    constrained = new_tokens(
        tiny_model, kwargs, max_new_tokens=7, logits_processor=[AllowedTokensLogitsProcessor(allowed)]
    )
    assert ((constrained >= 300) & (constrained <= 309)).all()


def test_image_token_mismatch_is_a_clear_error(tiny_model, tiny_processor, image_files):
    inputs = tiny_processor("<image>\nWhat?", [image_files[0]])
    ids = inputs.input_ids.clone()
    ids[0, int((ids[0] == tiny_model.config.tokens.image_token_id).nonzero()[0])] = 5
    with pytest.raises(ImageTokenMismatchError, match="<image> tokens but the images give"):
        tiny_model(input_ids=ids, pixel_values=inputs.pixel_values, image_grids=inputs.image_grids)
    with pytest.raises(ImageTokenMismatchError, match="no images were given"):
        tiny_model(input_ids=inputs.input_ids)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_processor, image_files):
    config = load_config("magma-tiny", ["vision.gradient_checkpointing=true", "text.gradient_checkpointing=true"])
    batch = tiny_processor.collate([tiny_processor.encode(conversation("<image>\nWhat?", "Noise."), image_files[:1])])
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = MagmaForCausalLM(config if checkpointed else load_config("magma-tiny")).train()
        model(**batch.as_kwargs()).loss.backward()
        grads.append(model.vision_tower.trunk.stem[0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
