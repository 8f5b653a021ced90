"""``agent run ENV``: a policy over an environment's tasks, one command per environment with its own options
(``agent run ENV --help``), all through the one suite runner (``magma.evaluation.runner``): a progress bar
with the task count and ETA, ``results.jsonl``, a summary table, an HTML report, ``--resume`` and, where the
environment allows, ``--workers``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from data_tools.ray_cluster import DEFAULT_MAX_TRIES

run_app = typer.Typer(
    help="Run a policy over an environment's tasks: success table, results.jsonl and an HTML report.",
    no_args_is_help=True,
)

# options every environment has
OutOption = Annotated[str | None, typer.Option("--out", help="Output directory (default runs/run-ENV-TIME).")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Finish the run in --out (same options).")]
RetryOption = Annotated[
    bool,
    typer.Option(
        "--retry-errors",
        help="With --resume, also rerun tasks that failed for a reason of their own (a start page that did not "
        "load, a bad endpoint reply); without it only unfinished tasks run.",
    ),
]
WorkersOption = Annotated[int, typer.Option("--workers", help="Parallel workers, each with its own environment.")]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="A progress bar (tasks, ETA) and a line per task on stderr.")
]
# where the workers run, shown in a panel of their own in --help
ENGINE_PANEL = "Engine (--engine ray: workers as Ray actors)"
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        rich_help_panel=ENGINE_PANEL,
        help="local (worker threads in this process) or ray (each of --workers a Ray actor holding its own "
        "environment, on this machine or a cluster; needs the ray extra). Results, report and --resume are the same.",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        rich_help_panel=ENGINE_PANEL,
        help="The Ray cluster's head HOST:PORT (default: RAY_ADDRESS, else a local Ray instance). The --out "
        "directory must be on storage every node sees.",
    ),
]
MaxTriesOption = Annotated[
    int,
    typer.Option(
        "--max-tries",
        rich_help_panel=ENGINE_PANEL,
        help="With --engine ray: a task whose worker process dies (killed, out of memory) is retried on a new "
        "actor; after this many deaths it is recorded as failed (worker_died, rerun by --resume --retry-errors).",
    ),
]
# the robot simulators'
EpisodesOption = Annotated[int, typer.Option("--episodes", help="Episodes per task (start states 0..N-1).")]
ImageSizeOption = Annotated[int, typer.Option("--image-size", help="Camera images, pixels per side.")]
CheckpointOption = Annotated[
    str | None, typer.Option("--checkpoint", help="The Magma checkpoint directory for --policy magma.")
]
ServerOption = Annotated[
    str, typer.Option("--server", help="The policy server's URL for --policy remote (`agent serve`; token: env).")
]
StatisticsOption = Annotated[
    str | None, typer.Option("--statistics-key", help="Which dataset's action statistics to decode with.")
]
VideosOption = Annotated[bool, typer.Option("--videos/--no-videos", help="Write an mp4 of every episode.")]
ExecuteStepsOption = Annotated[
    int | None,
    typer.Option(
        "--execute-steps",
        help="For a policy that answers chunks of H actions: run K of them open loop, then plan again (1: plan "
        "every step; default: the whole chunk). At most H.",
    ),
]
# the UI environments'
ModelOption = Annotated[
    str | None, typer.Option("--model", help="A Magma checkpoint DIR (magma) or the endpoint's model name (openai).")
]
MaxStepsOption = Annotated[int, typer.Option("--max-steps", help="Steps per task.")]
# test-time search (the UI environments'), shown in a panel of their own in --help
SEARCH_PANEL = "Test-time search (--search rmcts)"
SearchOption = Annotated[
    str,
    typer.Option(
        "--search",
        rich_help_panel=SEARCH_PANEL,
        help="none (the policy acts alone) or rmcts (Reflective MCTS, ExACT: candidates from the policy, a value per "
        "state, backtracking by reset and replay; the tree goes into the report).",
    ),
]
SimulationsOption = Annotated[
    int, typer.Option("--search-simulations", rich_help_panel=SEARCH_PANEL, help="Simulations per executed step.")
]
DepthOption = Annotated[
    int, typer.Option("--search-depth", rich_help_panel=SEARCH_PANEL, help="Actions a simulation looks ahead.")
]
BranchingOption = Annotated[
    int,
    typer.Option(
        "--search-branching", rich_help_panel=SEARCH_PANEL, help="Candidates the policy draws per expanded state."
    ),
]
TotalOption = Annotated[
    int | None,
    typer.Option(
        "--search-total", rich_help_panel=SEARCH_PANEL, help="Simulations over the whole task (default: no cap)."
    ),
]
ValueOption = Annotated[
    str,
    typer.Option(
        "--value",
        rich_help_panel=SEARCH_PANEL,
        help="grader (the task's own grader: a privileged oracle value, for studying the search) or model "
        "(--value-model).",
    ),
]
ValueModelOption = Annotated[
    str | None,
    typer.Option(
        "--value-model",
        rich_help_panel=SEARCH_PANEL,
        help="The value model's name at an OpenAI-compatible endpoint (a VLM, or `agent serve`).",
    ),
]
ValueUrlOption = Annotated[
    str | None,
    typer.Option(
        "--value-base-url", rich_help_panel=SEARCH_PANEL, help="The value model's endpoint (default: OPENAI_BASE_URL)."
    ),
]
ValueTimeoutOption = Annotated[
    float,
    typer.Option(
        "--value-timeout",
        rich_help_panel=SEARCH_PANEL,
        help="Seconds per value request (no retry: a state whose request fails takes the policy's prior).",
    ),
]
DebateOption = Annotated[
    bool,
    typer.Option(
        "--debate/--single-judge",
        rich_help_panel=SEARCH_PANEL,
        help="ExACT's debate (for, against, judgement) or one judge call.",
    ),
]
ReflectionsOption = Annotated[
    bool,
    typer.Option(
        "--reflections/--no-reflections",
        rich_help_panel=SEARCH_PANEL,
        help="Write contrastive reflections after each task (RUN_DIR/reflections.jsonl) and show similar tasks' "
        "lessons to the policy.",
    ),
]
TemperatureOption = Annotated[
    float,
    typer.Option(
        "--temperature", rich_help_panel=SEARCH_PANEL, help="The policy's sampling temperature for candidates."
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", rich_help_panel=SEARCH_PANEL, help="Seeds the stochastic policies' draws.")
]


def _out_dir(out: str | None, env: str, resume: bool) -> Path:
    if resume and not out:
        raise typer.BadParameter("--resume needs --out, the directory of the run to finish")
    return Path(out or f"runs/run-{env}-{time.strftime('%Y%m%d-%H%M%S')}")


def _check_retry(retry_errors: bool, resume: bool) -> None:
    if retry_errors and not resume:
        raise typer.BadParameter("--retry-errors goes with --resume (it reruns the failed tasks of a run)")


def _check_engine(engine: str, address: str | None, max_tries: int) -> None:
    """Before anything loads: a known engine, Ray installed for ``ray`` and ``--address`` answering."""
    from data_tools.ray_cluster import check_address_answers, check_engine, import_ray

    check_engine(engine)
    if engine == "local" and address:
        raise typer.BadParameter("--address names a Ray cluster; it goes with --engine ray")
    if max_tries < 1:
        raise typer.BadParameter(f"--max-tries must be at least 1, got {max_tries}")
    if engine == "ray":
        import_ray()
        if address:
            check_address_answers(address)


def _check_policy(policy: str, allowed: tuple[str, ...], env: str) -> None:
    if policy not in allowed:
        raise typer.BadParameter(f"--policy for `agent run {env}` must be one of {', '.join(allowed)}, got {policy!r}")


def _search_settings(
    search: str,
    simulations: int,
    depth: int,
    branching: int,
    total: int | None,
    value: str,
    value_model: str | None,
    value_base_url: str | None,
    debate: bool,
    reflections: bool,
    temperature: float,
    seed: int,
    value_timeout: float = 30.0,
) -> Any:
    from magma.search.episode import search_settings

    return search_settings(
        search,
        simulations=simulations,
        depth=depth,
        branching=branching,
        total=total,
        value=value,
        value_model=value_model,
        value_base_url=value_base_url,
        debate=debate,
        reflections=reflections,
        temperature=temperature,
        seed=seed,
        value_timeout_s=value_timeout,
    )


def _print_summary(results: list[dict[str, Any]], out_dir: Path, group_name: str) -> None:
    from magma.evaluation.results import summarize, summary_table

    typer.echo(summary_table(summarize(results, group_name)))
    typer.echo(f"results: {out_dir / 'results.jsonl'}  report: {out_dir / 'report.html'}")


@run_app.command("web")
def run_web(
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks",
            help="bundled (default), a bundled site (shopping), a VWA task FILE or DIR, each optionally with :ids "
            "(shopping:0-9, test_reddit.raw.json:3,7). Repeatable.",
        ),
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="oracle (the bundled tasks' recorded trajectories), openai (OPENAI_BASE_URL / OPENAI_API_KEY; "
            "`agent serve` is one), magma, or random (random clicks on listed elements).",
        ),
    ] = "oracle",
    model: ModelOption = None,
    oracle_noise: Annotated[
        float | None,
        typer.Option("--oracle-noise", help="The oracle takes a random action with this probability (a weak policy)."),
    ] = None,
    max_steps: MaxStepsOption = 30,
    workers: WorkersOption = 1,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    auth_dir: Annotated[
        str | None, typer.Option("--auth-dir", help="VWA's .auth folder for the official sites.")
    ] = None,
    images_root: Annotated[
        str | None, typer.Option("--images-root", help="Where official task images live (VWA repo).")
    ] = None,
    grading: Annotated[str, typer.Option("--grading", help="fixed (VWA's bugs fixed) or official (VWA's code).")] = (
        "fixed"
    ),
    judge_model: Annotated[
        str | None,
        typer.Option(
            "--judge-model",
            help="A chat model (same OpenAI-compatible endpoint) that grades fuzzy_match answers and VQA questions "
            "about page images; without one those tasks are reported undecided.",
        ),
    ] = None,
    search: SearchOption = "none",
    search_simulations: SimulationsOption = 10,
    search_depth: DepthOption = 4,
    search_branching: BranchingOption = 5,
    search_total: TotalOption = None,
    value: ValueOption = "grader",
    value_model: ValueModelOption = None,
    value_base_url: ValueUrlOption = None,
    debate: DebateOption = False,
    value_timeout: ValueTimeoutOption = 30.0,
    reflections: ReflectionsOption = True,
    temperature: TemperatureOption = 1.0,
    seed: SeedOption = 0,
    out: OutOption = None,
    resume: ResumeOption = False,
    retry_errors: RetryOption = False,
    progress: ProgressOption = True,
) -> None:
    """VisualWebArena tasks (the bundled offline sites, or VWA's own) in parallel browser contexts."""
    from magma.evaluation.web_suite import (
        WEB_POLICIES,
        WebRunOptions,
        WebRunSettings,
        check_weak_policy,
        run_web_suite,
        web_candidate_factory,
        web_policy_factory,
    )

    _check_policy(policy, WEB_POLICIES, "web")
    out_dir = _out_dir(out, "web", resume)
    _check_retry(retry_errors, resume)
    _check_engine(engine, address, max_tries)
    if grading not in ("fixed", "official"):
        raise typer.BadParameter("--grading must be fixed or official")
    settings = WebRunSettings(
        tasks=list(tasks or ["bundled"]),
        policy=policy,
        model=model,
        max_steps=max_steps,
        grading_mode=grading,
        judge_model=judge_model,
        oracle_noise=oracle_noise,
        search=_search_settings(search, search_simulations, search_depth, search_branching, search_total, value,
                                value_model, value_base_url, debate, reflections, temperature, seed, value_timeout),
    )  # fmt: skip
    check_weak_policy(policy, oracle_noise)
    options = WebRunOptions(
        workers=workers, auth_dir=auth_dir, images_root=images_root, retry_errors=retry_errors, engine=engine,
        address=address, max_tries=max_tries,
    )  # fmt: skip
    if settings.search is not None:
        factory = web_candidate_factory(policy, model, settings.search, oracle_noise)
    else:
        factory = web_policy_factory(policy, model, oracle_noise, seed)
    results = run_web_suite(settings, options, out_dir, factory, resume=resume, progress=progress)
    _print_summary(results, out_dir, "site")


@run_app.command("miniwob")
def run_miniwob(
    tasks: Annotated[
        str,
        typer.Option("--tasks", help="all (every task that runs in a browser) or names: click-button,enter-text."),
    ] = "all",
    episodes: EpisodesOption = 3,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="openai (OPENAI_BASE_URL / OPENAI_API_KEY; `agent serve` is one), magma, or random (random clicks "
            "on listed elements).",
        ),
    ] = "openai",
    model: ModelOption = None,
    max_steps: MaxStepsOption = 10,
    time_limit_ms: Annotated[
        int | None,
        typer.Option(
            "--time-limit-ms",
            help="Each episode's time limit (default: the page's own, 10 s for most tasks, counted in real time, "
            "model time included; raise it for slow endpoints, as BrowserGym does).",
        ),
    ] = None,
    workers: WorkersOption = 1,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    search: SearchOption = "none",
    search_simulations: SimulationsOption = 10,
    search_depth: DepthOption = 4,
    search_branching: BranchingOption = 5,
    search_total: TotalOption = None,
    value: ValueOption = "grader",
    value_model: ValueModelOption = None,
    value_base_url: ValueUrlOption = None,
    debate: DebateOption = False,
    value_timeout: ValueTimeoutOption = 30.0,
    reflections: ReflectionsOption = True,
    temperature: TemperatureOption = 1.0,
    seed: SeedOption = 0,
    out: OutOption = None,
    resume: ResumeOption = False,
    retry_errors: RetryOption = False,
    progress: ProgressOption = True,
) -> None:
    """MiniWoB++ tasks (the miniwob package's pages, served locally) through the web env; the page's own reward.

    Episode i of a task uses seed i."""
    from envs.miniwob.tasks import resolve_tasks
    from magma.evaluation.miniwob_suite import (
        MINIWOB_POLICIES,
        MiniWoBRunSettings,
        miniwob_policy_factory,
        run_miniwob_suite,
    )
    from magma.evaluation.runner import RunOptions

    _check_policy(policy, MINIWOB_POLICIES, "miniwob")
    out_dir = _out_dir(out, "miniwob", resume)
    _check_retry(retry_errors, resume)
    _check_engine(engine, address, max_tries)
    settings = MiniWoBRunSettings(
        tasks=resolve_tasks(tasks),
        episodes=episodes,
        policy=policy,
        model=model,
        max_steps=max_steps,
        time_limit_ms=time_limit_ms,
        search=_search_settings(search, search_simulations, search_depth, search_branching, search_total, value,
                                value_model, value_base_url, debate, reflections, temperature, seed, value_timeout),
    )  # fmt: skip
    options = RunOptions(
        workers=workers, resume=resume, retry_errors=retry_errors, progress=progress, engine=engine, address=address,
        max_tries=max_tries,
    )  # fmt: skip
    factory = miniwob_policy_factory(policy, model, settings.search, seed)
    results = run_miniwob_suite(settings, out_dir, factory, options)
    _print_summary(results, out_dir, "task")


