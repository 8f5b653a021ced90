"""``WebEnv``: a gymnasium environment over the system Chromium, VisualWebArena-compatible.

Observation (a dict): ``image`` (the Set-of-Mark screenshot, HxWx3 uint8), ``screenshot`` (the raw
one), ``som`` and ``text`` (the ``[id] [TAG] [text]`` listing), ``url``, ``tabs`` (a tuple of the open tabs'
URLs), ``instruction`` (the task intent). The action is VWA text (``click [12]``, ``stop [answer]``, possibly
inside a model's ```...``` block). A step whose text does not parse or whose action fails is counted:
``info["action_error"]`` says why, ``info["failed_steps"]`` counts them, and the episode goes on.
The episode ends at ``stop`` (terminated) or at ``max_steps`` (truncated); then the task is graded
once in a separate page: reward 1.0/0.0, ``info["success"]`` True/False, or None when the grade is
undecided (``info["eval_status"]`` "needs_judge" or "unsupported"). ``info["timings"]`` holds seconds
per phase of the step.

Spaces (gymnasium's checker passes on ``VisualWebArena-v0``): text is ``envs.text_space.UnicodeText``, any
Unicode, with these bounds: listings ``MAX_LISTING_CHARS`` (a longer one is cut at a line, its last line says
how many were left out), URLs ``MAX_URL_CHARS`` (Chromium's own limit), the intent ``MAX_INSTRUCTION_CHARS``
(a longer one is refused at reset), actions ``MAX_ACTION_CHARS`` (a longer one is a counted failed step).
Images are the viewport's size: ``viewport=`` if given (every task is then shown at that size), else the
task's own (VWA's: 1280x720, and phone sizes for a few), so ``reset`` with a task of another viewport
re-declares the two image boxes in place. The seed drives nothing (a browser on live sites), so the id is
registered ``nondeterministic``; ``reset(seed=)`` still seeds ``np_random``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import gymnasium
import numpy as np

from data_tools.errors import UserFacingError
from envs.text_space import UnicodeText, action_space_problem, bounded_listing, refuse_long_instruction
from envs.web.actions import WebActionError, execute_action
from envs.web.browser import ChromiumBrowser, ContextOptions
from envs.web.grading import GradingConfig, grade_task
from envs.web.session import PageSession, Timeouts
from envs.web.som_page import PageScan, draw_page_marks, place_page_marks, scan_page, screenshot_array, som_listing
from envs.web.tasks import DEFAULT_VIEWPORT, WebTask
from magma.actions.errors import ActionParseError
from magma.actions.ui import extract_vwa_action, parse_ui_action

MAX_LISTING_CHARS = 1_000_000  # ~7,000 marked elements of <= 100 characters of text each
MAX_URL_CHARS = 2 * 1024 * 1024  # Chromium does not navigate to a longer URL (url::kMaxURLChars)
MAX_INSTRUCTION_CHARS = 100_000
MAX_ACTION_CHARS = 1_000_000  # any real model reply, its reasoning before the ```action``` block included
RENDER_MODES = ("rgb_array",)


class SharedBrowser:
    """The Chromium of the environments of one thread that were given no ``browser=``: Playwright's sync API
    allows one instance per thread, so a second ``WebEnv`` (a vector env, or gymnasium's checker making one per
    render mode) shares the first one's browser; each episode still has its own context. The last user to
    release it closes it."""

    _lock = threading.Lock()
    _by_thread: ClassVar[dict[int, tuple[ChromiumBrowser, int]]] = {}

    @classmethod
    def acquire(cls) -> ChromiumBrowser:
        with cls._lock:
            browser, users = cls._by_thread.get(threading.get_ident(), (None, 0))
            if browser is None:
                browser = ChromiumBrowser()
            cls._by_thread[threading.get_ident()] = (browser, users + 1)
            return browser

    @classmethod
    def release(cls, browser: ChromiumBrowser) -> None:
        with cls._lock:
            thread = next((key for key, (held, _) in cls._by_thread.items() if held is browser), None)
            if thread is None:
                return
            users = cls._by_thread[thread][1] - 1
            if users:
                cls._by_thread[thread] = (browser, users)
                return
            del cls._by_thread[thread]
        browser.close()


class SiteUnreachableError(UserFacingError, ConnectionError):
    """A start URL that cannot be opened; the message names the URL and how to bring the site up."""


class StartUrlBlockedError(SiteUnreachableError):
    """A start URL that is not an http(s) URL on the task's hosts, or that redirects off them."""


