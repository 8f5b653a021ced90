"""``agent data``: Trace-of-Mark over videos and Set-of-Mark over annotated screenshots, into
WebDataset training shards, on many processes and machines, resumable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from data_tools.ray_cluster import DEFAULT_MAX_TRIES
from magma.cli.engine_options import AddressOption, EngineOption, MaxTriesOption

data_app = typer.Typer(
    help="Make training data: Trace-of-Mark from videos (tom), Set-of-Mark from screenshots (som), "
    "simulated robot episodes (record-sim), LeRobot episodes as shards (lerobot-shards) and merged LeRobot "
    "datasets (lerobot-merge).",
    no_args_is_help=True,
)

InputOption = Annotated[
    list[str], typer.Option("--input", "-i", help="A directory (searched recursively) or a list file; repeatable.")
]
OutOption = Annotated[str, typer.Option("--out", "-o", help="The output directory for shards and manifests.")]
WORKERS_HELP = (
    "Processes on this machine (1 to 4 per CPU core, at most 256); with --engine ray, units in flight on the cluster."
)
WorkersOption = Annotated[int, typer.Option("--workers", "-w", help=WORKERS_HELP)]
RankOption = Annotated[
    int | None, typer.Option("--rank", help="This machine's rank (default: RANK or SLURM_PROCID, else 0).")
]
WorldOption = Annotated[
    int | None, typer.Option("--world-size", help="Machines in the job (default: WORLD_SIZE or SLURM_NTASKS, else 1).")
]
ShardOption = Annotated[int, typer.Option("--samples-per-shard", help="Samples per tar shard.")]
UnitOption = Annotated[int, typer.Option("--inputs-per-unit", help="Inputs per work unit (the unit of resuming).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of every random choice (per input, reproducible).")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show the progress bar.")]


@dataclass
class JobSettings:
    """The options every corpus job takes."""

    out: str
    workers: int
    rank: int | None
    world_size: int | None
    samples_per_shard: int
    inputs_per_unit: int
    seed: int
    progress: bool
    engine: str = "local"
    address: str | None = None
    max_tries: int = DEFAULT_MAX_TRIES


def _run(kind: str, inputs: list[str], extensions: tuple[str, ...], options: dict, settings: JobSettings) -> None:
    from data_tools.corpus_kinds import som_annotation_input, tom_video_input
    from data_tools.jobs import JobSpec, check_workers, list_inputs, rank_and_world, run_corpus_job
    from data_tools.ray_cluster import check_engine

    check_engine(settings.engine)
    check_workers(settings.workers, settings.engine)  # before listing a corpus, which can take a while
    rank, world = rank_and_world(settings.rank, settings.world_size)
    listed = sorted({item for source in inputs for item in list_inputs(source, extensions, kind == "som")})
    spec = JobSpec(
        kind=kind,
        inputs=listed,
        out_dir=settings.out,
        options=options,
        samples_per_shard=settings.samples_per_shard,
        inputs_per_unit=settings.inputs_per_unit,
        seed=settings.seed,
        rank=rank,
        world_size=world,
    )
    function = tom_video_input if kind == "tom" else som_annotation_input
    summary = run_corpus_job(
        spec,
        function,
        workers=settings.workers,
        progress=settings.progress,
        engine=settings.engine,
        address=settings.address,
        max_tries=settings.max_tries,
    )
    typer.echo(summary.format(kind, settings.out))


@data_app.command("tom")
def tom(
    inputs: InputOption,
    out: OutOption,
    workers: WorkersOption = 1,
    rank: RankOption = None,
    world_size: WorldOption = None,
    samples_per_shard: ShardOption = 1000,
    inputs_per_unit: UnitOption = 8,
    seed: SeedOption = 0,
    progress: ProgressOption = True,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    fps: Annotated[float, typer.Option(help="Frames per second sampled (one trace step per frame).")] = 8.0,
    size: Annotated[int, typer.Option(help="Decoded short side in pixels.")] = 256,
    clips_per_video: Annotated[int, typer.Option(help="Clips taken per video, spread over it.")] = 4,
    grid_size: Annotated[int, typer.Option(help="Query points: a grid_size x grid_size grid.")] = 15,
    num_steps: Annotated[int, typer.Option(help="Future steps per trace.")] = 16,
    source: Annotated[str, typer.Option(help="The samples' source name.")] = "video-tom",
    tracker: Annotated[str, typer.Option(help="lk (OpenCV Lucas-Kanade) or cotracker (local weights).")] = "lk",
    cotracker_weights: Annotated[str | None, typer.Option(help="Local CoTracker checkpoint file.")] = None,
    cotracker_repo: Annotated[str | None, typer.Option(help="Local CoTracker repository (torch.hub).")] = None,
) -> None:
    """Trace-of-Mark: track a grid of points through video clips, remove camera motion, cluster,
    and write the marked start frame with the marks' future traces as training samples."""
    from data_tools.corpus_kinds import TRACKERS, VIDEO_EXTENSIONS, TomJobOptions

    if tracker not in TRACKERS:
        raise typer.BadParameter(f"--tracker must be one of {TRACKERS}, not '{tracker}'")
    options = TomJobOptions(
        fps=fps,
        size=size,
        clips_per_video=clips_per_video,
        source=source,
        tracker=tracker,
        cotracker_weights=cotracker_weights,
        cotracker_repo=cotracker_repo,
        tom={"grid_size": grid_size, "num_steps": num_steps, "seed": seed},
    ).as_options()
    settings = JobSettings(
        out, workers, rank, world_size, samples_per_shard, inputs_per_unit, seed, progress, engine, address, max_tries
    )
    _run("tom", inputs, VIDEO_EXTENSIONS, options, settings)


