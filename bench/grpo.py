"""GRPO throughput on the text task: our trainer against TRL's GRPOTrainer, same model and settings.

Figures (one JSON line each on stdout; progress on stderr):

* ``grpo_samples_per_s/text``: completions per second over ``--steps`` GRPO steps of
  ``configs/rl/text-digits.yaml`` (8 prompts x 8 completions of up to 8 tokens per step, one update
  per rollout, no reference model), magma-tiny's language model, fp32 on CPU. Baseline: TRL's
  ``GRPOTrainer`` with the same language model weights, tokenizer, chat template, reward
  (``digit_fraction``), group size, batch, lengths, temperature, learning rate, clip range
  (0.2 / 0.28), gradient clipping (1.0), token-mean loss (``loss_type="dapo"``), the whole rollout in one
  forward/backward on both sides (ours ``micro_batch_size=64``, TRL ``per_device_train_batch_size=64``),
  no gradient checkpointing (TRL's default turns it on; ours has it off), TRL's logging off. Both are
  timed over their steps only (rollout, scoring, update; ours from its ``step_s`` records, TRL's from a
  step callback), each in a fresh process with the same ``torch.set_num_threads``. ``--rounds`` (3)
  interleaved runs, the first side alternating; ``ratio`` is the worst round's ours / TRL's, every
  round's ratio is in ``round_ratios``, and the goal (>= 1.5) is on that worst round.
* ``grpo_generation_share/text``: the share of our step time spent rolling out (sampling and reward).

TRL is never a dependency of the toolkit: the bench makes its own virtual environment (default
``~/.cache/embodied-agent-toolkit/bench-trl``) that sees this interpreter's packages through a
``.pth`` file and pip-installs only what TRL adds (``trl``, ``datasets``). If that fails, it says so
and prints our figure alone.

Usage: ``python bench/grpo.py [--steps 30] [--rounds 3] [--threads N] [--no-trl]``
"""

from __future__ import annotations

import argparse
import json
import os
import site
import statistics
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