@run_app.command("android")
def run_android(
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="A JSON file of tasks (default: the bundled task list).")
    ] = None,
    policy: Annotated[
        str, typer.Option("--policy", help="scripted (the tasks' demos), openai, magma, or random (random taps).")
    ] = "scripted",
    model: ModelOption = None,
    scripted_noise: Annotated[
        float | None,
        typer.Option(
            "--scripted-noise", help="The scripted demo takes a random action with this probability (a weak policy)."
        ),
    ] = None,
    max_steps: MaxStepsOption = 20,
    device: Annotated[
        str | None,
        typer.Option("--device", help="The SERIAL from `adb devices` (default: the only one) or 'simulated'."),
    ] = None,
    adb: Annotated[
        str, typer.Option("--adb", help="The adb server HOST:PORT and client (HOST:PORT/adbutils or /adb).")
    ] = "127.0.0.1:5037/adbutils",
    record: Annotated[
        str | None, typer.Option("--record", help="Also write the episodes as training shards into DIR.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            rich_help_panel=ENGINE_PANEL,
            help="local only: the one device is driven through this machine's adb server (ray is refused).",
        ),
    ] = "local",
    search: SearchOption = "none",
    search_simulations: SimulationsOption = 10,
    search_depth: DepthOption = 4,
    search_branching: BranchingOption = 5,
    search_total: TotalOption = None,
    value: ValueOption = "grader",
    value_model: ValueModelOption = None,
    value_base_url: ValueUrlOption = None,
    debate: DebateOption = False,
    value_timeout: ValueTimeoutOption = 30.0,
    reflections: ReflectionsOption = True,
    temperature: TemperatureOption = 1.0,
    seed: SeedOption = 0,
    out: OutOption = None,
    resume: ResumeOption = False,
    retry_errors: RetryOption = False,
    progress: ProgressOption = True,
) -> None:
    """Android tasks on one device (adb), or on the simulated phone with --device simulated."""
    from magma.evaluation.android_suite import (
        ANDROID_POLICIES,
        AndroidRunOptions,
        AndroidRunSettings,
        android_candidate_factory,
        android_policy_factory,
        check_android_engine,
        run_android_suite,
    )

    _check_policy(policy, ANDROID_POLICIES, "android")
    check_android_engine(engine)
    out_dir = _out_dir(out, "android", resume)
    _check_retry(retry_errors, resume)
    endpoint, _, client = adb.partition("/")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or client not in ("", "adbutils", "adb"):
        raise typer.BadParameter(f"--adb must be HOST:PORT or HOST:PORT/adbutils|adb, got {adb!r}")
    if scripted_noise is not None and (policy != "scripted" or not 0.0 <= scripted_noise <= 1.0):
        raise typer.BadParameter(f"--scripted-noise {scripted_noise} goes with --policy scripted and is in [0, 1]")
    settings = AndroidRunSettings(
        policy=policy, model=model, max_steps=max_steps, device=device, scripted_noise=scripted_noise,
        search=_search_settings(search, search_simulations, search_depth, search_branching, search_total, value,
                                value_model, value_base_url, debate, reflections, temperature, seed, value_timeout),
    )  # fmt: skip
    if tasks:
        settings.tasks = tasks
    options = AndroidRunOptions(
        adb_host=host, adb_port=int(port), client=client or "adbutils", record_dir=record, engine=engine
    )
    if settings.search is not None:
        factory = android_candidate_factory(policy, model, settings.search, scripted_noise)
    else:
        factory = android_policy_factory(policy, model, scripted_noise, seed)
    results = run_android_suite(settings, options, out_dir, factory, resume, None, retry_errors, progress)
    _print_summary(results, out_dir, "group")
    if record:
        typer.echo(f"training shards: {record}")


