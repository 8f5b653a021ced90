"""MiniWoBEnv against the miniwob package's own gymnasium env (Selenium + chromedriver), on the same tasks and
seeds with the same scripted actions: same instruction, same raw reward and done flag. Then the page's time
limit, broken pages, counted bad actions, task specs and an OpenAI-policy episode against a local endpoint."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("playwright")
pytest.importorskip("miniwob")
if not Path("/usr/bin/chromium").exists():
    pytest.skip("system Chromium not installed", allow_module_level=True)

import gymnasium

import envs.miniwob  # noqa: F401  (registers MiniWoB-v1)
from data_tools.errors import UserFacingError
from envs.miniwob.env import MiniWoBEnv, MiniWoBPageError
from envs.miniwob.server import MiniWoBServer, package_html_dir
from envs.miniwob.tasks import EXCLUDED, UnknownMiniWoBTaskError, all_tasks, nondeterministic_tasks, resolve_tasks
from envs.web.browser import ChromiumBrowser

CHROMEDRIVER = "/usr/bin/chromedriver"
# (seed, wrong answer) per episode, in order: later episodes run on the page the first left behind, in both envs
EPISODES = ((0, False), (1, False))
WRONG_EPISODES = {"enter-text": ((2, True),)}


@dataclass(frozen=True)
class Move:
    """One scripted action on an element named by its tag and text (None: the first of that tag)."""

    verb: str  # click | type
    tag: str  # BUTTON, INPUT, LABEL (our listing's tag; the package's DOM uses lower case)
    text: str | None = None
    typed: str = ""


def quoted(instruction: str) -> str:
    return re.search(r'"(.*?)"', instruction).group(1)


def checkbox_names(instruction: str) -> list[str]:
    names = re.match(r"Select (.*) and click Submit\.", instruction).group(1)
    return [] if names == "nothing" else names.split(", ")


# task -> (the right moves for an instruction, a wrong answer's moves or None)
SCRIPTS = {
    "click-test": (lambda text: [Move("click", "BUTTON", "Click Me!")], None),
    "click-button": (lambda text: [Move("click", "BUTTON", quoted(text))], None),
    "enter-text": (
        lambda text: [Move("type", "INPUT", typed=quoted(text)), Move("click", "BUTTON", "Submit")],
        lambda text: [Move("type", "INPUT", typed=quoted(text) + "x"), Move("click", "BUTTON", "Submit")],
    ),
    "focus-text": (lambda text: [Move("click", "INPUT")], None),
    "click-checkboxes": (
        lambda text: [
            *(Move("click", "LABEL", name) for name in checkbox_names(text)),
            Move("click", "BUTTON", "Submit"),
        ],
        None,
    ),
}


def listing_id(som: str, move: Move) -> int:
    """Our element id for a move, from the ``[id] [TAG] [text]`` listing."""
    for line in som.splitlines():
        element_id, tag, text = re.match(r"\[(\d+)\] \[([^\]]*)\] \[(.*)\]$", line).groups()
        if tag == move.tag and (move.text is None or text == move.text):
            return int(element_id)
    raise AssertionError(f"no {move} in the listing:\n{som}")


def package_ref(dom_elements: Any, move: Move) -> int:
    """The package's element ref for a move: a label's text is a child text node, so its parent is the label."""
    elements = list(dom_elements)
    for element in elements:
        if str(element["tag"]).split("_")[0] == move.tag.lower() and move.text in (None, element["text"]):
            return int(element["ref"])
    if move.tag == "LABEL":
        for element in elements:
            if element["tag"] == "t" and element["text"] == move.text:
                return int(element["parent"])
    raise AssertionError(f"no {move} in the package's DOM")


def our_action(som: str, move: Move) -> str:
    element_id = listing_id(som, move)
    return f"click [{element_id}]" if move.verb == "click" else f"type [{element_id}] [{move.typed}] [0]"


@dataclass(frozen=True)
class Outcome:
    instruction: str
    raw_reward: float
    done: bool
    reason: str | None


def run_ours(env: MiniWoBEnv, task: str, seed: int, wrong: bool) -> Outcome:
    observation, _ = env.reset(seed=seed, options={"task": task})
    instruction = observation["instruction"]
    right, bad = SCRIPTS[task]
    terminated, info = False, {}
    for move in (bad if wrong else right)(instruction):
        observation, _, terminated, truncated, info = env.step(our_action(observation["som"], move))
        assert info["action_error"] is None, info["action_error"]
        if terminated or truncated:
            break
    return Outcome(instruction, info["raw_reward"], terminated, info["reason"])


def run_package(task: str) -> list[Outcome]:
    """The package's own env on ``task``: one browser, the task's episodes in order."""
    import miniwob  # noqa: F401  (registers miniwob/<task>-v1)

    env = gymnasium.make(f"miniwob/{task}-v1")
    unwrapped = env.unwrapped
    outcomes = []
    try:
        for seed, wrong in (*EPISODES, *WRONG_EPISODES.get(task, ())):
            observation, _ = env.reset(seed=seed)
            instruction = observation["utterance"]
            right, bad = SCRIPTS[task]
            terminated, info = False, {}
            for move in (bad if wrong else right)(instruction):
                ref = package_ref(observation["dom_elements"], move)
                if move.verb == "click":
                    action = unwrapped.create_action("CLICK_ELEMENT", ref=ref)
                else:
                    action = unwrapped.create_action("FOCUS_ELEMENT_AND_TYPE_TEXT", ref=ref, text=move.typed)
                observation, _, terminated, _, info = env.step(action)
                if terminated:
                    break
            outcomes.append(Outcome(instruction, float(info["raw_reward"]), bool(terminated), info["reason"]))
    finally:
        env.close()
    return outcomes


@pytest.fixture(scope="module")
def browser() -> Iterator[ChromiumBrowser]:
    with ChromiumBrowser() as running:
        yield running


@pytest.fixture(scope="module")
def env(browser: ChromiumBrowser) -> Iterator[MiniWoBEnv]:
    environment = MiniWoBEnv(browser=browser)
    yield environment
    environment.close()


def test_a_wrong_button_scores_minus_one_and_the_reward_is_read_from_the_page(env):
    observation, info = env.reset(seed=3, options={"task": "click-button"})
    assert info["seed"] == 3 and info["time_limit_ms"] == 10_000
    wanted = quoted(observation["instruction"])
    buttons = re.findall(r"\[(\d+)\] \[BUTTON\] \[(.*)\]", observation["som"])
    wrong = next(element_id for element_id, text in buttons if text != wanted)
    _, reward, terminated, truncated, info = env.step(f"I will click it. ```click [{wrong}]```")
    assert (reward, terminated, truncated, info["raw_reward"], info["success"]) == (-1.0, True, False, -1.0, False)
    assert info["ended_by"] == "page" and info["eval_status"] == "fail"
    observation, _ = env.reset(seed=3, options={"task": "click-button"})
    right = listing_id(observation["som"], Move("click", "BUTTON", wanted))
    _, reward, terminated, _, info = env.step(f"click [{right}]")
    assert terminated and info["success"] and info["raw_reward"] == 1.0
    assert 0 < reward < 1  # the page's time-scaled reward, as WOB_REWARD_GLOBAL holds it


def test_same_seed_same_page_and_ids_restart_on_a_reused_page(env):
    first, _ = env.reset(seed=11, options={"task": "click-checkboxes"})
    env.reset(seed=12, options={"task": "click-checkboxes"})
    again, _ = env.reset(seed=11, options={"task": "click-checkboxes"})
    assert (again["instruction"], again["som"]) == (first["instruction"], first["som"])
    assert again["som"].startswith("[1] [DIV] [Select ")
    assert first["image"].shape == first["screenshot"].shape == (210, 160, 3)
    assert env.observation_space.contains(first)


def test_bad_actions_are_counted_steps_and_stop_ends_the_episode(env):
    env.reset(seed=0, options={"task": "click-test"})
    for action, error in [
        ("hello", "cannot parse action"),
        ("goto [http://127.0.0.1:1/]", "a MiniWoB++ task is one page"),
        ("click [999]", "no element with id [999]"),
    ]:
        _, reward, terminated, truncated, info = env.step(action)
        assert error in info["action_error"] and (reward, terminated, truncated) == (0.0, False, False)
    assert info["failed_steps"] == 3 and info["steps"] == 3
    _, reward, terminated, _, info = env.step("stop []")
    assert terminated and reward == 0.0 and info["ended_by"] == "agent" and info["success"] is False
    with pytest.raises(UserFacingError, match="call reset"):
        env.step("click [1]")


def test_the_step_cap_truncates(browser):
    capped = MiniWoBEnv(task="click-test", browser=browser, max_steps=2)
    try:
        capped.reset(seed=0)
        assert capped.step("scroll [down]")[3] is False
        _, _, terminated, truncated, info = capped.step("scroll [up]")
        assert (terminated, truncated, info["ended_by"], info["success"]) == (False, True, "step_limit", False)
    finally:
        capped.close()


def test_the_page_time_limit_ends_the_episode_as_timed_out(browser):
    quick = MiniWoBEnv(task="click-test", browser=browser, time_limit_ms=300)
    try:
        _, info = quick.reset(seed=0)
        assert info["time_limit_ms"] == 300
        deadline = time.monotonic() + 30
        terminated = False
        while not terminated and time.monotonic() < deadline:
            _, reward, terminated, _, info = quick.step("scroll [down]")
        assert terminated and info["timed_out"] and info["reason"] == "timed out"
        assert (reward, info["raw_reward"], info["success"], info["ended_by"]) == (-1.0, -1.0, False, "page")
    finally:
        quick.close()


BROKEN_PAGES = {
    "never-ready": ("var genProblem = function() { WOB_TASK_READY = false; };", "never reported ready"),
    "throws": ("var genProblem = function() { throw new Error('no problem today'); };", "failed to start an episode"),
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Iterator[MiniWoBServer]:
    """A copy of the package's shared scripts with task pages whose scripts fail, served like the real ones."""
    root = tmp_path_factory.mktemp("miniwob_html")
    shutil.copytree(package_html_dir() / "core", root / "core")
    (root / "miniwob").mkdir()
    pages = dict(zip(("click-test", "click-button"), BROKEN_PAGES.values(), strict=True))
    for task, (script, _) in pages.items():
        (root / "miniwob" / f"{task}.html").write_text(
            '<html><head><link rel="stylesheet" href="../core/core.css"><script src="../core/core.js"></script>'
            f"<script>{script} window.onload = function() {{ core.startEpisode(); }};</script></head>"
            '<body><div id="wrap"><div id="query"></div><div id="area"></div></div></body></html>'
        )
    with MiniWoBServer(root) as server:
        yield server


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("click-test", BROKEN_PAGES["never-ready"][1]),
        ("click-button", BROKEN_PAGES["throws"][1]),
        ("enter-text", "did not load .*HTTP status 404"),  # not served here
    ],
)
def test_a_broken_task_page_is_one_clear_error(browser, broken_site, task, message):
    broken = MiniWoBEnv(browser=browser, server=broken_site, ready_timeout_ms=3000)
    try:
        with pytest.raises(MiniWoBPageError, match=f"MiniWoB\\+\\+ task {task}: .*{message}"):
            broken.reset(seed=0, options={"task": task})
        assert broken.session is None  # nothing left open; the next reset starts afresh
    finally:
        broken.close()