@data_app.command("som")
def som(
    inputs: InputOption,
    out: OutOption,
    workers: WorkersOption = 1,
    rank: RankOption = None,
    world_size: WorldOption = None,
    samples_per_shard: ShardOption = 1000,
    inputs_per_unit: UnitOption = 64,
    seed: SeedOption = 0,
    progress: ProgressOption = True,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    max_marks: Annotated[int, typer.Option(help="Marks drawn per screenshot at most.")] = 30,
    samples_per_image: Annotated[int, typer.Option(help="Samples (distinct tasks) per screenshot.")] = 2,
    marks_on_grounding_images: Annotated[
        bool, typer.Option(help="Draw marks on the grounding tasks' images too (answers then name the mark).")
    ] = False,
) -> None:
    """Set-of-Mark: number the actionable elements of annotated screenshots (.jsonl lines with boxes,
    a DOM list or an Android view hierarchy) and write grounding samples (text -> point/box,
    point/box -> text, widget captions, Magma's `Coordinate: (x, y). Mark: N.` answers)."""
    from data_tools.corpus_kinds import ANNOTATION_EXTENSIONS

    options = {
        "max_marks": max_marks,
        "samples_per_image": samples_per_image,
        "marks_on_grounding_images": marks_on_grounding_images,
        "seed": seed,
    }
    settings = JobSettings(
        out, workers, rank, world_size, samples_per_shard, inputs_per_unit, seed, progress, engine, address, max_tries
    )
    _run("som", inputs, ANNOTATION_EXTENSIONS, options, settings)


@data_app.command("record-sim")
def record_sim(
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="A task of the MuJoCo tabletop suite; with --env metaworld a Meta-World v3 task ('reach' or "
            "'reach-v3'), a benchmark set ('MT10') or a comma-separated list (--episodes episodes of each).",
        ),
    ],
    out: OutOption,
    episodes: Annotated[
        int, typer.Option("--episodes", help="Episodes to record (evaluation states, or Meta-World seeds, 0..N-1).")
    ] = 10,
    image_size: Annotated[int, typer.Option("--image-size", help="Camera images, pixels per side.")] = 128,
    control_hz: Annotated[
        int | None,
        typer.Option("--control-hz", help="Control rate, also the dataset's fps (mujoco: 10; Meta-World steps at 80)."),
    ] = None,
    keep_failures: Annotated[bool, typer.Option("--keep-failures", help="Keep episodes the expert failed.")] = False,
    env: Annotated[
        str, typer.Option("--env", help="The simulator: mujoco (the tabletop suite) or metaworld.")
    ] = "mujoco",
    camera: Annotated[
        str | None,
        typer.Option(
            "--camera",
            help="The one camera to record (mujoco: third_person or wrist, default both; "
            "metaworld: corner2 by default, or topview, corner, corner3, corner4, behindGripper).",
        ),
    ] = None,
    fast_render: Annotated[
        bool,
        typer.Option("--fast-render", help="Meta-World: no shadows or reflections (much faster without a GPU)."),
    ] = False,
) -> None:
    """Record scripted-expert episodes of the simulated robot (the MuJoCo tabletop suite or Meta-World v3)
    in the LeRobotDataset v3 layout."""
    from robot.recording import record_episodes

    def report(index: int, success: bool, steps: int) -> None:
        typer.echo(f"episode {index:>3}: {'ok  ' if success else 'fail'} {steps:>4} steps", err=True)

    if env == "metaworld":
        from envs.metaworld.env import CONTROL_HZ, EnvConfigError
        from robot.sim_metaworld import record_metaworld_episodes

        if control_hz not in (None, CONTROL_HZ):
            raise EnvConfigError(f"--control-hz {control_hz}: Meta-World steps at {CONTROL_HZ} Hz; leave it out")
        summary = record_metaworld_episodes(
            task, episodes, out, image_size, camera, keep_failures, fast_render, on_episode=report
        )
        typer.echo(summary.format())
        return
    if env != "mujoco":
        raise typer.BadParameter(f"'{env}' is not a simulator here; use mujoco or metaworld", param_hint="--env")

    from envs.mujoco.env import CAMERAS as TABLETOP_CAMERAS
    from envs.mujoco.env import EnvConfigError as TabletopConfigError
    from envs.mujoco.experts import ScriptedExpert
    from envs.mujoco.tasks import get_task
    from robot.sim import SimRobot

    get_task(task)
    if camera is not None and camera not in TABLETOP_CAMERAS:
        raise TabletopConfigError(f"--camera {camera} is not a tabletop camera; use one of {list(TABLETOP_CAMERAS)}")
    cameras = tuple(TABLETOP_CAMERAS) if camera is None else (camera,)
    rate = control_hz or 10

    def make_robot(index: int) -> SimRobot:
        return SimRobot(task=task, image_size=image_size, cameras=cameras, control_hz=rate, state_index=index)

    summary = record_episodes(
        make_robot, lambda robot: ScriptedExpert(robot.env), episodes, out, rate, keep_failures, report
    )
    typer.echo(summary.format())