ROBOT_POLICY_HELP = (
    "scripted (the simulator's privileged expert), magma (--checkpoint) or remote (a policy served by "
    "`agent serve`, --server)."
)
ROBOT_POLICIES = ("scripted", "magma", "remote")


@run_app.command("mujoco")
def run_mujoco(
    tasks: Annotated[
        str, typer.Option("--tasks", help="all (the whole tabletop suite) or names: reach,pick_place.")
    ] = "all",
    episodes: EpisodesOption = 10,
    policy: Annotated[str, typer.Option("--policy", help=ROBOT_POLICY_HELP)] = "scripted",
    checkpoint: CheckpointOption = None,
    server: ServerOption = "ws://127.0.0.1:8700",
    statistics_key: StatisticsOption = None,
    image_size: ImageSizeOption = 128,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Steps per episode (default: the task's own).")
    ] = None,
    execute_steps: ExecuteStepsOption = None,
    videos: VideosOption = True,
    workers: WorkersOption = 1,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    out: OutOption = None,
    resume: ResumeOption = False,
    retry_errors: RetryOption = False,
    progress: ProgressOption = True,
) -> None:
    """The MuJoCo tabletop suite; episode i starts from the task's evaluation state i."""
    from envs.mujoco.tasks import TASKS, get_task

    names = list(TASKS) if tasks == "all" else [get_task(name.strip()).name for name in tasks.split(",")]
    _run_simulator("mujoco", names, episodes, policy, checkpoint, server, statistics_key, image_size, None,
                   max_steps, videos, workers, out, resume, retry_errors, progress,
                   execute_steps=execute_steps, engine=engine, address=address, max_tries=max_tries)  # fmt: skip


