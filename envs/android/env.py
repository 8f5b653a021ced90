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

A step is three adb calls: the action, the settle check's two back-to-back screencaps (then one call per
screencap while the screen still moves; the last is the observation's screenshot) and ``uiautomator dump``
with the foreground query. The dump is read in a worker thread while the screenshot decodes, so
``timings["dump"]`` is the wait left after decoding and ``timings["foreground"]`` only its parse (or the
``dumpsys window`` fallback).

Spaces (gymnasium's checker passes on ``Android-v0``): text is ``envs.text_space.UnicodeText``, any Unicode,
bounded by ``MAX_LISTING_CHARS`` (a longer listing is cut at a line, its last line says how many were left
out), ``MAX_NAME_CHARS`` for ``package``/``activity`` (``url`` is the two joined), ``MAX_INSTRUCTION_CHARS``
for the goal (a longer one is refused at reset) and ``MAX_ACTION_CHARS`` for actions (a longer one is a counted
failed step). The image boxes are the screen as shown, so the device is asked for its size the first time
``observation_space`` is read (``gymnasium.make`` reads it; constructing ``AndroidEnv`` directly does not
connect); a rotation re-declares them in place with the next observation.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
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
from envs.text_space import UnicodeText, action_space_problem, bounded_listing, refuse_long_instruction
from magma.actions import ActionParseError

MAX_LISTING_CHARS = 1_000_000  # a screen's marks with their labels; view text itself is unbounded
MAX_NAME_CHARS = 1_000  # a package or activity class name
MAX_INSTRUCTION_CHARS = 100_000
MAX_ACTION_CHARS = 1_000_000  # any real model reply, its reasoning before the action block included
RENDER_MODES = ("rgb_array",)


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

    # One frame per step: a step (act, then wait for the screen to settle) takes about a second.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": 1}

    def __init__(
        self,
        config: AndroidEnvConfig | None = None,
        task: AndroidTask | None = None,
        render_mode: str | None = "rgb_array",
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise UserFacingError(
                f"render_mode={render_mode!r} is not supported by AndroidEnv; use one of {list(RENDER_MODES)} or None"
            )
        if task is not None:
            _check_goal(task)
        self.config = config or AndroidEnvConfig(**overrides)
        self.task = task
        self.render_mode = render_mode
        self.device: AndroidDevice | None = None
        self.marks: list[BoundMark] = []
        self.nodes: list[ViewNode] | None = None
        self.foreground = ("", "")
        self._png = b""
        self._hierarchy_reader: ThreadPoolExecutor | None = None
        self._last_obs: dict[str, Any] | None = None
        self._steps = self._failed_steps = 0
        self._done = False
        self.max_steps = self.config.max_steps
        self._observation_space = gymnasium.spaces.Dict(
            {
                "som": UnicodeText(MAX_LISTING_CHARS),
                "text": UnicodeText(MAX_LISTING_CHARS),
                "activity": UnicodeText(MAX_NAME_CHARS),
                "package": UnicodeText(MAX_NAME_CHARS),
                "url": UnicodeText(2 * MAX_NAME_CHARS + 1),
                "instruction": UnicodeText(MAX_INSTRUCTION_CHARS),
            }
        )  # + "image" and "screenshot", the device's screen size, declared on connecting
        self.action_space = UnicodeText(MAX_ACTION_CHARS)

    @property
    def observation_space(self) -> gymnasium.spaces.Dict:
        """The observation space; the first read connects to the device for the image size (see the module
        docstring), later reads (after ``close()`` too) give the space as last declared."""
        if "image" not in self._observation_space.spaces:
            self.connect()
        return self._observation_space

    def _declare_image_size(self, size: tuple[int, int]) -> None:
        """The image boxes for a ``(width, height)`` screen, in place (wrappers holding the space see it)."""
        width, height = size
        for name in ("image", "screenshot"):
            self._observation_space.spaces[name] = gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)

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
            self._declare_image_size(self.device.screen.size)
        return self.device

    # -- episode -------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        task = (options or {}).get("task", self.task)
        if task is None:
            raise UserFacingError("AndroidEnv.reset needs a task; pass reset(options={'task': AndroidTask})")
        _check_goal(task)
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
        if not self.action_space.contains(action):
            info["action_error"] = action_outside_space(action)
        else:
            try:
                parsed = parse_android_action(action)
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
        screencaps in a row are identical (at most ``stable_timeout_s``). Keeps the last PNG.

        While waiting for the change, screencaps come in back-to-back pairs (one adb call): whatever the first
        shows, the second is needed, so a change and its hold are usually one call. Once the screen is seen
        moving, one at a time: the next one may already end the wait. The screencaps taken are the same."""
        device = self.device
        assert device is not None
        started = time.perf_counter()
        pending: list[bytes] = []

        def next_screencap(paired: bool) -> bytes:
            if not pending:
                pending.extend(device.screencap_pair() if paired else (device.screencap_png(),))
            return pending.pop(0)

        deadline = time.monotonic() + change_timeout
        png = next_screencap(paired=True)
        while png == before and time.monotonic() < deadline:
            png = next_screencap(paired=True)
        deadline = time.monotonic() + self.config.settle.stable_timeout_s
        while True:
            following = next_screencap(paired=False)
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
        # The hierarchy is read (one adb call, issued now that the screen has settled) while the PNG decodes.
        hierarchy = self._reader().submit(device.read_hierarchy)
        started = time.perf_counter()
        screenshot = decode_screenshot(self._png)
        declared = self._observation_space.spaces.get("screenshot")
        if declared is None or declared.shape != screenshot.shape:
            self._declare_image_size((screenshot.shape[1], screenshot.shape[0]))  # rotated since the last one
        timings["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        dump, activities = hierarchy.result()
        timings["dump"] = time.perf_counter() - started  # the wait left after decoding
        started = time.perf_counter()
        size = (screenshot.shape[1], screenshot.shape[0])
        try:
            self.nodes, _ = parse_hierarchy(dump)
            self.marks = actionable_marks(self.nodes, size)
            listing = bounded_listing(som_listing(self.marks), MAX_LISTING_CHARS)
        except HierarchyError as error:
            self.nodes, self.marks = None, []
            info["observation_error"] = f"{error}; a secure screen (FLAG_SECURE) shows no hierarchy"
            listing = bounded_listing(f"(no view hierarchy: {error})", MAX_LISTING_CHARS)
        image = draw_marks(screenshot, [bound.mark for bound in self.marks]) if self.marks else screenshot.copy()
        timings["som"] = time.perf_counter() - started
        started = time.perf_counter()
        package, activity = device.foreground_from(activities)
        self.foreground = (package[:MAX_NAME_CHARS], activity[:MAX_NAME_CHARS])
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
        """The last Set-of-Mark image (a copy) with ``render_mode="rgb_array"``; None without a render mode."""
        if self.render_mode != "rgb_array" or self._last_obs is None:
            return None
        return self._last_obs["image"].copy()

    def _reader(self) -> ThreadPoolExecutor:
        """The one worker thread that reads the hierarchy while the main thread decodes the screenshot."""
        if self._hierarchy_reader is None:
            self._hierarchy_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="android-hierarchy")
        return self._hierarchy_reader

    def close(self) -> None:
        """Forgets the device (each adb request opens its own connection, so nothing stays open) and stops
        the hierarchy reader thread; safe to call again, and a later ``reset`` connects anew."""
        self.device = None
        if self._hierarchy_reader is not None:
            self._hierarchy_reader.shutdown(wait=True)
            self._hierarchy_reader = None


def decode_screenshot(png: bytes) -> np.ndarray:
    """A PNG screencap as an HxWx3 uint8 array (read-only; converted only when not RGB already)."""
    image = Image.open(io.BytesIO(png))
    image.load()
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _check_goal(task: AndroidTask) -> None:
    refuse_long_instruction(task.task_id, "goal", task.goal, MAX_INSTRUCTION_CHARS, "task file")


def action_outside_space(action: Any) -> str:
    return action_space_problem(action, MAX_ACTION_CHARS, "an AITW or AndroidWorld JSON action", "the JSON action")
