"""The control daemon drives Meta-World's simulated Sawyer arm: ``agent robot run --config sim-metaworld``
with Meta-World's expert behind a real policy server solves reach and records the episode as LeRobot v3;
the safety filter bounds the robot's declared 4-D action (motion in 1 cm units, limited in metres, and the
gripper), and a robot whose action layout the filter cannot bound is refused before anything moves. Real
MuJoCo, real Meta-World, a real policy server over loopback."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from test_robot_policy_server import AGENT, REPO

from data_tools.lerobot_dataset import LeRobotDatasetReader
from envs.metaworld.env import MetaWorldEnv
from envs.metaworld.expert import MetaWorldExpert
from envs.metaworld.instructions import INSTRUCTIONS
from robot.daemon import RobotDaemon
from robot.daemon_config import load_daemon_config
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.safety import DELTA_END_EFFECTOR, ActionLayout, SafetyConfigError, SafetyFilter, check_action_layout
from robot.served_policy import load_served_policy
from robot.sim_metaworld import ACTION_LAYOUT, MetaWorldSimRobot

FAST = [
    "robot.args.image_size=48",
    "status.live=false",
    "status.port=0",
    "watchdog.hold_after_ms=1000",  # bounds a loaded test machine does not trip by accident
    "watchdog.safe_stop_after_ms=4000",
    "safety.stale_camera_ms=1000",
]


def expert_steps_alone(seed: int) -> int:
    """Steps Meta-World's expert takes to solve reach on ``seed`` with no daemon in between."""
    env = MetaWorldEnv(task="reach", render=False)
    observation, _ = env.reset(seed=seed)
    expert = MetaWorldExpert(task="reach")
    expert.reset({})
    terminated = truncated = False
    while not (terminated or truncated):
        observation, _, terminated, truncated, _ = env.step(np.clip(expert.act(observation), -1.0, 1.0))
    env.close()
    assert terminated, "the expert alone should solve reach"
    return env.steps


