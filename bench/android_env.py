"""Step latency of AndroidEnv (action + settle + Set-of-Mark observation) on the simulated phone, against the
raw adb calls such a step needs, and the split of a step into its phases.

The device is ``envs.android.simulated_device`` behind its adb server on 127.0.0.1 (540x960, Sim App). Steps
alternate "open Settings" and "back", so every step changes the screen. Baseline, over the same client and in
alternating rounds of two steps each (so the machine's load hits both alike): one ``input tap``, one
``exec-out screencap -p`` and one ``exec-out uiautomator dump /dev/tty``, the least an agent loop over raw
adb does per step. The environment's step is three adb calls too (the action; two screencaps, the settle
check; the dump with the foreground query) and adds PNG decoding, parsing, marks and drawing. Both clients are
measured (adbutils, and the adb binary when installed; the goal is for the adb binary). A real device's
screencap and dump take 100s of ms, so there the same overhead weighs less.

    python bench/android_env.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from envs.android.adb_client import AdbClient, make_client  # noqa: E402
from envs.android.env import AndroidEnv, AndroidEnvConfig  # noqa: E402
from envs.android.simulated_device import SimulatedAdbServer  # noqa: E402
from envs.android.tasks import AndroidTask, SetupRecipe  # noqa: E402

TASK = AndroidTask("bench", "benchmark", "com.example.simapp", SetupRecipe(activity=".MainActivity"))


def env_steps(env: AndroidEnv, steps: int, phases: dict[str, list[float]]) -> list[float]:
    """``steps`` (even) steps alternating "open Settings" and "back"; the phases' seconds go into ``phases``."""
    latencies = []
    for index in range(steps):
        action = '{"NAVIGATE": "BACK"}'
        if index % 2 == 0:
            mark = next(bound.label for bound in env.marks if bound.node.label == "Settings")
            action = json.dumps({"TAP": {"MARK": mark}})
        started = time.perf_counter()
        _, _, _, _, info = env.step(action)
        latencies.append(time.perf_counter() - started)
        for phase, seconds in info["timings"].items():
            phases.setdefault(phase, []).append(seconds)
    return latencies


def raw_steps(adb: AdbClient, steps: int) -> list[float]:
    """The same screens through raw adb calls: tap (or back), one screencap, one dump per step."""
    latencies = []
    for index in range(steps):
        started = time.perf_counter()
        adb.shell("input tap 270 144" if index % 2 == 0 else "input keyevent KEYCODE_BACK", 10)
        adb.exec_out("screencap -p", 10)
        adb.exec_out("uiautomator dump /dev/tty", 10)
        latencies.append(time.perf_counter() - started)
    return latencies


def compare(port: int, serial: str, client: str, steps: int, rounds: int) -> None:
    """Environment and raw steps in alternating rounds on one device (both end each round on the main
    screen), so load changes on the machine hit both sides alike."""
    per_round = max(2, steps // rounds // 2 * 2)
    adb = make_client(client, "127.0.0.1", port, serial)
    raw_steps(adb, 4)  # warm-up
    env = AndroidEnv(AndroidEnvConfig(serial=serial, adb_port=port, client=client, max_steps=rounds * per_round + 10))
    env.reset(options={"task": TASK})
    latencies, raw, phases = [], [], {}
    for _ in range(rounds):
        latencies += env_steps(env, per_round, phases)
        raw += raw_steps(adb, per_round)
    env.close()
    step_ms, raw_ms = 1000 * statistics.median(latencies), 1000 * statistics.median(raw)
    report.log("android_env", f"{client}: env step {step_ms:.1f} ms, raw adb calls {raw_ms:.1f} ms ({rounds} rounds)")
    baseline = f"raw adb calls per step via {client} (tap + screencap -p + uiautomator dump): {raw_ms:.1f} ms"
    goal = "<= 1.3" if client == "adb" else None  # the headline: the adb executable, the common client
    report.emit(f"android_env_step_{client}", step_ms, "ms", baseline, step_ms / raw_ms, goal=goal, rounds=rounds)
    for phase in ("action", "settle", "decode", "dump", "som", "foreground"):
        phase_ms = 1000 * statistics.median(phases.get(phase, [0.0]))
        report.emit(
            f"android_env_step_{client}_{phase}", phase_ms, "ms", f"env step {step_ms:.1f} ms", phase_ms / step_ms
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (default: one per 2 steps)")
    args = parser.parse_args()
    clients = ["adbutils"] + (["adb"] if shutil.which("adb") else [])
    with SimulatedAdbServer() as server:
        for number, client in enumerate(clients):
            device = server.add_device(serial=f"emulator-{5554 + 2 * number}")
            compare(server.port, device.serial, client, args.steps, args.rounds or max(1, args.steps // 2))


if __name__ == "__main__":
    main()
