"""Chunked policies end to end: a tiny Magma model with the l1 head and the arm's state, trained here on
the scripted expert's action chunks of the MuJoCo reach task, served by ``agent serve``'s loader (its
metadata names the head and the chunk length; another ``--chunk-length`` is refused), driven through the
control daemon on the simulated arm until the cube is reached, and run by ``agent run mujoco
--execute-steps 2`` (K of each chunk of H open loop, then a new plan; K > H refused).

The model learns one scene, evaluation state 0 of reach, from expert episodes started at perturbed arm
poses: its state input (the hand's pose, the joints) is what it steers by. That scene is not solved by the
expert's mean action, by moving straight down, or by holding (each fails it), so success means the chunks
it predicts are the ones the state calls for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_in_process import agent_in_process

from envs.mujoco.env import STATE_DIM, TabletopEnv
from envs.mujoco.experts import ScriptedExpert
from magma.actions import ActionStatistics, RobotActionCodec
from magma.config import load_config
from magma.evaluation.sim_suite import ExecuteStepsError, run_sim_episode
from magma.model import MagmaForCausalLM
from magma.policies.robot import DEFAULT_PROMPT
from magma.processor import ActionLayout, MagmaProcessor, prompt_content
from robot.daemon import RobotDaemon
from robot.daemon_config import load_daemon_config
from robot.policy_client import PolicyClient
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import PolicyLoadError, load_served_policy

CHUNK, ACTION_DIM, IMAGE_SIZE = 4, 7, 64
TASK, SCENE = "reach", 0  # the evaluation state the model learns and is judged on
EPISODES, TRAIN_STEPS, BATCH, LEARNING_RATE = 16, 120, 8, 2e-3
STATISTICS_KEY = "tabletop_reach"


@dataclass
class ChunkSample:
    image: np.ndarray
    state: np.ndarray
    chunk: np.ndarray  # (CHUNK, ACTION_DIM) of the expert's next actions, zeros past the episode's end
    mask: np.ndarray  # (CHUNK,) False past the episode's end
    instruction: str


def expert_chunks(episodes: int, rng: np.random.Generator) -> list[ChunkSample]:
    """The scripted expert's episodes in the scene, each after 0-3 random moves of the hand (so the model sees
    the arm away from the expert's own path), as (observation, next CHUNK actions) samples."""
    env = TabletopEnv(task=TASK, image_size=IMAGE_SIZE, cameras=("third_person",))
    expert = ScriptedExpert(env)
    samples = []
    try:
        for episode in range(episodes):
            observation, _ = env.reset(options={"state_index": SCENE})
            expert.reset()
            for _ in range(episode % 4):
                move = np.concatenate([rng.uniform(-0.04, 0.04, 3), [0.0, 0.0, 0.0, -1.0]])
                observation, *_ = env.step(move)
            seen, actions, info = [], [], {}
            while True:
                action = expert.act(observation)
                seen.append(observation)
                actions.append(action)
                observation, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
            assert info["success"], "the scripted expert failed the scene"
            for step, before in enumerate(seen):
                ahead = np.asarray(actions[step : step + CHUNK])
                chunk, mask = np.zeros((CHUNK, ACTION_DIM), np.float32), np.zeros(CHUNK, bool)
                chunk[: len(ahead)], mask[: len(ahead)] = ahead, True
                samples.append(ChunkSample(before["image"], before["state"].copy(), chunk, mask, before["instruction"]))
    finally:
        env.close()
    return samples


def statistics(values: np.ndarray, mask: list[bool]) -> ActionStatistics:
    return ActionStatistics(q01=np.quantile(values, 0.01, axis=0), q99=np.quantile(values, 0.99, axis=0), mask=mask)


