"""The two ways to reach a device through an adb server: ``adbutils`` (speaks the server protocol from Python)
or the ``adb`` binary (Debian's ``adb`` package or platform-tools), chosen by ``AndroidEnvConfig.client``.

Both give ``shell(command) -> ShellOutput`` (exit code through the shell v2 protocol), ``exec_out(command)
-> bytes`` (binary-safe, for ``screencap -p``) and ``devices()``. Failures a user can fix raise a subclass of
``AndroidDeviceError`` that names the device and the fix; ``DeviceLostError`` means a device that was there
went away (unplugged, emulator closed) and the episode cannot go on.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Protocol

from data_tools.errors import UserFacingError

DEFAULT_ADB_PORT = 5037
MAX_ADB_REQUEST_BYTES = 0xFFFF  # the adb server protocol prefixes a request with its length in 4 hex digits


class AndroidDeviceError(UserFacingError, ConnectionError):
    """A device or adb server that cannot be used; the message says which and how to fix it."""


class AdbServerUnreachableError(AndroidDeviceError):
    """No adb server answers on the configured host and port."""


class DeviceNotFoundError(AndroidDeviceError):
    """No device with the wanted serial (or none at all) is attached."""


class DeviceUnauthorizedError(AndroidDeviceError):
    """The device has not accepted this computer's adb key."""


class DeviceOfflineError(AndroidDeviceError):
    """The device is listed but offline (booting, or its adb connection broke)."""


class DeviceLostError(AndroidDeviceError):
    """A device that answered before is gone."""


class DeviceCommandTimeoutError(AndroidDeviceError, TimeoutError):
    """A device command did not finish within its timeout."""


class DeviceActionError(AndroidDeviceError):
    """An action the device refused (an app not installed, text it cannot type); a counted failed step."""


class AdbRequestTooLongError(DeviceActionError, ValueError):
    """A command longer than one adb request can carry; refused before anything is sent."""


def check_request_length(service: str, command: str) -> str:
    """``command`` if the adb request ``service:command`` fits the protocol's 4-hex-digit length prefix,
    else AdbRequestTooLongError (sent anyway, its length would wrap and the server would read garbage)."""
    size = len(f"{service}:{command}".encode())
    if size > MAX_ADB_REQUEST_BYTES:
        raise AdbRequestTooLongError(
            f"the device command `{command[:60]}...` is {size} bytes, more than the {MAX_ADB_REQUEST_BYTES} an adb "
            "request can carry; send shorter commands (type long text in parts)"
        )
    return command


@dataclass(frozen=True)
class ShellOutput:
    returncode: int
    stdout: bytes
    stderr: bytes = b""

    @property
    def text(self) -> str:
        return (self.stdout + self.stderr).decode("utf-8", "replace")


@dataclass(frozen=True)
class DeviceEntry:
    serial: str
    state: str  # "device", "unauthorized", "offline", ...


class AdbClient(Protocol):
    """What the environment needs from an adb client."""

    serial: str

    def devices(self) -> list[DeviceEntry]: ...

    def shell(self, command: str, timeout: float) -> ShellOutput: ...

    def exec_out(self, command: str, timeout: float) -> bytes: ...


def classify_failure(message: str, serial: str, endpoint: str) -> AndroidDeviceError:
    """The typed error for an adb server's FAIL message (or the adb binary's ``error: ...`` line)."""
    text = message.strip().removeprefix("error: ").splitlines()[0] if message.strip() else "unknown error"
    if "unauthorized" in text:
        return DeviceUnauthorizedError(
            f"device {serial} is unauthorized: unlock it and accept the 'Allow USB debugging?' prompt "
            "(then rerun; `adb devices` should say 'device')"
        )
    if "offline" in text:
        return DeviceOfflineError(
            f"device {serial} is offline: wait for it to boot, or reconnect it (`adb reconnect`) and rerun"
        )
    if "not found" in text or "no devices" in text:
        return DeviceNotFoundError(f"device {serial} is not attached to the adb server at {endpoint} ({text})")
    return AndroidDeviceError(f"adb at {endpoint} failed for {serial}: {text}")