def test_resolve_tasks_and_the_excluded_list():
    every = resolve_tasks("all")
    assert every == list(all_tasks()) and len(every) == 125 and "click-button" in every  # 128 ids less 3 FlightWoB
    assert not set(every) & set(EXCLUDED)
    pages = {path.stem for path in (package_html_dir() / "miniwob").glob("*.html")}
    assert pages == set(every) | {name for name in EXCLUDED if not name.startswith("flight.")}
    assert {"button-delay", "chase-circle", "hover-shape", "moving-items", "simon-says"} <= set(EXCLUDED)
    assert "click-dialog" in nondeterministic_tasks() and "click-button" not in nondeterministic_tasks()
    assert resolve_tasks("miniwob/click-button-v1, enter-text,click-button") == ["click-button", "enter-text"]
    assert resolve_tasks("miniwob:click-test") == ["click-test"]
    with pytest.raises(
        UnknownMiniWoBTaskError, match=r"unknown MiniWoB\+\+ task 'clik-button'; did you mean click-button"
    ):
        resolve_tasks("clik-button")
    with pytest.raises(UnknownMiniWoBTaskError, match="valid tasks: ascending-numbers, bisect-angle"):
        resolve_tasks("zzzz")
    with pytest.raises(UnknownMiniWoBTaskError, match="'simon-says' is excluded: not registered by the miniwob"):
        resolve_tasks("simon-says")
    with pytest.raises(UnknownMiniWoBTaskError, match="no MiniWoB"):
        resolve_tasks(" , ")
    with pytest.raises(UnknownMiniWoBTaskError, match=r"flight\.AA' is excluded: a FlightWoB task"):
        MiniWoBEnv(task="miniwob/flight.AA-v1")


