"""Compute scaling of test-time search: success with Reflective MCTS vs the same policy alone, per budget.

Two suites, each with a weak stochastic policy that can propose several candidate actions:
(a) bundled VisualWebArena tasks (url_match, string_match and program_html over the three offline sites) with
the oracle that takes a random action with probability ``--noise`` (``--policy oracle --oracle-noise``);
(b) MiniWoB++ tasks with uniformly random clicks (``--policy random``), ``--episodes`` seeds per task.
Each suite runs once without search (budget 0: the policy acting alone, one draw per step) and once per
search budget (simulations per executed step), same tasks, same seeds. The value is the task's own grader
(``--value grader``): a PRIVILEGED oracle value (it reads the site's data and the reference answer), so these
figures measure the search itself, not a deployable agent.

Per (suite, budget): success rate, environment steps per task (every step of the search, its replays and the
recorded path: ``search.environment_steps``; without search the episode's ``steps``), wall seconds per task,
the share of backtracking replays that reproduced the recorded state, and value calls (model calls; the grader
makes none) next to the states the value scored. One JSON line per figure on stdout (``bench/report.py``;
ratio = with search / without), then the compute-scaling table on stderr and in ``OUT/table.md``.

Each configuration is its own run directory under ``--out`` (named by its settings), run through the library
(``run_web_suite``, ``run_miniwob_suite``) and resumed when it is there: an interrupted bench continues.

    python bench/search.py [--quick] [--budgets 1,5,10,20] [--noise 0.5] [--skip-web | --skip-miniwob]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from data_tools.errors import UserFacingError  # noqa: E402

BENCH = "search"
VALUE_LABEL = "grader (privileged oracle value)"
# four tasks per site, the three eval types; short oracle paths (2 to 5 steps) so max_steps leaves room to err
WEB_TASKS = (
    "classifieds:1,4,5,26",
    "shopping:1,17,18,22",
    "reddit:2,6,19,21",
)
MINIWOB_TASKS = (
    "click-button",
    "click-link",
    "click-dialog",
    "click-tab",
    "focus-text",
    "focus-text-2",
    "click-test-2",
    "click-button-sequence",
)
QUICK_WEB_TASKS = ("classifieds:1", "reddit:6")
QUICK_MINIWOB_TASKS = ("click-link", "focus-text")


class BenchOptionError(UserFacingError, ValueError):
    """A bench option that cannot run."""


@dataclass(frozen=True)
class Config:
    """One run of the bench: a suite at a budget (0: no search)."""

    suite: str  # web or miniwob
    budget: int


@dataclass
class Figures:
    """One configuration's figures over its tasks."""

    tasks: int
    errors: int
    success: float
    env_steps: float
    seconds: float
    replays: int
    replay_matches: int
    mismatches_by_group: dict[str, int]  # replays that reached another state, by site or MiniWoB++ task
    tasks_replayed: int
    mean_task_replay_share: float | None
    value_calls: float
    states_valued: float | None
    total_seconds: float

    @property
    def replay_share(self) -> float | None:
        return self.replay_matches / self.replays if self.replays else None


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise BenchOptionError(f"--budgets {text!r}: give whole numbers, comma-separated (1,5,10,20)") from None
    if not budgets or budgets[0] < 0:
        raise BenchOptionError(f"--budgets {text!r}: give simulations per step >= 1 (0, no search, always runs)")
    return [budget for budget in budgets if budget > 0]


