"""``agent demo`` (``make demo``): the toolkit's main job end to end on Meta-World, on a CPU, in minutes.

1. record: Meta-World's scripted experts on a few tasks, seeds 1000.. (held apart from the evaluation's
   seeds 0..N-1), as a LeRobot v3 dataset with instructions, and as training shards;
2. train: magma-tiny from new weights on those shards (``agent train --config metaworld-demo-tiny``: the flow
   action-chunk head with the arm's state; its progress bar and metrics.jsonl), and the same weights untrained,
   as the baseline;
3. evaluate: the trained policy, the untrained one and the expert on held-out seeds through the
   ``agent run metaworld`` runner (results.jsonl, report.html, an mp4 per episode);
4. daemon: the trained policy served (``agent serve``) drives Meta-World's arm through the control daemon
   (``agent robot run --config sim-metaworld``) for one episode, recorded as LeRobot v3;
5. report: one HTML page (success table, loss curve, playable videos, the daemon's timing, the commands
   for a larger scale).

Every stage leaves a marker in ``OUT/stages/``, so a second run reuses finished stages; a failing stage
names itself, why, and the command that reruns just it. ``OUT/demo.json`` says whose directory it is: a
directory holding anything else, or a demo made with other settings, is refused, never overwritten.
This is the CLI layer, the one place that may import envs, magma and robot together.
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from data_tools.errors import UserFacingError

STAGES = ("record", "train", "evaluate", "daemon", "report")
ARMS = ("trained", "untrained", "expert")
# what each stage writes under OUT: removed before ``--only STAGE`` redoes it
STAGE_OUTPUTS = {
    "record": ("data",),
    "train": ("train", "untrained"),
    "evaluate": ("eval", "videos"),
    "daemon": ("daemon",),
    "report": ("report.html", "videos"),
}
TRAIN_SEED_BASE = 1000  # demonstrations from seeds 1000..; evaluation on seeds 0..N-1, never seen in training
RECORD_MAX_STEPS = 200  # the experts solve these tasks in under 100 steps; a slower episode is dropped
# The daemon's rate here: on a busy CPU core magma-tiny's answer (request, image processing, one forward pass for
# the chunk) and Meta-World's software render take tens of milliseconds each; 5 Hz leaves room for both.
DAEMON_HZ = 5
MARKER_FILE = "demo.json"
MADE_BY = "agent demo"
VIDEOS_PER_CELL = 2  # episodes shown per (task, policy) in the report; every one is in the runs' reports


class DemoDirectoryError(UserFacingError, ValueError):
    """``--out`` holds something that is not this demo (or a demo made with other settings)."""


class DemoStageError(UserFacingError, RuntimeError):
    """A stage failed: its name, why, and the command that reruns just it."""


@dataclass
class DemoSettings:
    """Everything that decides the demo's results; a second run must give the same to reuse stages."""

    tasks: list[str] = field(default_factory=lambda: ["window-close", "button-press-topdown", "reach"])
    episodes: int = 15  # expert demonstrations per task
    eval_episodes: int = 6  # held-out seeds 0..N-1 per task and policy
    train_steps: int = 800
    image_size: int = 64
    max_steps: int = 120  # per evaluation (and daemon) episode
    execute_steps: int = 4  # of each action chunk the trained policy answers, steps run before it plans again
    recipe: str = "metaworld-demo-tiny"
    seed: int = 0

    def problems(self) -> list[str]:
        problems = [
            f"--{name.replace('_', '-')} must be at least 1, got {value}"
            for name, value in (
                ("episodes", self.episodes),
                ("eval_episodes", self.eval_episodes),
                ("train_steps", self.train_steps),
                ("max_steps", self.max_steps),
                ("execute_steps", self.execute_steps),
            )
            if value < 1
        ]
        if not 16 <= self.image_size <= 512:
            problems.append(f"--image-size must be 16 to 512 pixels, got {self.image_size}")
        return problems