def test_the_openai_policy_completes_an_episode(env, chat_endpoint):
    from magma.policies.openai_chat import ChatClient, OpenAIChatPolicy

    def answer(request: dict[str, Any]) -> str:
        text = request["messages"][1]["content"][0]["text"]
        wanted = quoted(text.split("OBJECTIVE: ", 1)[1].splitlines()[0])
        element_id = listing_id(
            text.split("ELEMENTS:\n", 1)[1].split("\nPREVIOUS ACTIONS:")[0], Move("click", "BUTTON", wanted)
        )
        return f"The button reads {wanted}. In summary, the next action I will perform is ```click [{element_id}]```"

    chat_endpoint.answer = answer
    policy = OpenAIChatPolicy(ChatClient(model="test-model"))
    observation, info = env.reset(seed=5, options={"task": "click-button"})
    policy.reset({"instruction": observation["instruction"], "task_id": info["task_id"]})
    terminated = truncated = False
    while not (terminated or truncated):
        observation, reward, terminated, truncated, info = env.step(policy.act(observation))
    assert terminated and info["success"] and info["steps"] == 1 and reward > 0
    ((authorization, request),) = chat_endpoint.requests
    assert authorization == "Bearer test-key" and request["model"] == "test-model"
    content = request["messages"][1]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert f"OBJECTIVE: {observation['instruction']}" in content[0]["text"] and "[BUTTON]" in content[0]["text"]


