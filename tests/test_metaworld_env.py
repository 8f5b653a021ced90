"""Meta-World v3 through this toolkit's environment, against the ``metaworld`` package itself: its expert
acts the same and succeeds the same through both (real physics, same seeds), the camera matches its own
render turned upright, the task tables match its own, and a recorded dataset opens and trains."""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import envs.metaworld
from data_tools.errors import UserFacingError
from data_tools.lerobot_dataset import LeRobotDatasetReader, episodes_to_shards
from envs.metaworld.benchmarks import ALL_TASKS, BENCHMARKS, MT10, UnknownTaskError, canonical_task, resolve_tasks
from envs.metaworld.env import InvalidActionError, MetaWorldEnv, ResetNeededError
from envs.metaworld.expert import MetaWorldExpert
from envs.metaworld.instructions import INSTRUCTIONS

REPO = Path(__file__).resolve().parent.parent
# Meta-World's experts warn on every large correction (the env clips it); expert.py filters it, pytest resets filters
pytestmark = pytest.mark.filterwarnings(r"ignore:Constant\(s\) may be too high")
STEP_CAP = 200  # every MT10 expert episode on the seeds below succeeds within this (peg-insert-side: 169)


def metaworld_goal_observable(task: str, seed: int) -> gymnasium.Env:
    """Meta-World's own goal-observable env of ``task`` placed by ``seed`` (its public gymnasium id)."""
    import metaworld  # noqa: F401  (registers the Meta-World/* ids)

    # without gymnasium's passive checker, which notes that Meta-World's own observations leave its own space
    return gymnasium.make("Meta-World/goal_observable", env_name=f"{task}-v3", seed=seed, disable_env_checker=True)


@pytest.mark.parametrize("index", range(len(MT10)), ids=list(MT10))
def test_expert_acts_and_succeeds_exactly_as_through_metaworld_own_env(index: int):
    """Same seed, same expert: the same actions at every step, the same states and the same success step.
    Meta-World's side feeds the expert its observation as float32, the dtype our ``"state"`` has."""
    from metaworld.policies import ENV_POLICY_MAP

    task, seed = MT10[index], index  # one seed per task, a different one for each
    ours = MetaWorldEnv(task=task, render=False)
    expert = MetaWorldExpert()
    observation, info = ours.reset(seed=seed)
    expert.reset(info)
    our_actions, our_success_step = [], None
    for step in range(1, STEP_CAP + 1):
        our_actions.append(expert.act(observation))
        observation, _, terminated, _, info = ours.step(our_actions[-1])
        assert ours.observation_space.contains(observation)
        if terminated:
            our_success_step = step
            break
    final_state = observation["state"]
    ours.close()

    theirs = metaworld_goal_observable(task, seed)
    policy = ENV_POLICY_MAP[f"{task}-v3"]()
    raw, _ = theirs.reset()
    their_actions, their_success_step = [], None
    for step in range(1, STEP_CAP + 1):
        their_actions.append(policy.get_action(raw.astype(np.float32)))
        raw, _, _, _, raw_info = theirs.step(their_actions[-1])
        if raw_info["success"]:
            their_success_step = step
            break
    theirs.close()

    assert our_success_step == their_success_step and our_success_step is not None, (task, seed)
    assert len(our_actions) == len(their_actions)
    assert all(np.array_equal(a, b) for a, b in zip(our_actions, their_actions, strict=True))
    assert np.array_equal(final_state, raw.astype(np.float32))


