"""Who may drive the robot through the daemon's control endpoint: a web page of another origin open in
the operator's browser cannot clear an e-stop (real Chromium, real daemon on the simulated arm); a
token, when set, guards every route; a public bind without one is refused at load; a Host header that
does not name the endpoint (DNS rebinding) is refused; programs without an Origin work as before."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from local_servers import LOADED_MACHINE_BOUND_S, QuietHandler, send_body, serve_http, stop_http, wait_for
from test_robot_daemon import FaultyPolicy, daemon_config, http_post, serve_in_process, start_daemon

from data_tools.config_files import ConfigError
from envs.web.browser import ChromiumBrowser, ContextOptions
from magma.training.launch import free_port
from robot.daemon import RobotDaemon
from robot.daemon_config import load_daemon_config
from robot.daemon_status import StatusEndpointError, StatusServer

ATTACK_PAGE = """<!doctype html><title>loading</title><script>
const daemon = "%(daemon)s";
Promise.allSettled([
  fetch(daemon + "/resume", {method: "POST", mode: "no-cors"}),
  fetch(daemon + "/resume", {method: "POST", mode: "no-cors", body: "go", headers: {"Content-Type": "text/plain"}}),
  fetch(daemon + "/stop", {method: "POST", mode: "no-cors", keepalive: true}),
  fetch(daemon + "/status").then(reply => reply.text()),
]).then(outcomes => { document.title = "done " + outcomes.map(o => o.status).join(","); });
</script>"""


def serve_page(html: str) -> ThreadingHTTPServer:
    """A tiny web site of another origin (its own free port on loopback) serving one page."""

    class Page(QuietHandler):
        def do_GET(self) -> None:
            send_body(self, html, "text/html")

    return serve_http(Page)


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = b"" if method == "POST" else None
    prepared = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(prepared, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_page_of_another_origin_cannot_clear_an_http_estop(tmp_path):
    server = serve_in_process(FaultyPolicy)
    config = daemon_config(tmp_path, server.port, "robot.args.task=pick_place", "robot.args.max_steps=100000")
    daemon, thread, outcome = start_daemon(config)
    page_server = None
    try:
        wait_for(lambda: daemon.status_server is not None and daemon.tick > 5, "the episode to run", 600)
        url = daemon.status_server.url
        assert http_post(url + "/estop")["ok"]  # a program (no Origin) e-stops as before
        wait_for(lambda: daemon.status()["state"] == "estopped", "the HTTP e-stop")

        page_server = serve_page(ATTACK_PAGE % {"daemon": url})
        page_url = f"http://localhost:{page_server.server_address[1]}/"
        with ChromiumBrowser() as browser:
            context = browser.new_context(ContextOptions())
            page = context.new_page()
            page.goto(page_url)
            page.wait_for_function("document.title.startsWith('done')", timeout=LOADED_MACHINE_BOUND_S * 1000)
            title = page.title()
            context.close()
        assert title.split()[1].split(",")[3] == "rejected"  # the page cannot read the status either
        tick = daemon.tick
        wait_for(lambda: daemon.tick > tick + 5 or not thread.is_alive(), "ticks after the page's requests")
        assert thread.is_alive(), "a page of another origin stopped the daemon"
        assert daemon.status()["state"] == "estopped", "a page of another origin cleared the e-stop"
        assert not any("resumed" in message for message in daemon.messages)

        assert http_post(url + "/resume")["ok"]  # the operator's own program still resumes
        wait_for(lambda: daemon.status()["state"] == "running", "the resume")
        daemon.stop()
        thread.join(timeout=600)
    finally:
        daemon.stop()
        server.stop()
        if page_server is not None:
            stop_http(page_server)
    assert "error" not in outcome, outcome.get("error")


def test_token_guards_every_route_and_origin_and_host_are_checked(monkeypatch):
    calls: list[str] = []
    controls = {name: (lambda name=name: calls.append(name) or name) for name in ("estop", "resume", "stop")}
    server = StatusServer("127.0.0.1", 0, lambda: {"state": "running"}, controls, token="s3cret-token")
    server.start()
    try:
        url = server.url
        port = url.rsplit(":", 1)[1]
        good = {"Authorization": "Bearer s3cret-token"}
        assert request(url + "/status")[0] == 401
        assert request(url + "/resume", "POST")[0] == 401
        assert request(url + "/resume", "POST", {"Authorization": "Bearer wrong"})[0] == 401
        assert request(url + "/resume", "POST", {"Authorization": "s3cret-token"})[0] == 401
        assert request(url + "/status", headers={"Authorization": "Bearer  s3cret-token"})[0] == 401
        assert calls == []
        assert request(url + "/healthz") == (200, {"status": "ok"})  # says only that it is up
        assert request(url + "/status", headers=good) == (200, {"state": "running"})
        assert request(url + "/resume", "POST", good)[1]["ok"] and calls == ["resume"]

        cross = request(url + "/estop", "POST", {**good, "Origin": "http://evil.example"})
        assert cross[0] == 403 and "cross-origin" in cross[1]["error"]
        assert request(url + "/estop", "POST", {**good, "Origin": "null"})[0] == 403
        rebound = request(url + "/status", headers={**good, "Host": f"evil.example:{port}"})
        assert rebound[0] == 403 and "does not name this endpoint" in rebound[1]["error"]
        same_origin = request(url + "/estop", "POST", {**good, "Origin": f"http://127.0.0.1:{port}"})
        assert same_origin[0] == 200 and calls == ["resume", "estop"]
        assert request(url + "/nothing", "POST", good)[0] == 404
    finally:
        server.stop()

    listed = StatusServer(
        "127.0.0.1", 0, lambda: {}, controls, allowed_origins=["http://operator.lab:8080/"]
    )  # a page the lab serves on purpose
    listed.start()
    try:
        assert request(listed.url + "/stop", "POST", {"Origin": "http://operator.lab:8080"})[0] == 200
        assert request(listed.url + "/stop", "POST", {"Origin": "http://operator.lab:8081"})[0] == 403
    finally:
        listed.stop()


def test_public_bind_needs_a_token_and_blank_tokens_are_refused_at_load(monkeypatch):
    monkeypatch.delenv("AGENT_DAEMON_TOKEN", raising=False)
    for host in ("0.0.0.0", "'::'", "192.168.1.20"):
        with pytest.raises(ConfigError, match="without authentication; set the environment variable AGENT_DAEMON"):
            load_daemon_config("sim-tabletop", [f"status.host={host}"])
    monkeypatch.setenv("AGENT_DAEMON_TOKEN", " ")
    with pytest.raises(ConfigError, match="token is blank"):
        load_daemon_config("sim-tabletop", ["status.host=0.0.0.0"])
    monkeypatch.setenv("LAB_TOKEN", "a-real-secret")
    config = load_daemon_config("sim-tabletop", ["status.host=0.0.0.0", "status.token_env=LAB_TOKEN"])
    assert config.status.host == "0.0.0.0"
    with pytest.raises(ConfigError, match="is not an origin"):
        load_daemon_config("sim-tabletop", ["status.allowed_origins=[evil.example]"])


def test_a_port_in_use_is_refused_before_anything_is_written(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        config = daemon_config(tmp_path, free_port(), f"status.port={busy.getsockname()[1]}")
        with pytest.raises(StatusEndpointError, match=r"cannot listen on 127\.0\.0\.1.*pick another status\.port"):
            RobotDaemon(config).run()
    finally:
        busy.close()
    assert not (tmp_path / "run").exists()  # no config.yaml, no empty summary: the same run_dir works next time


# ---- a driver path must name a driver class; the endpoint answers every request, and stays quiet about hang-ups


def test_a_driver_path_that_is_not_a_driver_class_is_refused_before_it_is_called(tmp_path):
    with pytest.raises(ConfigError, match=r"robot driver 'os:system' is not a robot\.interfaces\.Robot class"):
        RobotDaemon(daemon_config(tmp_path, free_port(), "robot.driver=os:system"))
    with pytest.raises(ConfigError, match=r"camera driver 'subprocess:Popen' is not a robot\.interfaces\.Camera"):
        RobotDaemon(daemon_config(tmp_path, free_port(), "cameras.0.driver=subprocess:Popen")).run()
    with pytest.raises(ConfigError, match=r"robot driver 'robot\.sim:SimRobot' does not take the arguments"):
        RobotDaemon(daemon_config(tmp_path, free_port(), "robot.args.no_such_option=1")).run()
    assert not (tmp_path / "run").exists()


def test_a_driver_path_that_is_a_function_is_one_message_from_the_cli(tmp_path):
    agent = Path(sys.executable).with_name("agent")
    command = [str(agent), "robot", "run", "--config", "sim-tabletop", "robot.driver=os:system", "status.port=0"]
    finished = subprocess.run([*command, f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600)
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr and "is not a robot.interfaces.Robot class" in finished.stderr


def _raw_request(url: str, text: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as client:
        client.sendall(text)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _handler_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if "process_request_thread" in thread.name]


def test_the_endpoint_answers_json_on_any_failure_and_ignores_clients_that_hang_up(capfd):
    def failing_status() -> dict:
        raise RuntimeError("the status broke")

    server = StatusServer("127.0.0.1", 0, failing_status, {"stop": lambda: "stopping"})
    server.start()
    try:
        port = server.url.rsplit(":", 1)[1]
        reply = _raw_request(server.url, f"GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.0 500") and b'"error": "internal error (the status broke)"' in reply
        malformed = f"POST /stop HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:abc\r\n\r\n"
        reply = _raw_request(server.url, malformed.encode())
        assert reply.split(b" ", 2)[1] in (b"400", b"403") and b'"error"' in reply  # a JSON refusal, not a hang-up
        capfd.readouterr()

        for _ in range(20):  # a flood of clients that send half a request and reset the connection
            client = socket.create_connection(("127.0.0.1", int(port)), timeout=60)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            client.close()
        wait_for(lambda: not _handler_threads(), "the endpoint to finish with the reset clients")
        assert request(server.url + "/healthz") == (200, {"status": "ok"})
        assert "Traceback" not in capfd.readouterr().err
    finally:
        server.stop()
