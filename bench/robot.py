"""The policy server and the control daemon: transport latency, loop jitter, server throughput.

Figures (one JSON line each on stdout; progress on stderr):

* ``robot_round_trip_ms/{action7,chunk10x7}/{p50,p99}``: one observation (224 x 224 RGB + 8-D state)
  -> one 7-D action / a 10 x 7 chunk over loopback, sent by openpi's own client (``openpi-client``
  from PyPI, installed by this script into ``runs/.bench-venvs/openpi-client``) to ``PolicyServer``
  (its own process, serving a policy that answers zeros at once), against the same client talking to a
  server of openpi's shape (``bench/robot_openpi_peer.py``), in the same run: one client process
  takes turns between the two servers request by request, so load on the machine hits both alike.
  ``ratio`` is ours / openpi (below 1: faster). ``.../policy_client/{p50,p99}``: the same with our
  ``PolicyClient`` against ``PolicyServer``, against the same baseline. If openpi-client cannot be
  installed the bench says so and reports our client alone.
* ``robot_loop_jitter_ms/{p50,p99}``: |tick period - 20 ms| of the daemon at 50 Hz driving the
  simulated robot for 60 s (``--jitter-s``) while the policy takes 200 ms per 25 x 7 chunk, against
  the same loop fed by an instant policy (``ratio`` slow / instant); ``slips`` (ticks skipped, for
  both) and the share of ticks that sent a policy action ride along. On a busy 2-core machine the
  simulated arm alone (physics, IK, rendering) takes most of a 20 ms period, so slips there come from
  the simulator; the comparison shows what the slow policy adds.
* ``robot_task_success/{task}/{hz}hz/{latency}ms``: every task through the daemon with the served
  scripted expert at 10 and 50 Hz and 0, 50, 200 ms of policy latency, against the expert's own
  success under ``agent run`` (``bench/robot_tasks.py``; ``--task-states`` evaluation states, 50).
* ``robot_server_rps/clients{1,4,8}``: requests/s of ``agent serve --policy magma`` (a magma-tiny
  checkpoint written here, 64 px images) with that many clients, batching on, against batching off
  (``ratio`` on / off).

Usage: ``python bench/robot.py [--quick] [--requests 2000] [--jitter-s 60] [--throughput-s 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import openpi_venv  # noqa: E402  (bench/openpi_venv.py)
import report  # noqa: E402  (bench/report.py)
import robot_tasks  # noqa: E402  (bench/robot_tasks.py)

from magma.training.launch import free_port  # noqa: E402
from magma.training.launch import stop_process as stop  # noqa: E402
from robot.policy_client import PolicyClient  # noqa: E402
from robot.policy_protocol import PolicySpec  # noqa: E402
from robot.policy_server import PolicyServer, ServerConfig  # noqa: E402
from robot.served_policy import ServedPolicy  # noqa: E402

SLOW_POLICY_S = 0.2
CHUNK = 10
SLOW_CHUNK = 25  # the 200 ms policy's chunks at 50 Hz: the 10 steps it takes to answer, and as many again


def log(message: str) -> None:
    report.log("robot", message)


def wait_ready(port: int, process: subprocess.Popen, healthz: bool = True, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if healthz:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            else:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no server on port {port}")


def spawn(command: list[str], port: int, healthz: bool = True) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(port, process, healthz)
    return process


# ---- the servers this script starts in their own processes --------------------------------------
class ZeroPolicy:
    def __init__(self, chunk: int) -> None:
        self.chunk = chunk

    def reset(self, task: dict) -> None:
        return None

    def act(self, observation: dict) -> np.ndarray:
        return np.zeros((self.chunk, 7), np.float32)


class ChunkPolicy:
    """``delay_s`` per chunk of 10 small moves around a circle (never solves the task, never leaves the table)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.phase = 0.0

    def reset(self, task: dict) -> None:
        self.phase = 0.0

    def act(self, observation: dict) -> np.ndarray:
        time.sleep(self.delay_s)
        angles = self.phase + np.arange(SLOW_CHUNK) * 0.05
        self.phase += SLOW_CHUNK * 0.05
        chunk = np.zeros((SLOW_CHUNK, 7), np.float32)
        chunk[:, 0], chunk[:, 1], chunk[:, 6] = 0.004 * np.cos(angles), 0.004 * np.sin(angles), -1.0
        return chunk


def serve(kind: str, port: int, chunk: int) -> None:
    if kind == "zero":
        spec = PolicySpec("zero", "zero", chunk_length=chunk, state_dim=8, cameras={"image": [224, 224, 3]})
        served = ServedPolicy(spec, lambda: ZeroPolicy(chunk))
    else:
        delay = SLOW_POLICY_S if kind == "slow" else 0.0
        spec = PolicySpec(
            kind, f"{kind}-chunks", chunk_length=SLOW_CHUNK, control_hz=50, cameras={"image": [64, 64, 3]}
        )
        served = ServedPolicy(spec, lambda: ChunkPolicy(delay))
    PolicyServer(served, ServerConfig(port=port)).run()