class WebEnv(gymnasium.Env):
    """VisualWebArena tasks in a real browser; one browser context per episode."""

    # One frame per step: steps take about a second, so a recorded episode plays back near real time.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": list(RENDER_MODES), "render_fps": 1}

    def __init__(
        self,
        task: WebTask | None = None,
        max_steps: int = 30,
        timeouts: Timeouts | None = None,
        allowed_hosts: list[str] | None = None,
        grading: GradingConfig | None = None,
        auth_dir: str | None = None,
        browser: ChromiumBrowser | None = None,
        render_mode: str | None = "rgb_array",
        viewport: tuple[int, int] | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise UserFacingError(
                f"render_mode={render_mode!r} is not supported by WebEnv; use one of {list(RENDER_MODES)} or None"
            )
        if task is not None:
            _check_instruction(task)
        self.task = task
        self.max_steps = max_steps
        self.timeouts = timeouts or Timeouts()
        self.allowed_hosts = allowed_hosts
        self.grading = grading or GradingConfig()
        self.auth_dir = auth_dir
        self.render_mode = render_mode
        self._browser = browser
        self._owns_browser = browser is None
        self._context: Any = None
        self.session: PageSession | None = None
        self._last_obs: dict[str, Any] | None = None
        self._steps = 0
        self._failed_steps = 0
        self._done = False
        self.viewport = viewport  # None: each task's own
        url = UnicodeText(MAX_URL_CHARS)
        self.observation_space = gymnasium.spaces.Dict(
            {
                "som": UnicodeText(MAX_LISTING_CHARS),
                "text": UnicodeText(MAX_LISTING_CHARS),
                "url": url,
                "tabs": gymnasium.spaces.Sequence(url),
                "instruction": UnicodeText(MAX_INSTRUCTION_CHARS),
            }
        )
        self._declare_image_size(viewport or (task.viewport if task is not None else DEFAULT_VIEWPORT))
        self.action_space = UnicodeText(MAX_ACTION_CHARS)

    def _declare_image_size(self, viewport: tuple[int, int]) -> None:
        """The image boxes of the observation space for a ``(width, height)`` viewport (in place: wrappers that
        hold the space see the change)."""
        width, height = viewport
        for name in ("image", "screenshot"):
            self.observation_space.spaces[name] = gymnasium.spaces.Box(0, 255, (height, width, 3), np.uint8)

    @property
    def task_viewport(self) -> tuple[int, int]:
        """The ``(width, height)`` the current task is shown at."""
        if self.viewport is not None:
            return self.viewport
        return self.task.viewport if self.task is not None else DEFAULT_VIEWPORT

    # -- episode -----------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        task = (options or {}).get("task", self.task)
        if task is None:
            raise UserFacingError(
                "WebEnv.reset needs a task; pass reset(options={'task': WebTask}) or WebEnv(task=...)"
            )
        _check_instruction(task)
        self.task = task
        self._declare_image_size(self.task_viewport)
        self._close_context()
        if self._browser is None:
            self._browser = SharedBrowser.acquire()
        storage_state = task.storage_state
        if storage_state and self.auth_dir:
            storage_state = str(Path(self.auth_dir) / Path(storage_state).name)
        elif storage_state and not Path(storage_state).exists():
            storage_state = None  # VWA's ./.auth files are made by its login script; run without them
        started = time.perf_counter()
        self._context = self._browser.new_context(ContextOptions(self.task_viewport, task.geolocation, storage_state))
        hosts = self.allowed_hosts if self.allowed_hosts is not None else sorted(task.hosts)
        self.session = PageSession(self._context, self.timeouts, hosts)
        for url in task.start_urls:
            self._open_start_url(task, url)
        if len(task.start_urls) > 1:
            self.session.focus(0)  # VWA starts on the first tab
        self._steps = self._failed_steps = 0
        self._done = False
        timings = {"reset": time.perf_counter() - started}
        obs = self._observe(timings)
        info = {"timings": timings, "task_id": task.task_id, "task_images": list(task.images)}
        return obs, {**info, "blocked": [entry.describe() for entry in self.session.blocked]}

    def _open_start_url(self, task: WebTask, url: str) -> None:
        """A new tab at ``url``; a URL off the task's hosts (or redirecting off them) or a site that does not
        answer within the navigation timeout ends the reset with one message and no open context."""
        session = self.session
        blocked_before = len(session.blocked)
        failure: Exception | None = None
        if session.is_allowed_navigation(url):
            try:
                session.new_tab(url)
            except Exception as error:
                failure = error
        else:
            session.record_blocked(url, "navigation")
        navigations = [entry for entry in session.blocked[blocked_before:] if entry.kind == "navigation"]
        if navigations:
            self._close_context()
            hosts = ", ".join(sorted(session.allowed_hosts or [])) or "none"
            raise StartUrlBlockedError(
                f"start URL {url} of task {task.task_id}: {navigations[-1].describe()} (allowed: {hosts}); "
                "fix the task's start_url or pass allowed_hosts with the site's host"
            ) from failure
        if failure is not None:
            self._close_context()
            raise SiteUnreachableError(
                f"cannot open start URL {url} of task {task.task_id}: {str(failure).splitlines()[0]}; start the site "
                "(or set its environment variable, e.g. SHOPPING=http://127.0.0.1:7770) and try again"
            ) from failure

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        if self.session is None or self._done:
            raise UserFacingError("the episode is over or has not started; call reset() before step()")
        timings: dict[str, float] = {}
        info: dict[str, Any] = {"action_error": None}
        blocked_before = len(self.session.blocked)
        self._steps += 1
        started = time.perf_counter()
        parsed = None
        if not self.action_space.contains(action):
            info["action_error"] = action_outside_space(action)
        else:
            try:
                parsed = parse_ui_action(extract_vwa_action(action), "vwa")
            except ActionParseError as error:
                info["action_error"] = str(error)
        timings["parse"] = time.perf_counter() - started
        terminated = parsed is not None and parsed.kind == "stop"
        if parsed is not None and not terminated:
            self._execute(parsed, info, timings)
        if info["action_error"]:
            self._failed_steps += 1
        obs = self._observe(timings)
        truncated = not terminated and self._steps >= self.max_steps
        reward = 0.0
        if terminated or truncated:
            self._done = True
            answer = (parsed.answer or "") if terminated else ""
            started = time.perf_counter()
            result = grade_task(self.task, self._context, answer, obs["url"], self.grading)
            timings["grade"] = time.perf_counter() - started
            reward = result.score
            info.update(
                success=None if result.status in ("needs_judge", "unsupported") else result.status == "pass",
                eval_status=result.status,
                eval_notes=result.notes,
                answer=answer,
            )
        blocked = [entry.describe() for entry in self.session.blocked[blocked_before:]]
        info.update(steps=self._steps, failed_steps=self._failed_steps, timings=timings, blocked=blocked)
        return obs, reward, terminated, truncated, info

    # -- observation -------------------------------------------------------------------------------

    def _execute(self, parsed: Any, info: dict[str, Any], timings: dict[str, float]) -> None:
        """Carry out a parsed action on the session; a failure is the step's ``action_error``, timed."""
        started = time.perf_counter()
        try:
            execute_action(self.session, parsed)
        except WebActionError as error:
            info["action_error"] = str(error)
        timings["action"] = time.perf_counter() - started

    def _observe(self, timings: dict[str, float]) -> dict[str, Any]:
        session = self.session
        page = session.active if session else None
        started = time.perf_counter()
        scan = PageScan([], plain_capture=False)
        try:
            scan = scan_page(page) if page is not None else scan
        except Exception:  # mid-navigation: the document went away; settle once and try again
            session.settle()
            with contextlib.suppress(Exception):
                scan = scan_page(page)
        elements = scan.elements
        timings["som"] = time.perf_counter() - started
        started = time.perf_counter()
        # The labels' places need no pixels: they are worked out while the browser takes the screenshot.
        placing = _label_worker().submit(place_page_marks, elements, self.task_viewport)
        width, height = self.task_viewport
        if page is not None:
            raw = screenshot_array(page, session.devtools(page), scan.plain_capture)
        else:
            raw = np.zeros((height, width, 3), np.uint8)
        timings["screenshot"] = time.perf_counter() - started
        started = time.perf_counter()
        placed = placing.result()
        image = draw_page_marks(raw, elements, placed=placed if raw.shape[:2] == (height, width) else None)
        listing = bounded_listing(som_listing(elements), MAX_LISTING_CHARS)
        timings["draw"] = time.perf_counter() - started
        self._last_obs = {
            "image": image,
            "screenshot": raw,
            "som": listing,
            "text": listing,
            "url": page.url if page is not None else "about:blank",
            "tabs": tuple(session.tab_urls()) if session else (),
            "instruction": self.task.intent,
        }
        return self._last_obs

    def render(self) -> np.ndarray | None:
        """The last Set-of-Mark image (a copy) with ``render_mode="rgb_array"``; None without a render mode."""
        if self.render_mode != "rgb_array" or self._last_obs is None:
            return None
        return self._last_obs["image"].copy()

    def _close_context(self) -> None:
        if self._context is not None:
            with contextlib.suppress(Exception):
                self._context.close()
        self._context = None
        self.session = None

    def close(self) -> None:
        """Closes the episode's context and lets go of the browser (closed when no other environment of this
        thread uses it; a browser passed in stays open); safe to call again."""
        self._close_context()
        if self._browser is not None and self._owns_browser:
            SharedBrowser.release(self._browser)
            self._browser = None


@functools.cache
def _label_worker() -> ThreadPoolExecutor:
    """One thread of the process that places Set-of-Mark labels while the main thread waits on the browser."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="som-labels")


def _check_instruction(task: WebTask) -> None:
    refuse_long_instruction(task.task_id, "intent", task.intent, MAX_INSTRUCTION_CHARS, "task config")


def action_outside_space(action: Any) -> str:
    return action_space_problem(
        action, MAX_ACTION_CHARS, "VWA action text such as 'click [12]'", "the ```action``` block"
    )
