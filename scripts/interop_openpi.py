"""Check our policy server and client against openpi's real client (``make interop``), run with the main venv.

1. Uses the openpi-client venv of ``bench/robot.py`` (``runs/.bench-venvs/openpi-client``), creating it
   once with ``openpi-client`` from PyPI (it needs its own venv: it pins numpy < 2).
2. openpi's unmodified ``WebsocketClientPolicy`` against ``agent serve`` (``bench/robot_openpi_peer.py
   probe``): the scripted expert (with a token, sent as openpi's ``api_key``), a zero policy fed LIBERO's
   keys, and a magma-tiny checkpoint written here; for each: metadata, actions, an error reply raised
   by openpi's client, and the same connection served after it.
3. Our ``PolicyClient`` (and ``agent run --policy remote``) against a server of openpi's protocol built
   from openpi_client's msgpack_numpy (``bench/robot_openpi_peer.py server``): metadata without our
   fields, no reset message, the instruction sent as ``prompt``, (chunk, dim) and (dim,) replies, and an
   error (a traceback in a text frame, then close 1011) raised, then a reconnect on the next call.

Prints one ``PASS``/``FAIL`` line per check; exits non-zero if any fails.

Usage: ``.venv/bin/python scripts/interop_openpi.py [--skip-magma]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PEER = REPO / "bench" / "robot_openpi_peer.py"
AGENT = [sys.executable, "-m", "magma.cli.app"]
TOKEN = "interop-secret"

failures: list[str] = []


def report(name: str, passed: bool, detail: str = "") -> None:
    print(f"{'PASS' if passed else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
    if not passed:
        failures.append(name)


def openpi_python() -> Path:
    sys.path.append(str(REPO / "bench"))  # last: bench/robot.py and bench/data_tools.py must not shadow the packages
    from openpi_venv import openpi_python as venv_python  # the venv bench/robot.py uses too

    return venv_python(lambda message: print(message, flush=True))


def free_port() -> int:
    from magma.training.launch import free_port as any_free_port

    return any_free_port()


def start(command: list[str], port: int, timeout_s: float = 600) -> subprocess.Popen:
    """A server process, once its ``/healthz`` answers."""
    log_path = Path(tempfile.mkdtemp(prefix="interop-openpi-")) / "server.log"
    with open(log_path, "wb") as log:  # the child keeps its own handle
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(command[:4])} exited: {output}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"no server on port {port}")


def stop(process: subprocess.Popen) -> None:
    from magma.training.launch import stop_process

    stop_process(process)


# ---- openpi's client against our server -----------------------------------------------------------
def probe_our_server(
    python: Path, label: str, server: list[str], port: int, cases: dict, api_key: str | None = None
) -> None:
    """Run openpi's client (``robot_openpi_peer.py probe``) against ``agent serve ...`` on ``port``."""
    from robot.wire import pack

    process = start(server, port)
    try:
        with tempfile.NamedTemporaryFile(suffix=".msgpack") as cases_file:
            cases_file.write(pack(cases))
            cases_file.flush()
            command = [str(python), str(PEER), "probe", "--port", str(port), "--cases", cases_file.name]
            done = subprocess.run(
                command + (["--api-key", api_key] if api_key else []), capture_output=True, text=True, timeout=600
            )
        if done.returncode != 0:
            report(f"openpi client -> {label}", False, done.stderr[-1500:])
            return
        for check, (passed, detail) in json.loads(done.stdout).items():
            report(f"openpi client -> {label}: {check}", passed, detail)
    finally:
        stop(process)


def scripted_cases() -> dict:
    """The scripted expert reads the simulator's truth, which the simulated robot adds to its observation."""
    from robot.sim import SimRobot

    with SimRobot(task="reach", image_size=32, cameras=("third_person",), state_index=0, privileged=True) as robot:
        observation = robot.get_observation()
    good = {
        "state": observation["observation.state"],
        "instruction": observation["instruction"],
        "privileged": observation["privileged"],
        "control_tick": 3,
        "capture_time_s": time.monotonic(),
    }
    return {"good": good, "bad": {**good, "state": np.zeros(5, np.float32)}, "bad_code": "bad_shape"}


def libero_cases() -> dict:
    rng = np.random.default_rng(0)
    good = {
        "observation/image": rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8).astype(np.float32),
        "prompt": "put the bowl on the plate",
    }
    return {"good": good, "bad": {**good, "prompt": ["not", "text"]}, "bad_code": "malformed_request"}


