"""Exploratory-learning samples (ExACT's second half) from the search trees of a searched ``agent run``.

Each executed step's search becomes one multi-turn sample of the training-sample contract: the acting prompt
at the step's state (``magma.policies.web.web_prompt``, so training sees what acting sees), then the walk in
the order the search entered states: the action taken (the policy's reply), the state it led to, its
evaluation (value and note), a "go back" turn wherever the next state entered is not a child of the last, and
last the choice of the executed action. The order is the one the search recorded (``SearchNode.entered``);
a tree without that record (made by hand) is walked in the order its nodes were made.

``write_search_traces`` writes them as WebDataset shards (``agent data search-traces``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.atomic_files import write_json_atomically
from data_tools.errors import UserFacingError
from data_tools.sample_format import ACTION_PLACEHOLDER, IMAGE_PLACEHOLDER, SampleFormatError, validate_sample
from magma.actions import extract_vwa_action
from magma.policies.web import MAX_LISTING_CHARS, WebPrompt, web_prompt
from magma.search.tree import (
    TREE_FILE,
    SearchNode,
    SearchTree,
    SearchTreeError,
)

_log = logging.getLogger(__name__)
SOURCE = "search-traces"
DEFAULT_MAX_IMAGES = 4
SHARD_PREFIX = "search-traces"
MANIFEST_FILE = "search_traces.json"
EVALUATE = "How far does this state bring the objective? Judge it with a value from 0 (no progress) to 1 (done)."
CONTINUE = "Continue the search: the next action from this state, or go back to an earlier state."
SampleAndImages = tuple[dict[str, Any], list[Path]]


class SearchTracesError(UserFacingError, ValueError):
    """A run directory that holds no search trees, or an output folder that cannot take the traces."""


@dataclass
class TraceStats:
    """What one export read, skipped and wrote."""

    trees_read: int = 0
    trees_skipped: list[str] = field(default_factory=list)  # why each damaged or foreign tree was skipped
    trees_unsuccessful: int = 0  # left out by --successful-only
    samples: int = 0
    images: int = 0
    text_states: int = 0  # explored states carried as text (past the image budget, or no image saved)
    replayed_order: int = 0  # trees whose exploration order was rebuilt exactly
    privileged_trees: int = 0  # trees valued by the task's own grader (an oracle value)
    shards: list[Path] = field(default_factory=list)

    def format(self, run_dir: str | Path, out_dir: str | Path | None = None) -> str:
        lines = [
            f"search traces of {run_dir}: {self.trees_read} tree(s) read, {len(self.trees_skipped)} skipped "
            f"(damaged or not a search tree), {self.trees_unsuccessful} left out (task not successful)",
            f"{self.samples} sample(s) (one per searched step), {self.images} image(s), {self.text_states} "
            f"explored state(s) as text; exact exploration order in {self.replayed_order} of "
            f"{self.trees_read - len(self.trees_skipped)} tree(s); {self.privileged_trees} tree(s) valued by the "
            "task's grader (privileged: filter on meta.privileged)",
        ]
        if out_dir is not None:
            lines.append(f"written to {out_dir}: {len(self.shards)} shard(s)")
        lines += [f"skipped {reason}" for reason in self.trees_skipped[:10]]
        if len(self.trees_skipped) > 10:
            lines.append(f"... and {len(self.trees_skipped) - 10} more skipped")
        return "\n".join(lines)


# -- the order the search entered states -----------------------------------------------------------------


@dataclass
class SearchWalks:
    """The nodes each executed step's search entered, in order (``steps``); whether that order is exact; and
    the executed child's mean value and visits when it was chosen (``choices``, from the tree's decisions)."""

    steps: dict[int, list[int]]
    exact: bool
    choices: dict[int, tuple[float, int]] = field(default_factory=dict)


def recorded_walks(tree: SearchTree) -> SearchWalks | None:
    """The nodes each executed step's search entered, in the order it entered them (``SearchNode.entered``,
    recorded by ``magma.search.rmcts``), with the executed child's mean value and visits when it was chosen;
    None for a tree that lacks the record (made by hand, or by another version)."""
    reached = [node for node in tree.nodes if node.value is not None]
    if any(node.entered is None or node.entered_at_step is None for node in reached):
        return None
    walks: dict[int, list[int]] = {step: [] for step in range(len(tree.executed))}
    for node in sorted(reached, key=lambda node: node.entered):
        if node.id != 0 and node.entered_at_step in walks:
            walks[node.entered_at_step].append(node.id)
    choices = {decision.step: (decision.q, decision.visits) for decision in tree.decisions}
    return SearchWalks(walks, True, choices)


def creation_walks(tree: SearchTree) -> SearchWalks:
    """The approximate walks: the reached nodes made during each step's search, in the order they were made."""
    walks: dict[int, list[int]] = {step: [] for step in range(len(tree.executed))}
    for node in tree.nodes[1:]:
        if node.value is not None and node.made_at_step in walks:
            walks[node.made_at_step].append(node.id)
    return SearchWalks(walks, False)