def bench_server(kind: str, port: int, chunk: int = 1) -> subprocess.Popen:
    command = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--chunk", str(chunk)]
    return spawn(command, port)


# ---- round trip ---------------------------------------------------------------------------------
ROUNDS = 2  # our PolicyClient and openpi's client take turns too
WARMUP = 20


def observation() -> dict:
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    return {"image": image, "state": np.zeros(8, np.float32)}


def round_trip_ours(port: int, requests: int) -> list[float]:
    """Our ``PolicyClient`` against the server on ``port``."""
    sample = observation()
    with PolicyClient(f"ws://127.0.0.1:{port}") as client:
        client.reset({"instruction": "benchmark"})
        for _ in range(WARMUP):
            client.act_chunk(sample)
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            client.act_chunk(sample)
            times.append((time.perf_counter() - started) * 1e3)
    return times


def openpi_python() -> Path | None:
    try:
        return openpi_venv.openpi_python(log)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        log(f"openpi-client cannot be installed ({error}); the openpi comparison is left out")
        return None


def openpi_client_round_trips(python: Path, ports: list[int], requests: int) -> list[list[float]]:
    """openpi's ``WebsocketClientPolicy`` (in its venv) against each server, taking turns per request."""
    peer = str(ROOT / "bench" / "robot_openpi_peer.py")
    command = [str(python), peer, "client", "--requests", str(requests + WARMUP)]
    for port in ports:
        command += ["--port", str(port)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return [times[WARMUP:] for times in json.loads(result.stdout)]


def openpi_peer_server(python: Path, chunk: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    peer = str(ROOT / "bench" / "robot_openpi_peer.py")
    return spawn([str(python), peer, "server", "--port", str(port), "--chunk", str(chunk)], port), port


def emit_round_trip(name: str, times: list[float], baseline_times: list[float] | None, requests: int) -> None:
    for stat, q in (("p50", 50), ("p99", 99)):
        value = float(np.percentile(times, q))
        baseline = float(np.percentile(baseline_times, q)) if baseline_times else None
        report.emit(
            f"{name}/{stat}",
            value,
            "ms",
            baseline="openpi-client WebsocketClientPolicy + openpi-shaped server" if baseline else None,
            ratio=value / baseline if baseline else None,
            baseline_value=baseline,
            requests=requests,
        )


def round_trips(requests: int, skip_openpi: bool) -> None:
    python = None if skip_openpi else openpi_python()
    per_round = max(1, requests // ROUNDS)
    for name, chunk in (("action7", 1), ("chunk10x7", CHUNK)):
        port = free_port()
        server = bench_server("zero", port, chunk)
        peer, peer_port = openpi_peer_server(python, chunk) if python is not None else (None, 0)
        ours_client: list[float] = []
        openpi_to_ours: list[float] = []
        openpi_to_openpi: list[float] = []
        try:
            for _ in range(ROUNDS):
                ours_client += round_trip_ours(port, per_round)
                if python is not None:
                    to_ours, to_openpi = openpi_client_round_trips(python, [port, peer_port], per_round)
                    openpi_to_ours += to_ours
                    openpi_to_openpi += to_openpi
        finally:
            stop(server)
            if peer is not None:
                stop(peer)
        if python is not None:
            emit_round_trip(f"robot_round_trip_ms/{name}", openpi_to_ours, openpi_to_openpi, len(openpi_to_ours))
        emit_round_trip(
            f"robot_round_trip_ms/{name}/policy_client", ours_client, openpi_to_openpi or None, len(ours_client)
        )
        summary = f"{name}: PolicyClient -> ours p50 {np.percentile(ours_client, 50):.3f} ms"
        if python is not None:
            summary += (
                f"; openpi client -> ours p50 {np.percentile(openpi_to_ours, 50):.3f} / p99 "
                f"{np.percentile(openpi_to_ours, 99):.3f} ms, -> openpi-shaped server p50 "
                f"{np.percentile(openpi_to_openpi, 50):.3f} / p99 {np.percentile(openpi_to_openpi, 99):.3f} ms"
            )
        log(summary)


# ---- loop jitter --------------------------------------------------------------------------------
def daemon_run(kind: str, seconds: float):
    """The daemon at 50 Hz on the simulated arm for ``seconds``, fed by the ``kind`` chunk policy."""
    from robot.daemon import RobotDaemon
    from robot.daemon_config import load_daemon_config

    port = free_port()
    server = bench_server(kind, port)
    overrides = [
        "control_hz=50",
        "robot.args.control_hz=50",
        "robot.args.image_size=64",
        "robot.args.max_steps=1000000",
        "robot.args.task=pick_place",
        "robot.args.privileged=false",
        "robot.args.cameras=[third_person]",
        "cameras=[{name: third_person, driver: 'robot.sim:SimCamera', key: image, args: {camera: third_person}}]",
        f"episode.max_steps={int(seconds * 50)}",
        f"policy.url=ws://127.0.0.1:{port}",
        "status.port=0",
        "status.live=false",
        "record=false",
        f"run_dir={tempfile.mkdtemp(prefix='bench-robot-')}",
    ]
    try:
        log(f"daemon at 50 Hz for {seconds:.0f} s with the {kind} chunk policy")
        return RobotDaemon(load_daemon_config("sim-tabletop", overrides)).run()
    finally:
        stop(server)


def loop_jitter(seconds: float) -> None:
    slow, instant = daemon_run("slow", seconds), daemon_run("instant", seconds)
    for stat in ("p50", "p99"):
        value, baseline = getattr(slow, f"jitter_{stat}_ms"), getattr(instant, f"jitter_{stat}_ms")
        ticks = slow.episodes[0].steps if slow.episodes else 0
        report.emit(
            f"robot_loop_jitter_ms/{stat}",
            value,
            "ms",
            baseline="the same loop with an instant policy",
            ratio=value / baseline if baseline else None,
            baseline_value=baseline,
            period_ms=20.0,
            slips=slow.slips,
            baseline_slips=instant.slips,
            ticks=ticks,
            policy_action_share=slow.policy_actions / max(ticks, 1),
            policy_ms_per_chunk=SLOW_POLICY_S * 1e3,
        )


# ---- throughput ---------------------------------------------------------------------------------
def tiny_checkpoint(directory: Path) -> Path:
    import torch

    from magma.actions import ActionStatistics
    from magma.config import load_config
    from magma.model import MagmaForCausalLM
    from magma.processor import MagmaProcessor

    torch.manual_seed(0)
    config = load_config("magma-tiny")
    model = MagmaForCausalLM(config).eval()
    stats = ActionStatistics.compute(np.random.default_rng(0).normal(size=(64, 7)), mask=[True] * 6 + [False])
    processor = MagmaProcessor.from_config(config)
    return model.save_pretrained(
        directory / "magma-tiny", tokenizer=processor.tokenizer, action_statistics={"b": stats}
    )


def requests_per_second(port: int, clients: int, seconds: float) -> float:
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    sample = {"image": image, "state": np.zeros(13, np.float32)}
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def run(index: int) -> None:
        with PolicyClient(f"ws://127.0.0.1:{port}") as client:
            client.reset({"instruction": "pick up the red cube"})
            client.act(sample)
            start.wait()
            while time.perf_counter() < deadline[0]:
                client.act(sample)
                counts[index] += 1

    threads = [threading.Thread(target=run, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + 3600
    start.wait()
    began = time.perf_counter()
    deadline[0] = began + seconds
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - began)


def throughput(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = tiny_checkpoint(Path(scratch))
        results: dict[tuple[bool, int], float] = {}
        for batching in (True, False):
            port = free_port()
            flag = "--batching" if batching else "--no-batching"
            command = [
                sys.executable,
                "-m",
                "magma.cli.app",
                "serve",
                "--policy",
                "magma",
                "--model",
                str(checkpoint),
                "--image-size",
                "64",
                "--port",
                str(port),
                flag,
            ]
            server = spawn(command, port)
            try:
                for clients in (1, 4, 8):
                    results[(batching, clients)] = requests_per_second(port, clients, seconds)
                    rate = results[(batching, clients)]
                    log(f"batching {'on' if batching else 'off'}, {clients} clients: {rate:.1f} req/s")
            finally:
                stop(server)
    for clients in (1, 4, 8):
        on, off = results[(True, clients)], results[(False, clients)]
        report.emit(
            f"robot_server_rps/clients{clients}",
            on,
            "requests/s",
            baseline="batching off",
            ratio=on / off,
            baseline_value=off,
            model="magma-tiny",
            image="64x64",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 round trips, 10 s of loop, 2 s per throughput run")
    parser.add_argument("--requests", type=int, default=2000, help="round trips per figure")
    parser.add_argument("--jitter-s", type=float, default=60.0)
    parser.add_argument("--throughput-s", type=float, default=5.0)
    parser.add_argument("--skip-openpi", action="store_true")
    parser.add_argument(
        "--task-states", type=int, default=50, help="evaluation states per task, rate and latency (0: skip)"
    )
    parser.add_argument("--serve", choices=["zero", "slow", "instant"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.chunk)
        return
    if args.quick:
        args.requests, args.jitter_s, args.throughput_s, args.task_states = 600, 10.0, 2.0, 2
    round_trips(args.requests, args.skip_openpi)
    throughput(args.throughput_s)
    loop_jitter(args.jitter_s)  # MuJoCo last: importing triton (through torch) after MuJoCo's EGL context crashes
    if args.task_states:
        robot_tasks.run(args.task_states, [10.0, 50.0], [0.0, 50.0, 200.0], list(robot_tasks.TASKS))


if __name__ == "__main__":
    main()