def train_reach_checkpoint(directory: Path, seed: int = 0) -> list[float]:
    """magma-tiny (2 layers, 64-pixel images) with the l1 head over chunks of 4 and the 13-D state, trained
    on the expert's chunks (vision tower frozen: the state carries what the scene needs), saved in
    ``directory``; returns the head's loss at each step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    samples = expert_chunks(EPISODES, rng)
    action_stats = statistics(np.concatenate([s.chunk[s.mask] for s in samples]), [True] * 6 + [False])
    state_stats = statistics(np.stack([s.state for s in samples]), [True] * STATE_DIM)
    config = load_config(
        "magma-tiny",
        [
            "action.head=l1",
            f"action.chunk_length={CHUNK}",
            f"action.action_dim={ACTION_DIM}",
            f"action.state_dim={STATE_DIM}",
            f"image.base_size={IMAGE_SIZE}",
            "image.num_crops=1",
            "text.num_hidden_layers=2",
        ],
    )
    model, processor = MagmaForCausalLM(config), MagmaProcessor.from_config(config)
    actions = RobotActionCodec(action_stats, config.tokens.base_vocab_size)
    states = RobotActionCodec(state_stats, config.tokens.base_vocab_size)
    layout = ActionLayout.of(config.action)
    model.vision_tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    model.train()
    losses = []
    for _ in range(TRAIN_STEPS):
        batch = [samples[i] for i in rng.choice(len(samples), BATCH, replace=False)]
        inputs = processor(
            [prompt_content(DEFAULT_PROMPT, instruction=s.instruction) for s in batch],
            [[s.image] for s in batch],
            action_layout=layout,
            states=[states.normalize(s.state).tolist() for s in batch],
        )
        targets = torch.tensor(np.stack([np.where(s.mask[:, None], actions.normalize(s.chunk), 0.0) for s in batch]))
        mask = torch.tensor(np.stack([s.mask for s in batch]))
        output = model(**inputs.as_kwargs(), action_targets=targets.float(), action_mask=mask)
        optimizer.zero_grad()
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(output.action_loss.item())
    model.eval().save_pretrained(
        directory,
        tokenizer=processor.tokenizer,
        action_statistics={STATISTICS_KEY: action_stats},
        state_statistics={STATISTICS_KEY: state_stats},
    )
    return losses


@pytest.fixture(scope="module")
def reach_checkpoint(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("reach-l1") / "checkpoint"
    losses = train_reach_checkpoint(directory)
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses  # it learned something; success is judged below
    return directory


def test_a_served_chunk_policy_solves_reach_through_the_daemon(reach_checkpoint, tmp_path):
    spec = PolicySpec(policy="magma", model_id="", cameras={"image": [IMAGE_SIZE, IMAGE_SIZE, 3]})
    served = load_served_policy("magma", str(reach_checkpoint), spec)
    metadata = served.spec.to_metadata()
    assert metadata["action_head"] == "l1" and metadata["chunk_length"] == CHUNK
    assert metadata["action_dim"] == ACTION_DIM and metadata["state_dim"] == STATE_DIM
    server = PolicyServer(served, ServerConfig(port=0))
    server.start_in_thread()
    try:
        # what the wire carries: a whole chunk per observation, read by the client the daemon uses
        env = TabletopEnv(task=TASK, image_size=IMAGE_SIZE, cameras=("third_person",))
        observation, _ = env.reset(options={"state_index": SCENE})
        env.close()
        with PolicyClient(f"ws://127.0.0.1:{server.port}", retry_for_s=0) as client:
            assert client.connect().chunk_length == CHUNK
            client.reset({"instruction": observation["instruction"]})
            chunk = client.act_chunk({"image": observation["image"], "state": observation["state"]}).actions
        assert chunk.shape == (CHUNK, ACTION_DIM) and np.all(np.isfinite(chunk))

        config = load_daemon_config(
            "sim-tabletop",
            [
                f"policy.url=ws://127.0.0.1:{server.port}",
                f"run_dir={tmp_path / 'run'}",
                f"robot.args.task={TASK}",
                f"robot.args.state_index={SCENE}",
                f"robot.args.image_size={IMAGE_SIZE}",
                "robot.args.privileged=false",
                "policy.forward=[instruction]",
                # the daemon's clock at 2 Hz, the simulated arm still steps 0.1 s per action: a loaded machine's
                # slow answers do not change what the policy faces
                "control_hz=2",
                "status.live=false",
                "status.port=0",
                "record=false",
                "watchdog.hold_after_ms=5000",
                "watchdog.safe_stop_after_ms=20000",
                "safety.stale_camera_ms=5000",
            ],
        )
        daemon = RobotDaemon(config)
        summary = daemon.run()
    finally:
        server.stop()
    episode = summary.episodes[0]
    assert episode.success and episode.ended_by == "robot", summary.format()
    assert daemon.client.spec is not None and daemon.client.spec.chunk_length == CHUNK
    assert summary.safe_stops == 0, summary.format()


def test_agent_run_executes_k_steps_of_each_chunk_then_plans_again(reach_checkpoint, tmp_path):
    out = tmp_path / "run"
    common = ["run", "mujoco", "--tasks", TASK, "--episodes", "1", "--policy", "magma"]
    common += ["--checkpoint", str(reach_checkpoint), "--image-size", str(IMAGE_SIZE), "--no-videos", "--no-progress"]
    done = agent_in_process(*common, "--execute-steps", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert result["status"] == "done" and result["success"] and result["steps"] >= 2, result
    assert json.loads((out / "run.json").read_text())["execute_steps"] == 2
    # more steps than a chunk holds: one clear message before anything runs
    refused = agent_in_process(*common, "--execute-steps", str(CHUNK + 1), "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"--execute-steps {CHUNK + 1}" in refused.stderr and f"chunks of {CHUNK} actions" in refused.stderr
    assert not (tmp_path / "refused").exists()


def test_serving_a_checkpoint_with_another_chunk_length_is_refused(reach_checkpoint):
    spec = PolicySpec(policy="magma", model_id="")
    with pytest.raises(PolicyLoadError, match=rf"--chunk-length 2: .*action.chunk_length={CHUNK}"):
        load_served_policy("magma", str(reach_checkpoint), spec, chunk_length=2)
    with pytest.raises(PolicyLoadError, match=rf"--state-dim 7: .*action.state_dim={STATE_DIM}"):
        load_served_policy("magma", str(reach_checkpoint), spec, state_dim=7)
    assert load_served_policy("magma", str(reach_checkpoint), spec, chunk_length=CHUNK).spec.chunk_length == CHUNK


class HoldChunks:
    """Answers chunks of ``length`` hold actions (or one hold action with ``length`` 0) and counts its calls."""

    def __init__(self, length: int) -> None:
        self.length, self.calls = length, 0

    def reset(self, task: dict) -> None:
        self.calls = 0

    def act(self, observation: dict) -> np.ndarray:
        self.calls += 1
        hold = np.array([0.0] * 6 + [-1.0], np.float32)
        return hold if self.length == 0 else np.tile(hold, (self.length, 1))


@pytest.mark.parametrize(("length", "execute_steps", "calls"), [(4, None, 3), (4, 2, 5), (4, 1, 10), (0, None, 10)])
def test_an_episode_runs_k_steps_of_each_chunk(length, execute_steps, calls):
    env = TabletopEnv(task=TASK, max_steps=10, render=False)
    try:
        policy = HoldChunks(length)
        outcome = run_sim_episode(env, policy, TASK, 0, execute_steps=execute_steps)
        assert outcome.steps == 10 and outcome.policy_calls == policy.calls == calls
        with pytest.raises(Exception, match="--execute-steps") as refused:  # more than the policy plans ahead
            run_sim_episode(env, HoldChunks(length), TASK, 0, execute_steps=max(length, 1) + 1)
        assert isinstance(refused.value.error, ExecuteStepsError)
    finally:
        env.close()