def rerun_command(out: Path, settings: DemoSettings, stage: str | None = None) -> str:
    """The ``agent demo`` command line of these settings (only what differs from the defaults)."""
    defaults, parts = DemoSettings(), ["agent demo", f"--out {out}"]
    options = {"episodes": "--episodes", "eval_episodes": "--eval-episodes", "train_steps": "--train-steps",
               "image_size": "--image-size", "max_steps": "--max-steps",
               "execute_steps": "--execute-steps"}  # fmt: skip
    if settings.tasks != defaults.tasks:
        parts.append(f"--tasks {','.join(settings.tasks)}")
    parts += [f"{flag} {getattr(settings, name)}" for name, flag in options.items()
              if getattr(settings, name) != getattr(defaults, name)]  # fmt: skip
    if stage:
        parts.append(f"--only {stage}")
    return " ".join(parts)


def claim_out_dir(out: Path, settings: DemoSettings) -> None:
    """Make ``out`` this demo's, or check that it already is, with the same settings."""
    marker = out / MARKER_FILE
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError):
            saved = {}
        if saved.get("made_by") != MADE_BY:
            raise DemoDirectoryError(f"{marker} is not a demo's marker; pass another --out (nothing was changed)")
        differences = [
            f"{key} {saved['settings'].get(key)!r} -> {value!r}"
            for key, value in asdict(settings).items()
            if saved["settings"].get(key) != value
        ]
        if differences:
            raise DemoDirectoryError(
                f"{out} holds a demo made with other settings ({'; '.join(differences)}); nothing was changed. "
                f"Finish it with its own options ({rerun_command(out, DemoSettings(**saved['settings']))}), "
                "or pass a new --out"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DemoDirectoryError(
            f"{out} already holds something that is not an `agent demo` run; nothing was changed. "
            "Pass a new or empty --out"
        )
    from data_tools.atomic_files import write_json_atomically

    write_json_atomically(marker, {"made_by": MADE_BY, "settings": asdict(settings)})


class Demo:
    """The five stages over one output directory (see the module docstring)."""

    def __init__(self, settings: DemoSettings, out: str | Path, log: Callable[[str], None] = print) -> None:
        from envs.metaworld.benchmarks import canonical_task

        problems = settings.problems()
        if problems:
            raise UserFacingError("; ".join(problems))
        settings.tasks = [canonical_task(task) for task in settings.tasks]  # an unknown task: one message, now
        self.settings, self.out, self.log = settings, Path(out), log

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def marker(self, stage: str) -> Path:
        return self.path("stages", f"{stage}.json")

    def run(self, only: str | None = None) -> dict[str, Any]:
        """Every stage not done yet (``only``: that stage alone, redone; the ones before it must be done)."""
        import torch

        import magma.training.trainer  # noqa: F401  (torch's triton, loaded after MuJoCo's EGL, crashes)
        from data_tools.atomic_files import write_json_atomically

        if not torch.cuda.is_available():
            # the tiny model gains nothing from intra-op threads; on a busy 2-core machine two threads made
            # training and inference about 10x slower than one (measured)
            torch.set_num_threads(1)
        if only is not None and only not in STAGES:
            raise UserFacingError(f"--only {only!r} is not a stage; use one of {', '.join(STAGES)}")
        claim_out_dir(self.out, self.settings)
        results: dict[str, Any] = {}
        for number, name in enumerate(STAGES, 1):
            marker = self.marker(name)
            if only is not None and name != only:
                if STAGES.index(name) < STAGES.index(only) and not marker.is_file():
                    raise UserFacingError(
                        f"--only {only} needs the earlier stage '{name}' done first; run "
                        f"{rerun_command(self.out, self.settings)} (it resumes where it stopped)"
                    )
                if marker.is_file():
                    results[name] = json.loads(marker.read_text())
                continue
            if marker.is_file() and only is None:
                results[name] = json.loads(marker.read_text())
                self.log(f"[demo {number}/{len(STAGES)}] {name}: done before, reused ({marker})")
                continue
            if only is not None:
                # this stage's outputs and every later stage's were made from what this redoes: a later
                # stage must not resume from them (an evaluation of the previous training, say)
                for later in STAGES[number - 1 :]:
                    self.marker(later).unlink(missing_ok=True)
                    for output in STAGE_OUTPUTS[later]:
                        target = self.path(output)
                        if target.is_dir():
                            shutil.rmtree(target)
                        else:
                            target.unlink(missing_ok=True)
            self.log(f"[demo {number}/{len(STAGES)}] {name}: {self.describe(name)} ...")
            started = time.perf_counter()
            try:
                result = getattr(self, f"stage_{name}")()
            except KeyboardInterrupt:
                raise
            except Exception as error:
                reason = str(error) if isinstance(error, UserFacingError) else f"{type(error).__name__}: {error}"
                raise DemoStageError(
                    f"demo stage {number}/{len(STAGES)} '{name}' failed: {reason}\n"
                    f"rerun just this stage (the finished ones are kept): "
                    f"{rerun_command(self.out, self.settings, name)}"
                ) from error
            results[name] = {"seconds": round(time.perf_counter() - started, 1), **result}
            write_json_atomically(marker, results[name])
            self.log(f"[demo {number}/{len(STAGES)}] {name}: done in {results[name]['seconds']} s")
        return results

    def describe(self, stage: str) -> str:
        s = self.settings
        tasks = f"{len(s.tasks)} task(s) ({', '.join(s.tasks)})"
        return {
            "record": f"Meta-World experts, {s.episodes} episodes x {tasks}, {s.image_size} px, seeds "
            f"{TRAIN_SEED_BASE}..{TRAIN_SEED_BASE + s.episodes - 1}",
            "train": f"agent train --config {s.recipe}, {s.train_steps} steps -> {self.path('train')}",
            "evaluate": f"trained vs untrained vs expert, held-out seeds 0..{s.eval_episodes - 1} x {tasks}, "
            f"{s.max_steps} steps at most",
            "daemon": f"agent serve (trained) + agent robot run --config sim-metaworld, one {s.tasks[0]} episode",
            "report": f"HTML report -> {self.path('report.html')}",
        }[stage]

    # ---- 1. expert demonstrations ----------------------------------------------------------------
    def stage_record(self) -> dict[str, Any]:
        from data_tools.lerobot_dataset import LeRobotDatasetReader, episodes_to_shards
        from envs.metaworld.env import CONTROL_HZ
        from envs.metaworld.expert import MetaWorldExpert
        from robot.recording import record_episodes
        from robot.sim_metaworld import MetaWorldSimRobot

        s, dataset, shards = self.settings, self.path("data", "demonstrations"), self.path("data", "shards")
        for partial in (dataset, shards):
            shutil.rmtree(partial, ignore_errors=True)  # a recording cut short starts over

        def make_robot(index: int) -> MetaWorldSimRobot:
            task, seed = s.tasks[index // s.episodes], TRAIN_SEED_BASE + index % s.episodes
            return MetaWorldSimRobot(
                task, s.image_size, seed=seed, max_episode_steps=RECORD_MAX_STEPS, fast_render=True
            )

        def make_expert(robot: MetaWorldSimRobot) -> MetaWorldExpert:
            return MetaWorldExpert(task=robot.task, state_key="observation.state")

        summary = record_episodes(make_robot, make_expert, s.episodes * len(s.tasks), dataset, CONTROL_HZ)
        chunk_length = self.recipe_chunk_length()  # as many future actions per sample as the head plans
        episodes_to_shards(LeRobotDatasetReader(dataset), shards, dataset_name="metaworld", chunk_length=chunk_length)
        return {
            "dataset": str(dataset),
            "shards": str(shards),
            "episodes": summary.episodes_recorded,
            "discarded": summary.episodes_discarded,
            "frames": summary.frames,
        }

    # ---- 2. training -----------------------------------------------------------------------------
    def recipe_chunk_length(self) -> int:
        """The recipe's ``chunk_length`` (1 when it sets none), read before its shards exist."""
        import yaml

        from magma.training.config import TRAIN_CONFIG_DIR

        path = Path(self.settings.recipe)
        path = path if path.suffix in (".yaml", ".yml") else TRAIN_CONFIG_DIR / f"{self.settings.recipe}.yaml"
        return int(yaml.safe_load(path.read_text()).get("chunk_length") or 1)

    def train_config(self) -> Any:
        from magma.training.config import load_train_config

        s, shards = self.settings, self.path("data", "shards")
        return load_train_config(
            s.recipe,
            [
                f"run_dir={self.path('train')}",
                f"seed={s.seed}",
                f"max_steps={s.train_steps}",
                f"logging.every={max(1, min(10, s.train_steps // 20))}",  # a loss curve of 20+ points
                f"data.sources.0.shards=[{shards}/*.tar]",
                f"data.sources.0.statistics={shards}/dataset_statistics.json",
            ],
        )

    def stage_train(self) -> dict[str, Any]:
        from accelerate.utils import set_seed

        from magma.checkpoint import load_checkpoint_action_statistics, load_checkpoint_state_statistics
        from magma.model import MagmaForCausalLM
        from magma.processor import MagmaProcessor
        from magma.training.trainer import Trainer, action_head_fields

        config, run_dir = self.train_config(), self.path("train")
        if not (run_dir / "summary.json").is_file():
            Trainer(config, resume=(run_dir / "config.yaml").is_file()).train()
        summary = json.loads((run_dir / "summary.json").read_text())
        # the baseline: the same preset's new weights (the training's seed), with the same action statistics
        set_seed(self.settings.seed)
        untrained = MagmaForCausalLM.from_config(config.model, list(config.model_overrides))
        fields = action_head_fields(config, untrained)
        if fields:
            untrained.set_action_head(**fields)  # the trained model's head, new weights
        untrained.save_pretrained(
            self.path("untrained"),
            tokenizer=MagmaProcessor.from_config(untrained.config).tokenizer,
            action_statistics=load_checkpoint_action_statistics(run_dir / "final"),
            state_statistics=load_checkpoint_state_statistics(run_dir / "final") or None,
        )
        return {
            "checkpoint": str(run_dir / "final"),
            "untrained": str(self.path("untrained")),
            "steps": summary["steps"],
            "final_loss": summary["final_loss"],
            "samples_per_s": summary["samples_per_s"],
        }

    # ---- 3. evaluation ---------------------------------------------------------------------------
    def stage_evaluate(self) -> dict[str, Any]:
        from magma.cli.run import sim_policy_factory
        from magma.evaluation.runner import RunOptions
        from magma.evaluation.sim_suite import SimRunSettings, run_sim_suite

        s, report = self.settings, {}
        checkpoints = {"trained": str(self.path("train", "final")), "untrained": str(self.path("untrained"))}
        for arm in ARMS:
            policy = "scripted" if arm == "expert" else "magma"
            settings = SimRunSettings(
                env="metaworld",
                tasks=list(s.tasks),
                episodes=s.eval_episodes,
                policy=policy,
                checkpoint=checkpoints.get(arm),
                image_size=s.image_size,
                max_steps=s.max_steps,
                fast_render=True,
                execute_steps=None if arm == "expert" else self.execute_steps(),
            )
            run_dir = self.path("eval", arm)
            options = RunOptions(resume=(run_dir / "run.json").is_file(), retry_errors=True, progress=True)
            make_policy = sim_policy_factory("metaworld", policy, checkpoints.get(arm), "", None)
            results = run_sim_suite(settings, run_dir, make_policy, options)
            report[arm] = per_task_success(results, s.tasks)
            self.log(
                f"  {arm:<9}: " + ", ".join(f"{t} {c['successes']}/{c['episodes']}" for t, c in report[arm].items())
            )
        return {"success": report}

    def execute_steps(self) -> int | None:
        """The steps of each chunk run before planning again (None: the model answers single actions)."""
        chunk_length = self.recipe_chunk_length()
        return None if chunk_length == 1 else min(self.settings.execute_steps, chunk_length)

    # ---- 4. the daemon ---------------------------------------------------------------------------
    def stage_daemon(self) -> dict[str, Any]:
        from robot.daemon import RobotDaemon
        from robot.daemon_config import load_daemon_config
        from robot.policy_protocol import PolicySpec
        from robot.policy_server import PolicyServer, ServerConfig
        from robot.served_policy import load_served_policy

        s, run_dir = self.settings, self.path("daemon")
        shutil.rmtree(run_dir, ignore_errors=True)  # an episode cut short is run again, whole
        spec = PolicySpec(
            policy="magma",
            model_id="",
            state_dim=39,
            control_hz=DAEMON_HZ,
            cameras={"image": [s.image_size, s.image_size, 3]},
        )
        served = load_served_policy("magma", str(self.path("train", "final")), spec)
        server = PolicyServer(served, ServerConfig(port=0))
        port = server.start_in_thread()
        try:
            overrides = [
                f"run_dir={run_dir}",
                f"control_hz={DAEMON_HZ}",
                f"policy.url=ws://127.0.0.1:{port}",
                f"robot.args.task={s.tasks[0]}",
                f"robot.args.image_size={s.image_size}",
                "robot.args.seed=0",  # held out: the evaluation's episode 0
                f"robot.args.max_episode_steps={s.max_steps}",
                f"episode.max_steps={s.max_steps}",
                "status.port=0",
                "status.live=false",
            ]
            summary = RobotDaemon(load_daemon_config("sim-metaworld", overrides)).run()
        finally:
            server.stop()
        self.log("  " + summary.format().replace("\n", "\n  "))
        episode = summary.episodes[0] if summary.episodes else None
        return {
            "run_dir": str(run_dir),
            "task": s.tasks[0],
            "control_hz": DAEMON_HZ,
            "steps": episode.steps if episode else 0,
            "success": bool(episode and episode.success),
            "ended_by": episode.ended_by if episode else "",
            "dataset": episode.dataset if episode else None,
            "jitter_p50_ms": summary.jitter_p50_ms,
            "jitter_p99_ms": summary.jitter_p99_ms,
            "action_latency_p50_ms": summary.action_latency_p50_ms,
            "action_latency_p99_ms": summary.action_latency_p99_ms,
            "slips": summary.slips,
            "holds": summary.holds,
            "dropped": summary.dropped,
            "safe_stops": summary.safe_stops,
        }

    # ---- 5. the report ---------------------------------------------------------------------------
    def stage_report(self) -> dict[str, Any]:
        stages = {name: json.loads(self.marker(name).read_text()) for name in STAGES[:-1]}
        videos = self.browser_videos()
        page = render_report(self.settings, self.out, stages, read_losses(self.path("train", "metrics.jsonl")), videos)
        partial = self.path(".report.html.partial")
        partial.write_text(page)
        partial.replace(self.path("report.html"))
        return {"report": str(self.path("report.html")), "videos": sum(len(v) for v in videos.values())}

    def browser_videos(self) -> dict[tuple[str, str], list[tuple[str, bool]]]:
        """The first episodes of every (task, policy), as the runs wrote them (H.264 MP4, which browsers
        play): ``{(task, arm): [(path relative to the report, success)]}``."""
        from magma.evaluation.results import read_results

        videos: dict[tuple[str, str], list[tuple[str, bool]]] = {}
        for arm in ARMS:
            run_dir = self.path("eval", arm)
            for result in read_results(run_dir).values():
                cell = videos.setdefault((result["group"], arm), [])
                if not result.get("video") or len(cell) >= VIDEOS_PER_CELL:
                    continue
                video = run_dir / result["video"]
                if not video.is_file():
                    raise UserFacingError(f"the episode video {video} is missing; rerun the evaluate stage")
                cell.append((str(video.relative_to(self.out)), bool(result["success"])))
        return videos


def per_task_success(results: list[dict[str, Any]], tasks: list[str]) -> dict[str, dict[str, int]]:
    """``{task: {"successes", "episodes"}}`` of a run's results (an episode that errored counts as failed)."""
    table = {task: {"successes": 0, "episodes": 0} for task in tasks}
    for result in results:
        cell = table[result["group"]]
        cell["episodes"] += 1
        cell["successes"] += int(result.get("success") is True)
    return table


def read_losses(metrics: Path) -> list[tuple[int, float]]:
    """(step, training loss) of every metrics.jsonl row that has one."""
    points = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row.get("loss"), int | float) and isinstance(row.get("step"), int):
                points.append((row["step"], float(row["loss"])))
    return points


def loss_curve_svg(points: list[tuple[int, float]], width: int = 560, height: int = 220) -> str:
    """The training loss against steps as an inline SVG line chart (no plotting library needed)."""
    if len(points) < 2:
        return "<p>Too few logged steps for a curve.</p>"
    left, right, top, bottom = 52, 12, 10, 32
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(steps), max(steps), min(losses), max(losses)
    y1 = y1 if y1 > y0 else y0 + 1.0

    def x(step: float) -> float:
        return left + (step - x0) / max(x1 - x0, 1) * (width - left - right)

    def y(loss: float) -> float:
        return top + (y1 - loss) / (y1 - y0) * (height - top - bottom)

    line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    ticks = "".join(
        f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
        f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>'
        for v in (y0, (y0 + y1) / 2, y1)
    ) + "".join(
        f'<text x="{x(s):.1f}" y="{height - 12}" text-anchor="middle">{int(s)}</text>' for s in (x0, (x0 + x1) // 2, x1)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="training loss by step">{ticks}'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{line}"/>'
        f'<text x="{(left + width) / 2}" y="{height - 1}" text-anchor="middle">optimizer step</text></svg>'
    )


def render_report(
    settings: DemoSettings,
    out: Path,
    stages: dict[str, dict[str, Any]],
    losses: list[tuple[int, float]],
    videos: dict[tuple[str, str], list[tuple[str, bool]]],
) -> str:
    """The demo's one HTML page; every link is relative to ``out``."""
    e = html.escape
    success, record, train, daemon = (stages["evaluate"]["success"], stages["record"], stages["train"],
                                      stages["daemon"])  # fmt: skip

    def cell(arm: str, task: str) -> str:
        counts = success[arm][task]
        rate = counts["successes"] / counts["episodes"] if counts["episodes"] else 0.0
        return f"<td>{counts['successes']}/{counts['episodes']} <small>({rate:.0%})</small></td>"

    rows = "".join(f"<tr><th>{e(task)}</th>{''.join(cell(arm, task) for arm in ARMS)}</tr>" for task in settings.tasks)
    video_rows = "".join(
        f"<tr><th>{e(task)}</th>"
        + "".join(
            "<td>"
            + "".join(
                f'<figure><video src="{e(path)}" controls muted loop playsinline preload="auto" '
                f'width="{settings.image_size * 2}"></video>'
                f"<figcaption>seed {index}: {'success' if ok else 'failure'}</figcaption></figure>"
                for index, (path, ok) in enumerate(videos.get((task, arm), []))
            )
            + f'<br><a href="eval/{arm}/report.html">all episodes</a></td>'
            for arm in ARMS
        )
        + "</tr>"
        for task in settings.tasks
    )
    seconds = " · ".join(f"{name} {stages[name]['seconds']} s" for name in STAGES[:-1])
    timing = (
        f"<p>{e(daemon['task'])} (held-out seed 0) at {daemon['control_hz']} Hz: "
        f"<b>{'success' if daemon['success'] else 'no success'}</b> in {daemon['steps']} steps "
        f"(ended by {e(daemon['ended_by'])}).</p><table><tr><th>loop jitter p50 / p99</th>"
        f"<td>{daemon['jitter_p50_ms']:.2f} / {daemon['jitter_p99_ms']:.2f} ms</td></tr>"
        f"<tr><th>observation to action p50 / p99</th><td>{daemon['action_latency_p50_ms']:.1f} / "
        f"{daemon['action_latency_p99_ms']:.1f} ms</td></tr><tr><th>slips · holds · dropped · safe stops</th>"
        f"<td>{daemon['slips']} · {daemon['holds']} · {daemon['dropped']} · {daemon['safe_stops']}</td></tr></table>"
        f"<p>Recorded as LeRobot v3: <code>{e(str(daemon['dataset']))}</code>; run directory "
        f"<code>{e(daemon['run_dir'])}</code> (summary.json, metrics.jsonl).</p>"
    )
    tasks = ",".join(settings.tasks)
    head = checkpoint_action_head(Path(train["checkpoint"]))
    chunk = head.get("chunk_length", 1)
    chunk_option = f" --chunk-length {chunk}" if chunk > 1 else ""
    execute_option = f" --execute-steps {min(settings.execute_steps, chunk)}" if chunk > 1 else ""
    commands = [
        ("This demo at a larger scale (more data, steps, pixels; same held-out seeds)",
         f"agent demo --out runs/demo-large --tasks {tasks} --episodes 100 --eval-episodes 20 "
         "--train-steps 20000 --image-size 128 --max-steps 300"),
        ("1. Expert data on all of MT10 (seeds 0..N-1)",
         "agent data record-sim --env metaworld --task MT10 --episodes 100 --image-size 128 --fast-render "
         f"--out data/mt10\nagent data lerobot-shards --dataset data/mt10 --out data/mt10-shards{chunk_option}"),
        ("2. A bigger preset on a GPU (or several: configs/accelerate/ddp.yaml, fsdp.yaml, deepspeed-zero2.yaml)",
         "accelerate launch --config_file configs/accelerate/single-gpu.yaml -m magma.cli.app train "
         f"--config {settings.recipe} model=magma-100m max_steps=20000 data.batch_size=32 \\\n"
         "  'data.sources.0.shards=[data/mt10-shards/*.tar]' \\\n"
         "  data.sources.0.statistics=data/mt10-shards/dataset_statistics.json"),
        ("3. Evaluation on every MT10 task",
         f"agent run metaworld --tasks MT10 --episodes 50 --policy magma --checkpoint runs/{settings.recipe}/final "
         f"--image-size 128 --max-steps 500{execute_option} --out runs/eval-mt10"),
        ("4. The trained policy behind the daemon",
         f"agent serve --policy magma --model runs/{settings.recipe}/final --image-size 128 --state-dim 39 &\n"
         "agent robot run --config sim-metaworld robot.args.task=push robot.args.image_size=128 episode.episodes=10"),
        ("Rerun one stage of this demo", rerun_command(out, settings, "evaluate")),
    ]  # fmt: skip
    arm_headers = "".join(f"<th>{arm}</th>" for arm in ARMS)
    command_html = "".join(f"<h3>{e(title)}</h3><pre>{e(text)}</pre>" for title, text in commands)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agent demo: Meta-World report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #1d2329; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }} th, td {{ border: 1px solid #d0d7de; padding: 4px 10px;
text-align: left; vertical-align: top; }} thead th {{ background: #f6f8fa; }}
figure {{ display: inline-block; margin: 2px 6px 2px 0; }} figcaption {{ font-size: 11px; color: #57606a; }}
pre {{ background: #f6f8fa; padding: 8px; white-space: pre-wrap; }} .chart text {{ font-size: 11px; fill: #57606a; }}
small {{ color: #57606a; }}
</style></head><body>
<h1>agent demo: Meta-World, expert data &rarr; training &rarr; evaluation &rarr; daemon</h1>
<p>{len(settings.tasks)} Meta-World v3 task(s); {record["episodes"]} expert demonstrations ({record["frames"]} frames,
{settings.image_size} px, seeds {TRAIN_SEED_BASE}+); magma-tiny trained {train["steps"]} steps from new weights,
{e(head_text(head, settings))}
(recipe <code>{e(settings.recipe)}</code>); evaluation on held-out seeds 0..{settings.eval_episodes - 1},
{settings.max_steps} steps at most. Stage wall times: {seconds}.</p>
<h2>Success on held-out seeds</h2>
<table><thead><tr><th>task</th><th>trained</th><th>untrained</th><th>expert</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Training loss</h2>{loss_curve_svg(losses)}
<p><small>final loss {train["final_loss"]:.4f}; {train["samples_per_s"]} samples/s;
<code>train/metrics.jsonl</code></small></p>
<h2>Episodes</h2>
<table><thead><tr><th>task</th>{arm_headers}</tr></thead><tbody>{video_rows}</tbody></table>
<h2>The control daemon driving Meta-World's arm with the trained policy</h2>{timing}
<h2>At a larger scale</h2>{command_html}
</body></html>
"""


def checkpoint_action_head(checkpoint: Path) -> dict[str, Any]:
    """The ``action`` group of a checkpoint's config.json (empty for one saved before action heads)."""
    try:
        return dict(json.loads((checkpoint / "config.json").read_text()).get("action") or {})
    except (OSError, ValueError):
        return {}


def head_text(head: dict[str, Any], settings: DemoSettings) -> str:
    """How the trained policy acts, in words: its head, chunk and state input."""
    kind, chunk = head.get("head", "tokens"), head.get("chunk_length", 1)
    text = f"{kind} action head"
    if chunk > 1:
        text += f", chunks of {chunk} actions ({min(settings.execute_steps, chunk)} run per plan)"
    if head.get("state_dim"):
        text += f", the arm's {head['state_dim']}-D state as input"
    return text


def screenshot_report(report: Path, png: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """A full-page PNG of the report from headless Chromium (the system's), after every video has loaded
    its first frame; returns how many videos decoded, so a caller can check they play."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1150, "height": 900})
            page.goto(report.resolve().as_uri())
            page.wait_for_function(
                "[...document.querySelectorAll('video')].every(v => v.readyState >= 2 || v.error)",
                timeout=timeout_s * 1000,
            )
            page.evaluate(  # show a frame from the episode's middle rather than its first
                "Promise.all([...document.querySelectorAll('video')].filter(v => !v.error).map(v => new Promise("
                "done => { v.addEventListener('seeked', done, {once: true}); v.currentTime = v.duration / 2; })))"
            )
            decoded = page.evaluate("[...document.querySelectorAll('video')].map(v => v.videoWidth > 0 && !v.error)")
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    return {"videos": len(decoded), "decoded": sum(decoded)}


def summary_text(out: Path, results: dict[str, Any]) -> str:
    """The closing screen: success per task and policy, stage times, the report's path."""
    lines = []
    if "evaluate" in results:
        success = results["evaluate"]["success"]
        lines.append(f"{'task':<24}" + "".join(f"{arm:>12}" for arm in ARMS))
        for task in success["trained"]:
            cells = "".join(f"{success[arm][task]['successes']:>8}/{success[arm][task]['episodes']:<3}" for arm in ARMS)
            lines.append(f"{task:<24}{cells}")
    lines.append("seconds : " + ", ".join(f"{name} {r['seconds']}" for name, r in results.items()))
    lines.append(f"report  : {out / 'report.html'}")
    return "\n".join(lines)


def demo(
    out: Annotated[str, typer.Option("--out", help="The demo's directory (resumed when it holds this demo).")] = (
        "runs/demo"
    ),
    tasks: Annotated[str | None, typer.Option("--tasks", help="Meta-World task names, comma-separated.")] = None,
    episodes: Annotated[int, typer.Option("--episodes", help="Expert demonstrations per task.")] = 15,
    eval_episodes: Annotated[int, typer.Option("--eval-episodes", help="Held-out seeds per task and policy.")] = 6,
    train_steps: Annotated[int, typer.Option("--train-steps", help="Optimizer steps of the training.")] = 800,
    image_size: Annotated[int, typer.Option("--image-size", help="Camera images, pixels per side.")] = 64,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Steps per evaluation episode.")] = 120,
    only: Annotated[
        str | None, typer.Option("--only", help=f"Redo just this stage ({', '.join(STAGES)}); earlier ones kept.")
    ] = None,
    screenshot: Annotated[
        str | None, typer.Option("--screenshot", help="Also save a PNG of the report (headless Chromium).")
    ] = None,
) -> None:
    """Meta-World end to end on a CPU: expert demonstrations -> training -> evaluation (trained vs untrained vs
    expert, held-out seeds) -> the served policy driving the arm through the daemon -> an HTML report.
    A second run reuses finished stages."""
    settings = DemoSettings(
        tasks=[task.strip() for task in tasks.split(",") if task.strip()] if tasks else DemoSettings().tasks,
        episodes=episodes,
        eval_episodes=eval_episodes,
        train_steps=train_steps,
        image_size=image_size,
        max_steps=max_steps,
    )
    runner = Demo(settings, out, log=lambda line: typer.echo(line, err=True))
    results = runner.run(only=only)
    if screenshot:
        shot = screenshot_report(runner.path("report.html"), Path(screenshot))
        typer.echo(f"screenshot: {screenshot} ({shot['decoded']} of {shot['videos']} videos decoded)", err=True)
    typer.echo(summary_text(runner.out, results))


__all__ = ["Demo", "DemoDirectoryError", "DemoSettings", "DemoStageError", "demo"]
