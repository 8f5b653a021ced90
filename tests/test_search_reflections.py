"""Contrastive reflections (``magma.search.reflections``) on hand-built search trees: written for the steps
where the value fell and only those, retrieved by similarity, kept across a resumed run and a damaged line,
written by a local chat endpoint when one is given and by the template when it fails; shared by threads."""

from __future__ import annotations

import json
import threading

from magma.policies.openai_chat import ChatClient
from magma.search.reflections import ReflectionStore, fallen_steps
from magma.search.tree import SearchTree
from magma.training.launch import free_port

SHOP = "http://127.0.0.1:9000/shop"
FORUM = "http://127.0.0.1:9001/forum"


def shop_tree(task: str = "shop-1") -> SearchTree:
    """Start 0.5; click [1] rises to 0.8 (executed), click [2] falls to 0.1, a failed value (prior) is ignored;
    below click [1]: hover falls only 0.1, stop ends at 0, click [3] rises (executed)."""
    tree = SearchTree(task=task, instruction="Buy the cheapest red mug in the shop", value_kind="model")
    judged = {"value_source": "model"}
    tree.add(None, url=SHOP, listing="[1] [A] [Mugs]\n[2] [A] [Plates]", digest="start", value=0.5, **judged)
    tree.add(
        0, reply="The mugs link lists mugs. In summary, the next action I will perform is ```click [1]```",
        action="click [1]", url=f"{SHOP}/mugs", listing="[3] [A] [Red mug $4]\n[4] [A] [Blue mug $3]",
        digest="mugs", value=0.8, depth=1, **judged,
    )  # fmt: skip
    tree.add(
        0, reply="Plates may list mugs too. In summary, the next action I will perform is ```click [2]```",
        action="click [2]", url=f"{SHOP}/plates", listing="[5] [A] [White plate]", digest="plates", value=0.1,
        depth=1, **judged,
    )  # fmt: skip
    tree.add(0, action="scroll [down]", url=SHOP, digest="start", value=0.1, value_source="policy-prior", depth=1)
    tree.add(1, action="hover [3]", url=f"{SHOP}/mugs", digest="mugs", value=0.7, depth=2, **judged)
    tree.add(1, action="stop [N/A]", url=f"{SHOP}/mugs", terminal=True, value=0.0, depth=2, **judged)
    tree.add(1, action="click [3]", url=f"{SHOP}/mugs/red", digest="red", value=0.95, depth=2, **judged)
    tree.executed = [0, 1, 6]
    return tree


def forum_tree() -> SearchTree:
    tree = SearchTree(task="forum-1", instruction="Post a comment on the bikes thread of the forum")
    tree.add(None, url=FORUM, listing="[1] [A] [Bikes]", digest="f0", value=0.6, value_source="model")
    tree.add(0, action="click [9]", url=f"{FORUM}/cars", digest="f1", value=0.2, value_source="model", depth=1)
    tree.executed = [0, 1]  # the fall is on the executed path
    return tree


def rising_tree() -> SearchTree:
    tree = SearchTree(task="rise-1", instruction="Open the mugs page")
    tree.add(None, url=SHOP, digest="a", value=0.2, value_source="model")
    tree.add(0, action="click [1]", url=f"{SHOP}/mugs", digest="b", value=0.9, value_source="model")
    tree.executed = [0, 1]
    return tree


def test_reflections_on_fallen_steps_only(tmp_path):
    store = ReflectionStore(tmp_path / "run" / "reflections.jsonl")
    assert store.reflect(rising_tree(), True) == [] and not store.path.exists()
    assert [child.id for _, child in fallen_steps(shop_tree())] == [5, 2]  # by the size of the fall

    made = store.reflect(shop_tree(), False)
    assert [(item.action, item.node, item.made_by) for item in made] == [
        ("stop [N/A]", 5, "template"),
        ("click [2]", 2, "template"),
    ]
    plates = made[1]
    assert (plates.value_before, plates.value_after, plates.url, plates.task_success) == (0.5, 0.1, SHOP, False)
    assert "Plates may list mugs too." in plates.expected and "In summary" not in plates.expected
    assert "/shop/plates" in plates.happened and "'[5] [A] [White plate]'" in plates.happened
    assert 'for tasks like "Buy the cheapest red mug in the shop", `click [2]`' in plates.lesson
    assert "prefer `click [1]`, which scored 0.80" in plates.lesson
    assert "prefer `click [3]`, which scored 0.95" in made[0].lesson
    assert len(store.path.read_text().splitlines()) == 2
    assert store.reflect(shop_tree(), False) == []  # the same task again (a resumed run) adds nothing

    [forum] = store.reflect(forum_tree(), None)  # a fall on the executed path; no sibling to prefer
    assert forum.action == "click [9]" and "no other action tried there scored higher" in forum.lesson


def test_retrieval_ranks_similar_tasks_first_and_survives_resume(tmp_path):
    path = tmp_path / "reflections.jsonl"
    store = ReflectionStore(path, k=3)
    assert store.retrieve("Buy a mug") == []
    shop_lessons = {item.lesson for item in store.reflect(shop_tree(), False)}
    [forum] = store.reflect(forum_tree(), False)

    found = store.retrieve("Buy the cheapest blue mug in the shop", SHOP)
    assert len(found) == 3 and set(found[:2]) == shop_lessons and found[2] == forum.lesson
    assert store.retrieve("Comment on the bikes thread", FORUM)[0] == forum.lesson
    assert ReflectionStore(path, k=1).retrieve("Comment on the bikes thread", FORUM) == [forum.lesson]

    with open(path, "a", encoding="utf-8") as file:  # damage: garbage, a non-record, a line cut by a crash
        file.write('{not json\n["a list"]\n{"task": "x", "lesson": 3}\n{"task": "cut", "instru')
    resumed = ReflectionStore(path)
    assert len(resumed) == 3 and resumed.skipped_lines == 4
    assert resumed.retrieve("Buy the cheapest blue mug in the shop", SHOP) == found
    [again] = resumed.reflect(shop_tree("shop-2"), True)[:1]
    assert json.loads(path.read_text().splitlines()[-2])["node"] == again.node  # a whole line after the cut one
    assert len(ReflectionStore(path)) == 5


def test_lesson_from_the_model_and_template_when_it_fails(tmp_path, chat_endpoint):
    chat_endpoint.answer = lambda request: "  On shop pages, open the category that names the item, not plates.\n"
    store = ReflectionStore(tmp_path / "model.jsonl", ChatClient("lessons"))
    made = store.reflect(shop_tree(), False)
    assert [item.made_by for item in made] == ["model", "model"]
    assert made[1].lesson == "On shop pages, open the category that names the item, not plates."
    asked = chat_endpoint.requests[1][1]["messages"][1]["content"][0]["text"]
    assert "ACTION TAKEN: click [2]" in asked and "`click [1]`, valued 0.80" in asked

    dead = ChatClient("lessons", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="")
    made = ReflectionStore(tmp_path / "dead.jsonl", dead).reflect(shop_tree(), False)
    assert [item.made_by for item in made] == ["template", "template"]
    assert made[1].lesson.startswith("At 127.0.0.1:9000/shop, for tasks like")


def test_threads_share_one_store(tmp_path):
    store = ReflectionStore(tmp_path / "reflections.jsonl")
    workers = [threading.Thread(target=store.reflect, args=(shop_tree(f"shop-{index}"), None)) for index in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    lines = store.path.read_text().splitlines()
    assert len(lines) == 16 and len({json.loads(line)["task"] for line in lines}) == 8
    assert len(ReflectionStore(store.path)) == 16