def exploration_walks(tree: SearchTree) -> SearchWalks:
    """Each executed step's walk: as recorded, else (a tree without the record) approximated."""
    return recorded_walks(tree) or creation_walks(tree)


# -- one tree as samples -------------------------------------------------------------------------------


@dataclass
class _TaskContext:
    run: str
    key: str
    folder: Path
    success: bool | None
    input_images: list[Path]


def _plain(text: Any) -> str:
    """Text from a page, a reply or a note, so that it cannot add image or action slots to the sample."""
    return str(text or "").replace(IMAGE_PLACEHOLDER, "(image)").replace(ACTION_PLACEHOLDER, "(action)")


def _listing(node: SearchNode) -> str:
    listing = _plain(node.listing)
    return listing[:MAX_LISTING_CHARS] + "\n... (listing cut)" if len(listing) > MAX_LISTING_CHARS else listing


def _action_text(node: SearchNode) -> str:
    return _plain(node.action or (str(node.reply).strip().splitlines() or ["(no action)"])[-1])


def _where(tree: SearchTree, root: int, node_id: int) -> str:
    path = tree.path(node_id)
    steps = path[path.index(root) + 1 :] if root in path else path[1:]
    if not steps:
        return "the state this step's search started from"
    return "the state after " + " -> ".join(_action_text(tree.nodes[index]) for index in steps)


def _acting_turn(prompt: WebPrompt, image_count: int) -> str:
    """The human turn as the Magma processor lays out ``prompt`` (``WebPrompt.magma_content``)."""
    return f"{prompt.system}\n\n" + f"{IMAGE_PLACEHOLDER}\n" * image_count + _plain(prompt.user)


def _value_text(node: SearchNode) -> str:
    text = f"Value: {float(node.value or 0.0):.2f}"  # SearchTree.load checked it is a number
    if node.value_source == "policy-prior":  # the value model failed: no judgement to learn from
        return text + " (no judgement of the state: the policy's own preference)"
    note = _plain(node.value_note).strip()
    return f"{text}\n{note}" if note else text


