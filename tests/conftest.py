"""Shared fixtures: the real tiny model, its processor, real image files written by the tests, and a local
OpenAI-compatible chat endpoint (the stand-in for a hosted model, which tests cannot reach)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magma.config import load_config
from magma.configuration_magma import MagmaConfig
from magma.model import MagmaForCausalLM
from magma.processor import MagmaProcessor


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    # One torch thread, as the tests' subprocesses get through OMP_NUM_THREADS=1: the tiny models gain
    # nothing from a second thread (10 % faster with one on 2 idle cores), and on a machine other work loads,
    # two OpenMP threads spinning at barriers for a core they cannot get made torch steps up to 50x slower.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_config() -> MagmaConfig:
    return load_config("magma-tiny")


@pytest.fixture
def tiny_model(tiny_config: MagmaConfig) -> MagmaForCausalLM:
    torch.manual_seed(0)
    model = MagmaForCausalLM(tiny_config).eval()
    with torch.no_grad():  # a non-zero separator, so that its placement is visible in outputs
        model.projector.row_separator.normal_()
    return model


@pytest.fixture(scope="session")
def tiny_processor(tiny_config: MagmaConfig) -> MagmaProcessor:
    return MagmaProcessor.from_config(tiny_config)


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    return [write_image(tmp_path / "wide.png", 200, 100, 1), write_image(tmp_path / "tall.jpg", 100, 200, 2)]


class _ChatCompletions(BaseHTTPRequestHandler):
    """``POST .../chat/completions``: records (Authorization header, request) and answers with
    ``server.answer(request)``, in the OpenAI response shape."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.headers.get("Authorization"), request))
        reply = self.server.answer(request)
        body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chat_endpoint(monkeypatch):
    """A chat endpoint on a free loopback port, set as OPENAI_BASE_URL (key "test-key"); a test sets
    ``chat_endpoint.answer = fn(request) -> reply`` and reads ``chat_endpoint.requests``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    server.requests = []
    server.answer = lambda request: ""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    yield server
    server.shutdown()
    server.server_close()


# The slowest files (about 20 s to 2 min each, measured on 2 idle cores), started first and alternating
# browser-bound with torch-bound ones: with two pytest-xdist workers (in this order: ``--no-loadscope-reorder``)
# the long ones overlap with work of another kind, and the run ends on short files.
SLOW_FIRST = (
    "test_web_oracle.py",
    "test_rl_robot.py",
    "test_search.py",
    "test_lapa_training.py",
    "test_web_run.py",
    "test_training.py",
    "test_security_runs.py",
    "test_demo.py",
    "test_web_sites.py",
    "test_rl_text.py",
    "test_robot_daemon.py",
    "test_security_checkpoints.py",
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests on Ray run last: the session's Ray instance then never shares the test process with a later
    test that forks workers (gRPC's threads and fork do not mix). Under pytest-xdist (``make test`` runs
    ``-n 2 --dist loadgroup --no-loadscope-reorder``) each file is one group, so a module's fixtures are made
    once, and the Ray tests are one group on one instance; the slowest files go first."""

    def on_ray(item: pytest.Item) -> bool:
        return "ray_instance" in getattr(item, "fixturenames", ())

    def order(item: pytest.Item) -> tuple[bool, int]:
        name = item.path.name
        return on_ray(item), SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=order)  # stable: the files keep their order within each rank, and their tests too
    for item in items:
        group = "ray" if on_ray(item) else str(item.path.relative_to(config.rootpath))
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray instance for the whole session (2 CPUs, advertised on 127.0.0.1), shut down at its end;
    the tests that use it start and drop their own actors and tasks."""
    from data_tools.ray_cluster import connect

    ray = connect(num_cpus=2)
    yield ray
    ray.shutdown()