@pytest.fixture(scope="module", autouse=True)
def package_outcomes() -> Iterator[dict[str, Future] | str]:
    """The package's env on every scripted task, started with the module in a background thread, so it runs
    while the tests before the comparison use our env; or why it cannot run."""
    if not Path(CHROMEDRIVER).exists():
        yield "chromedriver not installed (Debian's chromium-driver; scripts/install_system_deps.sh)"
        return
    saved = {name: os.environ.get(name) for name in ("MINIWOB_CHROME_BINARY", "MINIWOB_CHROMEDRIVER")}
    os.environ.update(MINIWOB_CHROME_BINARY="/usr/bin/chromium", MINIWOB_CHROMEDRIVER=CHROMEDRIVER)
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield {task: pool.submit(run_package, task) for task in SCRIPTS}
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.parametrize("task", list(SCRIPTS))
def test_same_instruction_and_reward_as_the_package(env, package_outcomes, task):
    if isinstance(package_outcomes, str):
        pytest.skip(package_outcomes)
    episodes = (*EPISODES, *WRONG_EPISODES.get(task, ()))
    ours = [run_ours(env, task, seed, wrong) for seed, wrong in episodes]
    theirs = package_outcomes[task].result(timeout=300)
    assert ours == theirs
    assert [(outcome.done, outcome.raw_reward) for outcome in ours] == [(True, -1.0 if w else 1.0) for _, w in episodes]