def settings_tag(settings: Any) -> str:
    """A short fingerprint of a run's settings: other settings, another run directory (resume never clashes)."""
    text = json.dumps(asdict(settings), sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def search_settings(args: argparse.Namespace, budget: int) -> Any:
    from magma.search.episode import search_settings as checked_settings

    if budget == 0:
        return None
    model_value = {"value": "model", "value_model": args.value_model, "value_base_url": args.value_base_url}
    return checked_settings(
        "rmcts", simulations=budget, depth=args.depth, branching=args.branching, seed=args.seed,
        **(model_value if args.value_model else {"value": "grader"}),
    )  # fmt: skip


def _progress(suite: str, budget: int) -> Any:
    def on_result(result: Any) -> None:
        outcome = "error" if result.status == "error" else ("success" if result.success else "fail")
        steps = (result.search or {}).get("environment_steps", result.steps)
        report.log(BENCH, f"{suite} b{budget} {result.key}: {outcome}, {steps} env steps, {result.seconds:.1f} s")

    return on_result


def run_web(args: argparse.Namespace, budget: int) -> tuple[list[dict[str, Any]], Path]:
    from magma.evaluation.web_suite import (
        WebRunOptions,
        WebRunSettings,
        run_web_suite,
        web_candidate_factory,
        web_policy_factory,
    )

    search = search_settings(args, budget)
    settings = WebRunSettings(
        tasks=list(args.web_tasks), policy="oracle", max_steps=args.max_steps, oracle_noise=args.noise, search=search
    )
    out_dir = args.out / f"web-noise{args.noise:g}-b{budget}-{settings_tag(settings)}"
    options = WebRunOptions(workers=args.workers, save_images=args.save_images)
    if search is not None:
        factory = web_candidate_factory("oracle", None, search, args.noise)
    else:
        factory = web_policy_factory("oracle", None, args.noise, args.seed)
    resume = (out_dir / "run.json").is_file()
    results = run_web_suite(settings, options, out_dir, factory, resume=resume, on_result=_progress("web", budget))
    return results, out_dir


def run_miniwob(args: argparse.Namespace, budget: int) -> tuple[list[dict[str, Any]], Path]:
    from magma.evaluation.miniwob_suite import MiniWoBRunSettings, miniwob_policy_factory, run_miniwob_suite
    from magma.evaluation.runner import RunOptions

    search = search_settings(args, budget)
    settings = MiniWoBRunSettings(
        tasks=list(args.miniwob_tasks), episodes=args.episodes, policy="random", max_steps=args.max_steps, search=search
    )
    out_dir = args.out / f"miniwob-random-b{budget}-{settings_tag(settings)}"
    resume = (out_dir / "run.json").is_file()
    options = RunOptions(workers=args.workers, resume=resume, on_result=_progress("miniwob", budget))
    factory = miniwob_policy_factory("random", None, search, args.seed)
    return run_miniwob_suite(settings, out_dir, factory, options, args.save_images), out_dir


def _states_valued(out_dir: Path, key: str) -> int | None:
    """The states the value scored in a task's tree (every reached node, the root included)."""
    from magma.evaluation.runner import trajectory_name
    from magma.search.tree import SearchTree, SearchTreeError

    try:
        tree = SearchTree.load(out_dir / "trajectories" / trajectory_name(key))
    except (OSError, SearchTreeError):
        return None
    return sum(node.value is not None for node in tree.nodes)


def mismatch_groups(results: list[dict[str, Any]]) -> dict[str, int]:
    """Replays that did not reproduce the state, by the key's group (a site, a MiniWoB++ task); only those with any."""
    counts: dict[str, int] = {}
    for record in results:
        missed = (record.get("search") or {}).get("replay_mismatches", 0)
        if missed:
            group = record["key"].split(":")[0]
            counts[group] = counts.get(group, 0) + missed
    return counts


def figures(results: list[dict[str, Any]], out_dir: Path, total_seconds: float) -> Figures:
    tasks = len(results)
    searched = [record.get("search") or {} for record in results]
    steps = [
        stats.get("environment_steps", record.get("steps", 0)) if stats else record.get("steps", 0)
        for record, stats in zip(results, searched, strict=True)
    ]
    shares = [stats["replay_match_share"] for stats in searched if stats.get("replays")]
    valued = [_states_valued(out_dir, record["key"]) for record in results if record.get("search")]
    known = [count for count in valued if count is not None]
    return Figures(
        tasks=tasks,
        errors=sum(record.get("status") == "error" for record in results),
        success=sum(record.get("success") is True for record in results) / max(tasks, 1),
        env_steps=statistics.fmean(steps) if steps else 0.0,
        seconds=statistics.fmean(record.get("seconds", 0.0) for record in results) if results else 0.0,
        replays=sum(stats.get("replays", 0) for stats in searched),
        replay_matches=sum(stats.get("replays", 0) - stats.get("replay_mismatches", 0) for stats in searched),
        mismatches_by_group=mismatch_groups(results),
        tasks_replayed=len(shares),
        mean_task_replay_share=statistics.fmean(shares) if shares else None,
        value_calls=statistics.fmean(stats.get("value_calls", 0) for stats in searched) if results else 0.0,
        states_valued=statistics.fmean(known) if known else None,
        total_seconds=total_seconds,
    )


def _ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline else None


def emit_figures(suite: str, budget: int, mine: Figures, alone: Figures | None, labels: dict[str, Any]) -> None:
    prefix = f"search_{suite}_b{budget}"
    extra = {**labels, "budget": budget, "tasks": mine.tasks, "errors": mine.errors}
    if budget == 0 or alone is None:
        report.emit(f"{prefix}_success", mine.success, "share", **extra)
        report.emit(f"{prefix}_env_steps", mine.env_steps, "steps/task", **extra)
        report.emit(f"{prefix}_seconds", mine.seconds, "s/task", **extra)
        return
    report.emit(
        f"{prefix}_success", mine.success, "share", f"no search {alone.success:.3f}",
        _ratio(mine.success, alone.success), **extra,
    )  # fmt: skip
    report.emit(
        f"{prefix}_env_steps", mine.env_steps, "steps/task", f"no search {alone.env_steps:.2f}",
        _ratio(mine.env_steps, alone.env_steps), **extra,
    )  # fmt: skip
    report.emit(
        f"{prefix}_seconds", mine.seconds, "s/task", f"no search {alone.seconds:.2f}",
        _ratio(mine.seconds, alone.seconds), **extra,
    )  # fmt: skip
    if mine.replay_share is not None:
        report.emit(
            f"{prefix}_replay_match_share", mine.replay_share, "share", replays=mine.replays,
            tasks_replayed=mine.tasks_replayed, mean_task_share=mine.mean_task_replay_share,
            mismatches_by_group=mine.mismatches_by_group, **extra,
        )  # fmt: skip
    report.emit(f"{prefix}_value_calls", mine.value_calls, "calls/task", states_valued=mine.states_valued, **extra)


def table(rows: list[tuple[str, int, Figures]], title: str) -> str:
    header = (
        "| suite | budget | tasks | success | vs none | env steps/task | s/task | replays matched | "
        "states valued/task | errors |"
    )
    lines = [title, "", header, "|" + "---|" * (header.count("|") - 1)]
    baselines = {suite: figures for suite, budget, figures in rows if budget == 0}
    for suite, budget, mine in rows:
        alone = baselines.get(suite)
        versus = _ratio(mine.success, alone.success) if alone is not None and budget else None
        replay = "-" if mine.replay_share is None else f"{mine.replay_share:.3f} of {mine.replays}"
        valued = "-" if mine.states_valued is None else f"{mine.states_valued:.1f}"
        lines.append(
            f"| {suite} | {budget or 'none'} | {mine.tasks} | {mine.success:.3f} | "
            f"{'-' if versus is None else f'{versus:.2f}x'} | {mine.env_steps:.1f} | {mine.seconds:.1f} | {replay} | "
            f"{valued} | {mine.errors} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--web-tasks", nargs="+", default=None, help="bundled task selections (shopping:1,17 ...)")
    parser.add_argument("--miniwob-tasks", default=None, help="MiniWoB++ tasks, comma-separated")
    parser.add_argument("--episodes", type=int, default=None, help="seeds per MiniWoB++ task (default 3)")
    parser.add_argument("--budgets", default=None, help="simulations per step, comma-separated (default 1,5,10,20)")
    parser.add_argument("--noise", type=float, default=0.5, help="the web oracle's random-action probability")
    parser.add_argument("--max-steps", type=int, default=None, help="executed steps per task (default 6)")
    parser.add_argument("--depth", type=int, default=4, help="actions a simulation looks ahead")
    parser.add_argument("--branching", type=int, default=5, help="candidates drawn per expanded state")
    parser.add_argument("--seed", type=int, default=0, help="the policies' draws (same for every budget)")
    parser.add_argument("--workers", type=int, default=1, help="parallel workers per run")
    parser.add_argument("--save-images", action="store_true", help="keep every node's screenshot (slower)")
    parser.add_argument("--skip-web", action="store_true", help="only the MiniWoB++ suite")
    parser.add_argument("--skip-miniwob", action="store_true", help="only the web suite")
    parser.add_argument(
        "--value-model", default=None, help="score states with this chat VLM (OpenAI-compatible) instead of the grader"
    )
    parser.add_argument("--value-base-url", default=None, help="the value model's endpoint (default OPENAI_BASE_URL)")
    parser.add_argument("--quick", action="store_true", help="two tasks per suite, budgets 1 and 5, 4 steps")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-search", help="where the runs go")
    args = parser.parse_args(argv)
    quick = args.quick
    args.web_tasks = args.web_tasks or list(QUICK_WEB_TASKS if quick else WEB_TASKS)
    miniwob = args.miniwob_tasks.split(",") if args.miniwob_tasks else QUICK_MINIWOB_TASKS if quick else MINIWOB_TASKS
    args.miniwob_tasks = [name.strip() for name in miniwob if name.strip()]
    args.episodes = args.episodes or (1 if quick else 3)
    args.budgets = parse_budgets(args.budgets or ("1,5" if quick else "1,5,10,20"))
    args.max_steps = args.max_steps or (4 if quick else 6)
    for name in ("episodes", "max_steps", "depth", "branching", "workers"):
        if getattr(args, name) < 1:
            raise BenchOptionError(f"--{name.replace('_', '-')} {getattr(args, name)}: give a whole number >= 1")
    if not 0.0 <= args.noise <= 1.0:
        raise BenchOptionError(f"--noise {args.noise}: a probability in [0, 1]")
    if args.skip_web and args.skip_miniwob:
        raise BenchOptionError("--skip-web and --skip-miniwob together leave nothing to run; drop one")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from envs.miniwob.tasks import resolve_tasks

    if not args.skip_miniwob:
        args.miniwob_tasks = resolve_tasks(",".join(args.miniwob_tasks))
    if not args.skip_web:  # unknown tasks, tasks without an oracle: before anything runs
        from envs.web.task_selection import select_tasks
        from magma.evaluation.web_suite import WebRunSettings, check_tasks_runnable

        try:
            selected = select_tasks(args.web_tasks)
            check_tasks_runnable(selected, WebRunSettings(policy="oracle", oracle_noise=args.noise))
        except UserFacingError as error:
            raise BenchOptionError(f"--web-tasks {' '.join(args.web_tasks)}: {error}") from error
    suites = [
        (name, runner, labels)
        for name, runner, labels, skipped in (
            ("web", run_web, {"policy": f"noisy oracle p={args.noise:g}"}, args.skip_web),
            ("miniwob", run_miniwob, {"policy": "random clicks"}, args.skip_miniwob),
        )
        if not skipped
    ]
    rows: list[tuple[str, int, Figures]] = []
    value_label = f"model {args.value_model} (not privileged)" if args.value_model else VALUE_LABEL
    for suite, runner, labels in suites:
        labels = {**labels, "value_function": value_label, "depth": args.depth, "branching": args.branching}
        labels["max_steps"] = args.max_steps
        alone = None
        for budget in [0, *args.budgets]:
            report.log(BENCH, f"{suite}, budget {budget or 'none (the policy alone)'} ...")
            started = time.perf_counter()
            results, out_dir = runner(args, budget)
            mine = figures(results, out_dir, time.perf_counter() - started)
            report.log(BENCH, f"{suite} b{budget}: success {mine.success:.3f} over {mine.tasks} tasks ({out_dir})")
            if budget == 0:
                alone = mine
            emit_figures(suite, budget, mine, alone, labels)
            rows.append((suite, budget, mine))
    title = (
        f"Test-time search (Reflective MCTS), value: {value_label}; depth {args.depth}, branching {args.branching}, "
        f"max steps {args.max_steps}; web: noisy oracle p={args.noise:g}, miniwob: random clicks, "
        f"{args.episodes} seeds per task; budget = simulations per executed step (none: the policy alone)"
    )
    text = table(rows, title)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("table-quick.md" if args.quick else "table.md")).write_text(text + "\n", encoding="utf-8")
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        main()
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
