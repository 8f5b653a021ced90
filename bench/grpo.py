"""GRPO throughput on the text task: our trainer against TRL's GRPOTrainer, same model and settings.

Figures (one JSON line each on stdout; progress on stderr):

* ``grpo_samples_per_s/text``: completions per second over a whole run of ``--steps`` GRPO steps of
  ``configs/rl/text-digits.yaml`` (8 prompts x 8 completions of up to 8 tokens per step, one update
  per rollout, no reference model), magma-tiny's language model, on CPU. Baseline: TRL's
  ``GRPOTrainer`` with the same language model weights, tokenizer, chat template, reward
  (``digit_fraction``), group size, batch, lengths, temperature, learning rate, clip range
  (0.2 / 0.28) and token-mean loss (``loss_type="dapo"``). Ours is timed over its GRPO steps
  (rollout, scoring, update; not the evaluations, checkpoint and export around them), TRL's over its
  whole ``train()`` (it evaluates and saves nothing here); ``ratio`` is ours / TRL's.
* ``grpo_generation_share/text``: the share of our step time spent rolling out (sampling and reward).

TRL is never a dependency of the toolkit: the bench makes its own virtual environment (default
``~/.cache/embodied-agent-toolkit/bench-trl``) that sees this interpreter's packages through a
``.pth`` file and pip-installs only what TRL adds (``trl``, ``datasets``). If that fails, it says so
and prints our figure alone.

Usage: ``python bench/grpo.py [--steps 10] [--no-trl]``
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

TRL_REQUIREMENT = "trl>=1.0,<2"
TRL_ENV = Path(os.environ.get("GRPO_BENCH_TRL_ENV", Path.home() / ".cache" / "embodied-agent-toolkit" / "bench-trl"))


def run_ours(steps: int, work: Path) -> tuple[float, float]:
    """(completions/s, generation share) of ``agent rl grpo --config text-digits`` for ``steps`` steps."""
    from magma.rl.config import load_rl_config
    from magma.rl.trainer import GRPOTrainer

    config = load_rl_config("text-digits", [f"run_dir={work / 'ours'}", f"max_steps={steps}", "logging.progress=false"])
    trainer = GRPOTrainer(config)
    summary = trainer.train()
    records = [r for r in trainer.run.read_metrics() if "step_s" in r]
    # the steps themselves (rollout, scoring, updates); evaluation, checkpoint and export are left out
    seconds = sum(r["step_s"] for r in records)
    completions = steps * config.text.prompts_per_step * config.sampling.group_size
    report.log(
        "grpo",
        f"ours: {steps} steps in {seconds:.1f} s, reward {summary['first_reward']:.3f} -> {summary['last_reward']:.3f}",
    )
    return completions / seconds, summary["generation_share"]


def export_language_model(directory: Path) -> None:
    """magma-tiny's language model (seeded as our trainer seeds it) and tokenizer, as a plain
    transformers checkpoint TRL can load with AutoModelForCausalLM."""
    from accelerate.utils import set_seed

    from magma.model import MagmaForCausalLM
    from magma.tokenizer import load_tokenizer

    set_seed(0)
    model = MagmaForCausalLM.from_config("magma-tiny")
    model.language_model.save_pretrained(directory)
    load_tokenizer("tiny").save_pretrained(directory)


def ensure_trl_env() -> Path | None:
    """The bench's own virtual environment with TRL; None (and a message) when it cannot be made."""
    python = TRL_ENV / "bin" / "python"
    probe = [str(python), "-c", "import trl, datasets"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    report.log("grpo", f"making {TRL_ENV} with {TRL_REQUIREMENT} (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(TRL_ENV)], check=True, capture_output=True)
        child_site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(child_site, "toolkit-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", TRL_REQUIREMENT, "datasets"], check=True, timeout=900
        )
        subprocess.run(probe, check=True, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        report.log("grpo", f"TRL could not be installed ({error}); reporting our figure alone")
        return None
    return python


def run_trl(python: Path, steps: int, work: Path) -> float | None:
    """Completions/s of TRL's GRPOTrainer, run in the TRL environment (``--trl-worker``)."""
    model_dir = work / "lm"
    export_language_model(model_dir)
    command = [str(python), __file__, "--trl-worker", str(model_dir), "--steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, env={**os.environ})
    if result.returncode != 0:
        report.log("grpo", "TRL run failed; reporting our figure alone:\n" + result.stderr[-3000:])
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["completions_per_s"]


def trl_worker(model_dir: str, steps: int) -> None:
    """Runs inside the TRL environment: the same task with TRL's GRPOTrainer."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from magma.rl.config import load_rl_config
    from magma.rl.rewards import digit_fraction, digit_prompts

    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = load_rl_config("text-digits", [])
    sampling = config.sampling
    prompts = [{"prompt": [{"role": "user", "content": p.text}]} for p in digit_prompts()]
    batch = config.text.prompts_per_step * sampling.group_size

    def reward(completions, **kwargs):
        return [digit_fraction("", c[0]["content"] if isinstance(c, list) else c, {}) for c in completions]

    args = GRPOConfig(
        output_dir=str(Path(model_dir).parent / "trl"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=sampling.group_size,
        max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature,
        learning_rate=config.optim.lr,
        lr_scheduler_type="constant",
        beta=0.0,
        epsilon=config.algorithm.clip_low,
        epsilon_high=config.algorithm.clip_high,
        loss_type="dapo",
        scale_rewards="group",
        num_iterations=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=config.seed,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    print(json.dumps({"completions_per_s": steps * batch / seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-trl", action="store_true", help="report our figure alone")
    parser.add_argument("--trl-worker", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker, args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours, generation_share = run_ours(args.steps, work)
        python = None if args.no_trl else ensure_trl_env()
        theirs = run_trl(python, args.steps, work) if python is not None else None
    if theirs is not None:
        report.emit(
            "grpo_samples_per_s/text",
            ours,
            "completions/s",
            baseline="trl.GRPOTrainer",
            ratio=ours / theirs,
            baseline_value=round(theirs, 3),
        )
    else:
        report.emit("grpo_samples_per_s/text", ours, "completions/s")
    report.emit("grpo_generation_share/text", generation_share, "fraction")


if __name__ == "__main__":
    main()