@run_app.command("metaworld")
def run_metaworld(
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            help="A benchmark set (MT10, MT50, ML10-train, ML10-test, ML45-train, ML45-test) or task names: "
            "reach,push (with or without -v3).",
        ),
    ] = "MT10",
    episodes: EpisodesOption = 10,
    policy: Annotated[str, typer.Option("--policy", help=ROBOT_POLICY_HELP)] = "scripted",
    checkpoint: CheckpointOption = None,
    server: ServerOption = "ws://127.0.0.1:8700",
    statistics_key: StatisticsOption = None,
    image_size: ImageSizeOption = 128,
    camera: Annotated[
        str | None, typer.Option("--camera", help="corner2 (default), corner, corner3, corner4, topview, ...")
    ] = None,
    fast_render: Annotated[
        bool, typer.Option("--fast-render", help="No shadows or reflections: several times faster without a GPU.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Steps per episode (default: Meta-World's 500).")
    ] = None,
    execute_steps: ExecuteStepsOption = None,
    videos: VideosOption = True,
    workers: WorkersOption = 1,
    engine: EngineOption = "local",
    address: AddressOption = None,
    max_tries: MaxTriesOption = DEFAULT_MAX_TRIES,
    out: OutOption = None,
    resume: ResumeOption = False,
    retry_errors: RetryOption = False,
    progress: ProgressOption = True,
) -> None:
    """Meta-World v3 tasks; episode i is the state of seed i; success is Meta-World's own signal."""
    from envs.metaworld.benchmarks import resolve_tasks

    _run_simulator("metaworld", resolve_tasks(tasks), episodes, policy, checkpoint, server, statistics_key,
                   image_size, camera, max_steps, videos, workers, out, resume, retry_errors, progress,
                   fast_render, execute_steps, engine, address, max_tries)  # fmt: skip


