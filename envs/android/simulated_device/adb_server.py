"""An adb server on a loopback port that serves simulated devices, speaking the real adb server protocol.

Clients (``adbutils``, the ``adb`` binary with ``-H/-P``) talk to it exactly as to ``adb start-server``'s
daemon: a request is four hex digits of length then the text; the answer is ``OKAY`` (with a hex-length
string for host queries) or ``FAIL`` and a hex-length message. Host services: ``host:version``,
``host:devices``, ``host:devices-l``, ``host:features``, ``host:transport:SERIAL``, ``host:tport:serial:SERIAL``
(answers the 8-byte transport id), ``host:transport-any`` / ``host:tport:any``, ``host-serial:SERIAL:features``,
``...:get-state`` and ``...:get-serialno``, ``host:kill``. After a transport is chosen the connection carries
one device service: ``shell:CMD`` (raw output, then close), ``shell,v2,...:CMD`` (the shell protocol's
packets: id byte, little-endian length, data; exit code in packet 3) and ``exec:CMD`` (raw output).
Devices can be added, removed (unplugged) or marked ``unauthorized`` / ``offline`` while it runs.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator

from envs.android.simulated_device.device import SimulatedDevice

ADB_SERVER_VERSION = 41  # what platform-tools 29+ and Debian's adb 1.0.41 speak
_UNAUTHORIZED = (
    "device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\nTry 'adb kill-server' if that seems wrong.\n"
    "Otherwise check for a confirmation dialog on your device."
)
_SHELL_STDOUT, _SHELL_STDERR, _SHELL_EXIT = 1, 2, 3


def _hex_block(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return f"{len(data):04x}".encode() + data


class _Handler(socketserver.BaseRequestHandler):
    server: SimulatedAdbServer

    def setup(self) -> None:
        # Answers are several small writes; without this, Nagle's algorithm and the client's delayed ACKs
        # would add ~40 ms to each (the real adb server sets TCP_NODELAY too).
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.request.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client closed the connection")
            data += chunk
        return data

    def _read_request(self) -> str:
        length = int(self._read_exact(4), 16)
        return self._read_exact(length).decode("utf-8", "replace")

    def _okay(self, payload: str | None = None) -> None:
        self.request.sendall(b"OKAY" + (_hex_block(payload) if payload is not None else b""))

    def _fail(self, message: str) -> None:
        self.request.sendall(b"FAIL" + _hex_block(message))

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, ValueError):
            device: SimulatedDevice | None = None
            while True:
                request = self._read_request()
                if device is not None:
                    self._device_service(device, request)
                    return
                device = self._host_service(request)
                if device is None:
                    return

    def _find(self, serial: str | None) -> SimulatedDevice | str:
        """The device for ``serial`` (None: the only one), or the FAIL message a real server gives."""
        devices = self.server.devices_snapshot()
        if serial is None:
            if not devices:
                return "no devices/emulators found"
            if len(devices) > 1:
                return "more than one device/emulator"
            device = next(iter(devices.values()))
        elif serial not in devices:
            return f"device '{serial}' not found"
        else:
            device = devices[serial]
        if device.state == "unauthorized":
            return _UNAUTHORIZED
        if device.state == "offline":
            return "device offline"
        return device

    def _host_service(self, request: str) -> SimulatedDevice | None:
        """Answer a host request; returns the device when the connection switches to it."""
        server = self.server
        if request == "host:version":
            self._okay(f"{ADB_SERVER_VERSION:04x}")
        elif request in ("host:devices", "host:devices-l"):
            lines = []
            for device in server.devices_snapshot().values():
                line = f"{device.serial}\t{device.state}"
                if request.endswith("-l"):
                    line = f"{device.serial:<22} {device.state} {device.device_details()}"
                lines.append(line + "\n")
            self._okay("".join(lines))
        elif request == "host:features":
            self._okay("shell_v2,cmd,stat_v2")
        elif request == "host:kill":
            self._okay()
        elif request.startswith(("host:transport", "host:tport:")):
            serial = None
            for prefix in ("host:transport:", "host:tport:serial:"):
                if request.startswith(prefix):
                    serial = request[len(prefix) :]
            found = self._find(serial)
            if isinstance(found, str):
                self._fail(found)
                return None
            self.request.sendall(b"OKAY")
            if request.startswith("host:tport:"):
                self.request.sendall(struct.pack("<Q", found.transport_id))
            return found
        elif request.startswith(("host-serial:", "host:")):
            target, _, query = request.rpartition(":")
            serial = target[len("host-serial:") :] if target.startswith("host-serial:") else None
            found = self._find(serial)
            known = server.devices_snapshot()
            if query == "get-state" and serial in known:
                self._okay(known[serial].state)
            elif isinstance(found, str):
                self._fail(found)
            elif query == "features":
                self._okay(found.features)
            elif query == "get-serialno":
                self._okay(found.serial)
            elif query == "get-state":
                self._okay(found.state)
            else:
                self._fail(f"unknown host service '{request}'")
        else:
            self._fail(f"unknown host service '{request}'")
        return None

    def _device_service(self, device: SimulatedDevice, request: str) -> None:
        service, _, command = request.partition(":")
        if service == "shell" or service.startswith("shell,"):
            result = device.run_shell(command)
            self.request.sendall(b"OKAY")
            if "v2" in service.split(","):
                for packet_id, data in ((_SHELL_STDOUT, result.stdout), (_SHELL_STDERR, result.stderr)):
                    if data:
                        self.request.sendall(struct.pack("<BI", packet_id, len(data)) + data)
                self.request.sendall(struct.pack("<BIB", _SHELL_EXIT, 1, result.returncode & 0xFF))
            else:  # shell v1 has one stream and no exit code, as on old devices
                self.request.sendall(result.stdout + result.stderr)
        elif service == "exec":
            result = device.run_shell(command)
            self.request.sendall(b"OKAY" + result.stdout)
        else:
            self._fail(f"closed: unsupported service '{service}' on the simulated device")


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SimulatedAdbServer:
    """The adb server of one or more simulated devices on ``127.0.0.1:port`` (port 0: a free one).

    ``with SimulatedAdbServer() as server:`` starts it; ``server.add_device(...)``, ``remove_device(serial)``
    and ``device.state = "offline"`` change what clients see, as plugging and unplugging phones would.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._devices: dict[str, SimulatedDevice] = {}
        self._lock = threading.Lock()
        self._server = _ThreadingServer((host, port), _Handler)
        self._server.devices_snapshot = self.devices_snapshot  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def devices_snapshot(self) -> dict[str, SimulatedDevice]:
        with self._lock:
            return dict(self._devices)

    def add_device(self, device: SimulatedDevice | None = None, **kwargs: object) -> SimulatedDevice:
        """Plug a device in (a new ``SimulatedDevice(**kwargs)`` unless one is given); returns it."""
        device = device or SimulatedDevice(**kwargs)  # type: ignore[arg-type]
        with self._lock:
            device.transport_id = len(self._devices) + 1
            self._devices[device.serial] = device
        return device

    def remove_device(self, serial: str) -> None:
        """Unplug a device: from now on requests for it fail with "device 'SERIAL' not found"."""
        with self._lock:
            self._devices.pop(serial, None)

    def start(self) -> SimulatedAdbServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="simulated-adb", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimulatedAdbServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def simulated_phone(serial: str = "emulator-5554", **kwargs: object) -> Iterator[tuple[SimulatedAdbServer, str]]:
    """A running simulated adb server with one device; yields (server, serial)."""
    with SimulatedAdbServer() as server:
        server.add_device(serial=serial, **kwargs)
        yield server, serial
