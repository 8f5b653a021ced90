"""gymnasium's own checker on every environment id this toolkit registers, unwrapped and as ``gymnasium.make``
returns it, with gymnasium's warnings counted as failures; then the spaces against real actions and real
observations. Offline: the bundled Reddit site in the system Chromium, and the simulated phone."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.spaces.utils import flatten, flatten_space, unflatten
from gymnasium.utils.env_checker import check_env

import envs.android
import envs.metaworld
import envs.miniwob
import envs.mujoco
import envs.web
from data_tools.errors import UserFacingError
from envs.android.env import AndroidEnvConfig, SettleConfig
from envs.android.simulated_device import SimulatedAdbServer, simulated_phone
from envs.android.tasks import load_tasks as load_android_tasks
from envs.text_space import UnicodeText, bounded_listing
from envs.web.env import WebEnv

REPO = Path(__file__).resolve().parents[1]
HAS_CHROMIUM = Path("/usr/bin/chromium").exists()
# The one warning gymnasium gives whenever it checks a wrapped env, which is what this test does on purpose.
WRAPPED_NOTICE = "is different from the unwrapped version"
# The 50 per-task Meta-World ids are one class with a task kwarg (a scene load and two renderers per check):
# the checker runs on the any-task id and one per-task id; test_metaworld_env checks every id's registration.
METAWORLD_IDS_CHECKED = ("MetaWorld-v3", "MetaWorld-pick-place-v3")


def checked_env_ids() -> list[str]:
    """The ids the checker runs on: every toolkit id, with Meta-World's per-task ids narrowed as said above."""
    return [i for i in toolkit_env_ids() if not i.startswith("MetaWorld-") or i in METAWORLD_IDS_CHECKED]


def toolkit_env_ids() -> list[str]:
    """Every id in gymnasium's registry whose entry point is in this repository's ``envs`` package."""
    return sorted(
        env_id
        for env_id, spec in gymnasium.registry.items()
        if isinstance(spec.entry_point, str) and spec.entry_point.startswith("envs.")
    )


# -- offline resources: one Classifieds site, one browser (held by a WebEnv), one simulated phone ---------------


@pytest.fixture(scope="module")
def web_task() -> Iterator[Any]:
    """The bundled Reddit task that starts on the forum list without a login: the quickest page to open."""
    if not HAS_CHROMIUM:
        pytest.skip("system Chromium not installed")
    pytest.importorskip("playwright")
    from envs.web.sites import start_sites
    from envs.web.task_selection import select_tasks
    from envs.web.tasks import site_urls_from_environment

    sites = start_sites(names=("reddit",))
    try:
        urls = site_urls_from_environment({name.upper(): url for name, url in sites.items()})
        tasks = [selected.web_task(urls) for selected in select_tasks(["reddit"])]
        task = next((t for t in tasks if t.start_urls[0].endswith("/forums") and not t.require_login), None)
        assert task is not None, "no bundled Reddit task starts on /forums without a login any more; pick another"
        yield task
    finally:
        sites.stop()


@pytest.fixture(scope="module")
def web_env(web_task: Any) -> Iterator[Any]:
    """One WebEnv for the module; while it is open, every other WebEnv of this thread shares its Chromium."""
    env = gymnasium.make("VisualWebArena-v0", task=web_task).unwrapped
    env.reset()
    yield env
    env.close()


@pytest.fixture(scope="module")
def phone() -> Iterator[tuple[SimulatedAdbServer, str]]:
    with simulated_phone(adb_keyboard=True) as running:  # the ADB keyboard types any Unicode
        yield running


def android_task(task_id: str = "dark_mode") -> Any:
    return next(t for t in load_android_tasks(REPO / "envs/android/tasks/sim_app.json") if t.task_id == task_id)


def android_kwargs(phone: tuple[SimulatedAdbServer, str]) -> dict[str, Any]:
    server, serial = phone
    settle = SettleConfig(change_timeout_s=0.3, stable_timeout_s=1.0, wait_action_s=0.3)
    return {"task": android_task(), "config": AndroidEnvConfig(serial=serial, adb_port=server.port, settle=settle)}


