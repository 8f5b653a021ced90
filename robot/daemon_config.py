"""Typed configuration of the robot control daemon. ``configs/robot/NAME.yaml`` fills it and
``key=value`` dotted overrides change it (``agent robot run --config sim-tabletop control_hz=20``).

Drivers are named by import path (``robot.sim:SimRobot``, ``my_lab.arms:Arm``), never by a name the
daemon knows, so a hardware driver needs no change here (see ``robot.interfaces``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magma.config import ConfigError, find_config_file, merge_structured, read_yaml
from robot.safety import SafetyLimits

ROBOT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "robot"
REST_MODES = ("hold", "pose")


@dataclass
class DriverConfig:
    driver: str = "robot.sim:SimRobot"  # "package.module:Class" of a robot.interfaces.Robot
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class CameraConfig:
    name: str = "third_person"
    driver: str = "robot.sim:SimCamera"  # a robot.interfaces.Camera; gets robot= if it takes one
    key: str = "image"  # the observation key the policy reads this camera's frames under
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyLinkConfig:
    url: str = "ws://127.0.0.1:8700"
    token_env: str = "AGENT_POLICY_TOKEN"  # the bearer token is read from this environment variable
    request_threshold: int = 1  # ask for actions when the queue covers this many ticks or fewer
    ensemble_weight: float = 0.0  # temporal ensembling of overlapping chunks (robot.chunking)
    request_timeout_s: float = 5.0
    forward: list[str] = field(default_factory=lambda: ["instruction"])  # robot observation entries passed on


@dataclass
class WatchdogConfig:
    hold_after_ms: float = 300.0  # no fresh action this long: hold position
    safe_stop_after_ms: float = 2000.0  # still none: safe stop, until the operator resumes
    rest: str = "hold"  # safe stop behaviour: "hold" where it is, or move to "pose" (rest_position)
    rest_position: list[float] = field(default_factory=lambda: [0.35, 0.0, 0.3])


@dataclass
class SafetyConfig(SafetyLimits):
    stale_camera_ms: float = 500.0  # a frame older than this is stale: hold


@dataclass
class EpisodeConfig:
    episodes: int = 1
    max_steps: int = 0  # 0: until the robot ends the episode (or SIGTERM / POST /stop)
    instruction: str = ""  # used when the robot does not tell its task


@dataclass
class StatusConfig:
    host: str = "127.0.0.1"
    port: int = 8710  # 0: any free port (written to the run directory's status.json)
    live: bool = True  # the one-line live display on stderr
    metrics_every_s: float = 1.0


@dataclass
class DaemonConfig:
    name: str = "robot"
    control_hz: float = 10.0
    spin_s: float = 0.002  # the last part of each wait is a busy spin, for a precise tick
    run_dir: str = ""  # "" -> runs/robot/NAME-TIME
    estop_file: str = ""  # "" -> RUN_DIR/ESTOP; touching it stops the robot within one period
    record: bool = True  # every episode as a LeRobotDataset v3 under RUN_DIR/episodes/
    robot: DriverConfig = field(default_factory=DriverConfig)
    cameras: list[CameraConfig] = field(default_factory=list)
    policy: PolicyLinkConfig = field(default_factory=PolicyLinkConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    status: StatusConfig = field(default_factory=StatusConfig)


def load_daemon_config(name_or_path: str | Path, overrides: list[str] | None = None) -> DaemonConfig:
    path = find_config_file(name_or_path, ROBOT_CONFIG_DIR, "robot")
    return daemon_config_from(read_yaml(path, "robot"), overrides or [], str(path))


def daemon_config_from(data: Any, overrides: list[str], source: str) -> DaemonConfig:
    config = merge_structured(DaemonConfig, data, overrides, source)
    problems = []
    if not 1 <= config.control_hz <= 200:
        problems.append(f"control_hz={config.control_hz} is out of range; use 1 to 200 (10 to 50 is typical)")
    if config.watchdog.rest not in REST_MODES:
        problems.append(f"watchdog.rest={config.watchdog.rest!r}; use one of {list(REST_MODES)}")
    if config.watchdog.hold_after_ms <= 0 or config.watchdog.safe_stop_after_ms < config.watchdog.hold_after_ms:
        problems.append("watchdog.hold_after_ms must be > 0 and safe_stop_after_ms >= hold_after_ms")
    if config.policy.request_threshold < 0 or config.episode.episodes < 1:
        problems.append("policy.request_threshold must be >= 0 and episode.episodes >= 1")
    if len({camera.key for camera in config.cameras}) != len(config.cameras):
        problems.append("two cameras share an observation key; give each camera its own key")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


def load_object(path: str, what: str) -> Any:
    """The object at ``package.module:Name`` (a driver class); ConfigError naming the path otherwise."""
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"{what} '{path}' is not an import path; write it as package.module:ClassName")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot load {what} '{path}' ({error}); check the module and class name") from None
