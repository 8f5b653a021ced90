import pytest
import torch

from magma.image_processing import image_token_count
from magma.model import IGNORE_INDEX
from magma.processor import ConversationError, ImagePlaceholderError


def conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_labels_cover_assistant_turns_only(tiny_processor):
    turns = [
        {"from": "system", "value": "You are an agent."},
        {"from": "human", "value": "What is on the table?"},
        {"from": "gpt", "value": "A red block."},
        {"from": "human", "value": "And next to it?"},
        {"from": "gpt", "value": "A blue cup."},
    ]
    sample = tiny_processor.encode(turns)
    labelled = [token for token, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE_INDEX]
    eot = tiny_processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tiny_processor.decode(labelled, skip_special_tokens=False) == "A red block.<|eot_id|>A blue cup.<|eot_id|>"
    assert labelled.count(eot) == 2
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(sample.input_ids, sample.labels, strict=True))


def test_image_placeholders_expand_to_feature_count(tiny_processor, tiny_config, image_files):
    sample = tiny_processor.encode(conversation("<image>\n<image>\nCompare.", "Same."), image_files)
    tokens = tiny_config.tokens
    expected = sum(image_token_count(grid, tiny_config.image) for grid in sample.grids)
    assert sample.input_ids.count(tokens.image_token_id) == expected
    assert sample.input_ids.count(tokens.image_start_token_id) == 2
    assert sample.input_ids.count(tokens.image_end_token_id) == 2
    assert sample.grids == [(1, 2), (2, 1)]  # 200x100 is wide, 100x200 is tall (base 128)
    start = sample.input_ids.index(tokens.image_start_token_id)
    assert sample.input_ids[start + 1] == tokens.image_token_id


def test_explicit_image_start_end_are_not_doubled(tiny_processor, tiny_config, image_files):
    sample = tiny_processor.encode(conversation("<image_start><image><image_end>\nWhat?", "Noise."), image_files[:1])
    assert sample.input_ids.count(tiny_config.tokens.image_start_token_id) == 1
    assert sample.input_ids.count(tiny_config.tokens.image_end_token_id) == 1


def test_placeholder_count_mismatch_is_a_clear_error(tiny_processor, image_files):
    with pytest.raises(ImagePlaceholderError, match="2 <image> placeholders but 1 images"):
        tiny_processor.encode(conversation("<image><image> two?", "one"), image_files[:1])
    with pytest.raises(ImagePlaceholderError, match="0 <image> placeholders but 2 images"):
        tiny_processor.encode(conversation("no placeholder", "ok"), image_files)


def test_bad_conversation_turn_is_named(tiny_processor):
    with pytest.raises(ConversationError, match="turn 1"):
        tiny_processor.encode([{"from": "human", "value": "hi"}, {"speaker": "gpt", "text": "yo"}])


@pytest.mark.parametrize("side", ["left", "right"])
def test_collation_padding_and_positions(tiny_processor, image_files, side):
    short = tiny_processor.encode(conversation("hi", "yes"))
    long = tiny_processor.encode(conversation("<image>\nDescribe the scene.", "A table."), image_files[:1])
    batch = tiny_processor.collate([short, long], padding_side=side)
    n_short = len(short.input_ids)
    mask_row = batch.attention_mask[0]
    assert int(mask_row.sum()) == n_short
    real = mask_row.bool()
    assert batch.input_ids[0][real].tolist() == short.input_ids
    assert batch.position_ids[0][real].tolist() == list(range(n_short))
    assert (batch.labels[0][~real] == IGNORE_INDEX).all()
    assert (batch.input_ids[0][~real] == tiny_processor.tokens.pad_token_id).all()
    assert batch.pixel_values.shape[0] == int(batch.image_grids.prod(dim=1).sum())
    if side == "left":
        assert not bool(mask_row[0]) and bool(mask_row[-1])
    else:
        assert bool(mask_row[0]) and not bool(mask_row[-1])


def test_left_and_right_padding_give_the_same_loss(tiny_model, tiny_processor, image_files):
    samples = [
        tiny_processor.encode(conversation("<image>\nWhat is it?", "A picture of noise."), image_files[:1]),
        tiny_processor.encode(conversation("Say yes.", "Yes.")),
    ]
    with torch.no_grad():
        losses = [tiny_model(**tiny_processor.collate(samples, side).as_kwargs()).loss for side in ("left", "right")]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
