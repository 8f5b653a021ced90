"""Model benchmarks on CPU: training-step throughput, KV-cache generation speed, training-step memory.

Each figure is one JSON line on stdout (``{"name", "value", "unit", "baseline", "ratio", ...}``);
progress goes to stderr. Figures, per model config:

* ``train_step_samples_per_s/<config>``: a full training step (forward + backward + AdamW step) on a
  right-padded batch built with the real processor (one multi-crop image, a user prompt and an
  assistant answer per sample; the loss falls on about a quarter of the tokens). No baseline.
* ``generate_tokens_per_s/<config>/batch<B>``: greedy ``generate`` with the KV cache, against the same
  call with ``use_cache=False`` (the whole sequence recomputed for every new token); ratio is
  cached / uncached. The uncached figure is also printed on its own line.
* ``train_step_peak_mem_mib/<config>/vocab<V>``: the peak extra memory of forward + backward with the
  loss computed on labelled positions only (the LM head runs on those rows), against the standard
  full-logits step (batch x length x vocab logits + masked cross-entropy); ratio is full / labelled.
  Each measurement runs in a fresh process: peak RSS (VmHWM, reset through /proc/self/clear_refs)
  minus the RSS just before the step, with gradient buffers already allocated (as in a training loop
  that keeps them), so the figure is activations, logits and temporaries.

Usage: ``python bench/model.py [--configs magma-tiny magma-100m] [--quick] [--threads 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from magma.config import load_config  # noqa: E402
from magma.model import IGNORE_INDEX, MagmaForCausalLM, default_dtype  # noqa: E402
from magma.processor import MagmaProcessor, ModelInputs  # noqa: E402

SEED = 0
DEVICE = torch.device("cpu")  # --device; on CUDA the model runs in bf16
IMAGE_SIZE = (240, 320)  # (height, width): a multi-crop grid for both configs
LABEL_FRACTION = 0.25  # share of the batch's real tokens that carry a label
REALISTIC_VOCAB = 32000
MEMORY_MODES = ("labelled", "full")

PROMPTS = [
    "<image>\nWhat is the robot arm doing in this picture?",
    "<image>\nDescribe the scene.",
    "<image>\nWhich object should the gripper pick up next, and where should it be placed?",
    "<image>\nWhat is on the table?",
]
ANSWER_TEXT = (
    "the robot arm moves left towards the red cube on the wooden table then it closes the gripper lifts "
    "the cube and places it gently inside the blue bowl next to the green cup while the camera watches"
)
ANSWER_WORDS = ANSWER_TEXT.split(" ")


@dataclass
class Plan:
    """What to run for one config."""

    batch: int
    warmup_steps: int
    timed_steps: int
    gen_batches: tuple[int, ...]
    gen_tokens: int
    gen_min_time_s: float  # repeat a generate call until this much time has passed (at most 5 runs)
    memory_vocabs: tuple[int | None, ...]


def plan_for(config_name: str, quick: bool) -> Plan:
    if quick:  # a smoke run: few steps, short generation, the realistic-vocab memory case only
        return Plan(
            batch=4,
            warmup_steps=1,
            timed_steps=2,
            gen_batches=(1, 4),
            gen_tokens=16,
            gen_min_time_s=0.0,
            memory_vocabs=(REALISTIC_VOCAB,),
        )
    if config_name == "magma-100m":  # ~4-5 s per training step on 2 cores: few steps, batch-1 generation
        return Plan(
            batch=4,
            warmup_steps=1,
            timed_steps=3,
            gen_batches=(1,),
            gen_tokens=32,
            gen_min_time_s=0.0,
            memory_vocabs=(None, REALISTIC_VOCAB),
        )
    return Plan(
        batch=4,
        warmup_steps=2,
        timed_steps=10,
        gen_batches=(1, 4),
        gen_tokens=64,
        gen_min_time_s=1.0,
        memory_vocabs=(None, REALISTIC_VOCAB),
    )


def log(message: str) -> None:
    report.log("model", message)


def emit(name: str, value: float, unit: str, baseline: str | None = None, ratio: float | None = None, **extra) -> None:
    report.emit(name, value, unit, baseline, ratio, device=str(DEVICE), **extra)


def overrides_for(vocab: int | None) -> list[str]:
    return [] if vocab is None else [f"text.vocab_size={vocab}"]


def build_model(config_name: str, vocab: int | None = None) -> tuple[MagmaForCausalLM, MagmaProcessor]:
    config = load_config(config_name, overrides_for(vocab))
    torch.manual_seed(SEED)
    model = MagmaForCausalLM(config).to(DEVICE, default_dtype(DEVICE))
    return model, MagmaProcessor.from_config(config)


def synthetic_images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return [rng.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(count)]


def answer_text(processor: MagmaProcessor, num_tokens: int, offset: int) -> str:
    """A deterministic answer that tokenizes to about ``num_tokens`` tokens."""
    words: list[str] = []
    index = offset
    while len(processor.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < num_tokens:
        words.append(ANSWER_WORDS[index % len(ANSWER_WORDS)])
        index += 1
    return " ".join(words)


def training_batch(processor: MagmaProcessor, batch: int) -> ModelInputs:
    """``batch`` conversations (image + prompt + answer), right-padded; answers sized so that about
    ``LABEL_FRACTION`` of the real tokens are labelled."""
    images = synthetic_images(batch)
    samples = []
    for index in range(batch):
        prompt = PROMPTS[index % len(PROMPTS)]
        context = processor.encode([{"role": "user", "content": prompt}], [images[index]], add_generation_prompt=True)
        # labelled / (context + labelled) = LABEL_FRACTION; the end-of-turn token is labelled too.
        wanted = round(len(context.input_ids) * LABEL_FRACTION / (1 - LABEL_FRACTION)) - 1
        wanted = max(4, round(wanted * (0.85 + 0.1 * index)))  # unequal lengths: real padding
        conversation = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer_text(processor, wanted, offset=7 * index)},
        ]
        samples.append(processor.encode(conversation, [images[index]]))
    return processor.collate(samples, padding_side="right").to(DEVICE)


def batch_stats(inputs: ModelInputs) -> dict:
    real = int(inputs.attention_mask.sum())
    labelled = int((inputs.labels[:, 1:] != IGNORE_INDEX).sum()) if inputs.labels is not None else 0
    return {
        "batch": int(inputs.input_ids.shape[0]),
        "seq_len": int(inputs.input_ids.shape[1]),
        "real_tokens": real,
        "label_fraction": round(labelled / real, 3),
    }


# ---- 1. training-step throughput ------------------------------------------------------------------
def bench_train_step(
    config_name: str, model: MagmaForCausalLM, processor: MagmaProcessor, plan: Plan, threads: int
) -> None:
    inputs = training_batch(processor, plan.batch)
    stats = batch_stats(inputs)
    kwargs = inputs.as_kwargs()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**kwargs).loss
        loss.backward()
        optimizer.step()
        return loss.detach().item()

    log(
        f"{config_name}: training step, batch {stats['batch']} x {stats['seq_len']} tokens, "
        f"{plan.warmup_steps} warm-up + {plan.timed_steps} timed steps"
    )
    for _ in range(plan.warmup_steps):
        step()
    times = []
    for _ in range(plan.timed_steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
        log(f"  step {times[-1]:.3f} s, loss {loss:.4f}")
    total = sum(times)
    emit(
        f"train_step_samples_per_s/{config_name}",
        plan.batch * len(times) / total,
        "samples/s",
        config=config_name,
        **stats,
        steps=len(times),
        median_step_s=round(statistics.median(times), 4),
        threads=threads,
    )
    optimizer.zero_grad(set_to_none=True)


# ---- 2. generation with and without the KV cache -----------------------------------------------------
def bench_generate(
    config_name: str, model: MagmaForCausalLM, processor: MagmaProcessor, plan: Plan, threads: int
) -> None:
    model.eval()
    images = synthetic_images(max(plan.gen_batches))
    for batch in plan.gen_batches:
        prompts = [PROMPTS[index % len(PROMPTS)] for index in range(batch)]
        inputs = processor(prompts, [[image] for image in images[:batch]]).to(DEVICE)
        kwargs = inputs.generation_kwargs()
        rates, outputs = {}, {}
        for use_cache in (True, False):
            # eos_token_id=[]: no stop tokens, so every row generates exactly gen_tokens tokens. Without the
            # cache transformers' generate recomputes the whole sequence, images included, at every step.
            settings = {"use_cache": use_cache, "eos_token_id": [], "do_sample": False}
            model.generate(**kwargs, max_new_tokens=2, **settings)  # warm-up
            times: list[float] = []
            while not times or (sum(times) < plan.gen_min_time_s and len(times) < 5):
                start = time.perf_counter()
                out = model.generate(**kwargs, max_new_tokens=plan.gen_tokens, **settings)
                out = out[:, kwargs["input_ids"].shape[1] :]
                synchronize()
                times.append(time.perf_counter() - start)
            if out.shape != (batch, plan.gen_tokens):
                raise RuntimeError(f"generate returned {tuple(out.shape)}, expected {(batch, plan.gen_tokens)}")
            rates[use_cache] = batch * plan.gen_tokens / statistics.median(times)
            outputs[use_cache] = out
            log(
                f"{config_name}: generate batch {batch}, use_cache={use_cache}: "
                f"{statistics.median(times):.3f} s for {plan.gen_tokens} tokens/row"
            )
        match = bool(torch.equal(outputs[True], outputs[False]))
        if not match:
            log(f"{config_name}: WARNING cached and uncached greedy outputs differ (batch {batch})")
        extra = {
            "config": config_name,
            "batch": batch,
            "prompt_len": int(inputs.input_ids.shape[1]),
            "new_tokens": plan.gen_tokens,
            "includes_prefill": True,
            "threads": threads,
        }
        emit(
            f"generate_tokens_per_s/{config_name}/batch{batch}",
            rates[True],
            "tokens/s",
            baseline="no KV cache (full recompute per token)",
            ratio=rates[True] / rates[False],
            baseline_value=round(rates[False], 3),
            greedy_outputs_match=match,
            **extra,
        )
        emit(f"generate_tokens_per_s_no_cache/{config_name}/batch{batch}", rates[False], "tokens/s", **extra)


# ---- 3. training-step memory: labelled-position loss vs full logits -------------------------------------
def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure_memory_cuda(mode: str, config_name: str, vocab: int | None, batch: int) -> dict:
    """On CUDA the allocator keeps exact peaks: measure in-process, extra over what the step starts with."""
    model, processor = build_model(config_name, vocab)
    model.train()
    inputs = training_batch(processor, batch)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = memory_step(model, inputs, mode)
    peak = torch.cuda.max_memory_allocated()
    result = {"mode": mode, "config": config_name, "vocab": model.config.text.vocab_size, "loss": loss}
    result.update(peak_extra_mib=(peak - before) / 2**20, **batch_stats(inputs))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return result


def release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only: return freed heap pages to the OS
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_step(model: MagmaForCausalLM, inputs: ModelInputs, mode: str) -> float:
    kwargs = inputs.as_kwargs()
    if mode == "labelled":
        loss = model(**kwargs).loss
    else:  # the standard way: full (batch x length x vocab) logits, shift, ignore_index
        labels = kwargs.pop("labels")
        logits = model(**kwargs).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.detach().item()


def measure_memory_child(mode: str, config_name: str, vocab: int | None, batch: int) -> None:
    """Runs in a fresh process: print one JSON object with the step's peak extra memory."""
    model, processor = build_model(config_name, vocab)
    model.train()
    inputs = training_batch(processor, batch)
    for parameter in model.parameters():  # gradient buffers exist before the step, as in a training loop
        parameter.grad = torch.zeros_like(parameter)
    # warm-up on one sample: library start-up allocations happen here, below the measured peak
    warm = processor.collate(
        [
            processor.encode(
                [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": "ok"}], synthetic_images(1)
            )
        ]
    )
    memory_step(model, warm, mode)
    for parameter in model.parameters():
        parameter.grad.zero_()
    release_freed_memory()
    reset = reset_peak_rss()
    before_rss, _ = rss_mib()
    before_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loss = memory_step(model, inputs, mode)
    _, after_peak = rss_mib()
    if not reset:  # VmHWM is still the process-lifetime peak: fall back to the ru_maxrss delta
        after_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        before_rss = before_maxrss
    print(
        json.dumps(
            {
                "mode": mode,
                "config": config_name,
                "vocab": model.config.text.vocab_size,
                "peak_extra_mib": after_peak - before_rss,
                "rss_before_mib": before_rss,
                "peak_reset": reset,
                "loss": loss,
                **batch_stats(inputs),
            }
        ),
        flush=True,
    )


def run_memory_child(mode: str, config_name: str, vocab: int | None, batch: int, threads: int) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure-memory",
        mode,
        config_name,
        "--batch",
        str(batch),
        "--threads",
        str(threads),
    ]
    if vocab is not None:
        command += ["--vocab", str(vocab)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement {mode} {config_name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_memory(config_name: str, plan: Plan, threads: int) -> None:
    for vocab in plan.memory_vocabs:
        results = {}
        for mode in MEMORY_MODES:
            start = time.perf_counter()
            if DEVICE.type == "cuda":
                results[mode] = measure_memory_cuda(mode, config_name, vocab, plan.batch)
            else:
                results[mode] = run_memory_child(mode, config_name, vocab, plan.batch, threads)
            log(
                f"{config_name}: memory {mode} vocab {results[mode]['vocab']}: "
                f"{results[mode]['peak_extra_mib']:.1f} MiB ({time.perf_counter() - start:.1f} s)"
            )
        labelled, full = results["labelled"], results["full"]
        loss_match = abs(labelled["loss"] - full["loss"]) <= 1e-4 * max(1.0, abs(full["loss"]))
        if not loss_match:
            log(f"{config_name}: WARNING labelled loss {labelled['loss']} != full-logits loss {full['loss']}")
        stats = {key: labelled[key] for key in ("batch", "seq_len", "real_tokens", "label_fraction")}
        extra = {"config": config_name, "vocab": labelled["vocab"], **stats, "step": "forward+backward"}
        suffix = f"{config_name}/vocab{labelled['vocab']}"
        emit(
            f"train_step_peak_mem_mib/{suffix}",
            labelled["peak_extra_mib"],
            "MiB",
            baseline="full logits + masked cross-entropy",
            ratio=full["peak_extra_mib"] / max(labelled["peak_extra_mib"], 1e-9),
            baseline_value=round(full["peak_extra_mib"], 3),
            losses_match=loss_match,
            **extra,
        )
        emit(f"train_step_peak_mem_mib_full_logits/{suffix}", full["peak_extra_mib"], "MiB", **extra)


# ---- driver ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="model configs to measure (default: magma-tiny magma-100m; magma-tiny with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: magma-tiny, fewer steps and tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, as on CI)")
    parser.add_argument("--device", default="cpu", help="cpu (default, fp32) or cuda (bf16)")
    parser.add_argument("--measure-memory", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    if args.measure_memory:
        mode, config_name = args.measure_memory
        if mode not in MEMORY_MODES:
            raise SystemExit(f"--measure-memory MODE must be one of {MEMORY_MODES}")
        measure_memory_child(mode, config_name, args.vocab, args.batch)
        return
    configs = args.configs or (["magma-tiny"] if args.quick else ["magma-tiny", "magma-100m"])
    started = time.perf_counter()
    for config_name in configs:
        plan = plan_for(config_name, args.quick)
        model, processor = build_model(config_name)
        log(
            f"{config_name}: {model.parameter_counts()['total'] / 1e6:.1f}M parameters "
            f"on {DEVICE}, {args.threads} threads"
        )
        bench_train_step(config_name, model, processor, plan, args.threads)
        bench_generate(config_name, model, processor, plan, args.threads)
        del model
        gc.collect()
        bench_memory(config_name, plan, args.threads)
    log(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
