"""The served scripted expert planning chunks ahead (robot.privileged_state) behind policy latency.

The episodes run the real tabletop physics through the daemon's own ``ActionQueue`` the way the
daemon runs latency-aware chunks: a request leaves when the queue is nearly drained, carries the
actions the robot runs meanwhile (``committed_actions``), and its answer lands ``delay`` ticks later,
its late steps skipped."""

from __future__ import annotations

import numpy as np
import pytest

from envs.mujoco.env import TabletopEnv
from envs.mujoco.experts import ScriptedExpert
from robot.chunking import ActionQueue
from robot.privileged_state import (
    MissingPrivilegedStateError,
    ObservedScriptedExpert,
    PhysicsForecast,
    privileged_observation,
    truth_from_wire,
)


def latency_aware_episode(env: TabletopEnv, state_index: int, chunk: int, delay: int) -> bool:
    """One episode of the chunked expert with answers arriving ``delay`` ticks after their observation."""
    env.reset(options={"state_index": state_index})
    expert = ObservedScriptedExpert(chunk, env.control_hz)
    expert.reset({})
    queue = ActionQueue("latest")
    in_flight: tuple[int, int, np.ndarray] | None = None  # (arrival tick, observation step, chunk)
    gripper, tick, step = -1.0, 0, 0
    while True:
        if in_flight is not None and in_flight[0] <= tick:
            queue.add(in_flight[2], in_flight[1], step)
            in_flight = None
        if in_flight is None and queue.depth(step) <= 1 + delay:
            observation = {"privileged": privileged_observation(env), "action_step": step}
            committed = queue.planned(step, delay)
            if len(committed):
                observation["committed_actions"] = committed
            in_flight = (tick + delay, step, expert.act(observation))
        queued = queue.pop(step)
        if queued is None:  # nothing to run yet: hold the hand and the gripper
            action = np.array([0.0] * 6 + [gripper])
        else:
            action, step = queued.action, step + 1
        gripper = float(action[6])
        _, _, terminated, truncated, info = env.step(action)
        tick += 1
        if terminated or truncated:
            return bool(info["success"])


@pytest.mark.parametrize(
    ("task", "control_hz", "chunk", "delay", "states"),
    [  # states that a chunk planned on a kinematic model of the hand and the objects failed
        ("pick_place", 50, 26, 11, (2, 8)),
        ("stack", 50, 26, 11, (2, 5)),
        ("push", 50, 10, 3, (1, 3)),
        ("push", 10, 8, 3, (0, 1)),
    ],
)
def test_chunked_expert_solves_tasks_behind_latency(
    task: str, control_hz: int, chunk: int, delay: int, states: tuple[int, ...]
) -> None:
    env = TabletopEnv(task=task, render=False, control_hz=control_hz)
    try:
        assert [latency_aware_episode(env, index, chunk, delay) for index in states] == [True] * len(states)
    finally:
        env.close()


@pytest.mark.parametrize(("task", "control_hz", "state_index"), [("pick_place", 10, 3), ("open_drawer", 50, 0)])
def test_single_action_expert_is_the_plain_expert_on_the_observed_truth(
    task: str, control_hz: int, state_index: int
) -> None:
    env = TabletopEnv(task=task, render=False, control_hz=control_hz)
    try:
        env.reset(options={"state_index": state_index})
        plain, served = ScriptedExpert(env), ObservedScriptedExpert(chunk_length=1, control_hz=control_hz)
        plain.reset({})
        served.reset({})
        for step in range(env.max_steps):
            expected = plain.act()
            answer = served.act({"privileged": privileged_observation(env), "action_step": step})
            assert answer.shape == (7,)
            np.testing.assert_array_equal(answer, expected)
            _, _, terminated, truncated, _ = env.step(expected)
            if terminated or truncated:
                break
        assert terminated
    finally:
        env.close()


@pytest.mark.parametrize(("task", "start"), [("pick_place", 8), ("push", 10)])
def test_forecast_reproduces_the_real_ticks(task: str, start: int) -> None:
    """25 ticks at 50 Hz forecast from one observation, taken with the arm moving (and, for pick_place,
    the next ticks grasp and lift the cube, for push they push it), stay within 10 micrometres of the real ones."""
    env = TabletopEnv(task=task, render=False, control_hz=50)
    forecast = PhysicsForecast(control_hz=50)
    try:
        env.reset(options={"state_index": 0})
        expert = ScriptedExpert(env)
        expert.reset({})
        for _ in range(start):
            env.step(expert.act())
        forecast.start(truth_from_wire(privileged_observation(env)))
        for _ in range(25):
            action = expert.act()
            env.step(action)
            forecast.step(action)
            real, predicted = env.privileged_state(), forecast.truth()
            np.testing.assert_allclose(predicted["ee_position"], real["ee_position"], atol=1e-5)
            for name, (position, _) in real["objects"].items():
                np.testing.assert_allclose(predicted["objects"][name][0], position, atol=1e-5)
    finally:
        env.close()
        forecast.close()


def test_malformed_motion_is_refused_with_one_clear_error() -> None:
    env = TabletopEnv(task="reach", render=False, control_hz=50)
    try:
        env.reset(options={"state_index": 0})
        privileged = privileged_observation(env)
        expert = ObservedScriptedExpert(chunk_length=4, control_hz=50)
        privileged["motion"]["joint_velocities"] = np.array([0.0, np.nan])
        with pytest.raises(MissingPrivilegedStateError, match="motion"):
            expert.act({"privileged": privileged, "action_step": 0})
        del privileged["motion"]  # a client that sends no motion: still served, forecast from a scene at rest
        ghost = {
            **privileged,
            "objects": {**privileged["objects"], "ghost_cube": next(iter(privileged["objects"].values()))},
        }
        with pytest.raises(MissingPrivilegedStateError, match="ghost_cube"):  # a robot on another scene version
            expert.act({"privileged": ghost, "action_step": 0})
        assert expert.act({"privileged": privileged, "action_step": 0}).shape == (4, 7)
    finally:
        env.close()
