"""``AndroidEnv``: a gymnasium environment over any device that ``adb devices`` lists.

Observation (a dict, the web environment's contract): ``image`` (the Set-of-Mark screenshot, HxWx3 uint8),
``screenshot`` (the raw one), ``som`` and ``text`` (``[id] [class] [text]`` per mark), ``activity`` and
``package`` (in front), ``instruction`` (the task's goal). The action is text: Magma's AITW JSON or an
AndroidWorld JSON action (``envs.android.actions``), possibly inside a model reply's ``` block.

After an action the environment waits for the screen to change (bounded by ``settle.change_timeout_s``),
then for two identical screencaps in a row (bounded by ``settle.stable_timeout_s``); no fixed sleeps. A
reply that does not parse, a mark not on screen, an app not installed or text the device cannot type is a
counted failed step (``info["action_error"]``, ``info["failed_steps"]``) and the episode goes on. A device
that goes away raises ``DeviceLostError``. A screen without a hierarchy (FLAG_SECURE) gives no marks and
``info["observation_error"]``. The episode ends at ``status`` / ``answer`` (terminated) or ``max_steps``
(truncated) and is then graded once by the task's checks. ``info["timings"]`` holds seconds per phase.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium
import numpy as np
from PIL import Image

from data_tools.errors import UserFacingError
from data_tools.som import draw_marks
from envs.android.actions import DeviceAction, parse_android_action
from envs.android.device import AndroidDevice, DeviceActionError, connect_device
from envs.android.hierarchy import BoundMark, HierarchyError, ViewNode, actionable_marks, parse_hierarchy, som_listing
from envs.android.tasks import AndroidTask, evaluate_checks
from magma.actions import ActionParseError


@dataclass
class SettleConfig:
    """How long to wait for the screen after an action: first for a change, then for it to hold still."""

    change_timeout_s: float = 1.5
    stable_timeout_s: float = 3.0
    wait_action_s: float = 5.0  # AndroidWorld's "wait": up to this long for something to change


@dataclass
class AndroidEnvConfig:
    """Which device, through which client, and how the episode runs."""

    serial: str | None = None  # None: the only attached device
    adb_host: str = "127.0.0.1"
    adb_port: int = 5037
    client: str = "adbutils"  # "adbutils" (adb server protocol from Python) or "adb" (the executable)
    adb_executable: str = "adb"
    max_steps: int = 20
    command_timeout_s: float = 10.0
    boot_timeout_s: float = 60.0
    unicode_input: str = "adb_keyboard"  # or "refuse": text `input text` cannot type fails the step
    apps: dict[str, str] = field(default_factory=dict)  # app names for open_app -> package
    swipe_fraction: float = 0.5  # a swipe covers this fraction of the screen (or of the marked element)
    settle: SettleConfig = field(default_factory=SettleConfig)


class AndroidEnv(gymnasium.Env):
    """Android tasks on a real or simulated device; the same client path for both."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self, config: AndroidEnvConfig | None = None, task: AndroidTask | None = None, **overrides: Any
    ) -> None:
        self.config = config or AndroidEnvConfig(**overrides)
        self.task = task
        self.device: AndroidDevice | None = None
        self.marks: list[BoundMark] = []
        self.nodes: list[ViewNode] | None = None
        self.foreground = ("", "")
        self._png = b""
        self._last_obs: dict[str, Any] | None = None
        self._steps = self._failed_steps = 0
        self._done = False
        self.max_steps = self.config.max_steps
        self.observation_space = gymnasium.spaces.Dict(
            {
                "som": gymnasium.spaces.Text(max_length=1_000_000),
                "text": gymnasium.spaces.Text(max_length=1_000_000),
                "activity": gymnasium.spaces.Text(max_length=1_000),
                "package": gymnasium.spaces.Text(max_length=1_000),
                "instruction": gymnasium.spaces.Text(max_length=100_000),
            }
        )  # image sizes are the device's, known after connecting
        self.action_space = gymnasium.spaces.Text(max_length=10_000)

    # -- device --------------------------------------------------------------------------------------

    def connect(self) -> AndroidDevice:
        """Connect (once) to the configured device; the errors name the device and the fix."""
        if self.device is None:
            config = self.config
            self.device = connect_device(
                config.client,
                config.adb_host,
                config.adb_port,
                config.serial,
                config.command_timeout_s,
                config.boot_timeout_s,
                config.adb_executable,
            )
            width, height = self.device.screen.size
            for name in ("image", "screenshot"):
                self.observation_space.spaces[name] = gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)
        return self.device

    # -- episode -------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        task = (options or {}).get("task", self.task)
        if task is None:
            raise UserFacingError("AndroidEnv.reset needs a task; pass reset(options={'task': AndroidTask})")
        self.task = task
        device = self.connect()
        started = time.perf_counter()
        device.read_screen()  # the rotation may have changed since the last episode
        if task.setup.force_stop:
            device.force_stop(task.app)
        if task.setup.clear_data:
            device.clear_data(task.app)
        if task.component is not None:
            device.start_activity(task.component)
        else:
            device.launch_app(task.app)
        self._steps = self._failed_steps = 0
        self._done = False
        self.max_steps = task.max_steps or self.config.max_steps
        timings: dict[str, float] = {"reset": time.perf_counter() - started}
        self._settle(b"", timings, self.config.settle.change_timeout_s)
        observation, info = self._observe(timings)
        info.update(timings=timings, task_id=task.task_id)
        return observation, info

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        if self.device is None or self.task is None or self._done:
            raise UserFacingError("the episode is over or has not started; call reset() before step()")
        timings: dict[str, float] = {}
        info: dict[str, Any] = {"action_error": None}
        self._steps += 1
        started = time.perf_counter()
        parsed: DeviceAction | None = None
        try:
            parsed = parse_android_action(str(action))
        except ActionParseError as error:
            info["action_error"] = str(error)
        timings["parse"] = time.perf_counter() - started
        terminated = parsed is not None and parsed.terminal
        if parsed is not None and not terminated:
            before = self._png
            started = time.perf_counter()
            try:
                self._execute(parsed)
            except DeviceActionError as error:
                info["action_error"] = str(error)
            timings["action"] = time.perf_counter() - started
            wait = self.config.settle.wait_action_s if parsed.kind == "wait" else self.config.settle.change_timeout_s
            self._settle(before, timings, 0.0 if info["action_error"] else wait)
        else:
            self._settle(self._png, timings, 0.0)
        if info["action_error"]:
            self._failed_steps += 1
        observation, observe_info = self._observe(timings)
        info.update(observe_info)
        truncated = not terminated and self._steps >= self.max_steps
        reward = 0.0
        if terminated or truncated:
            self._done = True
            answer = (parsed.text or "") if terminated and parsed is not None and parsed.kind == "answer" else ""
            success, notes = evaluate_checks(self.task, self.nodes, self.foreground, answer)
            if parsed is not None and parsed.kind == "status" and parsed.status == "infeasible":
                notes.append("the policy said the task is infeasible")
                success = False
            reward = 1.0 if success else 0.0
            info.update(success=success, eval_status="pass" if success else "fail", eval_notes=notes, answer=answer)
        info.update(steps=self._steps, failed_steps=self._failed_steps, timings=timings)
        return observation, reward, terminated, truncated, info

    # -- acting --------------------------------------------------------------------------------------

    def bound_mark(self, mark: int) -> BoundMark:
        """Mark ``mark`` of the current observation, or DeviceActionError naming the marks there are."""
        for bound in self.marks:
            if bound.label == mark:
                return bound
        span = f"1..{len(self.marks)}" if self.marks else "none on this screen"
        raise DeviceActionError(f"there is no mark [{mark}] on the screen (marks: {span}); use a mark from the listing")

    def _execute(self, action: DeviceAction) -> None:
        device = self.device
        assert device is not None
        target = None
        if action.mark is not None:
            target = self.bound_mark(action.mark).node.center
        elif action.point is not None:
            target = action.point
        if action.kind == "tap":
            device.tap(*target) if target else None
        elif action.kind == "long_press":
            device.long_press(*target) if target else None
        elif action.kind == "swipe":
            self._swipe(action)
        elif action.kind == "type":
            if target is not None:
                device.tap(*target)
                self._settle(self._png, {}, self.config.settle.change_timeout_s)
            device.type_text(action.text or "", self.config.unicode_input)
        elif action.kind == "key":
            device.key(action.key or "")
        elif action.kind == "open_app":
            name = action.app or ""
            package = self.config.apps.get(name) or self.config.apps.get(name.lower())
            if (
                package is None
                and self.task is not None
                and name.lower() in (self.task.app, self.task.app_name.lower())
            ):
                package = self.task.app  # the task's own app, by its package or its label
            device.launch_app(package or name)

    def _swipe(self, action: DeviceAction) -> None:
        width, height = self.device.screen.size if self.device else (0, 0)
        if self._png:
            width, height = Image.open(io.BytesIO(self._png)).size
        x0, y0, x1, y1 = (0, 0, width, height)
        if action.mark is not None:
            x0, y0, x1, y1 = self.bound_mark(action.mark).node.bounds
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_x, half_y = (x1 - x0) * self.config.swipe_fraction / 2, (y1 - y0) * self.config.swipe_fraction / 2
        offsets = {"up": (0, half_y), "down": (0, -half_y), "left": (half_x, 0), "right": (-half_x, 0)}
        dx, dy = offsets[action.direction or "up"]
        self.device.swipe((cx + dx, cy + dy), (cx - dx, cy - dy))

    # -- observing -----------------------------------------------------------------------------------

    def _settle(self, before: bytes, timings: dict[str, float], change_timeout: float) -> None:
        """Screencap until the screen differs from ``before`` (at most ``change_timeout``), then until two
        screencaps in a row are identical (at most ``stable_timeout_s``). Keeps the last PNG."""
        device = self.device
        assert device is not None
        started = time.perf_counter()
        deadline = time.monotonic() + change_timeout
        png = device.screencap_png()
        while png == before and time.monotonic() < deadline:
            png = device.screencap_png()
        deadline = time.monotonic() + self.config.settle.stable_timeout_s
        while True:
            following = device.screencap_png()
            if following == png or time.monotonic() >= deadline:
                png = following
                break
            png = following
        self._png = png
        timings["settle"] = timings.get("settle", 0.0) + time.perf_counter() - started

    def _observe(self, timings: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
        device = self.device
        assert device is not None and self.task is not None
        info: dict[str, Any] = {"observation_error": None}
        started = time.perf_counter()
        screenshot = np.asarray(Image.open(io.BytesIO(self._png)).convert("RGB"))
        timings["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        dump = device.dump_hierarchy()
        timings["dump"] = time.perf_counter() - started
        started = time.perf_counter()
        size = (screenshot.shape[1], screenshot.shape[0])
        try:
            self.nodes, _ = parse_hierarchy(dump)
            self.marks = actionable_marks(self.nodes, size)
            listing = som_listing(self.marks)
        except HierarchyError as error:
            self.nodes, self.marks = None, []
            info["observation_error"] = f"{error}; a secure screen (FLAG_SECURE) shows no hierarchy"
            listing = f"(no view hierarchy: {error})"
        image = draw_marks(screenshot, [bound.mark for bound in self.marks]) if self.marks else screenshot.copy()
        timings["som"] = time.perf_counter() - started
        started = time.perf_counter()
        self.foreground = device.foreground()
        timings["foreground"] = time.perf_counter() - started
        self._last_obs = {
            "image": image,
            "screenshot": screenshot,
            "som": listing,
            "text": listing,
            "activity": self.foreground[1],
            "package": self.foreground[0],
            "url": f"{self.foreground[0]}/{self.foreground[1]}",
            "instruction": self.task.goal,
        }
        return self._last_obs, info

    def render(self) -> np.ndarray | None:
        return None if self._last_obs is None else self._last_obs["image"]

    def close(self) -> None:
        self.device = None
