"""``agent lapa pipeline``: LAPA end to end on the MuJoCo tabletop suite, at tiny scale on a CPU.

1. record: expert demonstrations from random initial states whose actions are thrown away (the
   "videos without actions"), play episodes that move the arm along random axis directions (varied
   motion whose truth is known), and a few action-labelled expert episodes for fine-tuning, all in
   the LeRobotDataset layout (``robot.recording``); the labelled ones also as robot-action shards;
2. quantizer: the latent action quantizer trained on frame pairs of the unlabelled videos and play;
3. probe: do its codes carry the motion? A linear probe from codes to the arm's true direction
   of motion on held-out play episodes, against chance;
4. label: latent actions of every frame pair of the demonstration videos, as training shards;
5. latent VLA: magma-tiny pretrained on the latent shards by the magma trainer;
6. fine-tune: the latent VLA, and the same recipe from new weights (the paper's "scratch"
   baseline), on the few action-labelled episodes;
7. evaluate: both policies on the suite's fixed evaluation states; success rates side by side.

Every stage writes into ``run_dir`` and is skipped when its output is there, so an interrupted
pipeline continues where it stopped. ``report.json`` holds every figure.

A recipe (``lapa.recipes``): it spans ``robot``, ``envs``, ``magma`` and ``lapa``, so it sits above them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from data_tools.atomic_files import write_json_atomically
from data_tools.config_files import ConfigError, find_config_file, merge_structured, read_yaml
from lapa.config import load_quantizer_train_config
from lapa.frame_pairs import load_frame_pairs, motion_between
from lapa.labelling import LabelOptions, clip_codes, run_label_job
from lapa.probe import ProbeResult, direction_labels, linear_probe
from lapa.quantizer import LatentActionQuantizer

PIPELINE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "lapa"
VIDEO_SEED, PLAY_SEED, ROBOT_SEED = 10_000, 20_000, 30_000  # initial states, apart from the evaluation set


@dataclass
class PipelineConfig:
    name: str = "lapa-pipeline-tiny"
    run_dir: str = "runs/${name}"
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["reach"])
    image_size: int = 64  # camera images, pixels per side (also the quantizer's frames)
    control_hz: int = 10
    expert_max_translation: float = 0.02  # metres per step of the scripted expert (smooth demonstrations)
    video_episodes: int = 30  # per task: demonstrations whose actions are dropped
    play_episodes: int = 20  # random-direction play episodes (known motion)
    robot_episodes: int = 4  # per task: action-labelled demonstrations for fine-tuning
    eval_episodes: int = 10  # per task: evaluation states 0..N-1
    eval_max_steps: int | None = None  # steps per evaluation episode; None: the task's own limit
    probe_test_share: float = 0.3  # share of play episodes held out for the probe
    probe_min_motion_m: float = 0.01  # pairs whose end effector moves less are left out of the probe
    quantizer: str = "lapa-tiny"  # a recipe in configs/lapa
    quantizer_overrides: list[str] = field(default_factory=list)
    latent_pretrain: str = "lapa-latent-pretrain-tiny"  # a recipe in configs/train
    latent_pretrain_overrides: list[str] = field(default_factory=list)
    finetune: str = "lapa-robot-finetune-tiny"  # a recipe in configs/train
    finetune_overrides: list[str] = field(default_factory=list)
    progress: bool = True


def load_pipeline_config(name_or_path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    path = find_config_file(name_or_path, PIPELINE_CONFIG_DIR, "lapa pipeline")
    config = merge_structured(PipelineConfig, read_yaml(path, "lapa pipeline"), overrides or [], str(path))
    from envs.mujoco.tasks import get_task

    for task in config.tasks:
        get_task(task)  # an unknown task is one clear message now, not after the recording
    if min(config.video_episodes, config.play_episodes, config.robot_episodes, config.eval_episodes) < 1:
        raise ConfigError(f"{path}: video_episodes, play_episodes, robot_episodes and eval_episodes must be >= 1")
    return config


class LapaPipeline:
    def __init__(self, config: PipelineConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.root = Path(config.run_dir)
        self.log = log
        self.report: dict[str, Any] = {"config": asdict(config), "seconds": {}}

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def run(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(asdict(self.config)), self.path("pipeline.yaml"))
        for name, stage in (
            ("record", self.record),
            ("quantizer", self.train_quantizer),
            ("probe", self.probe),
            ("label", self.label),
            ("latent_vla", self.pretrain_latent_vla),
            ("finetune", self.finetune),
            ("evaluate", self.evaluate),
        ):
            started = time.perf_counter()
            self.log(f"[lapa pipeline] {name} ...")
            self.report[name] = stage()
            self.report["seconds"][name] = round(time.perf_counter() - started, 1)
            write_json_atomically(self.path("report.json"), self.report)
        return self.report

    # ---- 1. recording -----------------------------------------------------------------------------
    def _record(self, out: Path, episodes: int, seed: int, policy: str) -> dict[str, Any]:
        from envs.mujoco.experts import ScriptedExpert
        from lapa.play_policy import RandomMotionPolicy
        from robot.recording import record_episodes
        from robot.sim import SimRobot

        config = self.config
        if (out / "meta" / "info.json").is_file():
            return {"dataset": str(out), "skipped": "recorded before"}
        tasks = config.tasks

        def make_robot(index: int) -> SimRobot:
            return SimRobot(
                task=tasks[index % len(tasks)],
                image_size=config.image_size,
                cameras=("third_person",),
                control_hz=config.control_hz,
                seed=seed + index,
            )

        def make_policy(robot: SimRobot):
            if policy == "play":
                return RandomMotionPolicy(seed=seed + config.seed + robot.seed)
            return ScriptedExpert(robot.env, max_translation=config.expert_max_translation)

        summary = record_episodes(make_robot, make_policy, episodes, out, config.control_hz, policy == "play")
        return {"dataset": str(summary.dataset), "episodes": summary.episodes_recorded, "frames": summary.frames}

    def record(self) -> dict[str, Any]:
        from data_tools.lerobot_dataset import LeRobotDatasetReader, episodes_to_shards

        config, tasks = self.config, len(self.config.tasks)
        report = {
            "videos": self._record(self.path("data", "videos"), config.video_episodes * tasks, VIDEO_SEED, "expert"),
            "play": self._record(self.path("data", "play"), config.play_episodes, PLAY_SEED, "play"),
            "robot": self._record(self.path("data", "robot"), config.robot_episodes * tasks, ROBOT_SEED, "expert"),
        }
        shards = self.path("data", "robot-shards")
        if not (shards / "dataset_statistics.json").is_file():
            episodes_to_shards(LeRobotDatasetReader(self.path("data", "robot")), shards, dataset_name="robot")
        report["robot_shards"] = str(shards)
        return report

    # ---- 2-3. the quantizer and its probe ---------------------------------------------------------
    def quantizer_config(self):
        overrides = [
            f"run_dir={self.path('quantizer')}",
            f"seed={self.config.seed}",
            f"data.datasets=[{self.path('data', 'videos')},{self.path('data', 'play')}]",
            f"logging.progress={str(self.config.progress).lower()}",
            *self.config.quantizer_overrides,
        ]
        return load_quantizer_train_config(self.config.quantizer, overrides)

    def train_quantizer(self) -> dict[str, Any]:
        from lapa.training import QuantizerTrainer

        summary_path = self.path("quantizer", "summary.json")
        if not summary_path.is_file():
            QuantizerTrainer(self.quantizer_config()).train()
        summary = json.loads(summary_path.read_text())
        return {
            **summary["eval"],
            "codebook_size": self.quantizer_config().quantizer.codebook_size,
            "min_window_perplexity": summary["min_window_perplexity"],
            "min_window_perplexity_after_warmup": summary.get("min_window_perplexity_after_warmup"),
            "samples_per_s": summary["samples_per_s"],
        }

    def probe(self) -> dict[str, Any]:
        done = self.path("probe.json")
        if done.is_file():
            return json.loads(done.read_text())
        config = self.quantizer_config()
        quantizer = LatentActionQuantizer.from_pretrained(self.path("quantizer", "final"))
        pairs = load_frame_pairs(
            [], [str(self.path("data", "play"))], quantizer.config.image_size, config.data.window_s
        )
        codes, labels, clips = [], [], []
        for index, clip in enumerate(pairs.clips):
            rows = pairs.pairs[pairs.pairs[:, 0] == index]
            offset = int(rows[0, 2] - rows[0, 1])
            codes.append(clip_codes(quantizer, clip.frames, rows[:, 1], offset, 64))
            motion = np.stack([motion_between(clip, int(i), int(j)) for _, i, j in rows])
            labels.append(direction_labels(motion, self.config.probe_min_motion_m))
            clips.append(np.full(len(rows), index))
        codes_all, labels_all, clip_all = np.concatenate(codes), np.concatenate(labels), np.concatenate(clips)
        held_out = clip_all >= round(len(pairs.clips) * (1 - self.config.probe_test_share))
        moving = labels_all >= 0
        train, test = moving & ~held_out, moving & held_out
        result: ProbeResult = linear_probe(
            codes_all[train], labels_all[train], codes_all[test], labels_all[test], quantizer.config.codebook_size
        )
        write_json_atomically(done, result.as_dict())
        return result.as_dict()

    # ---- 4-6. labels, latent VLA, fine-tuning -----------------------------------------------------
    def label(self) -> dict[str, Any]:
        out = self.path("labels")
        options = LabelOptions(
            checkpoint=str(self.path("quantizer", "final")),
            window_s=self.quantizer_config().data.window_s,
            source="latent",
        )
        summary = run_label_job([], [str(self.path("data", "videos"))], out, options, progress=self.config.progress)
        return {"samples": summary.samples, "shards": summary.shards, "clips": summary.inputs_ok}

    def _train(self, recipe: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
        from magma.training.config import load_train_config
        from magma.training.trainer import Trainer

        if not (run_dir / "summary.json").is_file():
            progress = f"logging.progress={str(self.config.progress).lower()}"
            config = load_train_config(recipe, [f"run_dir={run_dir}", f"seed={self.config.seed}", progress, *overrides])
            Trainer(config, resume=(run_dir / "config.yaml").is_file()).train()
        summary = json.loads((run_dir / "summary.json").read_text())
        return {"final_loss": summary["final_loss"], "steps": summary["steps"], "model": summary["model"]}

    def pretrain_latent_vla(self) -> dict[str, Any]:
        codebook = LatentActionQuantizer.from_pretrained(self.path("quantizer", "final")).config.codebook_size
        overrides = [
            f"data.sources.0.shards=[{self.path('labels')}/*.tar]",
            f"data.sources.0.latent_codebook_size={codebook}",
            *self.config.latent_pretrain_overrides,
        ]
        return self._train(self.config.latent_pretrain, self.path("latent-vla"), overrides)

    def finetune(self) -> dict[str, Any]:
        shards = self.path("data", "robot-shards")
        data = [
            f"data.sources.0.shards=[{shards}/*.tar]",
            f"data.sources.0.statistics={shards}/dataset_statistics.json",
        ]
        report = {}
        for arm, model in (("lapa", self.path("latent-vla", "final")), ("scratch", "magma-tiny")):
            overrides = [f"model={model}", *data, *self.config.finetune_overrides]
            report[arm] = self._train(self.config.finetune, self.path(f"finetune-{arm}"), overrides)
        return report

    # ---- 7. evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        from magma.evaluation.runner import RunOptions
        from magma.evaluation.sim_suite import SimRunSettings, run_sim_suite
        from magma.policies.robot import MagmaRobotPolicy

        config, report = self.config, {}
        for arm in ("lapa", "scratch"):
            checkpoint = self.path(f"finetune-{arm}", "final")
            settings = SimRunSettings(
                env="mujoco",
                tasks=list(config.tasks),
                episodes=config.eval_episodes,
                policy="magma",
                checkpoint=str(checkpoint),
                image_size=config.image_size,
                camera="third_person",
                max_steps=config.eval_max_steps,
            )
            torch.manual_seed(config.seed)
            policy = MagmaRobotPolicy.from_pretrained(checkpoint)
            results = run_sim_suite(
                settings,
                self.path(f"eval-{arm}"),
                lambda env, task, policy=policy: policy,
                RunOptions(resume=True, retry_errors=True),
                videos=False,
            )
            report[arm] = {
                "success_rate": float(np.mean([r["success"] is True for r in results])),
                "episodes": len(results),
                "invalid_outputs": int(sum(r["failed_steps"] for r in results)),
                "mean_steps": float(np.mean([r["steps"] for r in results])),
            }
        return report


def format_report(report: dict[str, Any]) -> str:
    """One screen for the end of ``agent lapa pipeline``."""
    quantizer, probe, evaluation = report["quantizer"], report["probe"], report["evaluate"]
    lines = [
        f"quantizer : reconstruction MSE {quantizer['recon_mse']:.5f} vs copy {quantizer['copy_mse']:.5f} "
        f"(ratio {quantizer['recon_vs_copy']:.3f}); perplexity {quantizer['codebook_perplexity']:.2f} of "
        f"{quantizer['codebook_size']} (lowest window after the first tenth of the run: "
        f"{quantizer.get('min_window_perplexity_after_warmup')})",
        f"probe     : codes -> motion direction {probe['probe_accuracy']:.1%} vs chance {probe['probe_chance']:.1%} "
        f"({probe['probe_classes']} classes, {probe['probe_test_pairs']} held-out pairs)",
        f"labels    : {report['label']['samples']} latent-action samples from {report['label']['clips']} clips",
        f"latent VLA: final loss {report['latent_vla']['final_loss']:.4f}",
    ]
    for arm in ("lapa", "scratch"):
        result = evaluation[arm]
        name = "LAPA (latent pretrained)" if arm == "lapa" else "scratch (no latent pretraining)"
        lines.append(
            f"success   : {name:<32} {result['success_rate']:.1%} of {result['episodes']} episodes "
            f"(fine-tune loss {report['finetune'][arm]['final_loss']:.4f})"
        )
    lines.append("seconds   : " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()))
    return "\n".join(lines)
