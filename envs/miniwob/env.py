"""``MiniWoBEnv``: the MiniWoB++ tasks of the installed ``miniwob`` package, driven through the web environment.

The task pages are served from the package (``envs.miniwob.server``) and shown in the system Chromium by
``envs.web``'s machinery: its browser context and allowed-hosts guard, the Set-of-Mark pass, the
``[id] [TAG] [text]`` listing and the VisualWebArena action grammar (``click [12]``, ``type [3] [hello] [0]``,
``hover``, ``press``, ``scroll``), so the observation keys are ``WebEnv``'s (``image``, ``screenshot``, ``som``,
``text``, ``url``, ``tabs``, ``instruction``) and every web policy runs here unchanged. The viewport is the
task area, 160x210, the same pixels as the package's own screenshot (``viewport=`` shows more of the page).

Like the package's environment, one page serves episode after episode: a reset on the same task starts the
next episode on the open page (Set-of-Mark ids restart at 1), another task loads in the same tab, and
``new_page_per_episode=True`` gives each episode a fresh browser context instead (about a second more).

An episode starts as the package's own environment starts one: ``core.endEpisode(0)``, then
``Math.seedrandom(<repr(seed)>)``, ``core.setDataMode(<mode>)`` and ``core.startEpisodeReal()``, then a wait for
the page's ``WOB_TASK_READY``. The instruction is the page's utterance (``core.getUtterance()``). After each
action the reward and the end of the episode are read from the page's globals (``WOB_REWARD_GLOBAL``,
``WOB_RAW_REWARD_GLOBAL``, ``WOB_DONE_GLOBAL``, ``WOB_REWARD_REASON``), never recomputed: ``terminated`` is the
page's done flag, ``info["success"]`` is raw reward > 0. The page's own time limit runs in real time, as in
the package (``reason`` "timed out", ``info["timed_out"]``); ``time_limit_ms=`` replaces it. ``stop`` ends the
episode early with the page's reward so far (0), and ``max_steps`` truncates it. A malformed or failing
action, or a navigation action (the task is one page), is a counted failed step. A page that does not load,
never reports ready, or does not end its episode past its own time limit raises ``MiniWoBPageError``.

The seed drives the page, but the reward is time-scaled and ``info`` holds wall-clock timings, so the id is
registered ``nondeterministic``. ``reset(seed=None)`` seeds the page with a number drawn from ``np_random``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import gymnasium

from data_tools.errors import UserFacingError
from envs.miniwob.server import MiniWoBServer, shared_server
from envs.miniwob.tasks import task_name
from envs.text_space import refuse_long_instruction
from envs.web.browser import ChromiumBrowser, ContextOptions
from envs.web.env import MAX_INSTRUCTION_CHARS, SharedBrowser, WebEnv, action_outside_space
from envs.web.session import PageSession, Timeouts, host_of
from envs.web.som_page import SOM_ATTRIBUTE
from envs.web.tasks import WebTask
from magma.actions.errors import ActionParseError
from magma.actions.ui import UIAction, extract_vwa_action, parse_ui_action

TASK_VIEWPORT = (160, 210)  # the task area (#wrap), which is also the package's observation screenshot
# The package observes right after an action; settling here waits for the load event and one task turn without
# DOM changes (handlers the action queued have run), not for a quiet window.
DEFAULT_TIMEOUTS = Timeouts(action_ms=3000, navigation_ms=15000, settle_ms=1000, dom_quiet_ms=0)
READY_TIMEOUT_MS = 10_000  # the package polls WOB_TASK_READY for 1 s; a loaded machine needs longer
PAGE_GRACE_MS = 5_000  # past its own time limit, a page that has not ended its episode is broken
ONE_PAGE_KINDS = ("goto", "go_back", "go_forward", "new_tab", "tab_focus", "close_tab")

_PAGE_STARTED = (
    "() => typeof core === 'object' && typeof genProblem === 'function' && "
    "document.getElementById('sync-task-cover') !== null"
)
_PAGE_LOADED = (
    "() => [typeof core === 'object', (performance.getEntriesByType('navigation')[0] || {}).responseStatus || 0]"
)
_UTTERANCE = "() => { const u = core.getUtterance(); return (u !== null && typeof u === 'object') ? u.utterance : u; }"
# Set-of-Mark ids live on the elements (envs.web.som_page); a reused page forgets them and the id counter.
_FORGET_MARKS = (
    f"() => {{ for (const el of document.querySelectorAll('[{SOM_ATTRIBUTE}]')) el.removeAttribute('{SOM_ATTRIBUTE}'); "
    "document.documentElement.removeAttribute('data-som-next'); }"
)
_STATE = (
    "() => ({done: WOB_DONE_GLOBAL, reward: WOB_REWARD_GLOBAL, raw_reward: WOB_RAW_REWARD_GLOBAL, "
    "reason: WOB_REWARD_REASON, elapsed_ms: Date.now() - core.ept0, limit_ms: core.EPISODE_MAX_TIME})"
)


class MiniWoBPageError(UserFacingError, RuntimeError):
    """A task page that does not load, never reports ready, or never ends its episode; names the task."""


@dataclass(frozen=True)
class PageState:
    """The page's episode globals as read after an action (reward and raw reward are 0 until done)."""

    done: bool
    reward: float
    raw_reward: float
    reason: str | None
    elapsed_ms: float
    limit_ms: float


