"""The daemon's pure parts: the msgpack array codec, the action queue's temporal ensembling, the
watchdog's hold / safe-stop / resume, the safety filter's clipping and refusals, the e-stop latch, the
loop's statistics, and what the Robot and Camera interfaces declare for the daemon."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import msgpack
import numpy as np
import pytest

from robot.chunking import ActionQueue
from robot.daemon_config import daemon_config_from
from robot.daemon_status import DaemonSummary
from robot.estop import EstopLatch
from robot.interfaces import Camera, Feature, Robot
from robot.loop_stats import LoopStats
from robot.safety import MeasuredCheck, MeasuredStateMonitor, SafetyConfigError, SafetyFilter, SafetyLimits
from robot.sim import SimCamera, SimRobot
from robot.watchdog import ControlState, Watchdog
from robot.wire import WireError, pack, unpack


def test_wire_round_trips_arrays_and_refuses_inconsistent_ones():
    message = {
        "type": "infer",
        "observation": {
            "image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
            "state": np.array([0.5, -1.0], dtype=np.float32),
            "instruction": "pick",
            "nested": [np.int64(3)],
        },
    }
    decoded = unpack(pack(message), max_bytes=1 << 20)
    assert np.array_equal(decoded["observation"]["image"], message["observation"]["image"])
    assert decoded["observation"]["state"].dtype == np.float32 and decoded["observation"]["nested"] == [3]
    with pytest.raises(WireError) as too_large:
        unpack(pack(message), max_bytes=10)
    assert too_large.value.code == "message_too_large"
    lying = msgpack.packb({"__ndarray__": True, "data": b"\x00" * 7, "dtype": "<f4", "shape": [2]})
    with pytest.raises(WireError, match="needs 8 bytes") as bad:
        unpack(lying, max_bytes=1 << 20)
    assert bad.value.code == "bad_array"
    objects = msgpack.packb({"__ndarray__": True, "data": b"\x00" * 8, "dtype": "|O", "shape": [1]})
    with pytest.raises(WireError, match="not accepted"):
        unpack(objects, max_bytes=1 << 20)
    with pytest.raises(WireError) as garbage:
        unpack(b"\xc1\xc1\xc1", max_bytes=1 << 20)
    assert garbage.value.code == "malformed_request"


def test_action_queue_aligns_chunks_to_their_observation_and_never_runs_late_actions():
    queue = ActionQueue()
    assert queue.pop(0) is None and queue.depth(0) == 0
    # computed at step 0, arrived after 2 steps of an earlier chunk ran: its actions 0 and 1 are late
    placement = queue.add(np.array([[0.0], [1.0], [2.0], [3.0]]), observation_step=0, now_step=2, capture_time=1.0)
    assert (placement.skipped, placement.stale) == (2, False) and queue.depth(2) == 2
    first = queue.pop(2)
    assert first.action[0] == 2.0 and first.first_of_chunk and first.capture_time == 1.0
    assert not queue.pop(3).first_of_chunk
    # a chunk shorter than the steps already run is dropped whole: nothing stale is ever run
    stale = queue.add(np.array([[9.0], [9.0]]), observation_step=1, now_step=4)
    assert (stale.skipped, stale.stale) == (2, True) and queue.pop(4) is None
    # latest merge: the newest chunk runs from its first valid step; planned() is what runs meanwhile
    queue.add(np.array([[5.0], [6.0], [7.0]]), observation_step=4, now_step=4, capture_time=2.0)
    queue.add(np.array([[60.0], [70.0], [80.0]]), observation_step=5, now_step=5, capture_time=3.0)
    assert queue.planned(5, 5)[:, 0].tolist() == [60.0, 70.0, 80.0]  # up to the first step with nothing
    assert queue.pop(5).action[0] == 60.0
    assert queue.drop_older_than(capture_time=2.5, step=6) == 0  # the newer chunk still covers 6 and 7
    assert queue.drop_older_than(capture_time=5.0, step=6) == 2 and queue.pop(6) is None
    # ensemble merge: ACT's weights, the older chunk weighs more with a positive weight
    weighted = ActionQueue(merge="ensemble", ensemble_weight=1.0)
    weighted.add(np.array([[0.0], [0.0]]), observation_step=5, now_step=5)
    weighted.add(np.array([[1.0]]), observation_step=6, now_step=6)
    expected = (0.0 * 1 + 1.0 * np.exp(-1.0)) / (1 + np.exp(-1.0))
    assert weighted.pop(6).action[0] == pytest.approx(expected)
    assert weighted.pop(7) is None  # both chunks are in the past now
    single = ActionQueue()
    single.add(np.array([0.1, 0.2]), observation_step=3, now_step=3)  # a single-action policy: a chunk of one
    assert np.allclose(single.pop(3).action, [0.1, 0.2]) and single.pop(4) is None
    with pytest.raises(ValueError, match="merge"):
        ActionQueue(merge="average")


def test_watchdog_holds_then_safe_stops_and_resumes_only_when_told():
    watchdog = Watchdog(hold_after_s=0.3, safe_stop_after_s=2.0)
    watchdog.start(now=0.0)
    assert watchdog.update(0.2) == ControlState.RUNNING
    assert watchdog.update(0.5) == ControlState.HOLDING and watchdog.holds == 1
    watchdog.fresh_action(0.6)
    assert watchdog.update(0.7) == ControlState.RUNNING
    assert watchdog.update(2.7) == ControlState.SAFE_STOPPED and "no action" in watchdog.reason
    watchdog.fresh_action(2.8)  # a late action does not lift a safe stop
    assert watchdog.update(2.9) == ControlState.SAFE_STOPPED
    assert watchdog.resume(3.0) and watchdog.update(3.1) == ControlState.RUNNING
    watchdog.estop("button")
    watchdog.start(10.0)  # a new episode keeps an e-stop latched
    assert watchdog.update(10.1) == ControlState.ESTOPPED


def test_safety_filter_clips_counts_and_refuses():
    limits = SafetyLimits(max_translation_m=0.02, joint_limits={"a": [-1.0, 1.0], "b": [-2.0, 2.0]})
    safety = SafetyFilter(limits, ("a", "b"))
    clipped = safety.filter(np.array([0.5, 0, 0, 0, 0, 0, 1.0]), np.array([0.3, 0.0, 0.3]))
    assert clipped.action[0] == pytest.approx(0.02) and clipped.events == ["clipped"]
    assert safety.filter(np.array([np.nan] * 7), np.zeros(3)).action is None
    assert safety.filter(np.zeros(8), np.zeros(3)).events == ["bad_dimension"]
    near_edge = safety.filter(np.array([0, 0, -0.02, 0, 0, 0, 0]), np.array([0.3, 0.0, 0.005]))
    assert near_edge.action[2] == pytest.approx(-0.005)  # the workspace floor at z = 0
    assert dict(safety.counts) == {"clipped": 2, "non_finite": 1, "bad_dimension": 1}
    assert safety.joints_outside(np.array([0.0, 2.5])) == ["b"]
    with pytest.raises(SafetyConfigError, match=r"missing: \['b'\]"):
        SafetyFilter(SafetyLimits(joint_limits={"a": [-1.0, 1.0]}), ("a", "b"))


def test_shipped_sim_config_covers_every_joint_of_the_simulated_robot():
    config = daemon_config_from({"safety": {"joint_limits": {}}}, [], "test")
    with pytest.raises(SafetyConfigError, match="shoulder_yaw"):
        SafetyFilter(config.safety, SimRobot.joint_names)
    from robot.daemon_config import load_daemon_config

    shipped = load_daemon_config("sim-tabletop")
    assert SafetyFilter(shipped.safety, SimRobot.joint_names).joint_names == SimRobot.joint_names


def test_measured_state_monitor_restrains_then_safe_stops_and_ignores_scheduling_jitter():
    limits = SafetyLimits(workspace_min=[0.0, 0.0, 0.0], workspace_max=[1.0, 1.0, 1.0], measured_violation_ticks=3)
    monitor = MeasuredStateMonitor(limits, period_s=0.1)
    inside, outside = np.array([0.5, 0.5, 0.99]), np.array([0.5, 0.5, 1.03])  # 3 cm above (tolerance 1 cm)
    assert monitor.check(inside, 0.0) == MeasuredCheck([], False, None)
    assert monitor.check(np.array([0.5, 0.5, 1.005]), 0.1).events == []  # within the tolerance
    first = monitor.check(outside, 0.2)
    assert first.events == ["workspace_exit"] and first.restrain and first.stop_reason is None
    assert monitor.check(inside, 0.3).events == []  # back in, but only one clean tick
    assert monitor.check(outside, 0.4).stop_reason is None
    stop = monitor.check(outside, 0.5).stop_reason  # in and out again: three violating ticks in a short span
    assert stop is not None and "3.0 cm outside the workspace box (tolerance 1.0 cm) (3 ticks)" in stop
    assert monitor.counts["workspace_exit"] == 2  # incidents, not ticks
    monitor.reset()
    monitor.check(inside - 0.3, 1.0)
    assert monitor.check(inside - 0.29, 1.001).events == []  # a tick that came early is not a fast arm
    assert monitor.check(inside - 0.1, 1.1).events == ["overspeed"]  # 3.3 m/s > 1.5 m/s
    assert monitor.check(np.array([np.nan, 0.5, 0.5]), 1.2).events == ["workspace_exit"]
    once = MeasuredStateMonitor(SafetyLimits(), period_s=0.1)  # the default: a safe stop at once...
    once.check(np.array([0.0, 0.0, 0.7]), 0.0)
    assert once.check(np.array([0.0, 0.0, 0.75]), 0.1).stop_reason is None
    assert once.check(np.array([0.0, 0.0, 0.85]), 0.2).stop_reason is not None
    once.reset()  # ...but resumed outside the box, the arm may step back in while it keeps getting closer
    for step, height in enumerate((0.85, 0.83, 0.81, 0.80, 0.79)):
        check = once.check(np.array([0.0, 0.0, height]), 1.0 + 0.1 * step)
        assert check.stop_reason is None and check.restrain == (height > 0.81)
    assert once.check(np.array([0.0, 0.0, 0.82]), 1.5).stop_reason is not None  # out again: no more grace
    once.reset()
    once.check(np.array([0.0, 0.0, 0.85]), 2.0)
    assert once.check(np.array([0.0, 0.0, 0.86]), 2.1).stop_reason is not None  # moving away after a resume


def test_safety_filter_escalates_invalid_actions_in_a_row():
    safety = SafetyFilter(SafetyLimits(max_invalid_actions=3), ())
    for _ in range(2):
        assert safety.filter(np.full(7, np.inf), np.zeros(3)).action is None
    assert safety.too_many_invalid() is None
    safety.filter(np.zeros(7), np.array([0.3, 0.0, 0.3]))  # a valid action breaks the streak
    for bad in (np.full(7, np.nan), np.zeros(3), "not numbers"):
        safety.filter(bad, np.zeros(3))
    assert "3 invalid actions in a row" in safety.too_many_invalid()


def test_safety_filter_escalates_a_policy_that_fails_intermittently():
    safety = SafetyFilter(SafetyLimits(max_invalid_actions=3), ())  # window of 12, stop at 6 refused
    inside = np.array([0.3, 0.0, 0.3])
    for tick in range(40):  # every fourth action invalid: held each time, never a stop
        safety.filter(np.full(7, np.nan) if tick % 4 == 0 else np.zeros(7), inside)
        assert safety.too_many_invalid() is None
    reasons = []
    for tick in range(12):  # every other action invalid: never two in a row, still a stop
        safety.filter(np.full(7, np.nan) if tick % 2 == 0 else np.zeros(7), inside)
        reasons.append(safety.too_many_invalid())
    assert reasons[-1] is not None and "invalid actions of its last 12" in reasons[-1]
    safety.forget_invalid()  # the operator resumed
    safety.filter(np.full(7, np.nan), inside)
    assert safety.too_many_invalid() is None


def test_estop_latch_latches_the_first_request_at_a_tick_and_resumes_only_without_the_file(tmp_path):
    latch = EstopLatch(tmp_path / "ESTOP")
    assert latch.latch_pending(tick=0) is None and not latch.latched
    requesters = [threading.Thread(target=latch.request, args=(f"thread {i}", 3)) for i in range(8)]
    for requester in requesters:
        requester.start()
    for requester in requesters:
        requester.join()
    source = latch.latch_pending(tick=4)  # one of the eight, latched at the control thread's tick
    assert source is not None and source.startswith("thread ") and latch.latched
    latch.request("http", 5)  # the first request wins until a resume
    assert latch.latch_pending(tick=5) is None
    assert latch.log == [{"source": source, "requested_tick": 3, "effective_tick": 4}]
    assert not latch.take_resume_request()  # nobody asked
    latch.estop_file.touch()
    latch.request_resume()
    assert latch.take_resume_request() and not latch.take_resume_request()  # a request is used up once
    assert "remove the e-stop file" in latch.resume_refusal() and str(latch.estop_file) in latch.resume_refusal()
    latch.estop_file.unlink()
    assert latch.resume_refusal() is None
    latch.clear()
    assert not latch.latched and latch.latch_pending(tick=9) is None
    latch.request("http", 10)
    latch.request("signal SIGUSR1", 11)  # a second request before the tick: the first one is what latches
    assert latch.latch_pending(tick=12) == "http"
    assert latch.log[-1] == {"source": "http", "requested_tick": 10, "effective_tick": 12}
    latch.clear()
    latch.estop_file.touch()  # the file is a request as long as it exists
    assert latch.latch_pending(tick=13) == f"file {latch.estop_file}"
    assert latch.log[-1] == {"source": f"file {latch.estop_file}", "requested_tick": 13, "effective_tick": 13}


def test_loop_stats_give_the_live_window_to_status_and_the_whole_run_to_the_summary():
    stats = LoopStats(period_s=0.1, window=4)
    assert stats.expected_latency_s() == 0.0 and stats.last_round_trip_s() == 0.0
    assert stats.snapshot()["rate_hz"] == 0.0 and stats.totals()["jitter_p99_ms"] == 0.0
    for period in (0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2):  # the window holds only the slow half
        stats.add_period(period)
    for milliseconds in (10.0, 30.0, 20.0):
        stats.add_round_trip(milliseconds)
    for seconds in (0.01, 0.05):
        stats.add_action_latency(seconds)
    stats.slips, stats.skipped_steps, stats.stale_chunks, stats.stale_replies = 1, 2, 3, 4
    stats.policy_actions, stats.dropped = 7, 1
    live = stats.snapshot()
    assert live["rate_hz"] == pytest.approx(5.0) and live["jitter_p50_ms"] == pytest.approx(100.0)
    assert live["policy_latency_ms"] == pytest.approx(20.0) and stats.last_round_trip_s() == pytest.approx(0.02)
    assert stats.expected_latency_s() == pytest.approx(0.02) and stats.expected_latency_s(recent=1) == 0.02
    assert (live["skipped_steps"], live["stale_chunks"], live["stale_replies"], live["slips"]) == (2, 3, 4, 1)
    totals = stats.totals()
    assert totals["jitter_p50_ms"] == pytest.approx(50.0)  # half the run on time, half 100 ms late
    assert totals["action_latency_p50_ms"] == pytest.approx(30.0)
    assert (totals["policy_actions"], totals["dropped"]) == (7, 1)
    summary = DaemonSummary(run_dir="run", **totals)  # totals are named as the summary's fields
    assert summary.stale_replies == 4 and "1 slips" in summary.format()


def test_the_robot_and_camera_interfaces_declare_what_the_daemon_uses_with_defaults():
    class Minimal(Robot):
        observation_features: ClassVar[dict[str, Feature]] = {}
        action_features: ClassVar[dict[str, Feature]] = {"action": Feature((2,), "float32")}
        is_connected = True

        def connect(self) -> None: ...

        def disconnect(self) -> None: ...

        def get_observation(self) -> dict[str, Any]:
            return {}

        def send_action(self, action: np.ndarray) -> np.ndarray:
            return self.check_action(action)

    minimal = Minimal()
    assert minimal.last_info == {} and minimal.measured_pose({}) == (None, None) and minimal.stop() is None
    assert not Camera.rendered_by_robot and SimCamera.rendered_by_robot
    robot = SimRobot(task="reach", image_size=16, cameras=("third_person",), seed=0)
    with robot:
        assert "terminated" not in robot.last_info  # after the reset: the simulator's own info
        robot.send_action(robot.hold_action(robot.get_observation()))
        assert robot.last_info["terminated"] is False and robot.last_info["truncated"] is False