def make_kwargs(env_id: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """What ``gymnasium.make(env_id, ...)`` needs to run offline, by the id's entry point."""
    entry_point = gymnasium.spec(env_id).entry_point
    if entry_point == envs.mujoco.ENTRY_POINT:
        return {}
    if entry_point == envs.metaworld.ENTRY_POINT:
        return {"image_size": 32, "fast_render": True}  # small frames, no shadows: software OpenGL here
    if entry_point == "envs.web.env:WebEnv":
        request.getfixturevalue("web_env")  # keeps one browser for the module
        return {"task": request.getfixturevalue("web_task")}
    if entry_point == "envs.miniwob.env:MiniWoBEnv":
        request.getfixturevalue("web_env")  # shares the module's browser
        return {"task": "click-test"}
    if entry_point == "envs.android.env:AndroidEnv":
        return android_kwargs(request.getfixturevalue("phone"))
    raise AssertionError(f"{env_id} ({entry_point}) has no offline recipe here; add one to make_kwargs")


def checked_without_warnings(check: Callable[[], None], allowed: tuple[str, ...] = ()) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check()
    unexpected = [str(w.message) for w in caught if not any(text in str(w.message) for text in allowed)]
    assert unexpected == [], unexpected


# -- gymnasium's checker on every id ---------------------------------------------------------------------------


def test_every_package_registers_its_ids():
    ids = toolkit_env_ids()
    assert {"VisualWebArena-v0", envs.miniwob.ENV_ID, "Android-v0", *envs.mujoco.ENV_IDS} <= set(ids)
    assert set(envs.metaworld.ENV_IDS) <= set(ids)


@pytest.mark.parametrize("env_id", checked_env_ids())
def test_check_env_passes_unwrapped_and_wrapped(env_id: str, request: pytest.FixtureRequest):
    kwargs = make_kwargs(env_id, request)
    env = gymnasium.make(env_id, **kwargs)
    try:
        checked_without_warnings(lambda: check_env(env.unwrapped))
        checked_without_warnings(lambda: check_env(env), allowed=(WRAPPED_NOTICE,))
    finally:
        env.close()
    env.close()  # twice is fine


# -- the spaces against real actions and observations ------------------------------------------------------


WEB_ACTIONS = [
    "click [12]",
    "type [3] [héllo wörld — 東京 😀] [1]",
    "press [Control+Enter]",
    "scroll [down]",
    "goto [http://127.0.0.1:7770/index.php?page=search&sPattern=caf%C3%A9]",
    "stop [N/A]",
    "Let's think step by step.\nThe price is $167.\nIn summary, the next action I will perform is ```stop [167]```",
]


def test_real_actions_are_in_the_action_spaces(phone):
    web_space = gymnasium.make("VisualWebArena-v0").unwrapped.action_space
    for action in WEB_ACTIONS:
        assert web_space.contains(action), action
    android_space = gymnasium.make("Android-v0", **android_kwargs(phone)).unwrapped.action_space
    demos = [
        json.dumps(step, ensure_ascii=False)
        for task in load_android_tasks(REPO / "envs/android/tasks/sim_app.json")
        for step in task.demo
    ]
    assert len(demos) > 10
    for action in [*demos, '{"action_type": "input_text", "text": "Grüße, 你好 👋", "index": 4}']:
        assert android_space.contains(action), action
    for space in (web_space, android_space):
        assert not space.contains("\ud800") and not space.contains("x" * (space.max_length + 1))
        assert space.contains("") and not space.contains(b"click [1]")


def test_web_observations_stay_in_their_space_over_steps(web_env, web_task):
    space = web_env.observation_space
    observation, _ = web_env.reset(options={"task": web_task})
    assert space.contains(observation) and isinstance(observation["tabs"], tuple)
    link = next(line for line in observation["som"].splitlines() if "[A]" in line)
    actions = ["scroll [down]", "scroll [up]", f"click [{link[1 : link.index(']')]}]", "new_tab", "tab_focus [0]"]
    for action in actions:
        observation, _, terminated, truncated, info = web_env.step(action)
        assert info["action_error"] is None, (action, info["action_error"])
        assert space.contains(observation), action
        assert not (terminated or truncated)
    assert len(observation["tabs"]) == 2
    observation, _, _, _, info = web_env.step("q" * (web_env.action_space.max_length + 1))
    assert "over the 1000000 the action space allows" in info["action_error"] and space.contains(observation)
    # a task with a phone-sized viewport re-declares the image boxes, in the same Dict a wrapper would hold
    observation, _ = web_env.reset(options={"task": replace(web_task, viewport=(430, 932))})
    assert web_env.observation_space is space and space["image"].shape == (932, 430, 3)
    assert space.contains(observation)
    web_env.reset(options={"task": web_task})
    assert space["screenshot"].shape == (720, 1280, 3)


def test_web_reset_with_a_seed_is_reproducible(web_env):
    first, _ = web_env.reset(seed=7)
    state = web_env.np_random.bit_generator.state
    second, _ = web_env.reset(seed=7)
    assert web_env.np_random.bit_generator.state == state
    assert {k: first[k] for k in ("som", "url", "tabs")} == {k: second[k] for k in ("som", "url", "tabs")}
    assert np.array_equal(first["screenshot"], second["screenshot"])  # a static page, so the same pixels


def test_web_render_modes(web_env, web_task):
    frame = web_env.render()
    assert frame.dtype == np.uint8 and frame.shape == (720, 1280, 3)
    silent = gymnasium.make("VisualWebArena-v0", task=web_task, render_mode=None).unwrapped
    try:
        silent.reset()
        assert silent.render() is None
    finally:
        silent.close()
    with pytest.raises(UserFacingError, match=r"render_mode='ansi' is not supported by WebEnv; use one of"):
        WebEnv(task=web_task, render_mode="ansi")


def test_android_observations_stay_in_their_space_over_steps(phone):
    env = gymnasium.make("Android-v0", **android_kwargs(phone)).unwrapped
    space = env.observation_space
    observation, _ = env.reset(options={"task": android_task("save_note")})
    assert space.contains(observation)

    def mark(predicate: Callable[[Any], bool]) -> int:
        return next(bound.label for bound in env.marks if predicate(bound.node))

    steps = [
        lambda: {"TAP": {"MARK": mark(lambda node: node.label == "Form")}},
        lambda: {
            "action_type": "input_text",
            "text": "Grüße & 100% ☕",
            "index": mark(lambda n: n.resource_id.endswith("name_input")),
        },
        lambda: {"action_type": "navigate_back"},
        lambda: {"SWIPE": "UP"},
    ]
    for step in steps:
        action = json.dumps(step(), ensure_ascii=False)
        observation, _, _, _, info = env.step(action)
        assert info["action_error"] is None, (action, info["action_error"])
        assert space.contains(observation), action
        if "input_text" in action:
            assert "[EditText] [Grüße & 100% ☕]" in observation["som"]  # typed, and listed as typed
    # the phone turns to landscape: the next observation re-declares the image boxes in the same Dict
    server, serial = phone
    device = server.devices_snapshot()[serial]
    device.run_shell("settings put system user_rotation 1")
    try:
        observation, _ = env.reset(options={"task": android_task()})
        assert env.observation_space is space and space["image"].shape == (540, 960, 3)
        assert space.contains(observation)
    finally:
        device.run_shell("settings put system user_rotation 0")
        env.close()


# -- the text space itself ---------------------------------------------------------------------------------


def test_unicode_text_is_a_gymnasium_text_over_all_of_unicode():
    space = UnicodeText(40, seed=3)
    assert isinstance(space, gymnasium.spaces.Text) and len(space.character_set) == 0x110000 - 2048
    for text in ("", "click [12]", "naïve café 東京 😀\n\t", "\x00\U0010ffff"):
        assert space.contains(text)
    assert not space.contains("a\udfffb") and not space.contains("x" * 41) and not space.contains(None)
    samples = [space.sample() for _ in range(20)]
    assert all(space.contains(sample) for sample in samples) and len(set(samples)) == 20
    assert len(space.sample(mask=(7, None))) == 7
    flat = flatten(space, "é😀")
    assert flatten_space(space).shape == (40,) and unflatten(space, flat) == "é😀"
    assert space == UnicodeText(40) and space != UnicodeText(41) and space != gymnasium.spaces.Text(40)


def test_bounded_listing_cuts_at_a_line_and_says_so():
    listing = "\n".join(f"[{i}] [A] [link {i}]" for i in range(1000))
    assert bounded_listing(listing, len(listing)) == listing
    cut = bounded_listing(listing, 500)
    assert len(cut) <= 500 and cut.splitlines()[0] == "[0] [A] [link 0]"
    kept = cut.splitlines()[:-1]
    assert (
        cut.splitlines()[-1] == f"[...] {1000 - len(kept)} more lines not listed (the listing is cut at 500 characters)"
    )
