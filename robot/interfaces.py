"""The robot and camera interfaces, in the spirit of LeRobot's: a robot says what it observes and
what it accepts (``observation_features``, ``action_features``), connects and disconnects, returns
observations, and ``send_action`` returns the action actually sent after its safety clipping. The
simulated robot (``robot.sim``) and hardware drivers implement the same interface, so the control
daemon drives both through one code path.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from data_tools.errors import UserFacingError
from robot.safety import ActionLayout


class RobotError(UserFacingError, RuntimeError):
    """A robot or camera used in a way it cannot serve (not connected, connected twice, a bad action)."""


class NotConnectedError(RobotError):
    """A call that needs a connection, made before ``connect()`` or after ``disconnect()``."""


class InvalidRobotActionError(RobotError, ValueError):
    """An action of the wrong shape, or with NaN or infinite values; nothing was sent."""


@dataclass(frozen=True)
class Feature:
    """One observation or action entry: its shape, dtype and the names of its dimensions."""

    shape: tuple[int, ...]
    dtype: str
    names: tuple[str, ...] | None = None


class Robot(ABC):
    """A robot: features, connection, observations, actions (clipped for safety before sending).

    The control daemon also uses the hooks below the abstract methods; a hardware driver overrides
    those that apply to it (``action_layout``, which the daemon requires, for what each action entry means
    to the safety filter; ``joint_names`` and ``measured_pose`` for the joint and workspace checks,
    ``hold_action`` for what "hold still" means for its action space, ``stop`` for its brake,
    ``last_info`` when it can tell that a task ended). Each has a default, so the daemon asks every robot
    the same way and never probes for what a driver offers."""

    name: str = "robot"
    joint_names: tuple[str, ...] = ()  # the joints the safety config must give limits for
    # which action entries move (metres per unit), rotate and grip; None: the daemon refuses to drive it
    action_layout: ActionLayout | None = None

    @property
    @abstractmethod
    def observation_features(self) -> dict[str, Feature]: ...

    @property
    @abstractmethod
    def action_features(self) -> dict[str, Feature]: ...

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    @abstractmethod
    def get_observation(self) -> dict[str, Any]: ...

    @abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Send ``action`` after safety clipping; return what was actually sent."""

    @property
    def last_info(self) -> dict[str, Any]:
        """What the robot knows of the episode after its latest step: ``terminated`` / ``truncated`` when
        the task ended it, ``success`` whether it was solved. The default knows nothing ({}): episodes of
        such a robot end at ``episode.max_steps`` or by the operator."""
        return {}

    def start_episode(self, index: int) -> dict[str, Any]:
        """Prepare episode ``index`` (a simulator resets; hardware may move to a start pose) and return
        its task for the policy (at least ``instruction`` when the robot knows it)."""
        return {}

    def measured_pose(self, observation: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(end-effector xyz, joint positions in ``joint_names`` order) from an observation, where known."""
        return None, None

    def hold_action(self, observation: dict[str, Any]) -> np.ndarray:
        """The action that keeps the robot where it is (sent when no fresh policy action is there)."""
        raise RobotError(f"{self.name} does not say how to hold still; implement hold_action() in its driver")

    def stop(self) -> None:
        """Bring the robot to a standstill now (e-stop); a driver with a brake or stop command uses it.
        The default sends nothing more: the daemon stops commanding the robot."""
        return None

    def require_connection(self) -> None:
        if not self.is_connected:
            raise NotConnectedError(f"{self.name} is not connected; call connect() first")

    def check_action(self, action: Any) -> np.ndarray:
        """The action as a float vector of the declared shape; InvalidRobotActionError otherwise."""
        expected = self.action_features["action"].shape
        array = np.asarray(action, dtype=np.float64)
        if array.shape != expected:
            raise InvalidRobotActionError(
                f"{self.name} takes actions of shape {expected}, got {array.shape}; nothing was sent"
            )
        if not np.all(np.isfinite(array)):
            raise InvalidRobotActionError(
                f"{self.name} got an action with NaN or inf ({array.tolist()}); nothing was sent"
            )
        return array

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_connected:
            self.disconnect()


class Camera(ABC):
    """A camera read in a background thread: ``read()`` waits for a new frame, ``async_read()``
    returns the latest one at once (the control loop never waits on the camera)."""

    # True for a camera whose frames its robot makes (the simulator renders them): the daemon then passes
    # the robot to its constructor as ``robot=``, next to the configured args
    rendered_by_robot: ClassVar[bool] = False

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self._latest: np.ndarray | None = None
        self._latest_time = 0.0
        self.error: BaseException | None = None  # why the reader thread ended, if it failed
        self._new_frame = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def capture(self) -> np.ndarray:
        """Grab one frame (HxWx3 uint8 RGB) from the device; called by the background thread."""

    @property
    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def connect(self) -> None:
        if self.is_connected:
            raise RobotError(f"{type(self).__name__} is already connected")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{type(self).__name__}-reader", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = 1.0 / self.fps
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                frame = self.capture()
            except Exception as error:  # the device is gone: the thread ends and is_connected turns False
                self.error = error
                return
            with self._new_frame:
                self._latest, self._latest_time = frame, time.monotonic()
                self._new_frame.notify_all()
            self._stop.wait(max(0.0, period - (time.monotonic() - started)))

    def read(self, timeout_s: float = 1.0) -> np.ndarray:
        """The next frame captured after this call."""
        if not self.is_connected:
            raise NotConnectedError(f"{type(self).__name__} is not connected; call connect() first")
        asked = time.monotonic()
        with self._new_frame:
            if not self._new_frame.wait_for(lambda: self._latest_time > asked, timeout=timeout_s):
                raise RobotError(f"{type(self).__name__} gave no frame within {timeout_s} s; check the device")
            return self._latest  # type: ignore[return-value]

    def async_read(self, timeout_s: float = 1.0) -> np.ndarray:
        """The latest frame (waits only until the first one exists)."""
        if not self.is_connected:
            raise NotConnectedError(f"{type(self).__name__} is not connected; call connect() first")
        with self._new_frame:
            if not self._new_frame.wait_for(lambda: self._latest is not None, timeout=timeout_s):
                raise RobotError(f"{type(self).__name__} gave no frame within {timeout_s} s; check the device")
            return self._latest  # type: ignore[return-value]

    def latest(self) -> tuple[np.ndarray | None, float]:
        """The latest frame and its capture time (``time.monotonic()``) without waiting; (None, 0) before the first."""
        with self._new_frame:
            return self._latest, self._latest_time

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._thread = None
