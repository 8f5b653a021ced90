"""Model benchmarks on CPU: training throughput and memory, KV-cache generation speed, action-chunk speed.

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
* ``action_chunk_per_s/<config>/<head>``: chunks/s of ``MagmaRobotPolicy.act`` giving an H=8 chunk of
  7-D actions from one observation (a 224x224 image and an instruction), per action head: ``tokens``
  (8 x 7 = 56 greedy tokens constrained to the action bins, KV cache; the baseline), ``l1`` and
  ``flow`` (``action.flow_steps`` Euler steps) from one forward pass, and ``l1_state8`` (l1 with an
  8-D proprioceptive state). Ratio is token chunk time / head chunk time; ``time_vs_tokens`` is its
  inverse. The heads run interleaved, round by round, so machine load falls on all alike; the
  figures carry ``os.getloadavg()``. Random weights and made-up action statistics. With a CUDA device
  the Magma-8B shape runs too (bf16, tokens vs l1 and flow); without one it is skipped with a note.

Usage: ``python bench/model.py [--configs magma-tiny magma-100m] [--quick] [--threads 2] [--only chunks]``
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
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

from magma.actions import ActionStatistics, RobotActionCodec  # noqa: E402
from magma.config import load_config  # noqa: E402
from magma.configuration_magma import MagmaConfig  # noqa: E402
from magma.model import IGNORE_INDEX, MagmaForCausalLM, default_dtype  # noqa: E402
from magma.policies.robot import MagmaRobotPolicy  # noqa: E402
from magma.processor import MagmaProcessor, ModelInputs, prompt_content  # noqa: E402

SEED = 0
DEVICE = torch.device("cpu")  # --device; on CUDA the model runs in bf16
IMAGE_SIZE = (240, 320)  # (height, width): a multi-crop grid for both configs
LABEL_FRACTION = 0.25  # share of the batch's real tokens that carry a label
REALISTIC_VOCAB = 32000
MEMORY_MODES = ("labelled", "full")
SECTIONS = ("train", "generate", "memory", "chunks")
CHUNK_LENGTH = 8  # H actions per chunk
CHUNK_ACTION_DIM = 7  # D: a 6-DoF end-effector delta + gripper
CHUNK_STATE_DIM = 8  # the l1_state8 variant's proprioceptive state
CHUNK_IMAGE_SIZE = (224, 224)
CHUNK_LARGE_IMAGE_SIZE = (512, 512)  # the 8B shape: one 512 px crop (image.num_crops=1), as the issue names it
CHUNK_INSTRUCTION = "put the red cube in the blue bowl"
CHUNK_LARGE_CONFIG = "magma-8b"  # measured on CUDA only

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
    chunk_runs: int  # timed act() calls per head, after one warm-up call each


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
            chunk_runs=3,
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
            chunk_runs=5,
        )
    return Plan(
        batch=4,
        warmup_steps=2,
        timed_steps=10,
        gen_batches=(1, 4),
        gen_tokens=64,
        gen_min_time_s=1.0,
        memory_vocabs=(None, REALISTIC_VOCAB),
        chunk_runs=7,
    )


def log(message: str) -> None:
    report.log("model", message)


def emit(
    name: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    ratio: float | None = None,
    device: torch.device | None = None,
    **extra,
) -> None:
    report.emit(name, value, unit, baseline, ratio, device=str(device or DEVICE), **extra)


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
            goal=GENERATION_GOAL,
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


# ---- 4. action chunks: the one-pass heads against token decoding ------------------------------------------
@dataclass(frozen=True)
class ChunkVariant:
    """One policy to time: its figure label, action head and proprioceptive state size."""

    label: str
    head: str
    state_dim: int = 0


GENERATION_GOAL = ">= 3"  # issue [9/10]: the KV cache >= 3x full recompute, magma-tiny at batch 1 too
CHUNK_GOAL = ">= 10"  # issue [7/10]: one chunk from a parallel head >= 10x faster than decoding its tokens
CHUNK_VARIANTS = (
    ChunkVariant("tokens", "tokens"),
    ChunkVariant("l1", "l1"),
    ChunkVariant("flow", "flow"),
    ChunkVariant(f"l1_state{CHUNK_STATE_DIM}", "l1", CHUNK_STATE_DIM),
)
CHUNK_VARIANTS_LARGE = CHUNK_VARIANTS[:3]  # the 8B shape: each head (tokens, l1, flow)
TOKEN_BASELINE = (
    f"token head: {CHUNK_LENGTH} x {CHUNK_ACTION_DIM} greedy tokens constrained to the action bins, KV cache"
)


def chunk_config(config_name: str, variant: ChunkVariant) -> MagmaConfig:
    overrides = [
        f"action.head={variant.head}",
        f"action.chunk_length={CHUNK_LENGTH}",
        f"action.state_dim={variant.state_dim}",
    ]
    if variant.head != "tokens":  # the token head takes D from the action statistics
        overrides.append(f"action.action_dim={CHUNK_ACTION_DIM}")
    if config_name == CHUNK_LARGE_CONFIG:
        overrides.append("image.num_crops=1")
    config = load_config(config_name, overrides)
    if config.tokenizer is None:  # magma-8b ships no tokenizer: drive its shape with the tiny tokenizer's ids
        bundled = load_config("magma-tiny")
        config.tokens, config.tokenizer = bundled.tokens, bundled.tokenizer
    return config


def made_up_statistics(dim: int, seed: int, gripper: bool) -> ActionStatistics:
    """Statistics of random data; with ``gripper`` the last dimension is left unnormalised, as a gripper is."""
    values = np.random.default_rng(seed).normal(size=(256, dim))
    return ActionStatistics.compute(values, mask=[True] * (dim - 1) + [not gripper])


def chunk_policy(config_name: str, variant: ChunkVariant, device: torch.device) -> MagmaRobotPolicy:
    """A policy as a user builds it (model + processor + codec), random weights, on ``device``."""
    config = chunk_config(config_name, variant)
    torch.manual_seed(SEED)
    with device:  # build in place: the 8B shape never passes through CPU memory
        model = MagmaForCausalLM(config)
    model = model.to(device, default_dtype(device))
    codec = RobotActionCodec(made_up_statistics(CHUNK_ACTION_DIM, SEED, gripper=True), config.tokens.base_vocab_size)
    state_statistics = made_up_statistics(variant.state_dim, SEED + 1, gripper=False) if variant.state_dim else None
    return MagmaRobotPolicy(
        model,
        MagmaProcessor.from_config(config),
        codec,
        state_statistics=state_statistics,
        generator=torch.Generator(device=device).manual_seed(SEED),
    )


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def bench_chunks(
    config_name: str, device: torch.device, variants: tuple[ChunkVariant, ...], runs: int, threads: int
) -> None:
    """Time ``act`` per head, the heads interleaved round by round so that load changes touch all alike."""
    policies = {variant.label: chunk_policy(config_name, variant, device) for variant in variants}
    rng = np.random.default_rng(SEED)
    image_size = CHUNK_LARGE_IMAGE_SIZE if config_name == CHUNK_LARGE_CONFIG else CHUNK_IMAGE_SIZE
    observation = {
        "image": rng.integers(0, 256, (*image_size, 3), dtype=np.uint8),
        "state": rng.normal(size=CHUNK_STATE_DIM),  # read only by the policies whose model takes a state
    }
    tokens = policies["tokens"]
    prompt = prompt_content(tokens.prompt, instruction=CHUNK_INSTRUCTION)
    prompt_len = int(tokens.processor(prompt, [observation["image"]]).input_ids.shape[1])
    log(
        f"{config_name}: action chunks H={CHUNK_LENGTH} D={CHUNK_ACTION_DIM} on {device}, prompt {prompt_len} "
        f"tokens, heads {', '.join(policies)}, 1 warm-up + {runs} timed calls each"
    )
    for label, policy in policies.items():
        policy.reset({"instruction": CHUNK_INSTRUCTION})
        chunk = policy.act(observation)  # warm-up
        if chunk.shape != (CHUNK_LENGTH, CHUNK_ACTION_DIM) or not np.all(np.isfinite(chunk)):
            raise RuntimeError(
                f"{label}: act gave a {chunk.shape} chunk, expected finite {CHUNK_LENGTH}x{CHUNK_ACTION_DIM}"
            )
    load_before = load_average()
    wall: dict[str, list[float]] = {label: [] for label in policies}
    cpu: dict[str, list[float]] = {label: [] for label in policies}
    for _ in range(runs):
        for label, policy in policies.items():
            synchronize()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            policy.act(observation)  # returns numpy: the device work is done
            wall[label].append(time.perf_counter() - start_wall)
            cpu[label].append(time.process_time() - start_cpu)
    load_after = load_average()
    if tokens.invalid_outputs:
        log(f"{config_name}: WARNING {tokens.invalid_outputs} token chunks were not valid actions")
    token_s = statistics.median(wall["tokens"])
    for variant in variants:
        policy, median_s = policies[variant.label], statistics.median(wall[variant.label])
        extra = {
            "config": config_name,
            "head": variant.head,
            "state_dim": variant.state_dim,
            "chunk_length": CHUNK_LENGTH,
            "action_dim": CHUNK_ACTION_DIM,
            "image": f"{image_size[1]}x{image_size[0]}",
            "prompt_len": prompt_len,
            "runs": runs,
            "median_s": round(median_s, 4),
            "min_s": round(min(wall[variant.label]), 4),  # the least disturbed call, for a loaded machine
            "median_cpu_s": round(statistics.median(cpu[variant.label]), 4),
            "dtype": str(policy.model.dtype).removeprefix("torch."),
            "threads": threads if device.type == "cpu" else None,
            "load_avg_before": load_before,
            "load_avg_after": load_after,
            "cpu_count": os.cpu_count(),
        }
        name = f"action_chunk_per_s/{config_name}/{variant.label}"
        if variant.head == "tokens":
            emit(name, 1 / median_s, "chunks/s", device=device, new_tokens=CHUNK_LENGTH * CHUNK_ACTION_DIM, **extra)
            log(f"{config_name}: tokens {median_s:.3f} s per chunk")
            continue
        if variant.head == "flow":
            extra["flow_steps"] = policy.action.flow_steps
        emit(
            name,
            1 / median_s,
            "chunks/s",
            baseline=TOKEN_BASELINE,
            ratio=token_s / median_s,
            goal=CHUNK_GOAL,
            device=device,
            baseline_value=round(1 / token_s, 3),
            time_vs_tokens=round(median_s / token_s, 4),
            **extra,
        )
        log(f"{config_name}: {variant.label} {median_s:.3f} s per chunk, {token_s / median_s:.1f}x tokens")
    log(f"{config_name}: load average {load_before} before, {load_after} after, {os.cpu_count()} CPUs")


def bench_chunks_large(runs: int, threads: int) -> None:
    if not torch.cuda.is_available():
        log(f"{CHUNK_LARGE_CONFIG}: no CUDA device, its action-chunk figures (bf16, each head) are skipped")
        return
    bench_chunks(CHUNK_LARGE_CONFIG, torch.device("cuda"), CHUNK_VARIANTS_LARGE, runs, threads)


# ---- driver ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help=(
            "model configs to measure (default: magma-tiny magma-100m, and "
            f"{CHUNK_LARGE_CONFIG} for the chunks section where CUDA is present; magma-tiny with --quick); "
            f"{CHUNK_LARGE_CONFIG} runs the chunks section only"
        ),
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: magma-tiny, fewer steps and tokens")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="run only these sections (default: all); e.g. --only chunks for the action-chunk speeds alone",
    )
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
    requested = args.configs or (["magma-tiny"] if args.quick else ["magma-tiny", "magma-100m", CHUNK_LARGE_CONFIG])
    sections = set(args.only)
    started = time.perf_counter()
    for config_name in [name for name in requested if name != CHUNK_LARGE_CONFIG]:
        plan = plan_for(config_name, args.quick)
        if sections & {"train", "generate"}:
            model, processor = build_model(config_name)
            log(
                f"{config_name}: {model.parameter_counts()['total'] / 1e6:.1f}M parameters "
                f"on {DEVICE}, {args.threads} threads"
            )
            if "train" in sections:
                bench_train_step(config_name, model, processor, plan, args.threads)
            if "generate" in sections:
                bench_generate(config_name, model, processor, plan, args.threads)
            del model
            gc.collect()
        if "memory" in sections:
            bench_memory(config_name, plan, args.threads)
        if "chunks" in sections:
            bench_chunks(config_name, DEVICE, CHUNK_VARIANTS, plan.chunk_runs, args.threads)
    if CHUNK_LARGE_CONFIG in requested and "chunks" in sections:
        bench_chunks_large(plan_for(CHUNK_LARGE_CONFIG, args.quick).chunk_runs, args.threads)
    log(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