def test_the_daemon_drives_metaworlds_arm_with_the_served_expert_to_success_and_records_it(tmp_path):
    # the factory `agent serve --policy robot.sim_metaworld:served_expert` loads, served over loopback
    served = load_served_policy("robot.sim_metaworld:served_expert", None, PolicySpec(policy="", model_id=""))
    assert (served.spec.action_dim, served.spec.state_dim) == (4, 39)
    server = PolicyServer(served, ServerConfig(port=0))
    server.start_in_thread()
    run_dir = tmp_path / "run"
    try:
        result = subprocess.run(
            [*AGENT, "robot", "run", "--config", "sim-metaworld", *FAST, "robot.args.seed=3",
             f"policy.url=ws://127.0.0.1:{server.port}", f"run_dir={run_dir}"],
            cwd=REPO, capture_output=True, text=True, timeout=1200, env={**os.environ, "MUJOCO_GL": "egl"},
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok   episode 0" in result.stdout and "ended by robot" in result.stdout, result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    episode = summary["episodes"][0]
    assert episode["success"] and summary["safe_stops"] == 0, summary
    # the expert's own episode length, plus the ticks that held because a loaded machine delayed the answer
    alone = expert_steps_alone(seed=3)
    assert episode["steps"] <= 2 * alone, (alone, summary)

    reader = LeRobotDatasetReader(episode["dataset"], expect_robot_type="metaworld-sim")
    recorded = reader.episode(0)
    assert reader.num_episodes == 1 and reader.fps == 20 and recorded.task == INSTRUCTIONS["reach"]
    assert recorded.actions.shape == (episode["steps"], 4) and recorded.states.shape == (episode["steps"], 39)
    assert len(recorded.frames["observation.images.corner2"]) == episode["steps"]
    assert recorded.frames["observation.images.corner2"].shape[1:] == (48, 48, 3)
    # the sent actions are within the filter's limits: 0.01 m per step is 1 unit, the gripper in [-1, 1]
    assert np.all(np.abs(recorded.actions) <= 1.0 + 1e-6)
    assert summary["counts"].get("clipped", 0) >= 1  # the expert asks for more than 1 cm per step at first
    goal_distance = np.linalg.norm(recorded.states[-1, :3] - recorded.states[-1, 36:39])
    assert goal_distance < 0.1  # the hand ended near the goal (Meta-World's success: 5 cm after that step)


def test_the_4d_filter_bounds_motion_in_metres_and_the_gripper_and_moves_the_hand_by_exactly_that():
    shipped = load_daemon_config("sim-metaworld")
    limits = shipped.safety
    limits.max_translation_m, limits.gripper_range = 0.004, (-1.0, 0.5)
    safety = SafetyFilter(limits, MetaWorldSimRobot.joint_names, MetaWorldSimRobot.action_layout)
    hand = np.array([0.0, 0.6, 0.2])

    clipped = safety.filter(np.array([2.0, -0.3, 0.1, 0.9]), hand)
    assert clipped.action.tolist() == pytest.approx([0.4, -0.3, 0.1, 0.5]) and clipped.events == ["clipped"]
    inside = np.array([0.25, -0.4, 0.0, -1.0])
    assert np.array_equal(safety.filter(inside, hand).action, inside)  # within the limits: exactly as sent
    near_floor = np.array([0.0, 0.6, limits.workspace_min[2] + 0.001])
    assert safety.filter(np.array([0.0, 0.0, -1.0, 0.0]), near_floor).action[2] == pytest.approx(-0.1)
    assert safety.filter(np.zeros(7), hand).events == ["bad_dimension"]
    rest = safety.step_towards(np.array([0.0, 0.0, 0.0, -1.0]), np.array([0.0, 0.6, 0.3]), hand)
    assert rest.tolist() == pytest.approx([0.0, 0.0, 0.4, -1.0])  # 10 cm away: one 4 mm step up

    with MetaWorldSimRobot(task="reach", image_size=16, seed=0, fast_render=True) as robot:
        assert robot.env.sim.action_scale == ACTION_LAYOUT.metres_per_unit  # Meta-World's own scale
        position, joints = robot.measured_pose(robot.get_observation())
        assert safety.joints_outside(joints) == [] and len(joints) == 7
        target = robot.env.sim.data.mocap_pos[0].copy()
        robot.send_action(safety.filter(np.array([2.0, 0.0, -2.0, 1.0]), position).action)
        moved = robot.env.sim.data.mocap_pos[0] - target
        assert moved.tolist() == pytest.approx([0.004, 0.0, -0.004])  # the limit, in metres, in the simulator


class UndeclaredLayoutRobot(MetaWorldSimRobot):
    """A driver that does not say what its action entries mean."""

    action_layout = None


class TabletopLayoutRobot(MetaWorldSimRobot):
    """A driver that declares a layout of another robot (7-D) for its 4-D actions."""

    action_layout = DELTA_END_EFFECTOR


@pytest.mark.parametrize(
    ("driver", "message"),
    [
        ("UndeclaredLayoutRobot", "robot 'metaworld-sim' declares no action layout (None)"),
        ("TabletopLayoutRobot", "it describes 7-D actions but the robot takes 4-D ones"),
    ],
)
def test_a_robot_whose_action_layout_cannot_be_bounded_is_refused_before_anything_moves(tmp_path, driver, message):
    config = load_daemon_config(
        "sim-metaworld", [*FAST, f"robot.driver=test_robot_metaworld:{driver}", f"run_dir={tmp_path / 'run'}"]
    )
    daemon = RobotDaemon(config)
    with pytest.raises(SafetyConfigError, match="declare it on the driver class as action_layout") as refused:
        daemon.run()
    assert message in str(refused.value)
    assert daemon.robot is None and not (tmp_path / "run").exists()  # never connected, nothing written


def test_every_entry_of_an_action_must_have_a_role_the_filter_bounds():
    assert check_action_layout(ACTION_LAYOUT, 4) is ACTION_LAYOUT
    five = ActionLayout(size=5, translation=(0, 1, 2), gripper=3)
    with pytest.raises(SafetyConfigError, match=r"entries \[4\] are neither translation, rotation nor gripper"):
        check_action_layout(five, 5, "five-dof")
    twice = ActionLayout(size=4, translation=(0, 1, 2), gripper=2, metres_per_unit=0.0)
    with pytest.raises(SafetyConfigError) as refused:
        SafetyFilter(load_daemon_config("sim-metaworld").safety, MetaWorldSimRobot.joint_names, twice)
    assert "entries [2] are given two roles" in str(refused.value) and "entries [3] are neither" in str(refused.value)
    assert "metres_per_unit=0.0 must be a number above 0" in str(refused.value)
