"""Task success through the control daemon, against the same expert under ``agent run`` (part of
``bench/robot.py``; also runnable alone).

For each control rate (10 and 50 Hz) and policy latency (0, 50 and 200 ms, added as a sleep in the
served policy), every task of the tabletop suite runs ``--states`` evaluation states through the
real daemon (``agent robot run``'s ``RobotDaemon``, the simulated robot, no cameras) driven by the
served scripted expert over the policy server, in real time. The baseline is the same expert on the
same states and rate with no daemon and no latency (``agent run mujoco``'s episode loop).
Latencies the tick cannot absorb are served as chunks planned ahead (``robot.privileged_state``), long
enough to cover the latency twice.

Figures: ``robot_task_success/{task}/{hz}hz/{latency}ms``: the daemon's success rate, ``baseline``
the expert's own, ``ratio`` daemon / expert; with the chunk length, late chunk steps skipped and the
observation-to-action latency (p50) of the run.

Usage: ``python bench/robot_tasks.py [--states 50] [--rates 10,50] [--latencies 0,50,200] [--tasks ...]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from envs.mujoco.env import TabletopEnv  # noqa: E402
from envs.mujoco.experts import run_expert_episode  # noqa: E402
from envs.mujoco.tasks import TASKS  # noqa: E402
from robot.daemon import RobotDaemon  # noqa: E402
from robot.daemon_config import PolicyLinkConfig, load_daemon_config  # noqa: E402
from robot.policy_protocol import PolicySpec  # noqa: E402
from robot.policy_server import PolicyServer, ServerConfig  # noqa: E402
from robot.privileged_state import ObservedScriptedExpert  # noqa: E402
from robot.served_policy import DelayedPolicy, ServedPolicy  # noqa: E402

WAIT_IN_TICK = PolicyLinkConfig().wait_in_tick  # how long the daemon waits in a tick for an answer
# per-tick translation limit: the config's 5 cm at 10 Hz, the same 0.5 m/s...1.25 m/s the arm can follow at 50 Hz
# (5 cm a tick at 50 Hz is 2.5 m/s, which the measured-speed monitor rightly stops)
MAX_HAND_SPEED_M_S = 1.25


def log(message: str) -> None:
    report.log("robot-tasks", message)


def chunk_length_for(control_hz: float, latency_s: float) -> int:
    """1 when the answer comes within the daemon's wait in the tick; else chunks covering the latency twice."""
    period = 1.0 / control_hz
    if latency_s + 0.01 <= WAIT_IN_TICK * period:
        return 1
    return max(4, 2 * math.ceil(latency_s / period) + 4)


def expert_success(task: str, control_hz: float, states: int) -> float:
    env = TabletopEnv(task=task, render=False, control_hz=control_hz)
    try:
        return sum(run_expert_episode(env, state_index=i) for i in range(states)) / states
    finally:
        env.close()


def daemon_success(task: str, control_hz: float, latency_s: float, states: int, run_dir: Path) -> dict:
    chunk = chunk_length_for(control_hz, latency_s)
    spec = PolicySpec("expert", "tabletop-scripted-expert", chunk_length=chunk, control_hz=control_hz)
    served = ServedPolicy(spec, lambda: DelayedPolicy(ObservedScriptedExpert(chunk, control_hz), latency_s))
    server = PolicyServer(served, ServerConfig(port=0))
    server.start_in_thread()
    try:
        overrides = [
            f"control_hz={control_hz}",
            f"robot.args.control_hz={control_hz}",
            f"robot.args.task={task}",
            "robot.args.cameras=[]",
            "cameras=[]",
            f"episode.episodes={states}",
            "record=false",
            "status.live=false",
            "status.port=0",
            "watchdog.hold_after_ms=1000",
            "watchdog.safe_stop_after_ms=5000",
            f"safety.max_translation_m={min(0.05, MAX_HAND_SPEED_M_S / control_hz):.4f}",
            f"policy.url=ws://127.0.0.1:{server.port}",
            f"run_dir={run_dir}",
        ]
        summary = RobotDaemon(load_daemon_config("sim-tabletop", overrides)).run()
    finally:
        server.stop()
    episodes = summary.episodes
    return {
        "success": sum(episode.success for episode in episodes) / max(1, len(episodes)),
        "chunk": chunk,
        "skipped_steps": summary.skipped_steps,
        "stale_chunks": summary.stale_chunks,
        "action_latency_p50_ms": round(summary.action_latency_p50_ms, 1),
        "slips": summary.slips,
    }


def run(states: int, rates: list[float], latencies_ms: list[float], tasks: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for control_hz in rates:
            baseline = {task: expert_success(task, control_hz, states) for task in tasks}
            log(f"{control_hz:g} Hz expert alone: {json.dumps(baseline)}")
            for latency_ms in latencies_ms:
                for task in tasks:
                    run_dir = Path(scratch) / f"{task}-{control_hz:g}-{latency_ms:g}"
                    started = time.monotonic()
                    result = daemon_success(task, control_hz, latency_ms / 1e3, states, run_dir)
                    expected = baseline[task]
                    log(
                        f"{task} {control_hz:g} Hz {latency_ms:g} ms: daemon {result['success']:.0%} vs expert "
                        f"{expected:.0%} ({time.monotonic() - started:.0f} s)"
                    )
                    report.emit(
                        f"robot_task_success/{task}/{control_hz:g}hz/{latency_ms:g}ms",
                        result["success"],
                        "success rate",
                        baseline=f"the same expert under agent run: {expected:.3f}",
                        ratio=result["success"] / expected if expected else None,
                        states=states,
                        **result,
                    )
                    cell = {"task": task, "hz": control_hz, "latency_ms": latency_ms, "expert": expected}
                    rows.append({**cell, **result})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=50)
    parser.add_argument("--rates", default="10,50")
    parser.add_argument("--latencies", default="0,50,200", help="policy latencies in milliseconds")
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = parser.parse_args(argv)
    run(
        args.states,
        [float(rate) for rate in args.rates.split(",")],
        [float(latency) for latency in args.latencies.split(",")],
        args.tasks.split(","),
    )


if __name__ == "__main__":
    main()
