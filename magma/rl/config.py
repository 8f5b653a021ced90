"""Typed GRPO configuration. ``configs/rl/NAME.yaml`` fills it; ``key=value`` dotted overrides on the
command line change it (``agent rl grpo --config text-digits sampling.group_size=16``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_tools.config_files import ConfigError, check_number, config_from, count_problems, load_config_file
from data_tools.ray_cluster import DEFAULT_MAX_TRIES
from magma.rl.algorithms import AdvantageScale, AggMode, KLEstimator, RatioLevel
from magma.training.config import ModuleOptimConfig, OptimConfig, adamw_problems
from magma.training.run_config import MixedPrecision, RunConfig, run_problems

RL_CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "rl"
RLTaskName = Literal["text", "robot", "web"]


@dataclass
class AlgorithmConfig:
    """The loss: see ``magma.rl.algorithms`` for what each choice computes."""

    advantage_scale: AdvantageScale = "group"  # group (GRPO) | batch | none (Dr. GRPO)
    epsilon: float = 1e-6
    clip_low: float = 0.2
    clip_high: float = 0.28  # > clip_low: DAPO's clip-higher
    dual_clip: float | None = None  # e.g. 3.0; None disables
    ratio_level: RatioLevel = "token"  # token (GRPO) | sequence (GSPO)
    loss_agg: AggMode = "token-mean"
    norm_length: int | None = None  # the constant of seq-mean-token-sum-norm; None: sampling.max_new_tokens
    kl_coef: float = 0.0  # > 0 needs a reference model
    kl_estimator: KLEstimator = "k3"
    entropy_coef: float = 0.0  # > 0 rewards entropy (a bonus: loss -= coef * entropy)
    drop_zero_variance_groups: bool = True  # DAPO dynamic sampling
    importance_correction: bool = False  # truncated IS between the sampling and the training log-probs
    importance_cap: float = 2.0


@dataclass
class SamplingConfig:
    group_size: int = 8  # completions (or episodes) per prompt (or initial state)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16


@dataclass
class TextTaskConfig:
    """Text with a verifiable reward: prompts and a reward function (``magma.rl.rewards``)."""

    reward: str = "digit_fraction"  # a name in magma.rl.rewards.REWARDS or "package.module:function"
    prompts: list[str] = field(default_factory=list)  # empty: the reward's own prompt set
    prompts_per_step: int = 8
    eval_prompts: int = 16  # prompts scored greedily at each evaluation


@dataclass
class RobotTaskConfig:
    """The VLA on the MuJoCo tabletop suite; a group is one initial state of the task's evaluation set."""

    task: str = "reach"
    states: list[int] = field(default_factory=lambda: [0, 1, 2, 3])  # evaluation-state indices trained on
    states_per_step: int = 2
    eval_states: list[int] = field(default_factory=list)  # empty: the training states
    eval_samples: int = 4  # sampled episodes per evaluation state (plus one greedy)
    image_size: int = 64
    control_hz: float = 10.0
    max_episode_steps: int = 20
    progress_weight: float = 0.0  # reward = success + weight * share of the distance to the object closed
    statistics_key: str | None = None  # which dataset's action statistics in the checkpoint
    prompt: str = "<image>\nWhat action should the robot take to {instruction}?"


@dataclass
class WebTaskConfig:
    """The web agent on the bundled sites; a group is one task (one start state of the site)."""

    tasks: list[str] = field(default_factory=list)  # bundled task ids (site:id); empty: every bundled task
    tasks_per_step: int = 2
    max_episode_steps: int = 3


@dataclass
class RolloutEngineConfig:
    """Where rollouts run: in the training process (``local``) or on Ray actors, each holding a copy of the
    policy and its own environments (``ray``, web and robot tasks; see ``magma.rl.ray_rollouts``). Both give
    the same samples on a fixed seed (every episode's seed depends on the seed, step, group and repeat only)."""

    engine: Literal["local", "ray"] = "local"
    workers: int = 2  # rollout actors (ray); each plays a contiguous share of the step's groups
    address: str | None = None  # Ray cluster HOST:PORT; None: RAY_ADDRESS, else a local instance
    max_tries: int = DEFAULT_MAX_TRIES  # plays of a share of groups whose actor dies, before the step fails
    worker_cpus: float = 1.0  # Ray resources each actor reserves
    worker_gpus: float = 0.0  # > 0: the actor's policy copy runs on its GPU


@dataclass
class RLEvalConfig:
    every: int = 0  # GRPO steps between evaluations; 0: before the first and after the last step only


@dataclass
class RLConfig(RunConfig):
    """A GRPO run (``agent rl grpo``); ``max_steps`` counts GRPO steps: one rollout, then inner_epochs of
    updates on it."""

    name: str = "grpo"
    task: RLTaskName = "text"
    model: str = "magma-tiny"  # a model preset / YAML (new weights) or a checkpoint directory
    model_overrides: list[str] = field(default_factory=list)
    reference: str | None = None  # None, "initial" (a frozen copy of the start) or a checkpoint directory
    inner_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch (the rollout is split into this many parts)
    micro_batch_size: int = 32  # samples per forward/backward; gradients accumulate over a mini-batch
    mixed_precision: MixedPrecision | None = None
    gradient_checkpointing: bool = False
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-5, schedule="constant", vision_tower=ModuleOptimConfig(train=False))
    )
    eval: RLEvalConfig = field(default_factory=RLEvalConfig)
    text: TextTaskConfig = field(default_factory=TextTaskConfig)
    robot: RobotTaskConfig = field(default_factory=RobotTaskConfig)
    web: WebTaskConfig = field(default_factory=WebTaskConfig)
    rollout: RolloutEngineConfig = field(default_factory=RolloutEngineConfig)


