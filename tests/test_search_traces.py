"""Exploratory-learning samples from search trees (``agent data search-traces``) and the tree in the report:
trees made by hand (and one by the real Reflective MCTS on a small in-memory task) in a run directory laid
out as ``agent run`` lays it out, real JPEG node images, real shards, a real `agent train` of magma-tiny."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_in_process import agent_in_process
from PIL import Image

from data_tools.sample_format import validate_sample
from magma.actions import extract_vwa_action
from magma.evaluation.results import EpisodeResult, read_results
from magma.evaluation.runner import ResultLog, finish_run, prepare_run_directory, trajectory_name
from magma.evaluation.ui_episode import save_step_image
from magma.evaluation.web_suite import WebRunSettings
from magma.search.candidates import RandomUIPolicy
from magma.search.episode import SearchSettings
from magma.search.rmcts import ReflectiveMCTS, SearchBudget
from magma.search.traces import MANIFEST_FILE, TraceStats, recorded_walks, search_trace_samples
from magma.search.tree import Backtrack, SearchStats, SearchTree, SearchTreeError
from magma.search.values import GraderValue, ValueContext, ValueEstimate

LISTING = "[1] [BUTTON] [Search]\n[2] [INPUT] [query]\n[3] [LINK] [Shoes]"
COLOURS = {0: (200, 30, 30), 1: (30, 200, 30), 2: (30, 30, 200), 3: (200, 200, 30), 5: (30, 200, 200)}


def colour_of(data: bytes) -> tuple[int, ...]:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)
    return tuple(round(value / 50) for value in pixels.reshape(-1, 3).mean(axis=0))


def shop_tree(folder: Path, with_images: bool) -> SearchTree:
    """Step 0 searches from node 0: enters 1, 2 (a jump back to 0) and 3 (a jump back to 1); step 1 from node
    1 enters 5 under 3 (a state of step 0's search); node 4 is never entered. Executed: 0 > 1 > 3."""
    tree = SearchTree(
        task="shopping:7",
        instruction="Find red shoes",
        value_kind="grader",
        privileged=True,
        budget={"simulations": 3, "depth": 2, "branching": 2},
        stats=SearchStats(simulations=6, environment_steps=14, replays=3, replay_mismatches=1, value_calls=4),
        reflections_used=["Use the search box before browsing categories."],
    )

    def image(node_id: int) -> str | None:
        if not with_images:
            return None
        name = f"node-{node_id:04d}.jpg"
        save_step_image(np.full((48, 64, 3), COLOURS[node_id], dtype=np.uint8), folder / name)
        return name

    def state(node_id: int, value: float, note: str) -> dict:
        url = f"http://shop.test/{node_id}"
        return {"url": url, "listing": f"{LISTING}\n[9] [TEXT] [page {node_id}]", "image": image(node_id),
                "value": value, "value_source": "grader", "value_note": note}  # fmt: skip

    tree.add(None, **state(0, 0.1, "the start"), visits=6, value_sum=3.0, expanded=True)
    tree.add(0, reply="I search first.\n```click [1]```", action="click [1]", prior=0.6, depth=1,
             **state(1, 0.5, "results listed"), visits=4, value_sum=2.4, expanded=True)  # fmt: skip
    tree.add(0, reply="```type [2] [<b>red shoes</b>] [1]```", action="type [2] [<b>red shoes</b>] [1]",
             prior=0.4, depth=1, **state(2, 0.2, "nothing <image> happened"), visits=1, value_sum=0.2,
             expanded=True)  # fmt: skip
    tree.add(1, reply="```click [3]```", action="click [3]", prior=1.0, depth=2, **state(3, 0.8, "shoes shown"),
             visits=2, value_sum=1.7, expanded=True)  # fmt: skip
    tree.add(2, reply="```click [1]```", action="click [1]", prior=1.0, depth=2)  # never entered
    tree.add(3, reply="```stop [red shoes]```", action="stop [red shoes]", depth=3, made_at_step=1,
             **state(5, 0.9, "the task's grader if stopped here: 1"), visits=1, value_sum=0.9,
             terminal=True, reward=1.0)  # fmt: skip
    tree.executed = [0, 1, 3]
    tree.backtracks = [
        Backtrack(0, 1, 0, 0, True),
        Backtrack(0, 2, 1, 1, False, "node 1: replayed URL http://shop.test/x vs http://shop.test/1"),
        Backtrack(1, 5, 3, 2, True),
    ]
    return tree


class ClickPath:
    """A small in-memory UI task (the ``SearchEnvironment`` shape): clicking [2] then [3] solves it; the state is
    the path of actions, its grade the share of the solution's prefix done."""

    max_steps = 3
    solution = ("click [2]", "click [3]")

    def restart(self) -> dict:
        self.path: list[str] = []
        return self.observation()

    def observation(self) -> dict:
        return {
            "url": "http://click.test/" + "/".join(self.path).replace(" ", ""),
            "som": LISTING + "\n" + str(self.path),
        }

    def done_prefix(self) -> int:
        count = 0
        for taken, wanted in zip(self.path, self.solution, strict=False):
            if taken != wanted:
                break
            count += 1
        return count

    def step(self, reply: str):
        self.path.append(extract_vwa_action(reply) or "")
        success = self.done_prefix() == len(self.solution)
        done = success or self.path[-1].startswith("stop") or len(self.path) >= self.max_steps
        return self.observation(), float(success), done, False, ({"success": success} if done else {})

    def grade(self, answer: str) -> float:
        return 0.45 * self.done_prefix()


class RecordingGrader(GraderValue):
    """The task's grader as the value, noting the path of every state it scores (the order states are entered)."""

    def __init__(self) -> None:
        self.scored: list[tuple[str, ...]] = []

    def evaluate(self, context: ValueContext) -> ValueEstimate:
        self.scored.append(tuple(context.actions))
        return super().evaluate(context)


def searched_tree(budget: SearchBudget, seed: int) -> tuple[SearchTree, list[int]]:
    """A tree the real search made, and the node ids in the order it entered them."""
    value = RecordingGrader()
    outcome = ReflectiveMCTS(ClickPath(), RandomUIPolicy(seed), value, budget, None).run({"instruction": "Go"}, "c")
    tree = outcome.tree
    by_path = {
        tuple(tree.nodes[i].action or "(no action)" for i in tree.path(node.id)[1:]): node.id for node in tree.nodes
    }
    return tree, [by_path[path] for path in value.scored[1:]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A searched run: a successful task with node images, a failed one saved without images, one whose tree
    the real search made, and one whose search_tree.json is garbage."""
    root = tmp_path_factory.mktemp("searched") / "run"
    prepare_run_directory(root, WebRunSettings(search=SearchSettings(simulations=3)), resume=False)
    log = ResultLog(root / "results.jsonl")
    search = {"simulations": 6, "environment_steps": 14, "replays": 3, "replay_match_share": 0.667}
    for key, success in (("shopping:7", True), ("shopping:8", False), ("click:0", True), ("broken:1", None)):
        result = EpisodeResult(
            key, "Find red shoes", key.split(":")[0], ["program_html"], "done", success, search=search
        )
        log.write(result)
        folder = root / "trajectories" / trajectory_name(key)
        folder.mkdir(parents=True)
        if key == "shopping:7":
            shop_tree(folder, with_images=True).save(folder)
        elif key == "shopping:8":
            tree = shop_tree(folder, with_images=False)
            tree.task = key
            tree.save(folder)
        elif key == "click:0":
            tree, _ = searched_tree(SearchBudget(simulations=4, depth=2, branching=3), seed=1)
            tree.task = key
            tree.save(folder)
        else:
            (folder / "search_tree.json").write_text('{"format": "magma-search-tree/1", "nodes": [{"id": 3}]}')
    return root


def samples_of(run_dir: Path, **options) -> tuple[dict[str, list], TraceStats]:
    stats = TraceStats()
    by_task: dict[str, list] = {}
    for record, images in search_trace_samples(run_dir, stats=stats, **options):
        validate_sample(record, len(images))
        by_task.setdefault(record["meta"]["task"], []).append((record, images))
    return by_task, stats


def text_of(record: dict) -> str:
    return "\n".join(turn["value"] for turn in record["conversations"])


# ---- the samples -----------------------------------------------------------------------------------------
def test_samples_walk_the_search_with_images_in_order_and_backtracks(run_dir):
    by_task, stats = samples_of(run_dir)
    assert stats.trees_read == 4 and len(stats.trees_skipped) == 1 and "broken_1" in stats.trees_skipped[0]
    step0, step1 = by_task["shopping:7"]
    record, images = step0
    turns = record["conversations"]
    assert turns[0]["from"] == "human" and turns[0]["value"].startswith("You operate a web browser")
    assert "OBJECTIVE: Find red shoes\nURL: http://shop.test/0" in turns[0]["value"]  # the acting prompt
    assert "- Use the search box before browsing categories.\nPREVIOUS ACTIONS:" in turns[0]["value"]
    assert [path.name for path in images] == ["node-0000.jpg", "node-0001.jpg", "node-0002.jpg", "node-0003.jpg"]
    text = text_of(record)
    assert text.index("```click [1]```") < text.index("Value: 0.50\nresults listed")
    assert "Go back to node 0: the state this step's search started from." in text  # 1 -> 2 jumps back
    assert "Go back to node 1: the state after click [1]." in text  # 2 -> 3 jumps back
    assert text.count("Go back") == 2 and record["meta"]["backtracks"] == 2
    assert "nothing (image) happened" in text  # page or note text cannot add an image slot
    assert turns[-1]["value"].endswith("In summary, the next action I will perform is ```click [1]```")
    assert record["meta"]["run"] == "run" and record["meta"]["privileged"] is True
    assert record["meta"]["success"] is True and record["meta"]["step"] == 0 and record["meta"]["exact_order"] is False

    record, images = step1  # from node 1: history click [1]; node 3 (step 0's) is shown as text when gone back to
    assert "PREVIOUS ACTIONS:\n1. click [1]" in record["conversations"][0]["value"]
    assert [path.name for path in images] == ["node-0001.jpg", "node-0005.jpg"]
    assert "Back at node 3. URL: http://shop.test/3\nELEMENTS:\n[1] [BUTTON] [Search]" in text_of(record)
    assert "The episode ended here." in text_of(record)


def test_images_are_bounded_and_a_tree_without_images_gives_text(run_dir):
    by_task, _ = samples_of(run_dir, max_images=2)
    record, images = by_task["shopping:7"][0]
    assert [path.name for path in images] == ["node-0000.jpg", "node-0001.jpg"]
    assert record["meta"]["text_states"] == 2 and "Node 3, after `click [3]`. URL: http://shop.test/3\nELEMENTS:" in (
        text_of(record)
    )
    text_only = by_task["shopping:8"]
    assert len(text_only) == 2 and all(images == [] for _, images in text_only)
    assert all(record["meta"]["success"] is False for record, _ in text_only)


def test_successful_only_leaves_out_failed_tasks(run_dir):
    by_task, stats = samples_of(run_dir, successful_only=True)
    assert set(by_task) == {"shopping:7", "click:0"} and stats.trees_unsuccessful == 1


@pytest.mark.parametrize(
    ("budget", "seed"),
    [(SearchBudget(simulations=4, depth=2, branching=3), 1), (SearchBudget(3, 3, 2, total=5, exploration=0.5), 4)],
)
def test_the_walks_are_the_order_the_search_entered_states(budget, seed):
    tree, entered = searched_tree(budget, seed)
    walks = recorded_walks(tree)
    assert walks is not None and walks.exact
    assert [node for step in sorted(walks.steps) for node in walks.steps[step]] == entered
    assert len(entered) > 3


def test_a_real_search_tree_gives_exactly_ordered_samples(run_dir):
    by_task, _ = samples_of(run_dir)
    samples = by_task["click:0"]
    assert samples and all(record["meta"]["exact_order"] for record, _ in samples)


# ---- the command -----------------------------------------------------------------------------------------
def read_shards(folder: Path) -> list[tuple[dict, list[bytes]]]:
    samples: dict[str, dict] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, rest = member.name.split(".", 1)
                entry = samples.setdefault(f"{shard.name}/{key}", {"images": {}})
                data = tar.extractfile(member).read()
                if rest == "json":
                    entry["record"] = json.loads(data)
                else:
                    entry["images"][rest] = data
    return [
        (entry["record"], [entry["images"][name] for name in sorted(entry["images"])]) for entry in samples.values()
    ]


def test_the_command_writes_shards_with_the_images_in_order(run_dir, tmp_path):
    out = tmp_path / "traces"
    result = agent_in_process("data", "search-traces", str(run_dir), "--out", str(out), "--samples-per-shard", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 tree(s) read, 1 skipped" in result.stdout and "skipped trajectories/broken_1" in result.stdout
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    samples = read_shards(out)
    assert len(samples) == manifest["samples"] >= 5 and len(manifest["shards"]) >= 2
    _, images = next(item for item in samples if item[0]["id"] == "run/shopping:7/step-000")
    assert [colour_of(data) for data in images] == [
        tuple(round(value / 50) for value in COLOURS[node]) for node in (0, 1, 2, 3)
    ]
    assert not list(tmp_path.glob(".traces.partial*"))  # nothing half-written stays behind

    again = agent_in_process("data", "search-traces", str(run_dir), "--out", str(out), "--successful-only")
    assert again.returncode == 0, again.stderr[-2000:]  # an earlier export there is replaced
    assert {record["meta"]["task"] for record, _ in read_shards(out)} == {"shopping:7", "click:0"}


def test_bad_input_gets_one_clear_message(run_dir, tmp_path):
    plain = tmp_path / "plain"
    prepare_run_directory(plain, WebRunSettings(), resume=False)
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("mine")
    cases = [
        ((str(tmp_path / "nowhere"), "--out", str(tmp_path / "o1")), "is not a directory"),
        ((str(tmp_path), "--out", str(tmp_path / "o2")), "is not a run directory (it has no run.json)"),
        ((str(plain), "--out", str(tmp_path / "o3")), "is a run without search"),
        ((str(run_dir), "--out", str(crowded)), "holds something else (notes.txt)"),
        ((str(run_dir), "--out", str(tmp_path / "o4"), "--max-images", "-1"), "--max-images is -1"),
    ]
    for arguments, message in cases:
        result = agent_in_process("data", "search-traces", *arguments)
        assert result.returncode == 2, (arguments, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (crowded / "notes.txt").read_text() == "mine" and not (tmp_path / "o3").exists()


# ---- training on them ------------------------------------------------------------------------------------
def test_a_tiny_model_trains_on_the_traces_through_agent_train(run_dir, tmp_path):
    out = tmp_path / "traces"
    made = agent_in_process("data", "search-traces", str(run_dir), "--out", str(out), "--max-images", "2")
    assert made.returncode == 0, made.stderr[-2000:]
    source = {"name": "search-traces", "shards": [str(out / "*.tar")]}
    config = {
        "name": "traces",
        "model": "magma-tiny",
        "run_dir": str(tmp_path / "train"),
        "max_steps": 5,
        "seed": 0,
        "data": {"batch_size": 2, "num_workers": 0, "shuffle_buffer": 0, "max_length": 4096, "sources": [source]},
        "optim": {"lr": 3e-3, "schedule": "constant", "max_grad_norm": 1.0},
        "logging": {"progress": False},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    result = agent_in_process("train", "--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
    losses = [record["loss"] for record in map(json.loads, lines) if "loss" in record]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0], losses
    summary = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert not summary.get("skipped"), summary  # no sample was too long or invalid


# ---- the report ------------------------------------------------------------------------------------------
def test_the_report_draws_the_tree_and_survives_a_garbage_tree(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "trajectories" / "shopping_8" / "search_tree.json").write_bytes(b"\x00\xffnot json at all")
    finish_run(copy, list(read_results(copy)))
    page = (copy / "trajectories" / "shopping_7" / "index.html").read_text()
    assert "Search tree" in page and "privileged" in page
    assert 'class="executed"><span class="node">#1' in page and 'class="executed"><span class="node">#3' in page
    assert "value 0.80 (grader" in page and "visits 2, Q 0.85" in page
    assert 'class="unexplored"><span class="node">#4' in page and "not entered" in page
    assert "&lt;b&gt;red shoes&lt;/b&gt;" in page and "<b>red shoes" not in page  # escaped
    assert '<tr class="mismatch">' in page and "replayed URL http://shop.test/x" in page
    assert "<th>replay match share</th><td>0.667</td>" in page and "<th>simulations</th><td>6</td>" in page
    assert '<a href="node-0003.jpg">screen</a>' in page and "Use the search box before browsing" in page
    broken = (copy / "trajectories" / "shopping_8" / "index.html").read_text()
    assert "The search tree could not be read" in broken and "</html>" in broken
    garbage = (copy / "trajectories" / "broken_1" / "index.html").read_text()
    assert "The search tree could not be read" in garbage
    report = (copy / "report.html").read_text()
    assert "search (simulations / env steps)" in report and "<td>6 / 14</td>" in report


@pytest.mark.parametrize(
    "damage",
    [
        lambda tree: tree["nodes"][1].update(children=None),
        lambda tree: tree.update(nodes="nodes"),
        lambda tree: tree.update(nodes=[0, 1]),
        lambda tree: tree.update(stats="fast"),
        lambda tree: tree["nodes"][1].update(parent=None),
        lambda tree: tree["nodes"][1].update(value="high"),
        lambda tree: tree["nodes"][1].update(visits=-3),
        lambda tree: tree["nodes"][0]["children"].append(0),
    ],
)
def test_a_damaged_tree_is_one_clear_error(damage, tmp_path):
    tree = SearchTree(task="t")
    tree.add(None, value=0.5)
    tree.add(0, reply="click [1]", action="click [1]", value=1.0, depth=1)
    record = json.loads(json.dumps(tree.to_json()))
    SearchTree.from_json(record)  # the undamaged tree loads
    damage(record)
    with pytest.raises(SearchTreeError, match=r"damaged|do not form a tree"):
        SearchTree.from_json(record)
