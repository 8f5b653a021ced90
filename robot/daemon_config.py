"""Typed configuration of the robot control daemon. ``configs/robot/NAME.yaml`` fills it and
``key=value`` dotted overrides change it (``agent robot run --config sim-tabletop control_hz=20``).

Drivers are named by import path (``robot.sim:SimRobot``, ``my_lab.arms:Arm``), never by a name the
daemon knows, so a hardware driver needs no change here (see ``robot.interfaces``)."""

from __future__ import annotations

import importlib
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_tools.config_files import ConfigError, find_config_file, merge_structured, read_yaml
from robot.chunking import MERGE_MODES
from robot.endpoint_access import EndpointAccessError, check_allowed_origins, check_bind
from robot.safety import SafetyLimits, safety_config_problems

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
    request_threshold: int = 1  # ask for actions when the queue covers this many ticks + the policy's latency
    merge: str = "latest"  # overlapping chunks: "latest" (the newest runs) or "ensemble" (robot.chunking)
    ensemble_weight: float = 0.0  # temporal ensembling weight of overlapping chunks, with merge: ensemble
    wait_in_tick: float = 0.7  # share of a period the loop may wait for actions it just asked for (0: never)
    max_action_age_ms: float = 1000.0  # queued actions from an older observation are dropped, never run
    request_timeout_s: float = 5.0
    forward: list[str] = field(default_factory=lambda: ["instruction"])  # robot observation entries passed on
    state_key: str = "state"  # the key the state travels under ("observation/state" for an openpi LIBERO policy)


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
    host: str = "127.0.0.1"  # loopback only; any other address needs a token (token_env)
    port: int = 8710  # 0: any free port (written to the run directory's status.json)
    token_env: str = "AGENT_DAEMON_TOKEN"  # when set, every request needs "Authorization: Bearer TOKEN"
    allowed_origins: list[str] = field(default_factory=list)  # web pages (scheme://host:port) allowed to call it
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
    if not 0 <= config.spin_s < 1.0 / max(config.control_hz, 1):
        problems.append(f"spin_s={config.spin_s} must be >= 0 and shorter than one control period")
    problems += _watchdog_problems(config)
    problems += safety_config_problems(config.safety)
    if not (math.isfinite(config.safety.stale_camera_ms) and config.safety.stale_camera_ms > 0):
        problems.append(f"safety.stale_camera_ms={config.safety.stale_camera_ms} must be a number above 0")
    policy = config.policy
    if policy.request_threshold < 0 or config.episode.episodes < 1 or config.episode.max_steps < 0:
        problems.append("policy.request_threshold must be >= 0, episode.episodes >= 1 and episode.max_steps >= 0")
    if not (math.isfinite(policy.request_timeout_s) and policy.request_timeout_s > 0):
        problems.append(f"policy.request_timeout_s={policy.request_timeout_s} must be a number above 0")
    if not (math.isfinite(policy.ensemble_weight) and policy.ensemble_weight >= 0):
        problems.append(f"policy.ensemble_weight={policy.ensemble_weight} must be a number >= 0")
    if not (math.isfinite(policy.max_action_age_ms) and policy.max_action_age_ms > 0):
        problems.append(f"policy.max_action_age_ms={policy.max_action_age_ms} must be a number of milliseconds above 0")
    if policy.merge not in MERGE_MODES:
        problems.append(f"policy.merge={policy.merge!r} is unknown; use one of {list(MERGE_MODES)}")
    if not (math.isfinite(policy.wait_in_tick) and 0 <= policy.wait_in_tick <= 0.9):
        problems.append(
            f"policy.wait_in_tick={policy.wait_in_tick} must be a share of the period from 0 to 0.9 (0: never wait)"
        )
    if len({camera.key for camera in config.cameras}) != len(config.cameras):
        problems.append("two cameras share an observation key; give each camera its own key")
    problems += _status_problems(config.status)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


def _watchdog_problems(config: DaemonConfig) -> list[str]:
    watchdog, problems = config.watchdog, []
    if watchdog.rest not in REST_MODES:
        problems.append(f"watchdog.rest={watchdog.rest!r}; use one of {list(REST_MODES)}")
    hold, safe_stop = watchdog.hold_after_ms, watchdog.safe_stop_after_ms
    if not (math.isfinite(hold) and math.isfinite(safe_stop) and 0 < hold <= safe_stop):
        problems.append("watchdog.hold_after_ms must be > 0 and safe_stop_after_ms >= hold_after_ms (finite numbers)")
    rest = watchdog.rest_position
    if len(rest) != 3 or not all(math.isfinite(value) for value in rest):
        problems.append(f"watchdog.rest_position={list(rest)} must be three finite numbers [x, y, z] in metres")
    elif not safety_config_problems(config.safety) and not all(
        low <= value <= high
        for value, low, high in zip(rest, config.safety.workspace_min, config.safety.workspace_max, strict=True)
    ):
        problems.append(
            f"watchdog.rest_position={list(rest)} is outside the workspace box; put it inside "
            f"{list(config.safety.workspace_min)}..{list(config.safety.workspace_max)}"
        )
    return problems


def status_token(status: StatusConfig) -> str | None:
    """The control endpoint's bearer token, from the environment variable ``status.token_env``."""
    return os.environ.get(status.token_env) if status.token_env else None


def _status_problems(status: StatusConfig) -> list[str]:
    problems = []
    if not 0 <= status.port <= 65535:
        problems.append(f"status.port={status.port} must be 0 (any free port) to 65535")
    if not (math.isfinite(status.metrics_every_s) and status.metrics_every_s > 0):
        problems.append(f"status.metrics_every_s={status.metrics_every_s} must be a number above 0")
    hint = f"set the environment variable {status.token_env or 'AGENT_DAEMON_TOKEN'} (status.token_env)"
    try:
        check_bind(status.host, status_token(status), "status endpoint", hint)
    except EndpointAccessError as error:
        problems.append(str(error))
    try:
        status.allowed_origins = check_allowed_origins(status.allowed_origins, "status endpoint")
    except EndpointAccessError as error:
        problems.append(str(error))
    return problems


def load_object(path: str, what: str) -> Any:
    """The object at ``package.module:Name`` (a driver class); ConfigError naming the path otherwise."""
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"{what} '{path}' is not an import path; write it as package.module:ClassName")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot load {what} '{path}' ({error}); check the module and class name") from None


def load_driver_class(path: str, what: str, interface: type) -> type:
    """The class at ``path``, checked to implement ``interface`` (``robot.interfaces.Robot`` / ``Camera``)
    before anything calls it: a config cannot make the daemon call an arbitrary function."""
    driver = load_object(path, what)
    if not (isinstance(driver, type) and issubclass(driver, interface)):
        raise ConfigError(
            f"{what} '{path}' is not a {interface.__module__}.{interface.__name__} class; "
            f"name a class that implements it (e.g. robot.sim:Sim{interface.__name__})"
        )
    return driver


def construct_driver(driver: type, args: dict[str, Any], path: str, what: str) -> Any:
    """``driver(**args)``; arguments its constructor does not take are one ConfigError naming them."""
    try:
        inspect.signature(driver).bind(**args)
    except TypeError as error:
        raise ConfigError(
            f"{what} '{path}' does not take the arguments {sorted(args)} ({error}); fix its args in the config"
        ) from None
    except ValueError:
        pass  # no signature to check (a C extension class): the constructor itself says what is wrong
    return driver(**args)
