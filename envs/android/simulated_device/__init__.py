"""A simulated Android phone behind a real-protocol adb server on a loopback port: a test and demo tool.

``with simulated_phone() as (server, serial):`` gives an adb server on ``127.0.0.1:server.port`` with one
device; ``AndroidEnv(AndroidEnvConfig(serial=serial, adb_port=server.port))`` then drives it through the
same client path as a real phone. Its app, "Sim App", is described in ``screens``.
"""

from envs.android.simulated_device.adb_server import SimulatedAdbServer, simulated_phone
from envs.android.simulated_device.device import ShellResult, SimulatedDevice

__all__ = ["ShellResult", "SimulatedAdbServer", "SimulatedDevice", "simulated_phone"]
