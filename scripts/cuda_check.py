"""Check the CUDA / bf16 path of the model on a GPU machine and print what it saw as JSON lines.

Run: python scripts/cuda_check.py [--config magma-8b] [--new-tokens 32]
Builds the config on the GPU in bf16 (random weights), runs a training step, cached and uncached
generation with one 640x480 image, and a save -> load round trip (small configs only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from magma.config import load_config
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="magma-100m")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    device = torch.device("cuda")
    config = load_config(args.config)
    tokenizer_config = load_config("magma-tiny")
    if config.tokens.image_token_id != tokenizer_config.tokens.image_token_id:
        # a config without a bundled tokenizer (magma-8b): drive it with the tiny tokenizer's ids
        config.tokens = tokenizer_config.tokens
        config.tokenizer = "tiny"
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        model = MagmaForCausalLM(config).to(torch.bfloat16)
    torch.cuda.synchronize()
    report(
        check="build",
        config=config.name,
        parameters=model.parameter_counts()["total"],
        dtype=str(model.dtype),
        seconds=round(time.perf_counter() - start, 2),
        memory_gib=round(torch.cuda.memory_allocated() / 2**30, 2),
    )
    processor = MagmaProcessor.from_config(config)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    sample = processor.encode(
        [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "Noise, mostly."}], [image]
    )
    batch = processor.collate([sample, sample]).to(device)
    model.train()
    model.vision_tower.set_gradient_checkpointing(True)
    model.language_model.activation_checkpointing_enable()
    torch.cuda.reset_peak_memory_stats()
    loss = model(**batch.as_kwargs()).loss
    loss.backward()
    torch.cuda.synchronize()
    report(
        check="train_step",
        loss=round(loss.item(), 4),
        finite=bool(torch.isfinite(loss)),
        tokens=int(batch.input_ids.shape[1]),
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
    )
    model.zero_grad(set_to_none=True)
    model.eval()
    inputs = processor("<image>\nDescribe the scene.", [image]).to(device)
    outputs, rates = {}, {}
    for use_cache in (True, False):
        settings = {"use_cache": use_cache, "eos_token_id": [], "do_sample": False}  # exactly new_tokens tokens
        model.generate(**inputs.generation_kwargs(), max_new_tokens=2, **settings)
        torch.cuda.synchronize()
        start = time.perf_counter()
        outputs[use_cache] = model.generate(**inputs.generation_kwargs(), max_new_tokens=args.new_tokens, **settings)
        torch.cuda.synchronize()
        rates[use_cache] = args.new_tokens / (time.perf_counter() - start)
    same = int((outputs[True] == outputs[False]).sum())
    report(
        check="generate",
        prompt_tokens=int(inputs.input_ids.shape[1]),
        cached_tokens_per_s=round(rates[True], 1),
        uncached_tokens_per_s=round(rates[False], 1),
        ratio=round(rates[True] / rates[False], 2),
        identical_tokens=f"{same}/{args.new_tokens}",
    )
    if model.parameter_counts()["total"] < 2e9:
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(f"{directory}/ckpt", tokenizer=processor.tokenizer)
            loaded = MagmaForCausalLM.from_pretrained(f"{directory}/ckpt", device="cuda")
            with torch.no_grad():
                equal = torch.equal(model(**inputs.as_kwargs()).logits, loaded(**inputs.as_kwargs()).logits)
            report(check="save_load", loaded_dtype=str(loaded.dtype), identical_logits=equal)


if __name__ == "__main__":
    main()