def check_server(host: str, port: int, timeout: float = 1.0) -> None:
    """Raise AdbServerUnreachableError unless something listens on host:port.

    adbutils and the adb binary start a server themselves on the default port; on another port (a remote or
    simulated server) nothing would start it, so the environment checks first and says what to do.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as error:
        raise AdbServerUnreachableError(
            f"no adb server at {host}:{port} ({error.strerror or error}); start one with `adb -P {port} start-server` "
            f"(or `adb start-server` and port {DEFAULT_ADB_PORT}), or point adb_host/adb_port at a running one"
        ) from None


class AdbutilsClient:
    """The adb server protocol through ``adbutils``."""

    def __init__(self, host: str, port: int, serial: str) -> None:
        import adbutils

        self.host, self.port, self.serial = host, port, serial
        self._errors = (adbutils.AdbError, adbutils.AdbTimeout, OSError)
        self._client = adbutils.AdbClient(host=host, port=port, socket_timeout=30)
        self._device = adbutils.AdbDevice(self._client, serial=serial) if serial else None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _fail(self, error: Exception, timeout: float) -> AndroidDeviceError:
        import adbutils
        from adbutils.errors import AdbConnectionError

        if isinstance(error, adbutils.AdbTimeout | TimeoutError | socket.timeout):
            return DeviceCommandTimeoutError(f"device {self.serial} did not answer within {timeout:.0f} s")
        if isinstance(error, AdbConnectionError) or (
            isinstance(error, OSError) and not isinstance(error, adbutils.AdbError)
        ):
            return AdbServerUnreachableError(f"lost the adb server at {self.endpoint}: {error}")
        return classify_failure(str(error.args[0]) if error.args else str(error), self.serial, self.endpoint)

    def devices(self) -> list[DeviceEntry]:
        if self.port != DEFAULT_ADB_PORT:
            check_server(self.host, self.port)
        try:
            return [DeviceEntry(info.serial, info.state) for info in self._client.list()]
        except self._errors as error:
            raise self._fail(error, 30) from None

    def shell(self, command: str, timeout: float) -> ShellOutput:
        check_request_length("shell,v2", command)
        if self.port != DEFAULT_ADB_PORT:
            check_server(self.host, self.port)
        try:
            result = self._device.shell2(command, timeout=timeout, encoding=None, v2=True)
        except self._errors as error:
            raise self._fail(error, timeout) from None
        return ShellOutput(result.returncode, result.stdout, result.stderr)

    def exec_out(self, command: str, timeout: float) -> bytes:
        check_request_length("exec", command)
        if self.port != DEFAULT_ADB_PORT:
            check_server(self.host, self.port)
        try:
            connection = self._device.open_transport(timeout=timeout)
            try:
                connection.send_command(f"exec:{command}")
                connection.check_okay()
                connection.conn.settimeout(timeout)
                return connection.read_until_close(encoding=None)
            finally:
                connection.close()
        except self._errors as error:
            raise self._fail(error, timeout) from None


class AdbBinaryClient:
    """The ``adb`` executable (``adb -H HOST -P PORT -s SERIAL shell|exec-out ...``)."""

    def __init__(self, host: str, port: int, serial: str, executable: str = "adb") -> None:
        path = shutil.which(executable)
        if path is None:
            raise AndroidDeviceError(
                f"the adb executable {executable!r} is not on PATH; install it (Debian: apt-get install adb, or "
                "Android platform-tools) or use client=adbutils"
            )
        self.host, self.port, self.serial, self.executable = host, port, serial, path

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self, arguments: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        if self.port != DEFAULT_ADB_PORT:
            check_server(self.host, self.port)
        command = [self.executable, "-H", self.host, "-P", str(self.port), *arguments]
        try:
            return subprocess.run(command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceCommandTimeoutError(f"device {self.serial} did not answer within {timeout:.0f} s") from None

    def _check(self, result: subprocess.CompletedProcess[bytes]) -> None:
        error = result.stderr.decode("utf-8", "replace")
        if result.returncode != 0 and error.startswith("error:"):
            raise classify_failure(error, self.serial, self.endpoint)

    def devices(self) -> list[DeviceEntry]:
        result = self._run(["devices"], 30)
        self._check(result)
        entries = []
        for line in result.stdout.decode("utf-8", "replace").splitlines()[1:]:
            serial, _, state = line.partition("\t")
            if serial and state:
                entries.append(DeviceEntry(serial.strip(), state.strip()))
        return entries

    def shell(self, command: str, timeout: float) -> ShellOutput:
        result = self._run(["-s", self.serial, "shell", check_request_length("shell,v2", command)], timeout)
        self._check(result)
        return ShellOutput(result.returncode, result.stdout, result.stderr)

    def exec_out(self, command: str, timeout: float) -> bytes:
        result = self._run(["-s", self.serial, "exec-out", check_request_length("exec", command)], timeout)
        self._check(result)
        return result.stdout


def make_client(kind: str, host: str, port: int, serial: str, executable: str = "adb") -> AdbClient:
    """The client named by ``kind``: "adbutils" or "adb"."""
    if kind == "adbutils":
        return AdbutilsClient(host, port, serial)
    if kind == "adb":
        return AdbBinaryClient(host, port, serial, executable)
    raise AndroidDeviceError(f"unknown adb client {kind!r}; use adbutils or adb")