def _run_simulator(
    env: str,
    tasks: list[str],
    episodes: int,
    policy: str,
    checkpoint: str | None,
    server: str,
    statistics_key: str | None,
    image_size: int,
    camera: str | None,
    max_steps: int | None,
    videos: bool,
    workers: int,
    out: str | None,
    resume: bool,
    retry_errors: bool,
    progress: bool,
    fast_render: bool = False,
    execute_steps: int | None = None,
    engine: str = "local",
    address: str | None = None,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> None:
    from magma.evaluation.runner import RunOptions
    from magma.evaluation.sim_suite import SimRunSettings, run_sim_suite

    _check_policy(policy, ROBOT_POLICIES, env)
    if execute_steps is not None and execute_steps < 1:
        raise typer.BadParameter(f"--execute-steps must be at least 1 (1 plans again every step), got {execute_steps}")
    if policy != "scripted" and workers > 1 and not (policy == "remote" and engine == "ray"):
        also = " (or use --engine ray: each actor has a client of its own)" if policy == "remote" else ""
        raise typer.BadParameter(f"--policy {policy} runs one episode at a time; drop --workers{also}")
    out_dir = _out_dir(out, env, resume)
    _check_retry(retry_errors, resume)
    _check_engine(engine, address, max_tries)
    settings = SimRunSettings(
        env=env,
        tasks=tasks,
        episodes=episodes,
        policy=policy,
        checkpoint=checkpoint,
        server=server if policy == "remote" else None,
        statistics_key=statistics_key,
        image_size=image_size,
        camera=camera,
        max_steps=max_steps,
        fast_render=fast_render,
        execute_steps=execute_steps,
    )
    make_policy = sim_policy_factory(env, policy, checkpoint, server, statistics_key, execute_steps)
    options = RunOptions(
        workers=workers, resume=resume, retry_errors=retry_errors, progress=progress, engine=engine, address=address,
        max_tries=max_tries,
    )  # fmt: skip
    results = run_sim_suite(settings, out_dir, make_policy, options, videos=videos)
    _print_summary(results, out_dir, "task")


def sim_policy_factory(
    env: str,
    policy: str,
    checkpoint: str | None,
    server: str,
    statistics_key: str | None,
    execute_steps: int | None = None,
) -> Callable[[Any, str], Any]:
    """``make_policy(env, task)`` for a simulator run: the simulator's privileged expert (one per episode), one
    Magma policy loaded once, or one client of a policy served by ``agent serve`` (it reconnects with
    back-off). Here, at the top, because the remote client is ``robot``'s. ``execute_steps`` is checked against
    the policy's chunk length where that is known before the run (a served policy's, at its first answer)."""
    from magma.evaluation.sim_suite import check_execute_steps

    if policy == "magma":
        if not checkpoint:
            raise typer.BadParameter("--policy magma needs --checkpoint DIR (a model trained on robot actions)")
        from magma.policies.robot import MagmaRobotPolicy

        shared = MagmaRobotPolicy.from_pretrained(checkpoint, statistics_key=statistics_key)
        check_execute_steps(execute_steps, shared.chunk_length)
        return lambda environment, task: shared
    if policy == "remote":
        from robot.policy_client import PolicyClient

        client = PolicyClient(server)
        return lambda environment, task: client
    check_execute_steps(execute_steps, 1)  # the scripted experts answer one action at a time
    if env == "metaworld":
        from envs.metaworld.expert import MetaWorldExpert

        return lambda environment, task: MetaWorldExpert()
    from envs.mujoco.experts import ScriptedExpert

    return lambda environment, task: ScriptedExpert(environment)