def test_reset_places_by_seed_switches_tasks_and_seedless_resets_follow_the_seed():
    env = MetaWorldEnv(task="push-v3", render=False)
    first, info = env.reset(seed=3)
    assert info["task"] == "push" and info["seed"] == 3 and first["instruction"] == INSTRUCTIONS["push"]
    again, _ = env.reset(seed=3)
    other, _ = env.reset(seed=4)
    assert np.array_equal(first["state"], again["state"])
    assert not np.allclose(first["state"][-3:], other["state"][-3:])  # another goal
    assert not np.allclose(first["state"][4:7], other["state"][4:7])  # the puck elsewhere
    sequence = [env.reset()[0]["state"] for _ in range(2)]
    env.reset(seed=4)
    assert all(np.array_equal(a, env.reset()[0]["state"]) for a in sequence)
    assert not np.array_equal(sequence[0], sequence[1])
    switched, info = env.reset(seed=3, options={"task": "reach"})
    assert info["task"] == "reach" and switched["instruction"] == INSTRUCTIONS["reach"]
    env.close()


def test_the_corner_camera_is_metaworld_own_render_turned_upright():
    from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

    size = 48
    ours = MetaWorldEnv(task="reach", image_size=size, camera="corner2")
    image = ours.reset(seed=5)[0]["image"]
    ours.close()
    theirs = metaworld_goal_observable("reach", 5)
    theirs.reset()
    raw_env = theirs.unwrapped  # rendered by gymnasium's MuJoCo renderer, as Meta-World renders itself
    raw_env.mujoco_renderer = MujocoRenderer(
        raw_env.model, raw_env.data, width=size, height=size, camera_name="corner2"
    )
    raw = raw_env.mujoco_renderer.render("rgb_array")
    theirs.close()
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert np.array_equal(image, raw[::-1, ::-1])  # turned 180 degrees
    assert not np.array_equal(image, raw)


def test_tables_match_the_installed_metaworld():
    from metaworld import env_dict
    from metaworld.policies import ENV_POLICY_MAP

    def names(classes: dict) -> tuple[str, ...]:
        return tuple(canonical_task(name) for name in classes)

    assert names(env_dict.ALL_V3_ENVIRONMENTS) == ALL_TASKS and len(ALL_TASKS) == 50
    expected = {
        "MT10": env_dict.MT10_V3,
        "MT25": env_dict.MT25_V3,
        "MT50": env_dict.MT50_V3,
        **{
            f"{name}-{split}": getattr(env_dict, f"{name}_V3")[split]
            for name in ("ML10", "ML25", "ML45")
            for split in ("train", "test")
        },
    }
    assert {name: names(classes) for name, classes in expected.items()} == BENCHMARKS
    assert {canonical_task(name) for name in ENV_POLICY_MAP} == set(ALL_TASKS)
    assert set(INSTRUCTIONS) == set(ALL_TASKS) and len(set(INSTRUCTIONS.values())) == 50
    allowed = set(string.ascii_letters + string.digits + " ,.'-")
    for task, sentence in INSTRUCTIONS.items():
        assert sentence[0].isupper() and sentence.endswith(".") and len(sentence) <= 80, task
        assert set(sentence) <= allowed, task
    ids = envs.metaworld.ENV_IDS
    assert len(ids) == 51 and all(gymnasium.spec(env_id).entry_point == envs.metaworld.ENTRY_POINT for env_id in ids)
    assert gymnasium.make("MetaWorld-pick-place-v3").unwrapped.task_name == "pick-place"


def test_task_specs_resolve_and_bad_names_say_what_is_valid():
    assert resolve_tasks("MT10") == list(MT10) and len(resolve_tasks("mt50")) == 50
    assert resolve_tasks("ML10-test") == ["drawer-open", "door-close", "shelf-place", "sweep-into", "lever-pull"]
    assert len(resolve_tasks("ML45-train")) == 45 and "bin-picking" not in resolve_tasks("ML45-train")
    assert resolve_tasks(" reach, push-v3 ,reach") == ["reach", "push"]
    assert resolve_tasks("metaworld:ML10-test,reach")[-1] == "reach"
    with pytest.raises(UnknownTaskError, match=r"'juggle' is not a Meta-World v3 task.*MT10, MT25, MT50.*reach"):
        resolve_tasks("reach,juggle")
    with pytest.raises(UserFacingError, match=r"'reach-v2' is version v2.*use 'reach' or 'reach-v3'"):
        resolve_tasks("reach-v2")
    for spec in ("", " , ", "MT11"):
        with pytest.raises(UnknownTaskError, match="ML45-test"):
            resolve_tasks(spec)