@data_app.command("lerobot-shards")
def lerobot_shards(
    dataset: Annotated[str, typer.Option("--dataset", help="A LeRobotDataset v3 directory.")],
    out: OutOption,
    camera: Annotated[str | None, typer.Option("--camera", help="The video key to use (default: the first).")] = None,
    frame_stride: Annotated[int, typer.Option("--frame-stride", help="Use every n-th frame.")] = 1,
    samples_per_shard: ShardOption = 1000,
    chunk_length: Annotated[
        int,
        typer.Option(
            "--chunk-length", help="Future actions per sample (rows, masked past an episode's end), for chunk heads."
        ),
    ] = 1,
) -> None:
    """Turn robot episodes into training shards (the sample contract, actions as floats, the proprioceptive
    state) plus the dataset_statistics.json (action and state statistics) the trainer reads."""
    from data_tools.lerobot_dataset import LeRobotDatasetReader, episodes_to_shards

    reader = LeRobotDatasetReader(dataset)
    shards, statistics = episodes_to_shards(
        reader,
        out,
        samples_per_shard=samples_per_shard,
        camera=camera,
        frame_stride=frame_stride,
        chunk_length=chunk_length,
    )
    typer.echo(f"{len(shards)} shards in {out}; action statistics: {statistics}")


@data_app.command("lerobot-merge")
def lerobot_merge(
    out: Annotated[str, typer.Argument(help="The merged dataset's folder (must not exist).")],
    inputs: Annotated[
        list[str],
        typer.Argument(help="Datasets to merge: dataset folders, folders of datasets (RUN_DIR/episodes) or globs."),
    ],
    video_file_size_mb: Annotated[
        float, typer.Option("--video-file-size-mb", help="Start a new mp4 past this size (LeRobot's default).")
    ] = 200,
    data_file_size_mb: Annotated[
        float, typer.Option("--data-file-size-mb", help="Start a new data parquet past this size.")
    ] = 100,
) -> None:
    """Merge LeRobotDatasets v3 (e.g. the daemon's one dataset per episode) into one: indices, tasks,
    statistics and file indices rewritten, videos copied without re-encoding. Datasets that differ in
    robot, fps or features are refused and nothing is written."""
    from data_tools.lerobot_merge import merge_datasets

    summary = merge_datasets(out, inputs, data_file_size_mb=data_file_size_mb, video_file_size_mb=video_file_size_mb)
    typer.echo(summary.format())


@data_app.command("search-traces")
def search_traces(
    run_dir: Annotated[str, typer.Argument(help="The --out folder of `agent run ... --search rmcts`.")],
    out: OutOption,
    max_images: Annotated[
        int,
        typer.Option(
            "--max-images",
            help="Images per sample: the step's Set-of-Mark screenshot and the first explored states; "
            "later states carry their element listing as text (0: text only).",
        ),
    ] = 4,
    successful_only: Annotated[
        bool, typer.Option("--successful-only", help="Only the trees of tasks that succeeded (results.jsonl).")
    ] = False,
    samples_per_shard: ShardOption = 1000,
) -> None:
    """Exploratory learning (ExACT): turn a searched run's trees into multi-turn training samples (the
    actions explored, each state's evaluation, the backtracks, the executed choice), one per searched step."""
    from magma.search.traces import write_search_traces

    summary = write_search_traces(run_dir, out, max_images, successful_only, samples_per_shard)
    typer.echo(summary.format(run_dir, out))
