"""The control daemon driving the simulated robot from a policy server over loopback: the served
scripted expert solves a task, a killed server makes it hold then safe-stop and a restarted one is
reconnected and resumed on the operator's word, NaN / out-of-limits actions and a frozen camera are
caught and counted, e-stops (HTTP, file, signal) take effect within one period, SIGTERM ends the
episode cleanly, and bad configurations end in one clear message before anything moves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from local_servers import wait_for
from test_robot_policy_server import AGENT, REPO, start_server

from data_tools.lerobot_dataset import LeRobotDatasetReader
from magma.training.launch import free_port, stop_process
from robot.daemon import DaemonError, RobotDaemon
from robot.daemon_config import load_daemon_config
from robot.interfaces import RobotError
from robot.policy_protocol import PolicySpec
from robot.policy_server import PolicyServer, ServerConfig
from robot.served_policy import DelayedPolicy, ServedPolicy
from robot.sim import SimCamera

FAST = [
    "robot.args.image_size=32",
    "status.live=false",
    "status.port=0",
    "watchdog.hold_after_ms=1000",  # bounds a loaded test machine does not trip by accident
    "watchdog.safe_stop_after_ms=4000",
    "safety.stale_camera_ms=1000",
]


class FaultySimCamera(SimCamera):
    """A simulated camera whose device can stall (frames stop coming) or be unplugged (reads fail)."""

    instances: ClassVar[list[FaultySimCamera]] = []

    def __init__(self, robot, camera: str = "third_person", fps: float = 30.0) -> None:
        super().__init__(robot, camera, fps)
        self.stalled, self.unplugged = threading.Event(), threading.Event()
        FaultySimCamera.instances.append(self)

    def capture(self) -> np.ndarray:
        while self.stalled.is_set():
            time.sleep(0.01)
        if self.unplugged.is_set():
            raise RobotError("USB camera disconnected")
        return super().capture()


class FaultyPolicy:
    """Every fourth action is NaN, the next one far out of limits, the rest small moves."""

    def __init__(self) -> None:
        self.count = 0

    def reset(self, task: dict) -> None:
        self.count = 0

    def act(self, observation: dict) -> np.ndarray:
        self.count += 1
        if self.count % 4 == 0:
            return np.full(7, np.nan)
        if self.count % 4 == 1:
            return np.array([1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])
        return np.array([0.0, 0.0, 0.005, 0.0, 0.0, 0.0, -1.0])


def serve_in_process(make_session, action_dim: int = 7) -> PolicyServer:
    spec = PolicySpec(policy="test", model_id="test", action_dim=action_dim, cameras={"image": [32, 32, 3]})
    server = PolicyServer(ServedPolicy(spec, make_session), ServerConfig(port=0))
    server.start_in_thread()
    return server


def daemon_config(tmp_path: Path, port: int, *overrides: str):
    return load_daemon_config(
        "sim-tabletop", [*FAST, f"policy.url=ws://127.0.0.1:{port}", f"run_dir={tmp_path / 'run'}", *overrides]
    )


def start_daemon(config) -> tuple[RobotDaemon, threading.Thread, dict]:
    daemon = RobotDaemon(config)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = daemon.run()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return daemon, thread, outcome


def http_post(url: str) -> dict:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def recorded_columns(dataset: str, *names: str) -> dict[str, np.ndarray]:
    table = pq.read_table(next(Path(dataset).glob("data/*/*.parquet")))
    return {name: np.array(table[name].to_pylist()) for name in names}


def test_served_scripted_expert_solves_a_task_through_the_daemon_and_signals_stop_it(tmp_path):
    port = free_port()
    server = start_server(["--policy", "scripted"], port)
    env = {**os.environ, "MUJOCO_GL": "egl"}
    common = [*AGENT, "robot", "run", "--config", "sim-tabletop", *FAST, f"policy.url=ws://127.0.0.1:{port}"]
    try:
        solved = subprocess.run(
            [*common, "robot.args.task=reach", f"run_dir={tmp_path / 'reach'}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
        assert solved.returncode == 0, solved.stderr[-3000:]
        assert "ok   episode 0" in solved.stdout and "ended by robot" in solved.stdout
        summary = json.loads((tmp_path / "reach" / "summary.json").read_text())
        episode = summary["episodes"][0]
        reader = LeRobotDatasetReader(episode["dataset"], expect_robot_type="tabletop-sim")
        assert len(reader.episode(0).actions) == episode["steps"] and "cube" in reader.tasks[0]
        assert (tmp_path / "reach" / "metrics.jsonl").read_text().strip()

        # a long episode: SIGUSR1 e-stops within one period, SIGTERM ends the episode cleanly
        run_dir = tmp_path / "long"
        daemon = subprocess.Popen(
            [*common, "robot.args.max_steps=100000", f"run_dir={run_dir}"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_for(lambda: (run_dir / "status.json").exists(), "the daemon's status endpoint")
            status_url = json.loads((run_dir / "status.json").read_text())["url"] + "/status"

            def status() -> dict:
                with urllib.request.urlopen(status_url, timeout=10) as reply:
                    return json.loads(reply.read())

            wait_for(lambda: status()["tick"] > 10, "the episode to run")
            daemon.send_signal(signal.SIGUSR1)
            wait_for(lambda: status()["state"] == "estopped", "the e-stop")
            estop = status()["estops"][0]
            assert estop["source"] == "signal SIGUSR1" and estop["effective_tick"] - estop["requested_tick"] <= 1
            daemon.send_signal(signal.SIGTERM)
            out, err = daemon.communicate(timeout=600)
        finally:
            if daemon.poll() is None:
                daemon.kill()
        assert daemon.returncode == 0, err[-3000:]
        assert "ended by stop" in out and "E-STOP" in err
        episode = json.loads((run_dir / "summary.json").read_text())["episodes"][0]
        assert LeRobotDatasetReader(episode["dataset"]).num_episodes == 1
        assert not list((run_dir / "episodes").glob(".*partial"))
    finally:
        stop_process(server)


def test_killed_server_holds_then_safe_stops_and_a_restarted_one_resumes_when_told(tmp_path):
    port = free_port()
    server = start_server(["--policy", "scripted"], port)
    config = daemon_config(
        tmp_path,
        port,
        "robot.args.task=pick_place",
        "robot.args.max_steps=100000",
        "control_hz=20",
        "robot.args.control_hz=20",
    )
    daemon, thread, outcome = start_daemon(config)
    try:
        wait_for(lambda: daemon.status_server is not None and daemon.tick > 10, "the episode to run")
        wait_for(lambda: daemon.status()["state"] == "running" and daemon.status()["policy_connected"], "control")
        server.kill()
        server.wait()
        wait_for(lambda: daemon.status()["state"] in ("holding", "safe_stopped"), "the hold")
        wait_for(lambda: daemon.status()["state"] == "safe_stopped", "the safe stop")
        steps_when_stopped = daemon.robot.env.steps

        server = start_server(["--policy", "scripted"], port)
        wait_for(lambda: daemon.status()["policy_connected"], "the reconnect")
        tick = daemon.tick
        wait_for(lambda: daemon.tick > tick + 5, "a few more ticks")
        assert daemon.status()["state"] == "safe_stopped"  # reconnected, but it waits for the operator
        assert daemon.robot.env.steps > steps_when_stopped  # the rest behaviour runs at the control rate

        assert http_post(daemon.status_server.url + "/resume")["ok"]
        wait_for(lambda: daemon.status()["state"] == "running", "the resume")
        resumed_at = daemon.tick
        wait_for(lambda: daemon.tick > resumed_at + 15 or not thread.is_alive(), "policy control after the resume")
        daemon.stop()
        thread.join(timeout=600)
    finally:
        daemon.stop()
        stop_process(server)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.holds >= 1 and summary.safe_stops >= 1 and summary.counts["policy_error"] >= 1
    assert any("no action from the policy" in reason for reason in summary.safe_stop_reasons)
    assert daemon.client.reconnects >= 1
    from_policy = recorded_columns(summary.episodes[0].dataset, "action.from_policy")["action.from_policy"].ravel()
    assert (~from_policy[10:resumed_at]).sum() > 5  # held and rested while the server was away
    assert from_policy[resumed_at:].sum() >= 5  # and under policy control again after the resume


def test_nan_out_of_limits_and_frozen_camera_are_caught_and_e_stops_act_within_a_period(tmp_path):
    server = serve_in_process(FaultyPolicy)
    FaultySimCamera.instances.clear()
    one_camera = "cameras=[{name: third_person, driver: 'test_robot_daemon:FaultySimCamera', key: image}]"
    config = daemon_config(
        tmp_path,
        server.port,
        "robot.args.task=pick_place",
        "robot.args.max_steps=100000",
        one_camera,
        "robot.args.cameras=[third_person]",
        "robot.args.privileged=false",
        "watchdog.safe_stop_after_ms=60000",
    )
    daemon, thread, outcome = start_daemon(config)
    try:
        wait_for(lambda: daemon.safety is not None and daemon.safety.counts["non_finite"] >= 2, "NaN actions")
        camera = FaultySimCamera.instances[0]
        camera.stalled.set()
        wait_for(lambda: daemon.status()["counts"].get("stale_camera", 0) >= 1, "the stale camera")
        wait_for(lambda: daemon.status()["state"] == "holding", "the hold while the camera is frozen")
        steps = daemon.robot.env.steps
        wait_for(lambda: daemon.robot.env.steps > steps + 5, "ticks with a frozen camera")
        camera.stalled.clear()
        wait_for(lambda: daemon.status()["state"] == "running", "recovery from the stale camera")

        url = daemon.status_server.url
        http_post(url + "/estop")
        wait_for(lambda: daemon.status()["state"] == "estopped", "the HTTP e-stop")
        steps = daemon.robot.env.steps
        tick = daemon.tick
        wait_for(lambda: daemon.tick > tick + 5, "ticks while e-stopped")
        assert daemon.robot.env.steps == steps  # nothing reaches the robot while e-stopped
        daemon.estop_file.touch()
        http_post(url + "/resume")
        wait_for(lambda: any("resume refused" in message for message in daemon.messages), "the refused resume")
        assert daemon.status()["state"] == "estopped"
        daemon.estop_file.unlink()
        http_post(url + "/resume")
        wait_for(lambda: daemon.status()["state"] == "running", "the resume")
        daemon.estop_file.touch()
        wait_for(lambda: daemon.status()["state"] == "estopped", "the file e-stop")
        http_post(url + "/stop")
        thread.join(timeout=600)
    finally:
        daemon.stop()
        server.stop()
    assert "error" not in outcome, outcome.get("error")
    for estop in daemon.estop_log:
        assert estop["effective_tick"] - estop["requested_tick"] <= 1, daemon.estop_log
    assert [estop["source"] for estop in daemon.estop_log] == ["http", f"file {daemon.estop_file}"]
    summary = outcome["summary"]
    assert summary.counts["non_finite"] >= 2 and summary.counts["clipped"] >= 2 and summary.counts["stale_camera"] >= 1
    assert summary.dropped == summary.counts["non_finite"]
    columns = recorded_columns(
        summary.episodes[0].dataset, "action", "safety.non_finite", "safety.stale_camera", "action.from_policy"
    )
    sent = columns["action"]
    assert np.all(np.isfinite(sent)) and np.all(np.abs(sent[:, :3]) <= 0.05 + 1e-6) and np.all(np.abs(sent[:, 6]) <= 1)
    assert columns["safety.non_finite"].sum() == summary.counts["non_finite"]
    stale = columns["safety.stale_camera"].ravel()
    assert stale.sum() >= 5 and not columns["action.from_policy"].ravel()[stale].any()  # held, not moved


def test_bad_configurations_end_in_one_message_before_anything_moves(tmp_path):
    shipped = yaml.safe_load((REPO / "configs" / "robot" / "sim-tabletop.yaml").read_text())
    del shipped["safety"]["joint_limits"]["wrist_roll"]
    (tmp_path / "no-wrist-limits.yaml").write_text(yaml.safe_dump(shipped))
    missing_joint = subprocess.run(
        [
            *AGENT,
            "robot",
            "run",
            "--config",
            str(tmp_path / "no-wrist-limits.yaml"),
            "status.port=0",
            f"run_dir={tmp_path / 'a'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert missing_joint.returncode == 2 and "Traceback" not in missing_joint.stderr
    assert "missing: ['wrist_roll']" in missing_joint.stderr

    wide = serve_in_process(FaultyPolicy, action_dim=8)
    try:
        with pytest.raises(DaemonError, match="gives 8-D actions but robot 'tabletop-sim' takes 7-D"):
            RobotDaemon(daemon_config(tmp_path / "b", wide.port, "robot.args.task=reach")).run()
    finally:
        wide.stop()
    assert not (tmp_path / "b" / "run" / "episodes").exists()

    server = serve_in_process(FaultyPolicy)
    FaultySimCamera.instances.clear()
    config = daemon_config(
        tmp_path / "c",
        server.port,
        "robot.args.task=pick_place",
        "robot.args.max_steps=100000",
        "cameras.0.driver=test_robot_daemon:FaultySimCamera",
        "watchdog.rest=hold",
    )
    daemon, thread, outcome = start_daemon(config)
    try:
        wait_for(lambda: daemon.tick > 5 and len(FaultySimCamera.instances) == 1, "the episode to run")
        FaultySimCamera.instances[0].unplugged.set()
        wait_for(lambda: daemon.status()["state"] == "safe_stopped", "the safe stop")
        assert "camera 'image' stopped delivering frames (USB camera disconnected)" in daemon.status()["reason"]
        before = daemon.robot.get_observation()["observation.state"][:3].copy()
        tick = daemon.tick
        wait_for(lambda: daemon.tick > tick + 5, "ticks without the camera")
        assert np.allclose(daemon.robot.get_observation()["observation.state"][:3], before, atol=2e-3)  # holding
        daemon.stop()
        thread.join(timeout=600)
    finally:
        daemon.stop()
        server.stop()
    assert "error" not in outcome and outcome["summary"].counts["camera_lost"] == 1


def test_a_used_run_directory_is_refused_and_left_untouched(tmp_path):
    server = serve_in_process(FaultyPolicy)
    run_dir = tmp_path / "run"
    try:
        first = RobotDaemon(daemon_config(tmp_path, server.port, "robot.args.task=reach", "episode.max_steps=5")).run()
        assert first.episodes[0].steps == 5
        kept = {path.name: path.read_bytes() for path in (run_dir / "config.yaml", run_dir / "summary.json")}
        again = daemon_config(tmp_path, server.port, "robot.args.task=reach", "episode.max_steps=7")
        with pytest.raises(DaemonError, match=re.escape(f"run directory {run_dir} already holds a run")) as refused:
            RobotDaemon(again).run()
        assert "Pass a new run_dir" in str(refused.value)
        rerun = subprocess.run(
            [*AGENT, "robot", "run", "--config", "sim-tabletop", *FAST, f"run_dir={run_dir}",
             f"policy.url=ws://127.0.0.1:{server.port}"],
            cwd=REPO, capture_output=True, text=True, timeout=1200, env={**os.environ, "MUJOCO_GL": "egl"},
        )  # fmt: skip
    finally:
        server.stop()
    assert rerun.returncode == 2 and "Traceback" not in rerun.stderr and "already holds a run" in rerun.stderr
    assert {path.name: path.read_bytes() for path in (run_dir / "config.yaml", run_dir / "summary.json")} == kept
    assert len(json.loads(kept["summary.json"])["episodes"]) == 1  # the first run's summary, not an empty one


def delayed_expert(chunk_length: int, delay_s: float) -> DelayedPolicy:
    """The served scripted expert behind a slow link: each answer takes ``delay_s`` (a loaded GPU server)."""
    from robot.privileged_state import ObservedScriptedExpert

    return DelayedPolicy(ObservedScriptedExpert(chunk_length, control_hz=10), delay_s)


def run_daemon_episodes(tmp_path: Path, name: str, make_session, chunk_length: int, *overrides: str) -> dict:
    spec = PolicySpec(policy="expert", model_id="expert", chunk_length=chunk_length)
    server = PolicyServer(ServedPolicy(spec, make_session), ServerConfig(port=0))
    server.start_in_thread()
    try:
        config = daemon_config(tmp_path / name, server.port, "record=false", *overrides)
        RobotDaemon(config).run()
    finally:
        server.stop()
    return json.loads((tmp_path / name / "run" / "summary.json").read_text())


@pytest.mark.parametrize("task", ["pick_place", "stack"])
def test_the_served_expert_finishes_grasping_tasks_through_the_daemon_with_no_one_tick_lag(tmp_path, task):
    from robot.privileged_state import ObservedScriptedExpert

    summary = run_daemon_episodes(
        tmp_path, task, ObservedScriptedExpert, 1, f"robot.args.task={task}", "episode.episodes=2"
    )
    assert [episode["success"] for episode in summary["episodes"]] == [True, True], summary
    assert all(episode["steps"] < 60 for episode in summary["episodes"])  # the expert alone takes ~25
    # a machine loaded by other work (or the other test worker) misses the in-tick wait now and then (a late
    # reply's steps are skipped: 12 of 52 steps once, beside a browser-bound test); a one-tick lag would show
    # in every reply, so in at least as many skipped steps as replies, and in the median latency below
    assert summary["stale_chunks"] + summary["skipped_steps"] < summary["policy_actions"] / 2, summary
    assert 0 < summary["action_latency_p50_ms"] < 100  # answered within the tick that took the observation


def test_a_slow_chunking_policy_runs_aligned_to_its_observations_and_slower_single_actions_are_never_late(tmp_path):
    # 250 ms per answer at 10 Hz: the chunks arrive 2-3 steps late; those steps are skipped, the rest run
    summary = run_daemon_episodes(
        tmp_path,
        "chunked",
        lambda: delayed_expert(chunk_length=10, delay_s=0.25),
        10,
        "robot.args.task=pick_place",
        "watchdog.hold_after_ms=2000",
    )
    episode = summary["episodes"][0]
    assert episode["success"], summary
    assert summary["skipped_steps"] > 0 and summary["action_latency_p50_ms"] >= 250
    metrics = json.loads((tmp_path / "chunked" / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["action_latency_p50_ms"] >= 250 and "skipped_steps" in metrics  # what GET /status shows
    # a single-action policy slower than the period: it acts every few ticks, on fresh observations
    slow = run_daemon_episodes(
        tmp_path,
        "single",
        lambda: delayed_expert(chunk_length=1, delay_s=0.15),
        1,
        "robot.args.task=reach",
        "watchdog.hold_after_ms=2000",
    )
    assert slow["episodes"][0]["success"], slow
    assert slow["stale_chunks"] == 0 and slow["policy_actions"] < slow["episodes"][0]["steps"]


class StepStampedChunks:
    """Stamps in x of every action the action step it was planned for (the observation's ``action_step`` +
    k) and ignores ``committed_actions``. The first answer of an episode is a quick chunk of 20 (or
    ``first_length``); every
    later one takes ``delay_s`` and holds ``length`` actions, so it arrives after more steps of the first
    chunk ran than it holds: stale, to be dropped whole."""

    STAMP = 1e-4

    def __init__(self, length: int, delay_s: float, first_length: int = 20) -> None:
        self.length, self.delay_s, self.first_length = length, delay_s, first_length
        self.answers = 0

    def reset(self, task: dict) -> None:
        self.answers = 0

    def act(self, observation: dict) -> np.ndarray:
        self.answers += 1
        length = self.first_length if self.answers == 1 else self.length
        if self.answers > 1:
            time.sleep(self.delay_s)
        step = observation["action_step"]
        assert isinstance(observation["control_tick"], int) and isinstance(observation["capture_time_s"], float)
        chunk = np.zeros((length, 7), np.float32)
        chunk[:, 0] = self.STAMP * (step + np.arange(length))
        chunk[:, 6] = -1.0
        return chunk


def test_late_chunk_steps_are_skipped_stale_chunks_and_earlier_episode_replies_dropped_never_run(tmp_path):
    summary = run_daemon_episodes(
        tmp_path,
        "stamped",
        lambda: StepStampedChunks(length=3, delay_s=0.6),
        20,
        "robot.args.task=reach",
        "robot.args.max_steps=100000",
        "episode.episodes=2",
        "episode.max_steps=30",
        "watchdog.hold_after_ms=2000",
        "record=true",
    )
    assert summary["stale_chunks"] >= 1 and summary["skipped_steps"] >= 3, summary
    for episode in summary["episodes"]:
        columns = recorded_columns(episode["dataset"], "action.policy", "action.from_policy")
        ran = columns["action.policy"][columns["action.from_policy"].reshape(-1)]
        planned_for = np.round(ran[:, 0] / StepStampedChunks.STAMP).astype(int)
        # every policy action ran at exactly the step it was planned for: none late, none twice
        assert planned_for.tolist() == list(range(len(ran))) and len(ran) >= 10
    # episode 0 ends (4 ticks) while a 0.6 s request is in flight: its answer is of another scene, dropped
    ended = run_daemon_episodes(
        tmp_path,
        "ended",
        lambda: StepStampedChunks(length=3, delay_s=0.6, first_length=2),
        3,
        "robot.args.task=reach",
        "robot.args.max_steps=100000",
        "episode.episodes=2",
        "episode.max_steps=4",
        "watchdog.hold_after_ms=2000",
    )
    assert ended["stale_replies"] >= 1, ended


def test_the_daemon_drives_the_robot_from_a_server_of_openpis_protocol(tmp_path):
    from test_openpi_client import OpenpiStyleServer

    from robot.privileged_state import ObservedScriptedExpert

    class OpenpiExpertServer(OpenpiStyleServer):
        """openpi's server shape (no reset message, no cameras in its metadata) serving the expert."""

        def __init__(self) -> None:
            self.expert = ObservedScriptedExpert()
            super().__init__({"action_horizon": 1}, np.zeros((1, 7), np.float32))

        def infer(self, observation: dict) -> dict:
            self.received.append(observation)
            return {"actions": self.expert.act(observation)[None]}

    server = OpenpiExpertServer()
    try:
        config = daemon_config(tmp_path, server.port, "robot.args.task=pick_place", "record=false")
        summary = RobotDaemon(config).run()
    finally:
        server.stop()
    assert summary.episodes[0].success, summary.format()
    sent = server.received[-1]
    # no cameras in openpi's metadata: every frame goes, under the configured keys, with the prompt
    assert {"image", "wrist_image", "state", "privileged", "action_step"} <= set(sent)
    assert sent["image"].shape == (32, 32, 3) and "cube" in sent["prompt"]