def test_bad_input_is_refused_and_episodes_end_as_configured():
    with pytest.raises(UserFacingError, match="unknown camera 'side'"):
        MetaWorldEnv(camera="side")
    for kwargs, problem in (({"image_size": 8}, "image_size=8"), ({"max_episode_steps": 501}, "max_episode_steps=501")):
        with pytest.raises(UserFacingError, match=problem):
            MetaWorldEnv(**kwargs)
    env = MetaWorldEnv(task="reach", render=False, max_episode_steps=3, terminate_on_success=False)
    with pytest.raises(ResetNeededError, match="before reset"):
        env.step(np.zeros(4))
    with pytest.raises(UserFacingError, match=r"unknown reset option\(s\) \['state_index'\]"):
        env.reset(options={"state_index": 0})
    with pytest.raises(UserFacingError, match="seed=-1 is out of range"):
        env.reset(seed=-1)
    env.reset(seed=0)
    for bad, problem in ((np.zeros(7), r"shape \(4,\)"), ([0, 0, np.nan, 0], "NaN"), ("left", "4 numbers")):
        with pytest.raises(InvalidActionError, match=problem):
            env.step(bad)
    outcomes = [env.step(np.zeros(4))[2:4] for _ in range(3)]
    assert outcomes == [(False, False), (False, False), (False, True)]  # truncated at max_episode_steps
    with pytest.raises(ResetNeededError, match="max_episode_steps=3"):
        env.step(np.zeros(4))
    env.close()


def test_recorded_metaworld_episodes_open_and_train_a_tiny_model(tmp_path):
    from robot.interfaces import InvalidRobotActionError
    from robot.sim_metaworld import MetaWorldSimRobot, record_metaworld_episodes

    with MetaWorldSimRobot(task="reach", image_size=32, seed=0, fast_render=True) as robot:
        sent = robot.send_action(np.array([2.0, 0.0, -0.5, 3.0]))
        assert sent.tolist() == [1.0, 0.0, -0.5, 1.0]  # clipped to Meta-World's box, reported as sent
        assert robot.hold_action(robot.get_observation()).tolist() == [0.0, 0.0, 0.0, 1.0]
        with pytest.raises(InvalidRobotActionError, match="nothing was sent"):
            robot.send_action(np.zeros(7))

    summary = record_metaworld_episodes("reach-v3", 2, tmp_path / "dataset", image_size=32, fast_render=True)
    assert summary.episodes_recorded == 2 and summary.frames > 40
    reader = LeRobotDatasetReader(tmp_path / "dataset", expect_robot_type="metaworld-sim")
    episode = reader.episode(1)
    assert episode.actions.shape[1] == 4 and episode.task == INSTRUCTIONS["reach"]
    assert len(episode.frames["observation.images.corner2"]) == len(episode.actions)

    shards, statistics = episodes_to_shards(reader, tmp_path / "shards", frame_stride=4)
    from magma.training.config import train_config_from
    from magma.training.trainer import Trainer

    source = {"name": "mw", "shards": [str(p) for p in shards], "action_codec": "robot", "statistics": str(statistics)}
    config = {
        "name": "metaworld",
        "model": "magma-tiny",
        "run_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "data": {"batch_size": 2, "num_workers": 0, "sources": [source]},
        "logging": {"progress": False},
    }
    Trainer(train_config_from(config, [], "test")).train()
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_record_sim_cli_refuses_a_task_of_another_metaworld_version_with_one_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "magma.cli.app", "data", "record-sim", "--env", "metaworld", "--task", "reach-v2",
         "--out", str(tmp_path / "ds")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "'reach-v2' is version v2" in result.stderr and "use 'reach' or 'reach-v3'" in result.stderr
    assert not (tmp_path / "ds").exists()