def start_episode_script(seed: int, data_mode: str, time_limit_ms: int | None) -> str:
    """The page script that starts one episode, in the package's order and with its seeding text."""
    limit = "" if time_limit_ms is None else f"core.EPISODE_MAX_TIME = {int(time_limit_ms)}; "
    return (
        f"() => {{ core.endEpisode(0); Math.seedrandom({seed!r}); core.setDataMode({json.dumps(data_mode)}); "
        f"{limit}core.startEpisodeReal(); }}"
    )


class MiniWoBEnv(WebEnv):
    """One MiniWoB++ task per episode in a real browser (``reset(options={"task": "click-button"})``)."""

    def __init__(
        self,
        task: str | None = None,
        browser: ChromiumBrowser | None = None,
        max_steps: int = 30,
        viewport: tuple[int, int] = TASK_VIEWPORT,
        data_mode: str = "train",
        time_limit_ms: int | None = None,
        new_page_per_episode: bool = False,
        server: MiniWoBServer | None = None,
        ready_timeout_ms: int = READY_TIMEOUT_MS,
        timeouts: Timeouts | None = None,
        render_mode: str | None = "rgb_array",
    ) -> None:
        if time_limit_ms is not None and time_limit_ms <= 0:
            raise UserFacingError(f"time_limit_ms={time_limit_ms} must be positive, or None for the page's own")
        self.task_name = task_name(task) if task is not None else None
        self.data_mode = data_mode
        self.time_limit_ms = time_limit_ms
        self.new_page_per_episode = new_page_per_episode
        self.server = server
        self.ready_timeout_ms = ready_timeout_ms
        super().__init__(
            task=None,
            max_steps=max_steps,
            timeouts=timeouts or DEFAULT_TIMEOUTS,
            browser=browser,
            render_mode=render_mode,
            viewport=tuple(viewport),
        )
        self._episode_started = 0.0

    # -- episode -----------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        gymnasium.Env.reset(self, seed=seed)
        options = options or {}
        name = options.get("task", self.task_name)
        if name is None:
            raise UserFacingError(
                "MiniWoBEnv.reset needs a task; pass reset(options={'task': 'click-button'}) or MiniWoBEnv(task=...)"
            )
        name = task_name(str(name))
        data_mode = str(options.get("data_mode", self.data_mode))
        page_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self.task_name = name
        started = time.perf_counter()
        url = (self.server or shared_server()).task_url(name)
        reuse = not self.new_page_per_episode and self._page_answers(url)
        if not reuse:
            self._open_task_page(name, url)
        page = self.session.active
        timings = {"load": time.perf_counter() - started}
        try:
            page.evaluate(start_episode_script(page_seed, data_mode, self.time_limit_ms))
        except Exception as error:
            self._close_context()
            raise MiniWoBPageError(
                f"MiniWoB++ task {name}: its page failed to start an episode: {_first_line(error)}"
            ) from error
        self._episode_started = time.perf_counter()
        try:
            page.wait_for_function("() => WOB_TASK_READY === true", timeout=self.ready_timeout_ms, polling=20)
            utterance = str(page.evaluate(_UTTERANCE) or "")
        except Exception as error:
            self._close_context()
            raise MiniWoBPageError(
                f"MiniWoB++ task {name}: its page never reported ready (WOB_TASK_READY) within "
                f"{self.ready_timeout_ms / 1000:g} s after the episode started: {_first_line(error)}"
            ) from error
        refuse_long_instruction(name, "utterance", utterance, MAX_INSTRUCTION_CHARS, "task page")
        self.task = WebTask(task_id=f"miniwob/{name}", intent=utterance, start_urls=[url], viewport=self.task_viewport)
        if reuse:  # ids restart at 1 each episode, as on a fresh page
            page.evaluate(_FORGET_MARKS)
        self.session.settle()
        timings["start"] = time.perf_counter() - self._episode_started
        self._steps = self._failed_steps = 0
        self._done = False
        obs = self._observe(timings)
        state = self._read_state()
        info = {
            "task": name,
            "task_id": self.task.task_id,
            "seed": page_seed,
            "data_mode": data_mode,
            "time_limit_ms": state.limit_ms,
            "timings": timings,
        }
        return obs, info

    def _page_answers(self, url: str) -> bool:
        """Is the open tab the task page at ``url``, its script alive (so the next episode can start there)?"""
        page = self.session.active if self.session is not None else None
        if page is None or page.is_closed() or len(self.session.pages) != 1 or page.url != url:
            return False
        try:
            return bool(page.evaluate(_PAGE_STARTED))
        except Exception:
            return False

    def _open_task_page(self, name: str, url: str) -> None:
        """The task page loaded, its script started (the START cover shown): in the open tab when there is one
        (the package, too, keeps one browser page for every episode), else in a fresh context."""
        session = self.session
        reuse_tab = (
            not self.new_page_per_episode
            and session is not None
            and len(session.pages) == 1
            and not session.active.is_closed()
            and session.is_allowed_navigation(url)
        )
        if not reuse_tab:
            self._close_context()
            if self._browser is None:
                self._browser = SharedBrowser.acquire()
            self._context = self._browser.new_context(ContextOptions(self.task_viewport))
            self.session = PageSession(self._context, self.timeouts, [host_of(url)])
        try:
            if reuse_tab:
                self.session.goto(url)
            else:
                self.session.new_tab(url)
            # scripts in <head> have run by DOMContentLoaded: without core.js this is not a task page
            has_core, status = self.session.active.evaluate(_PAGE_LOADED)
            if not has_core:
                raise MiniWoBPageError(f"HTTP status {status}, no MiniWoB++ core script on the page")
            self.session.active.wait_for_function(_PAGE_STARTED, timeout=self.ready_timeout_ms, polling=20)
        except Exception as error:
            self._close_context()
            raise MiniWoBPageError(
                f"MiniWoB++ task {name}: its page {url} did not load (or its script did not start): "
                f"{_first_line(error)}; check the miniwob package's install (pip show -f miniwob)"
            ) from error

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        if self.session is None or self._done:
            raise UserFacingError("the episode is over or has not started; call reset() before step()")
        timings: dict[str, float] = {}
        info: dict[str, Any] = {"action_error": None}
        self._steps += 1
        state = self._read_state()  # the page's time limit may have ended the episode while the policy thought
        stopped = False
        if not state.done:
            started = time.perf_counter()
            parsed = self._parse(action, info)
            timings["parse"] = time.perf_counter() - started
            if parsed is not None and parsed.kind == "stop":
                stopped = True
            elif parsed is not None and parsed.kind in ONE_PAGE_KINDS:
                info["action_error"] = (
                    f"{parsed.kind} is not available: a MiniWoB++ task is one page; use click, type, hover, press "
                    "or scroll on its elements"
                )
            elif parsed is not None:
                self._execute(parsed, info, timings)
            if info["action_error"]:
                self._failed_steps += 1
            state = self._read_state()
        obs = self._observe(timings)
        terminated = state.done or stopped
        truncated = not terminated and self._steps >= self.max_steps
        info.update(
            page_done=state.done,
            raw_reward=state.raw_reward,
            reason=state.reason,
            timed_out=state.done and state.reason == "timed out",
            elapsed=time.perf_counter() - self._episode_started,
            steps=self._steps,
            failed_steps=self._failed_steps,
            timings=timings,
        )
        if terminated or truncated:
            self._done = True
            success = state.done and state.raw_reward > 0
            info.update(
                success=success,
                ended_by="page" if state.done else ("agent" if stopped else "step_limit"),
                eval_status="pass" if success else "fail",
                eval_notes=[f"page reason: {state.reason}"] if state.reason else [],
            )
        return obs, state.reward, terminated, truncated, info

    def _parse(self, action: Any, info: dict[str, Any]) -> UIAction | None:
        """The action parsed in the VWA grammar, or None with ``info["action_error"]`` saying why."""
        if not self.action_space.contains(action):
            info["action_error"] = action_outside_space(action)
            return None
        try:
            return parse_ui_action(extract_vwa_action(action), "vwa")
        except ActionParseError as error:
            info["action_error"] = str(error)
            return None

    def _read_state(self) -> PageState:
        """The page's episode globals; MiniWoBPageError when the page is gone or overran its own time limit."""
        try:
            raw = self.session.active.evaluate(_STATE)
        except Exception as error:
            raise MiniWoBPageError(
                f"MiniWoB++ task {self.task_name}: its page no longer answers (it navigated away or crashed): "
                f"{_first_line(error)}"
            ) from error
        state = PageState(
            done=bool(raw["done"]),
            reward=float(raw["reward"] or 0.0),
            raw_reward=float(raw["raw_reward"] or 0.0),
            reason=None if raw["reason"] is None else str(raw["reason"]),
            elapsed_ms=float(raw["elapsed_ms"] or 0.0),
            limit_ms=float(raw["limit_ms"] or 0.0),
        )
        if not state.done and state.elapsed_ms > state.limit_ms + PAGE_GRACE_MS:
            raise MiniWoBPageError(
                f"MiniWoB++ task {self.task_name}: the page has not ended its episode {state.elapsed_ms / 1000:.1f} s "
                f"after it started, past its own time limit of {state.limit_ms / 1000:.1f} s; its script is stalled"
            )
        return state


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