def step_sample(
    tree: SearchTree,
    step: int,
    walks: SearchWalks,
    task: _TaskContext,
    max_images: int,
    prompt: Callable[..., WebPrompt] = web_prompt,
) -> SampleAndImages | None:
    """The sample of executed step ``step``'s search (None when the step chose no action)."""
    walk = walks.steps.get(step, [])
    if step + 1 >= len(tree.executed) or not walk:
        return None
    nodes = tree.nodes
    root, chosen = nodes[tree.executed[step]], nodes[tree.executed[step + 1]]
    images: list[Path] = []
    text_states = 0

    def image_of(node: SearchNode) -> Path | None:
        if not node.image or len(images) >= max_images:
            return None
        path = task.folder / Path(str(node.image)).name
        return path if path.is_file() else None

    root_image = image_of(root)
    if root_image is not None:
        images.append(root_image)
    history = [extract_vwa_action(nodes[index].reply) or "(no action)" for index in tree.path(root.id)[1:]]
    observation = {"som": root.listing, "url": root.url, "image": root_image}
    acting_task = {"instruction": tree.instruction, "images": task.input_images, "reflections": tree.reflections_used}
    acting = prompt(observation, acting_task, history)
    # the task's own input images follow the screenshot, as in the acting prompt (outside the image budget)
    turns = [{"from": "human", "value": _acting_turn(acting, len(images) + len(task.input_images))}]
    at = root.id
    shown = {root.id}  # the states this conversation has shown
    backtracks = 0
    for index in walk:
        node = nodes[index]
        parent = node.parent if node.parent is not None else root.id
        if parent != at:
            backtracks += 1
            back = f"Back at node {parent}. URL: {_plain(nodes[parent].url)}"
            if parent not in shown:  # a state an earlier step's search explored: its listing, as text
                back += f"\nELEMENTS:\n{_listing(nodes[parent])}"
            turns += [
                {"from": "human", "value": CONTINUE},
                {"from": "gpt", "value": f"Go back to node {parent}: {_where(tree, root.id, parent)}."},
                {"from": "human", "value": f"{back}\nThe next action from here?"},
            ]
        elif turns[-1]["from"] == "gpt":
            turns.append({"from": "human", "value": CONTINUE})
        turns.append({"from": "gpt", "value": _plain(node.reply) or f"```{_action_text(node)}```"})
        image = image_of(node)
        state = f"Node {node.id}, after `{_action_text(node)}`. URL: {_plain(node.url)}"
        if image is not None:
            images.append(image)
            state = f"{IMAGE_PLACEHOLDER}\n{state}"
        else:
            text_states += 1
            state = f"{state}\nELEMENTS:\n{_listing(node)}"
        if node.terminal:
            state += "\nThe episode ended here."
        turns += [{"from": "human", "value": f"{state}\n{EVALUATE}"}, {"from": "gpt", "value": _value_text(node)}]
        at = node.id
        shown.add(node.id)
    choice = walks.choices.get(step)
    why = "" if choice is None else f" (mean value {choice[0]:.2f} over {choice[1]} visit(s))"
    turns += [
        {
            "from": "human",
            "value": f"The search budget is spent. Choose the action to execute at node {root.id}, "
            f"{_where(tree, root.id, root.id)}.",
        },
        {
            "from": "gpt",
            "value": f"The best explored action leads to node {chosen.id}{why}. In summary, the next action "
            f"I will perform is ```{_action_text(chosen)}```",
        },
    ]
    all_images = [*images[: 1 if root_image else 0], *task.input_images, *images[1 if root_image else 0 :]]
    record = {
        "id": f"{task.run}/{task.key}/step-{step:03d}",
        "source": SOURCE,
        "conversations": turns,
        "meta": {
            "run": task.run,
            "task": task.key,
            "step": step,
            "node": root.id,
            "executed_node": chosen.id,
            "executed_action": chosen.action,
            "explored": len(walk),
            "backtracks": backtracks,
            "images": len(images),
            "text_states": text_states,
            "value_kind": tree.value_kind,
            "privileged": tree.privileged,
            "fallback_values": sum(nodes[index].value_source == "policy-prior" for index in walk),
            "success": task.success,
            "exact_order": walks.exact,
        },
    }
    validate_sample(record, len(all_images))
    return record, all_images


def tree_samples(
    tree: SearchTree, task: _TaskContext, max_images: int, prompt: Callable[..., WebPrompt] = web_prompt
) -> tuple[list[SampleAndImages], bool]:
    """Every searched step of one tree as a sample, and whether the exploration order is exact."""
    walks = exploration_walks(tree)
    samples = []
    for step in range(len(tree.executed)):
        sample = step_sample(tree, step, walks, task, max_images, prompt)
        if sample is not None:
            samples.append(sample)
    return samples, walks.exact


# -- a run directory -------------------------------------------------------------------------------------


def _tree_folders(run_dir: Path) -> list[Path]:
    """The trajectory folders that hold a search tree, after checking ``run_dir`` is a searched run."""
    from magma.evaluation.results import RUN_FILE, read_run_settings

    if not run_dir.is_dir():
        raise SearchTracesError(f"'{run_dir}' is not a directory; pass the --out folder of a searched `agent run`")
    if not (run_dir / RUN_FILE).exists():
        raise SearchTracesError(
            f"'{run_dir}' is not a run directory (it has no {RUN_FILE}); pass the --out folder of "
            "`agent run ... --search rmcts`"
        )
    settings = read_run_settings(run_dir)
    folders = sorted(path.parent for path in (run_dir / "trajectories").glob(f"*/{TREE_FILE}"))
    if not folders:
        if not settings.get("search"):
            raise SearchTracesError(
                f"'{run_dir}' is a run without search (run.json has no search settings), so it has no search "
                "trees; run the tasks with `agent run ... --search rmcts` and pass that run's folder"
            )
        raise SearchTracesError(
            f"'{run_dir}' is a searched run but holds no {TREE_FILE} under trajectories/ yet; let `agent run` "
            "finish some tasks (or --resume it) first"
        )
    return folders


