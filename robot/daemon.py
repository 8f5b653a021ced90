"""The robot control daemon (``agent robot run``): drives a robot at a fixed rate from a remote policy,
safely, whatever the policy does.

Each tick (deadline scheduling: sleep, then a short spin) the loop reads the robot's state and the
cameras' latest frames (their own threads), collects whatever the policy worker brought back, asks for
actions on this tick's observation when the queue runs low (ahead by the policy's measured latency),
takes the tick's action from the chunk queue, runs it through the safety filter and sends it; when
there is none it sends the robot's hold action. Observations go to the policy server from the worker
thread with their tick and capture time, and the actions that come back are aligned to that tick
(``robot.chunking``): steps whose time has passed are skipped and counted, never run late. When the
queue holds nothing for this tick, the loop waits for the answer within the tick (at most
``policy.wait_in_tick`` of a period), so a single-action policy that answers in time acts on the very
observation it saw, with no one-tick lag; a slower one is skipped, and the robot holds. The watchdog
holds, then safe-stops, when actions stop coming; an e-stop (SIGUSR1, ``POST /estop`` or the e-stop
file) latches at the next tick. SIGTERM / SIGINT / ``POST /stop`` end the episode cleanly. Every episode is recorded.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from data_tools.errors import UserFacingError
from robot.chunking import ActionQueue
from robot.daemon_config import DaemonConfig, construct_driver, load_driver_class, status_token
from robot.daemon_status import DaemonSummary, EpisodeSummary, StatusReporter, StatusServer
from robot.episode_recorder import EpisodeRecorder, TickRecord
from robot.estop import EstopLatch
from robot.interfaces import Camera, Robot, RobotError
from robot.loop_stats import LoopStats
from robot.policy_client import PolicyClient, PolicyServerError, PolicyUnavailableError
from robot.policy_protocol import PolicySpec
from robot.policy_worker import PolicyWorker
from robot.safety import MeasuredStateMonitor, SafetyFilter, check_action_layout
from robot.watchdog import ControlState, Watchdog


class DaemonError(UserFacingError, RuntimeError):
    """The daemon cannot drive this robot with this policy (e.g. their action sizes differ)."""


GIL_SWITCH_INTERVAL_S = 0.0005
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "status.json", "episodes")  # what a run leaves


def fresh_run_dir(name: str) -> Path:
    """runs/robot/NAME-TIME, with a suffix when a daemon started in the same second took that one."""
    base = Path("runs") / "robot" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = base, 1
    while candidate.exists():
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def claim_run_dir(run_dir: Path, config_yaml: str) -> None:
    """Make ``run_dir`` this run's, writing its config.yaml; a directory that holds another run is refused,
    untouched (two daemons racing for one directory: exactly one wins)."""
    used = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not used:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DaemonError(f"cannot create the run directory {run_dir} ({error}); pass another run_dir") from None
        temporary = run_dir / f".config.yaml.{os.getpid()}.{threading.get_ident()}.tmp"
        temporary.write_text(config_yaml)
        try:
            os.link(temporary, run_dir / "config.yaml")  # atomic, and fails if another run wrote one first
        except FileExistsError:
            used = ["config.yaml"]
        finally:
            temporary.unlink()
    if used:
        raise DaemonError(
            f"run directory {run_dir} already holds a run ({', '.join(used)}); nothing was changed there. "
            "Pass a new run_dir=..., or leave run_dir empty for a fresh timestamped one"
        )


def build_camera(config: Any, robot: Robot) -> Camera:
    factory = load_driver_class(config.driver, "camera driver", Camera)
    args = dict(config.args)
    if factory.rendered_by_robot:  # the simulator's cameras show what their robot renders
        args["robot"] = robot
    return construct_driver(factory, args, config.driver, "camera driver")


class RobotDaemon:
    """Runs ``config.episode.episodes`` episodes; ``estop()``, ``resume()``, ``stop()`` are thread-safe.

    The loop is here; its parts are objects of their own: the ``Watchdog`` (what the robot may do now),
    the ``SafetyFilter`` and ``MeasuredStateMonitor`` (what may be sent), the ``ActionQueue`` (which action
    runs at which step), the ``PolicyWorker`` (requests off the control thread), the ``EstopLatch`` (the
    operator's e-stop, from request to resume) and ``LoopStats`` (the timings and counters it reports)."""

    def __init__(self, config: DaemonConfig, client: PolicyClient | None = None) -> None:
        self.config = config
        self.period_s = 1.0 / config.control_hz
        self.run_dir = Path(config.run_dir) if config.run_dir else fresh_run_dir(config.name)
        self.estop_latch = EstopLatch(Path(config.estop_file) if config.estop_file else self.run_dir / "ESTOP")
        self.client = client or PolicyClient(
            config.policy.url,
            token=os.environ.get(config.policy.token_env) or None,
            request_timeout_s=config.policy.request_timeout_s,
            connect_timeout_s=min(2.0, config.policy.request_timeout_s),
            retry_for_s=0.0,  # the loop never waits: the worker reports and the watchdog acts
            backoff_s=(0.05, 1.0),
        )
        self.robot_class = load_driver_class(config.robot.driver, "robot driver", Robot)
        self.robot: Robot | None = None
        self.cameras: dict[str, Camera] = {}
        self.safety: SafetyFilter | None = None
        self.monitor = MeasuredStateMonitor(config.safety, self.period_s)
        self.watchdog = Watchdog(config.watchdog.hold_after_ms / 1e3, config.watchdog.safe_stop_after_ms / 1e3)
        self.queue = ActionQueue(config.policy.merge, config.policy.ensemble_weight)
        self.stats = LoopStats(self.period_s)  # timings and action counters: status, metrics, summary
        self.worker = PolicyWorker(self.client)
        self.status_server: StatusServer | None = None
        self.summary = DaemonSummary(run_dir=str(self.run_dir))
        self.tick = 0  # ticks since start, over all episodes
        self.action_step = 0  # policy actions run in this episode: the clock chunks are aligned to
        self.episode = -1
        self.events: Counter[str] = Counter()  # incidents (stale camera, lost camera, policy errors...)
        self.messages: list[str] = []
        self._stop_requested = threading.Event()
        self._camera_problem: dict[str, str] = {}
        self._last_error = ""
        self._told_slow_policy = False

    @property
    def estop_file(self) -> Path:
        """The file whose existence is an e-stop (``estop_file``, or ESTOP in the run directory)."""
        return self.estop_latch.estop_file

    @property
    def estop_log(self) -> list[dict[str, Any]]:
        """Every e-stop latched so far: its source, the tick it was asked for and the tick it took effect."""
        return self.estop_latch.log

    # ---- operator controls (any thread) -------------------------------------------------------
    def estop(self, source: str = "api") -> str:
        self.estop_latch.request(source, self.tick)
        return "e-stop requested"

    def resume(self) -> str:
        self.estop_latch.request_resume()
        return "resume requested"

    def stop(self) -> str:
        self._stop_requested.set()
        return "stop requested: the episode ends at the next tick"

    def say(self, message: str) -> None:
        """One operator-facing message (stderr, the status endpoint)."""
        self.messages.append(message)
        print(f"[robot] {message}", file=sys.stderr, flush=True)

    def counts(self) -> dict[str, int]:
        """Every safety event and incident so far (see robot.safety.SAFETY_EVENTS)."""
        counts = dict(self.safety.counts) if self.safety else {}
        counts.update(self.monitor.counts)
        counts.update(self.events)
        return counts

    def status(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "state": str(self.watchdog.state),
            "reason": self.watchdog.reason,
            "episode": self.episode,
            "tick": self.tick,
            **self.stats.snapshot(),
            "queue_depth": self.queue.depth(self.action_step),
            "counts": counts,
            "dropped": self.stats.dropped,
            "policy_actions": self.stats.policy_actions,
            "holds": self.watchdog.holds,
            "safe_stops": self.watchdog.safe_stops,
            "policy_connected": self.client.connected,
            "policy_reconnects": self.client.reconnects,
            "last_policy_error": self._last_error,
            "estops": self.estop_log,
            "messages": self.messages[-5:],
        }

    # ---- setup and teardown -------------------------------------------------------------------
    def run(self) -> DaemonSummary:
        robot = construct_driver(
            self.robot_class, dict(self.config.robot.args), self.config.robot.driver, "robot driver"
        )
        action_dim = robot.action_features["action"].shape[0]
        layout = check_action_layout(robot.action_layout, action_dim, robot.name)  # before anything moves
        self.safety = SafetyFilter(self.config.safety, tuple(robot.joint_names), layout)
        self.cameras = {camera.key: build_camera(camera, robot) for camera in self.config.cameras}
        self.robot = robot
        self.status_server = self._bind_status_server()  # a port in use is refused before anything is written
        try:
            claim_run_dir(self.run_dir, OmegaConf.to_yaml(OmegaConf.structured(self.config)))
        except BaseException:
            self.status_server.stop()
            raise
        previous_handlers = self._install_signal_handlers()
        switch_interval = sys.getswitchinterval()
        # the loop's threads (policy worker, cameras, recorder, status) hold the GIL at most this long before
        # the control thread gets it back at its deadline (Python's default, 5 ms, is a quarter of a 50 Hz tick)
        sys.setswitchinterval(min(switch_interval, GIL_SWITCH_INTERVAL_S))
        reporter = StatusReporter(
            self.run_dir / "metrics.jsonl", self.config.status.metrics_every_s, self.config.status.live
        )
        try:
            robot.connect()
            for camera in self.cameras.values():
                camera.connect()
            self._check_policy(action_dim)
            self.status_server.start()
            status_file = {"url": self.status_server.url, "pid": os.getpid()}
            (self.run_dir / "status.json").write_text(json.dumps(status_file))
            self.worker.start()
            for index in range(self.config.episode.episodes):
                if self._stop_requested.is_set():
                    break
                self.summary.episodes.append(self._run_episode(index, reporter))
        finally:
            reporter.close()
            self.worker.stop()
            for camera in self.cameras.values():
                camera.disconnect()
            if robot.is_connected:
                robot.stop()
                robot.disconnect()
            self.status_server.stop()
            self.client.close()
            self._restore_signal_handlers(previous_handlers)
            sys.setswitchinterval(switch_interval)
            if self.episode >= 0:  # a run that never began an episode leaves no (empty) summary
                self._write_summary()
        return self.summary

    def _check_policy(self, action_dim: int) -> None:
        """Connect once before moving; a policy whose action size is not the robot's is refused here."""
        try:
            spec = self.client.connect()
        except PolicyUnavailableError as error:
            self.say(f"{error}; starting anyway: the robot holds until the policy answers")
            return
        except PolicyServerError as error:
            raise DaemonError(str(error)) from None
        self._check_spec(spec, action_dim)

    def _check_spec(self, spec: PolicySpec, action_dim: int) -> None:
        if spec.action_dim != action_dim:
            raise DaemonError(
                f"policy '{spec.policy}' ({spec.model_id}) gives {spec.action_dim}-D actions but robot "
                f"'{self.robot.name if self.robot else '?'}' takes {action_dim}-D ones; serve a policy trained for "
                "this robot. Nothing was sent to the robot"
            )

    def _bind_status_server(self) -> StatusServer:
        status = self.config.status
        controls = {"estop": lambda: self.estop("http"), "resume": self.resume, "stop": self.stop}
        return StatusServer(
            status.host,
            status.port,
            self.status,
            controls,
            token=status_token(status),
            allowed_origins=status.allowed_origins,
            token_hint=f"set the environment variable {status.token_env} (status.token_env)",
        )

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        handlers = {
            signal.SIGTERM: lambda *_: self.stop(),
            signal.SIGINT: lambda *_: self.stop(),
            signal.SIGUSR1: lambda *_: self.estop("signal SIGUSR1"),
        }
        return {number: signal.signal(number, handler) for number, handler in handlers.items()}

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def _write_summary(self) -> None:
        self.summary = summary = replace(
            self.summary,
            counts=self.counts(),
            safe_stop_reasons=list(self.watchdog.safe_stop_reasons),
            holds=self.watchdog.holds,
            safe_stops=self.watchdog.safe_stops,
            **self.stats.totals(),
        )
        payload = {**asdict(summary), "estops": self.estop_log}
        temporary = self.run_dir / ".summary.json.tmp"
        temporary.write_text(json.dumps(payload, indent=2))
        temporary.replace(self.run_dir / "summary.json")

    # ---- one episode --------------------------------------------------------------------------
    def _run_episode(self, index: int, reporter: StatusReporter) -> EpisodeSummary:
        robot = self.robot
        assert robot is not None
        self.episode = index
        task = robot.start_episode(index)
        task["instruction"] = task.get("instruction") or self.config.episode.instruction
        recorder = self._recorder(robot) if self.config.record else None
        if recorder is not None:
            recorder.start(index)
        self.queue.clear()
        self.action_step = 0
        self.monitor.reset()
        self.stats.stale_replies += sum(result.kind == "infer" for result in self.worker.drain())  # last episode's
        while not self.worker.submit("reset", task, 0, index):
            time.sleep(0.005)  # a request of the previous episode is still in flight
        self.watchdog.start(time.monotonic())
        steps, ended_by = 0, "stop"
        next_tick = last_start = time.monotonic()
        try:
            while True:
                now = self._wait_until(next_tick)
                if steps:
                    self.stats.add_period(now - last_start)
                timings = {"period_s": now - last_start if steps else self.period_s, "lateness_s": now - next_tick}
                last_start = now
                if self._stop_requested.is_set():
                    break
                if self._tick(now, task, timings, recorder):
                    steps += 1
                info = robot.last_info
                self.tick += 1
                reporter.maybe_report(self.status, now)
                if info.get("terminated") or info.get("truncated"):
                    ended_by = "robot"
                    break
                if self.config.episode.max_steps and steps >= self.config.episode.max_steps:
                    ended_by = "max_steps"
                    break
                next_tick += self.period_s
                behind = time.monotonic() - next_tick
                if behind > self.period_s:  # fell more than a period behind: skip, never catch up in a burst
                    skipped = int(behind // self.period_s)
                    self.stats.slips += skipped
                    next_tick += skipped * self.period_s
        finally:
            dataset = recorder.finish(keep=True) if recorder is not None else None
        success = bool(robot.last_info.get("success", False))
        return EpisodeSummary(index, steps, success, ended_by, str(dataset) if dataset else None)

    def _recorder(self, robot: Robot) -> EpisodeRecorder:
        features = robot.observation_features
        names = robot.action_features["action"].names or tuple(
            f"a{i}" for i in range(robot.action_features["action"].shape[0])
        )
        cameras = [f"observation.images.{camera.name}" for camera in self.config.cameras]
        first = features.get(cameras[0]) if cameras else None
        size = tuple(first.shape[:2]) if first is not None else (64, 64)
        return EpisodeRecorder(
            self.run_dir / "episodes",
            robot.name,
            round(self.config.control_hz),
            features["observation.state"].shape[0],
            tuple(names),
            cameras,
            size,
            state_names=features["observation.state"].names,
        )

    def _wait_until(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining > self.config.spin_s:
            time.sleep(remaining - self.config.spin_s)
        while (now := time.monotonic()) < deadline:
            pass
        return now

    # ---- one tick -----------------------------------------------------------------------------
    def _tick(self, now: float, task: dict[str, Any], timings: dict[str, float], recorder: Any) -> bool:
        """One control period; whether an action was sent."""
        robot, safety, watchdog = self.robot, self.safety, self.watchdog
        assert robot is not None and safety is not None
        events: list[str] = []
        self._operator_requests(now, robot)
        observation = robot.get_observation()
        end_effector, joints = robot.measured_pose(observation)
        frames, cameras_ok, age = self._read_cameras(now, events)
        timings["observation_age_s"] = age
        outside = safety.joints_outside(joints)
        if outside:
            events.append("joint_limit")
            safety.count("joint_limit")
            self._safe_stop(f"joint(s) {outside} outside their limits; move the arm back by hand, then resume")
        measured = self.monitor.check(end_effector, now)
        events += measured.events
        if measured.stop_reason is not None:
            self._safe_stop(measured.stop_reason)
        action_dim = robot.action_features["action"].shape[0]
        self._collect_policy_results(events, action_dim)
        state = watchdog.update(now)

        def request() -> None:
            self._request_actions(state, cameras_ok, observation, frames, now)

        request()
        raw, queued = None, None
        if state == ControlState.ESTOPPED:
            command = None
        elif state == ControlState.SAFE_STOPPED:
            command = self._rest_action(robot, observation, end_effector)
        else:
            if cameras_ok and not measured.restrain:
                self._wait_for_actions(now, events, action_dim, request)
                self._drop_old_actions(now, events)
                queued = self.queue.pop(self.action_step)
                if queued is not None:
                    self.action_step += 1
            raw = queued.action if queued is not None else None
            command = robot.hold_action(observation)
            if measured.restrain:  # measured out of the box or too fast: hold, stepping back into the box
                raw = None
                if end_effector is not None:
                    command = safety.clip(command, end_effector)
            if raw is not None:
                watchdog.fresh_action(now)
                filtered = safety.filter(raw, end_effector if end_effector is not None else np.zeros(3))
                events += filtered.events
                if filtered.action is None:
                    self.stats.dropped += 1
                    if (reason := safety.too_many_invalid()) is not None:
                        self._safe_stop(reason)
                else:
                    command = filtered.action
                    self.stats.policy_actions += 1
        sent = None
        if command is not None:
            if queued is not None and raw is not None:
                age = time.monotonic() - queued.capture_time
                timings["action_age_s"] = age
                if queued.first_of_chunk:
                    self.stats.add_action_latency(age)
            try:
                sent = robot.send_action(command)
            except RobotError as error:
                self._safe_stop(f"the robot refused an action: {error}")
        if recorder is not None and sent is not None:
            images = {f"observation.images.{c.name}": frames.get(c.key) for c in self.config.cameras}
            if all(image is not None for image in images.values()):
                policy_action = None if raw is None else np.asarray(raw, dtype=np.float64)
                timings["policy_latency_s"] = self.stats.last_round_trip_s()
                recorder.add(
                    TickRecord(
                        observation["observation.state"],
                        np.asarray(sent),
                        policy_action,
                        images,
                        task.get("instruction", ""),
                        dict(timings),
                        events,
                    )
                )
        return sent is not None

    def _operator_requests(self, now: float, robot: Robot) -> None:
        """Latch a pending e-stop (the robot stops now), then act on the operator's resume, if any."""
        source = self.estop_latch.latch_pending(self.tick)
        if source is not None:
            self.watchdog.estop(f"e-stop ({source}); clear it and POST /resume")
            robot.stop()
            self.say(f"E-STOP from {source}: nothing is sent to the robot until the operator resumes")
        if not self.estop_latch.take_resume_request():
            return
        if (refusal := self.estop_latch.resume_refusal()) is not None:
            self.say(refusal)
            return
        if self.watchdog.resume(now):  # leaves an e-stop or a safe stop alike
            self.queue.clear()
            self.monitor.reset()
            if self.safety is not None:
                self.safety.forget_invalid()
            self.estop_latch.clear()
            self.say("resumed by the operator")

    def _safe_stop(self, reason: str) -> None:
        """Safe-stop for a safety fault; the operator hears why (once per stop)."""
        if self.watchdog.latched is None:
            self.say(f"SAFE STOP: {reason}")
        self.watchdog.safe_stop(reason)

    def _read_cameras(self, now: float, events: list[str]) -> tuple[dict[str, np.ndarray], bool, float]:
        frames, ok, oldest = {}, True, 0.0
        stale_s = self.config.safety.stale_camera_ms / 1e3
        for key, camera in self.cameras.items():
            frame, captured = camera.latest()
            age = now - captured if frame is not None else float("inf")
            oldest = max(oldest, age if np.isfinite(age) else 0.0)
            problem = None
            if not camera.is_connected:
                problem = "camera_lost"
                cause = camera.error or "disconnected"
                reason = f"camera '{key}' stopped delivering frames ({cause}); check it, then resume"
                self._safe_stop(reason)
            elif age > stale_s:
                problem = "stale_camera"
            if problem is not None:
                ok = False
                events.append(problem)
                if self._camera_problem.get(key) != problem:  # count incidents, not ticks
                    self.events[problem] += 1
                self._camera_problem[key] = problem
            else:
                self._camera_problem.pop(key, None)
            if frame is not None:
                frames[key] = frame
        return frames, ok, oldest

    def _drop_old_actions(self, now: float, events: list[str]) -> None:
        """Queued actions computed from an observation older than ``policy.max_action_age_ms`` (the robot held
        a while: a stale camera, a restraint) are dropped: the scene has moved on since."""
        dropped = self.queue.drop_older_than(now - self.config.policy.max_action_age_ms / 1e3, self.action_step)
        if dropped:
            self.stats.skipped_steps += dropped
            self.stats.stale_chunks += 1
            events.append("stale_chunk")

    def _wait_for_actions(self, now: float, events: list[str], action_dim: int, request: Any) -> None:
        """Nothing queued for this tick and a request in flight: wait for it within the tick's budget. When
        the request in flight was the episode's reset, ask for actions on this tick's observation and wait
        for those too (so an episode's first tick acts, as it does without a daemon)."""
        deadline = now + self.config.policy.wait_in_tick * self.period_s
        for _ in range(2):
            if self.queue.depth(self.action_step) > 0 or not self.worker.busy:
                return
            if not self.worker.wait(deadline):
                return
            self._collect_policy_results(events, action_dim)
            if self.queue.depth(self.action_step) == 0:  # that was the reset (or a failure): ask now
                request()

    def _collect_policy_results(self, events: list[str], action_dim: int) -> None:
        for result in self.worker.drain():
            if result.episode != self.episode:  # asked in an earlier episode: its observation is of another scene
                self.stats.stale_replies += 1
                continue
            if result.error is not None:
                self._last_error = str(result.error)
                if "policy_error" not in events:
                    events.append("policy_error")
                self.events["policy_error"] += 1
                if isinstance(result.error, PolicyServerError) and result.error.code in ("bad_shape", "unauthorized"):
                    self._safe_stop(f"the policy server refused the request: {result.error}")
                continue
            if result.kind == "connect" and self.client.spec is not None:
                try:
                    self._check_spec(self.client.spec, action_dim)
                except DaemonError as error:
                    self._safe_stop(str(error))
                continue
            if result.actions is None:
                continue
            if result.actions.shape[-1] != action_dim:
                events.append("bad_dimension")
                self.safety.count("bad_dimension")  # type: ignore[union-attr]
                self._safe_stop(f"the policy sent {result.actions.shape[-1]}-D actions; the robot takes {action_dim}-D")
                continue
            if result.timing:
                self.stats.add_round_trip(result.timing.get("round_trip_ms", 0.0))
            placement = self.queue.add(result.actions, result.step, self.action_step, result.capture_time)
            self.stats.skipped_steps += placement.skipped
            if placement.stale:
                self.stats.stale_chunks += 1
                events.append("stale_chunk")
                self._tell_slow_policy(len(result.actions))

    def _tell_slow_policy(self, chunk_length: int) -> None:
        if self._told_slow_policy or self.stats.stale_chunks < 3:
            return
        self._told_slow_policy = True
        self.say(
            f"the policy answers in {self.stats.expected_latency_s() * 1e3:.0f} ms, so its {chunk_length}-step "
            f"chunks end before they arrive at {self.config.control_hz:g} Hz; nothing late is run and the robot "
            "holds. Serve a policy with longer chunks, or lower control_hz"
        )

    def _request_actions(
        self,
        state: ControlState,
        cameras_ok: bool,
        observation: dict[str, Any],
        frames: dict[str, np.ndarray],
        now: float,
    ) -> None:
        """Ask for actions on this tick's observation when the queue will run dry before an answer can
        come back: it covers ``request_threshold`` ticks plus the policy's measured latency, or fewer."""
        if self.worker.busy:
            return
        if state in (ControlState.RUNNING, ControlState.HOLDING):
            latency_steps = self._latency_steps()
            lead = self.config.policy.request_threshold + latency_steps
            if cameras_ok and self.queue.depth(self.action_step) <= lead:
                message = self._policy_observation(observation, frames, now, latency_steps)
                self.worker.submit("infer", message, self.action_step, self.episode, now)
        elif state == ControlState.SAFE_STOPPED and not self.client.connected:
            self.worker.submit("connect", None, self.action_step, self.episode)  # reconnect: a resume goes on at once

    def _latency_steps(self) -> int:
        """How many steps run before an answer asked for now can be used: none when the policy answers
        within the tick's wait, else its measured latency in periods."""
        latency = self.stats.expected_latency_s()
        if latency <= self.config.policy.wait_in_tick * self.period_s:
            return 0
        return math.ceil(latency / self.period_s)

    def _policy_observation(
        self, observation: dict[str, Any], frames: dict[str, np.ndarray], captured: float, latency_steps: int
    ) -> dict[str, Any]:
        """What the policy sees: the cameras it reads, the state, the forwarded entries, and when: the
        episode's action step its chunk is aligned to (``action_step``), the daemon's tick and capture
        time, and the actions already queued to run while the answer is on its way (``committed_actions``:
        a chunking policy plans on from them, as real-time chunking does)."""
        spec = self.client.spec
        # an openpi server's metadata names no cameras: it gets every frame, under the configured keys
        wanted = spec.cameras.keys() if spec is not None and spec.cameras else frames.keys()
        message: dict[str, Any] = {key: frames[key] for key in wanted if key in frames}
        message[self.config.policy.state_key] = np.asarray(observation["observation.state"], dtype=np.float32)
        message["action_step"] = self.action_step
        message["control_tick"] = self.tick
        message["capture_time_s"] = captured
        committed = self.queue.planned(self.action_step, max(latency_steps, 1))
        if len(committed):
            message["committed_actions"] = committed.astype(np.float32)
        for key in self.config.policy.forward:
            if key in observation:
                message[key] = observation[key]
        return message

    def _rest_action(self, robot: Robot, observation: dict[str, Any], end_effector: np.ndarray | None) -> np.ndarray:
        """The safe-stop behaviour: hold, or move to the rest position within the per-step limit."""
        hold = robot.hold_action(observation)
        if self.config.watchdog.rest != "pose" or end_effector is None or self.safety is None:
            return hold
        return self.safety.step_towards(hold, np.asarray(self.config.watchdog.rest_position), end_effector)