def load_rl_config(name_or_path: str | Path, overrides: list[str] | None = None) -> RLConfig:
    """A recipe name (``configs/rl/NAME.yaml``) or YAML path, with ``key=value`` overrides."""
    return load_config_file(RLConfig, name_or_path, RL_CONFIG_DIR, "rl", overrides, validate_rl_config)


def rl_config_from(data: Any, overrides: list[str], source: str) -> RLConfig:
    return config_from(RLConfig, data, overrides, source, validate_rl_config)


def rollout_engine_problems(config: RLConfig) -> list[str]:
    rollout = config.rollout
    problems: list[str] = []
    if rollout.engine not in ("local", "ray"):
        problems.append(f"rollout.engine={rollout.engine!r}: give local or ray")
    if rollout.engine == "ray" and config.task == "text":
        problems.append(
            "rollout.engine=ray runs the web and robot tasks' environments on Ray actors; the text task has no "
            "environment to spread (its rollout is one batched generate): use rollout.engine=local"
        )
    count_problems(problems, 1, {"rollout.workers": rollout.workers, "rollout.max_tries": rollout.max_tries})
    check_number(problems, "rollout.worker_cpus", rollout.worker_cpus, low=0, hint="e.g. 1")
    check_number(problems, "rollout.worker_gpus", rollout.worker_gpus, low=0, hint="0: the actor runs on CPU")
    return problems


def validate_rl_config(config: RLConfig, source: str) -> None:
    """Every problem of the config in one ConfigError, each with its key and the fix."""
    problems: list[str] = adamw_problems(config.optim) + run_problems(config)
    algorithm, sampling = config.algorithm, config.sampling
    robot, text, web = config.robot, config.text, config.web
    check_number(problems, "sampling.temperature", sampling.temperature, low=0, low_open=True, hint="e.g. 1.0")
    check_number(problems, "sampling.top_p", sampling.top_p, low=0, high=1, low_open=True, hint="1.0: no nucleus cut")
    check_number(problems, "algorithm.epsilon", algorithm.epsilon, low=0, low_open=True, hint="e.g. 1e-6")
    check_number(problems, "algorithm.clip_low", algorithm.clip_low, low=0, high=1, high_open=True, hint="e.g. 0.2")
    check_number(problems, "algorithm.clip_high", algorithm.clip_high, low=0, hint="e.g. 0.28")
    check_number(problems, "algorithm.dual_clip", algorithm.dual_clip, optional=True)
    check_number(problems, "algorithm.kl_coef", algorithm.kl_coef, low=0, hint="0 disables the KL term")
    check_number(problems, "algorithm.entropy_coef", algorithm.entropy_coef, low=0, hint="0 disables the bonus")
    check_number(problems, "algorithm.importance_cap", algorithm.importance_cap, low=0, low_open=True, hint="e.g. 2.0")
    check_number(problems, "robot.control_hz", robot.control_hz, low=0, low_open=True, hint="e.g. 10")
    check_number(problems, "robot.progress_weight", robot.progress_weight, low=0, hint="0: success only")
    count_problems(
        problems,
        1,
        {
            "algorithm.norm_length": algorithm.norm_length,
            "text.prompts_per_step": text.prompts_per_step,
            "robot.states_per_step": robot.states_per_step,
            "robot.image_size": robot.image_size,
            "robot.max_episode_steps": robot.max_episode_steps,
            "web.tasks_per_step": web.tasks_per_step,
            "web.max_episode_steps": web.max_episode_steps,
        },
    )
    count_problems(
        problems,
        0,
        {
            "eval.every": config.eval.every,
            "text.eval_prompts": text.eval_prompts,
            "robot.eval_samples": robot.eval_samples,
        },
    )
    if sampling.group_size < 2:
        problems.append(
            f"sampling.group_size={sampling.group_size}: a group needs at least 2 samples for a baseline "
            "(GRPO compares each sample with the others of its group); use 4 to 16"
        )
    if sampling.max_new_tokens < 1:
        problems.append("sampling.max_new_tokens must be >= 1")
    if algorithm.dual_clip is not None and algorithm.dual_clip <= 1.0:
        problems.append(f"algorithm.dual_clip={algorithm.dual_clip} must be > 1 (e.g. 3.0) or null")
    if algorithm.clip_low < 0 or algorithm.clip_high < 0:
        problems.append("algorithm.clip_low and algorithm.clip_high must be >= 0")
    if algorithm.kl_coef > 0 and config.reference is None:
        problems.append(
            f"algorithm.kl_coef={algorithm.kl_coef} needs a reference model: set reference=initial "
            "(a frozen copy of the starting weights) or reference=CHECKPOINT_DIR"
        )
    if config.reference not in (None, "initial") and not (Path(config.reference) / "config.json").is_file():
        problems.append(
            f"reference='{config.reference}' is not a checkpoint directory (no config.json there); "
            "give a directory written by save_pretrained, 'initial', or null for no reference model"
        )
    for key in ("inner_epochs", "mini_batches", "micro_batch_size"):
        if getattr(config, key) < 1:
            problems.append(f"{key}={getattr(config, key)} must be >= 1")
    problems += rollout_engine_problems(config)
    if config.task == "robot" and not config.robot.states:
        problems.append("robot.states is empty; list the evaluation-state indices to train on, e.g. [0, 1]")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