def search_trace_samples(
    run_dir: str | Path,
    max_images: int = DEFAULT_MAX_IMAGES,
    successful_only: bool = False,
    stats: TraceStats | None = None,
    prompt: Callable[..., WebPrompt] = web_prompt,
) -> Iterator[SampleAndImages]:
    """Every ``trajectories/*/search_tree.json`` of a searched run as training samples ``(record, image
    paths)``, one per executed step's search. The run directory is checked now (a ``SearchTracesError``
    naming the fix); a damaged or foreign tree is counted in ``stats`` and skipped with a warning."""
    from magma.evaluation.results import read_results
    from magma.evaluation.runner import trajectory_name

    if max_images < 0:
        raise SearchTracesError(f"--max-images is {max_images}; use 0 (text only) or more")
    run_dir = Path(run_dir)
    folders = _tree_folders(run_dir)
    results = read_results(run_dir)
    by_folder = {trajectory_name(key): record for key, record in results.items()}
    stats = stats if stats is not None else TraceStats()

    def generate() -> Iterator[SampleAndImages]:
        for folder in folders:
            stats.trees_read += 1
            where = folder.relative_to(run_dir) / TREE_FILE
            try:
                tree = SearchTree.load(folder)
            except SearchTreeError as error:
                _log.warning("skipped %s: %s", where, error)
                stats.trees_skipped.append(f"{where}: {error}")
                continue
            record = results.get(tree.task) or by_folder.get(folder.name) or {}
            success = record.get("success")
            if successful_only and success is not True:
                stats.trees_unsuccessful += 1
                continue
            task = _TaskContext(
                run=run_dir.resolve().name,
                key=tree.task or str(record.get("key") or folder.name),
                folder=folder,
                success=success,
                input_images=sorted(folder.glob("input-*.jpg")),
            )
            try:
                samples, exact = tree_samples(tree, task, max_images, prompt)
            except (SearchTreeError, SampleFormatError, IndexError, TypeError, ValueError, AttributeError) as error:
                _log.warning("skipped %s: it does not make samples (%s)", where, error)
                stats.trees_skipped.append(f"{where}: it does not make samples ({error})")
                continue
            stats.replayed_order += exact
            stats.privileged_trees += bool(tree.privileged)
            for sample, images in samples:
                stats.samples += 1
                stats.images += len(images)
                stats.text_states += int(sample["meta"]["text_states"])
                yield sample, images

    return generate()


def _check_out_dir(out_dir: Path) -> None:
    """An --out that is new, empty or holds an earlier export of these traces (then replaced)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SearchTracesError(f"--out '{out_dir}' is a file; pass a new or empty folder")
    if not out_dir.is_dir():
        return
    ours = {MANIFEST_FILE}
    others = sorted(
        path.name
        for path in out_dir.iterdir()
        if path.name not in ours and not (path.name.startswith(f"{SHARD_PREFIX}-") and path.suffix == ".tar")
    )
    if others or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file()):
        named = ", ".join(others[:3]) or "shards without a manifest"
        raise SearchTracesError(
            f"--out '{out_dir}' holds something else ({named}); pass a new or empty folder (an earlier "
            "search-traces export there is replaced)"
        )


def write_search_traces(
    run_dir: str | Path,
    out_dir: str | Path,
    max_images: int = DEFAULT_MAX_IMAGES,
    successful_only: bool = False,
    samples_per_shard: int = 1000,
) -> TraceStats:
    """Write a searched run's traces as shards into ``out_dir``: built in a hidden folder beside it and moved
    in only when complete, so a failure leaves nothing half-written (an earlier export there is replaced)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_out_dir(out_dir)
    stats = TraceStats()
    samples = search_trace_samples(run_dir, max_images, successful_only, stats)
    from data_tools.shards import ShardWriter

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with ShardWriter(staging, prefix=SHARD_PREFIX, max_samples_per_shard=samples_per_shard) as writer:
            for record, images in samples:
                writer.write(record, images)
        if not stats.samples:
            why = (
                "no task of the run was successful (drop --successful-only)"
                if stats.trees_unsuccessful
                else ("no tree holds a searched step that chose an action")
            )
            raise SearchTracesError(f"no samples from {run_dir}: {why}; nothing was written")
        write_json_atomically(
            staging / MANIFEST_FILE,
            {
                "kind": SOURCE,
                "run_dir": str(run_dir.resolve()),
                "samples": stats.samples,
                "shards": [path.name for path in writer.shards],
                "max_images": max_images,
                "successful_only": successful_only,
                "trees_read": stats.trees_read,
                "trees_skipped": stats.trees_skipped,
            },
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in [*out_dir.glob(f"{SHARD_PREFIX}-*.tar"), out_dir / MANIFEST_FILE]:
            old.unlink(missing_ok=True)
        for path in sorted(staging.iterdir()):
            path.replace(out_dir / path.name)
        stats.shards = [out_dir / path.name for path in writer.shards]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats
