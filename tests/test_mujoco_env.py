"""The MuJoCo tabletop suite on real physics and real headless rendering: seeding, success checks,
cameras, bad input, gymnasium checks and vector environments."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import envs.mujoco
from data_tools.errors import UserFacingError
from envs.mujoco.env import STATE_DIM, STATE_LAYOUT, InvalidActionError, ResetNeededError, TabletopEnv
from envs.mujoco.tasks import TASKS, UnknownTaskError, apply_initial_state, evaluation_states, success


@pytest.fixture
def env():
    environment = TabletopEnv(task="pick_place", image_size=64)
    yield environment
    environment.close()


def _rollout(environment: TabletopEnv, seed: int, steps: int = 8) -> list[dict]:
    observation, _ = environment.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 7)) * environment.action_space.high
    trace = [observation]
    for action in actions:
        observation, *_ = environment.step(action)
        trace.append({**observation, "qpos": environment.data.qpos.copy()})
    return trace


def test_same_seed_gives_the_same_episode_and_another_seed_differs():
    first, second = TabletopEnv(image_size=32), TabletopEnv(image_size=32)
    a, b, c = _rollout(first, seed=7), _rollout(second, seed=7), _rollout(first, seed=8)
    for x, y in zip(a, b, strict=True):
        assert x["instruction"] == y["instruction"]
        for key in ("image", "wrist_image", "state", "qpos"):
            if key in x:
                np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["state"], c[0]["state"]) or a[0]["instruction"] != c[0]["instruction"]
    assert not np.array_equal(a[-1]["qpos"], c[-1]["qpos"])
    first.close()
    second.close()


def test_evaluation_states_are_fixed_and_reset_by_index_uses_them(env):
    for name in TASKS:
        assert evaluation_states(name, 5) == evaluation_states(name, 5)
    states = evaluation_states("pick_place")
    assert len(states) == 50 and len({s.instruction + str(s.placements) for s in states}) == 50
    _, info = env.reset(options={"state_index": 3})
    assert info["instruction"] == states[3].instruction and env.task_state == states[3]
    assert "put the" in info["instruction"] and " cube " in info["instruction"]


def test_observation_layout_and_spaces(env):
    observation, _ = env.reset(seed=0)
    assert set(observation) == {"image", "wrist_image", "state", "instruction"}
    assert observation["state"].shape == (STATE_DIM,) and observation["state"].dtype == np.float32
    assert env.observation_space.contains(observation)
    ee = observation["state"][STATE_LAYOUT["ee_position"]]
    np.testing.assert_allclose(ee, env.data.site("ee").xpos, atol=1e-6)
    np.testing.assert_allclose(observation["state"][STATE_LAYOUT["ee_rpy"]][:2], 0.0, atol=0.15)  # hand down
    assert observation["state"][STATE_LAYOUT["gripper_opening"]][0] == pytest.approx(0.08, abs=1e-3)
    state_only = TabletopEnv(render=False)
    assert set(state_only.reset(seed=0)[0]) == {"state", "instruction"}


def test_both_cameras_render_distinct_nontrivial_images(env):
    observation, _ = env.reset(seed=1)
    third, wrist = observation["image"], observation["wrist_image"]
    for image in (third, wrist):
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert image.std() > 10, "a blank image"
    assert np.abs(third.astype(int) - wrist.astype(int)).mean() > 10
    before = env.render_camera("wrist")
    env.step(np.array([0.05, 0.0, -0.03, 0, 0, 0, -1.0]))  # the wrist camera moves with the hand
    assert not np.array_equal(before, env.render_camera("wrist"))


def _place_body(model, data, name, position):
    data.joint(f"{name}_joint").qpos[:] = [*position, 1, 0, 0, 0]


def test_success_checks_true_and_false_on_constructed_states():
    model_env = TabletopEnv(render=False)
    model, data = model_env.model, model_env.data

    state = evaluation_states("pick_place")[0]
    apply_initial_state(model, data, state)
    assert not success(model, data, state)
    receptacle = data.body(state.roles["receptacle"]).xpos.copy()
    floor = 0.01 if "plate" in state.roles["receptacle"] else 0.008
    _place_body(model, data, state.roles["object"], receptacle + np.array([0.01, 0.0, floor + 0.0225]))
    mujoco.mj_forward(model, data)
    assert success(model, data, state)
    _place_body(model, data, state.roles["object"], receptacle + np.array([0.01, 0.0, 0.2]))  # held above: not placed
    mujoco.mj_forward(model, data)
    assert not success(model, data, state)

    state = evaluation_states("stack")[0]
    apply_initial_state(model, data, state)
    assert not success(model, data, state)
    base = data.body(state.roles["base"]).xpos.copy()
    _place_body(model, data, state.roles["object"], base + np.array([0.005, 0.0, 0.045]))
    mujoco.mj_forward(model, data)
    assert success(model, data, state)

    state = evaluation_states("open_drawer")[0]
    apply_initial_state(model, data, state)
    assert not success(model, data, state)
    data.joint("drawer_slide").qpos[0] = 0.14
    mujoco.mj_forward(model, data)
    assert success(model, data, state)

    state = evaluation_states("push")[0]
    apply_initial_state(model, data, state)
    assert not success(model, data, state)
    target = data.body("target").xpos
    _place_body(model, data, state.roles["object"], [target[0], target[1], 0.0225])
    mujoco.mj_forward(model, data)
    assert success(model, data, state)


@pytest.mark.parametrize("task", list(TASKS))
def test_an_idle_episode_does_not_succeed(task):
    environment = TabletopEnv(task=task, render=False, max_steps=15)
    environment.reset(seed=0)
    idle = np.array([0, 0, 0, 0, 0, 0, -1.0])
    while True:
        _, reward, terminated, truncated, info = environment.step(idle)
        if terminated or truncated:
            break
    assert truncated and not terminated and not info["success"] and reward == 0.0


def test_unknown_task_names_say_which_tasks_exist(env):
    with pytest.raises(UnknownTaskError, match="pick_place") as raised:
        TabletopEnv(task="fold_laundry")
    assert isinstance(raised.value, UserFacingError)
    assert "fold_laundry" in str(raised.value)
    with pytest.raises(UnknownTaskError):
        env.reset(options={"task": "fold_laundry"})
    with pytest.raises(UnknownTaskError):
        gym.make("Tabletop-v0", task="fold_laundry")


@pytest.mark.parametrize(
    ("bad_action", "message"),
    [
        (np.zeros(6), r"shape \(7,\)"),
        (np.zeros((1, 7)), r"shape \(7,\)"),
        (np.array([0, 0, np.nan, 0, 0, 0, 1.0]), "NaN"),
        (np.array([0, 0, 0, np.inf, 0, 0, 1.0]), "NaN or infinite"),
        ("close the gripper", "vector of 7 numbers"),
    ],
)
def test_a_bad_action_is_refused_and_leaves_the_episode_intact(env, bad_action, message):
    env.reset(seed=2)
    env.step(np.array([0.02, 0, 0, 0, 0, 0, -1.0]))
    qpos, qvel, ctrl, time_before, steps = (
        env.data.qpos.copy(),
        env.data.qvel.copy(),
        env.data.ctrl.copy(),
        env.data.time,
        env.steps,
    )
    with pytest.raises(InvalidActionError, match=message) as raised:
        env.step(bad_action)
    assert isinstance(raised.value, UserFacingError)
    np.testing.assert_array_equal(env.data.qpos, qpos)
    np.testing.assert_array_equal(env.data.qvel, qvel)
    np.testing.assert_array_equal(env.data.ctrl, ctrl)
    assert env.data.time == time_before and env.steps == steps
    observation, *_ = env.step(np.array([0.0, 0.02, 0, 0, 0, 0, -1.0]))
    assert env.steps == steps + 1 and np.isfinite(observation["state"]).all()


def test_step_before_reset_is_a_clear_error():
    with pytest.raises(ResetNeededError, match="reset"):
        TabletopEnv(render=False).step(np.zeros(7))


def test_delta_and_joint_action_modes_move_the_arm():
    environment = TabletopEnv(render=False)
    observation, _ = environment.reset(seed=0)
    start = observation["state"][STATE_LAYOUT["ee_position"]].copy()
    for _ in range(3):
        observation, *_ = environment.step(np.array([0.03, -0.02, 0.01, 0, 0, 0, 1.0]))
    moved = observation["state"][STATE_LAYOUT["ee_position"]] - start
    np.testing.assert_allclose(moved, [0.09, -0.06, 0.03], atol=0.015)  # the servos lag a little
    assert observation["state"][STATE_LAYOUT["gripper_opening"]][0] < 0.005  # closed on nothing

    joints = TabletopEnv(render=False, action_mode="joint")
    joints.reset(seed=0)
    goal = np.array([0.3, 0.2, 0.3, -0.5, 0.1, 0.2])
    for _ in range(5):
        observation, *_ = joints.step(np.append(goal, -1.0))
    np.testing.assert_allclose(observation["state"][STATE_LAYOUT["joint_positions"]], goal, atol=0.02)


def test_every_registered_id_makes_its_task():
    for env_id, task in envs.mujoco.ENV_IDS.items():
        environment = gym.make(env_id, render=False)
        _, info = environment.reset(seed=0)
        assert info["task"] == (task or "pick_place")
        environment.close()


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    environment = TabletopEnv(task="reach", image_size=32, render_mode="rgb_array")
    check_env(environment, skip_render_check=False)
    environment.close()


def test_async_vector_env_with_two_workers_steps():
    # spawn, not fork: a forked child would inherit this process's EGL contexts and hang
    vector = gym.make_vec(
        "TabletopReach-v0", num_envs=2, vectorization_mode="async", vector_kwargs={"context": "spawn"}, image_size=32
    )
    try:
        observations, _ = vector.reset(seed=[0, 1])
        assert observations["image"].shape == (2, 32, 32, 3)
        assert observations["state"].shape == (2, STATE_DIM)
        assert len(observations["instruction"]) == 2
        actions = np.zeros((2, 7), dtype=np.float32)
        actions[:, 6] = -1
        observations, rewards, *_ = vector.step(actions)
        assert rewards.shape == (2,) and observations["wrist_image"].shape == (2, 32, 32, 3)
        assert not np.array_equal(observations["state"][0], observations["state"][1])
    finally:
        vector.close()