def ours_worker(steps: int, threads: int) -> None:
    """Runs in a fresh process: ``agent rl grpo --config text-digits`` for ``steps`` steps; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from magma.rl.config import load_rl_config
    from magma.rl.trainer import GRPOTrainer

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"run_dir={tmp}/ours", f"max_steps={steps}", "logging.progress=false"]
        config = load_rl_config("text-digits", overrides)
        # one forward/backward over the whole rollout per update, as TRL's per_device_train_batch_size
        config.micro_batch_size = config.text.prompts_per_step * config.sampling.group_size
        trainer = GRPOTrainer(config)
        summary = trainer.train()
        records = [r for r in trainer.run.read_metrics() if "step_s" in r]
    # the steps themselves (rollout, scoring, update); evaluation, checkpoint and export are left out
    seconds = sum(r["step_s"] for r in records)
    completions = steps * config.text.prompts_per_step * config.sampling.group_size
    print(
        json.dumps(
            {
                "completions_per_s": completions / seconds,
                "generation_share": sum(r["step_s"] * r["generation_share"] for r in records) / seconds,
                "seconds": seconds,
                "reward": [summary["first_reward"], summary["last_reward"]],
            }
        )
    )


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


def run_worker(python: Path | str, role: str, steps: int, threads: int, model_dir: Path | None = None) -> dict | None:
    """One timed run in a fresh process (``--ours-worker`` or ``--trl-worker``); its JSON line, or None."""
    command = [str(python), __file__, f"--{role}-worker", "--steps", str(steps), "--threads", str(threads)]
    if model_dir is not None:
        command += ["--model-dir", str(model_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        report.log("grpo", f"the {role} run failed:\n" + result.stderr[-3000:])
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def trl_worker(model_dir: str, steps: int, threads: int) -> None:
    """Runs inside the TRL environment: the same task with TRL's GRPOTrainer; prints one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from magma.rl.config import load_rl_config
    from magma.rl.rewards import digit_fraction, digit_prompts

    config = load_rl_config("text-digits", [])
    sampling = config.sampling
    prompts = [{"prompt": [{"role": "user", "content": p.text}]} for p in digit_prompts()]
    batch = config.text.prompts_per_step * sampling.group_size

    def reward(completions, **kwargs):
        return [digit_fraction("", c[0]["content"] if isinstance(c, list) else c, {}) for c in completions]

    class StepTimer(TrainerCallback):
        """Seconds of each optimizer step (generation, reward, loss, update), as ours counts ``step_s``."""

        def __init__(self) -> None:
            self.started = 0.0
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    args = GRPOConfig(
        output_dir=str(Path(model_dir).parent / "trl"),
        max_steps=steps,
        per_device_train_batch_size=batch,  # the whole rollout in one forward/backward, as ours
        gradient_accumulation_steps=1,
        num_generations=sampling.group_size,
        max_completion_length=sampling.max_new_tokens,
        temperature=sampling.temperature,
        learning_rate=config.optim.lr,
        lr_scheduler_type="constant",
        max_grad_norm=config.optim.max_grad_norm,
        weight_decay=config.optim.weight_decay,
        beta=0.0,  # no reference model, as text-digits
        epsilon=config.algorithm.clip_low,
        epsilon_high=config.algorithm.clip_high,
        loss_type="dapo",  # token-mean over the batch
        scale_rewards="group",
        num_iterations=1,  # one update per rollout: old log-probs are the detached current ones
        gradient_checkpointing=False,  # TRL's default is True; ours does not recompute (a tiny model on CPU)
        logging_strategy="no",  # what a user timing training turns off (ours writes one metrics line a step)
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,  # fp32, as ours on CPU
        seed=config.seed,
        disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    seconds = sum(timer.seconds)
    print(json.dumps({"completions_per_s": len(timer.seconds) * batch / seconds, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=30, help="GRPO steps per run (10 made rounds of 2 s: too short to be steady)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved ours/TRL runs; every ratio is printed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of both (default: torch's own)")
    parser.add_argument("--no-trl", action="store_true", help="report our figure alone")
    parser.add_argument("--ours-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_worker:
        ours_worker(args.steps, args.threads)
        return
    if args.trl_worker:
        trl_worker(args.model_dir, args.steps, args.threads)
        return
    import torch

    threads = args.threads or torch.get_num_threads()
    python = None if args.no_trl else ensure_trl_env()
    ours: list[dict] = []
    theirs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "lm"
        if python is not None:
            export_language_model(model_dir)
        for index in range(args.rounds):
            # interleaved, the first side alternating, so that a change of load hits both alike
            sides = ["ours", "trl"] if index % 2 == 0 else ["trl", "ours"]
            for side in sides:
                if side == "ours":
                    result = run_worker(sys.executable, "ours", args.steps, threads)
                    if result is None:
                        raise SystemExit("our GRPO run failed (see above)")
                    ours.append(result)
                elif python is not None:
                    result = run_worker(python, "trl", args.steps, threads, model_dir)
                    if result is None:
                        python = None  # reported above; our figure alone from here on
                    else:
                        theirs.append(result)
            line = f"round {index + 1}: ours {ours[-1]['completions_per_s']:.1f} completions/s"
            if len(theirs) == index + 1:
                ratio = ours[-1]["completions_per_s"] / theirs[-1]["completions_per_s"]
                line += f", TRL {theirs[-1]['completions_per_s']:.1f}, ratio {ratio:.2f}"
            report.log("grpo", f"{line} (load {os.getloadavg()[0]:.1f}, {threads} torch threads each)")
    ours_rates = [r["completions_per_s"] for r in ours]
    shares = [r["generation_share"] for r in ours]
    if len(theirs) == len(ours):
        trl_rates = [r["completions_per_s"] for r in theirs]
        ratios = [a / b for a, b in zip(ours_rates, trl_rates, strict=True)]
        report.emit(
            "grpo_samples_per_s/text",
            statistics.median(ours_rates),
            "completions/s",
            baseline=f"trl.GRPOTrainer (medians of {len(ratios)} rounds; ratio: the worst round's)",
            ratio=min(ratios),  # the worst round: the goal holds in every one
            goal=">= 1.5",
            baseline_value=round(statistics.median(trl_rates), 3),
            round_ratios=[round(r, 3) for r in ratios],
            round_values=[round(r, 3) for r in ours_rates],
            round_baselines=[round(r, 3) for r in trl_rates],
            threads=threads,
        )
    else:
        report.emit("grpo_samples_per_s/text", statistics.median(ours_rates), "completions/s", threads=threads)
    report.emit("grpo_generation_share/text", statistics.median(shares), "fraction")


if __name__ == "__main__":
    main()
