"""Tokenizers: load one from a checkpoint directory, and build the small offline test tokenizer.

The tiny tokenizer mirrors the Magma-8B (Llama-3) layout at a small scale: a byte-level BPE base
vocabulary, then a block of Llama-3-style chat specials, then Magma's added tokens
(``<pad>``, ``<image>``, a reserved slot, ``<image_start>``, ``<image_end>``). Its files live in
``magma/assets/tiny-tokenizer`` and ``scripts/build_tiny_tokenizer.py`` rebuilds them.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from data_tools.errors import UserFacingError

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny-tokenizer"
TINY_BASE_VOCAB_SIZE = 1024

CHAT_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
MAGMA_SPECIALS = ["<pad>", "<image>", "<reserved_0>", "<image_start>", "<image_end>"]

# Llama-3 style: one header per turn, contents end with <|eot_id|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


class TokenizerError(UserFacingError, ValueError):
    """A tokenizer that cannot be loaded or does not match the model config."""


def load_tokenizer(name_or_dir: str | Path) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from a local directory (``"tiny"`` is the bundled test tokenizer)."""
    directory = TINY_TOKENIZER_DIR if str(name_or_dir) == "tiny" else Path(name_or_dir)
    if not (directory / "tokenizer.json").is_file():
        raise TokenizerError(
            f"no tokenizer.json in '{directory}'. Point `tokenizer` at a directory written by "
            "save_pretrained, or use 'tiny' for the bundled test tokenizer."
        )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_tokenizer(corpus: list[str], out_dir: Path, base_vocab_size: int = TINY_BASE_VOCAB_SIZE) -> Path:
    """Train the byte-level BPE test tokenizer on ``corpus`` and save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=base_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    if bpe.get_vocab_size() != base_vocab_size:
        raise TokenizerError(f"corpus too small: BPE reached {bpe.get_vocab_size()} of {base_vocab_size} tokens")
    bpe.add_special_tokens(CHAT_SPECIALS + MAGMA_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