def magma_checkpoint(directory: Path) -> Path:
    from magma.actions import ActionStatistics
    from magma.config import load_config
    from magma.model import MagmaForCausalLM
    from magma.processor import MagmaProcessor

    config = load_config("magma-tiny")
    stats = ActionStatistics.compute(np.random.default_rng(0).normal(size=(64, 7)), mask=[True] * 6 + [False])
    processor = MagmaProcessor.from_config(config)
    return (
        MagmaForCausalLM(config)
        .eval()
        .save_pretrained(directory / "magma-tiny", tokenizer=processor.tokenizer, action_statistics={"interop": stats})
    )


def openpi_client_against_ours(python: Path, skip_magma: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        # torch first: importing it after MuJoCo's EGL context is up crashes (see bench/robot.py)
        checkpoint = None if skip_magma else magma_checkpoint(Path(scratch))
        port = free_port()
        scripted = [*AGENT, "serve", "--policy", "scripted", "--port", str(port), "--token", TOKEN]
        probe_our_server(python, "agent serve --policy scripted", scripted, port, scripted_cases(), api_key=TOKEN)
        port = free_port()
        zero = [sys.executable, str(REPO / "bench" / "robot.py"), "--serve", "zero", "--port", str(port)]
        probe_our_server(python, "served zero policy (LIBERO keys)", [*zero, "--chunk", "10"], port, libero_cases())
        if checkpoint is not None:
            port = free_port()
            magma = [*AGENT, "serve", "--policy", "magma", "--model", str(checkpoint), "--image-size", "224"]
            magma += ["--state-dim", "8", "--port", str(port)]
            probe_our_server(python, "agent serve --policy magma (tiny)", magma, port, libero_cases())


# ---- our client against an openpi-protocol server -------------------------------------------------
def openpi_server(python: Path, chunk: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [str(python), str(PEER), "server", "--port", str(port), "--chunk", str(chunk)]
    return start([*command, "--metadata", "{}", "--log", str(log)], port), port


def check(name: str, action: Callable[[], tuple[bool, str]]) -> None:
    try:
        passed, detail = action()
    except Exception as error:  # a check that raised failed; the next checks still run
        passed, detail = False, f"{type(error).__name__}: {error}"[:800]
    report(name, passed, detail)


def our_client_against_openpi(python: Path) -> None:
    from robot.policy_client import PolicyClient, PolicyServerError

    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "received.jsonl"
        server, port = openpi_server(python, 10, log)
        image = np.zeros((224, 224, 3), np.uint8)
        observation = {"observation/image": image, "observation/state": np.zeros(8, np.float32)}
        try:
            client = PolicyClient(f"ws://127.0.0.1:{port}", retry_for_s=5)
            spec = client.connect()
            check("PolicyClient -> openpi server: metadata", lambda: (spec.server_kind == "openpi", f"{spec}"))
            client.reset({"instruction": "put the bowl on the plate"})
            chunk = client.act_chunk(observation)
            check(
                "PolicyClient -> openpi server: (chunk, dim) actions",
                lambda: (chunk.actions.shape == (10, 7) and client.spec.chunk_length == 10, f"{chunk.actions.shape}"),
            )
            received = [json.loads(line) for line in log.read_text().splitlines()]
            check(
                "PolicyClient -> openpi server: no reset message, instruction as prompt",
                lambda: (received == [["observation/image", "observation/state", "prompt"]], f"{received}"),
            )

            def error_then_reconnect() -> tuple[bool, str]:
                try:
                    client.act({"fail": True})
                except PolicyServerError as error:
                    raised = error
                else:
                    return False, "no error raised"
                after = client.act(observation)
                passed = (
                    "asked this policy to fail" in str(raised) and after.shape == (10, 7) and client.reconnects == 1
                )
                return passed, f"{raised.code}, then actions {after.shape}, reconnects {client.reconnects}"

            check("PolicyClient -> openpi server: error then close raised, next call reconnects", error_then_reconnect)
            client.close()
        finally:
            stop(server)

        server, port = openpi_server(python, 1, Path(scratch) / "single.jsonl")
        try:

            def remote_run() -> tuple[bool, str]:
                out = Path(scratch) / "remote-run"
                command = [*AGENT, "run", "mujoco", "--tasks", "reach", "--policy", "remote", "--server"]
                command += [f"ws://127.0.0.1:{port}", "--episodes", "1", "--image-size", "32", "--no-videos"]
                done = subprocess.run(
                    [*command, "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO
                )
                passed = done.returncode == 0 and (out / "results.jsonl").exists()
                return passed, done.stderr[-800:] if not passed else "one episode of (7,) actions"

            check("agent run --policy remote -> openpi server", remote_run)
        finally:
            stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-magma", action="store_true", help="leave out the magma-tiny checkpoint")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    python = openpi_python()
    openpi_client_against_ours(python, args.skip_magma)
    our_client_against_openpi(python)
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
