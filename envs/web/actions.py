"""Execute one parsed VisualWebArena action on the active tab, bounded by timeouts.

Elements are found by their injected ``data-som-id`` (see ``envs.web.som_page``), so an id keeps
pointing at its element after a re-layout. Every failure a policy can cause (an id not on the page,
a blocked host, a timeout, a closed last tab) raises ``WebActionError``; the environment counts it as a
failed step and the episode goes on.
"""

from __future__ import annotations

import contextlib
from typing import Any

from data_tools.errors import UserFacingError
from envs.web.session import BlockedRequest, PageSession
from envs.web.som_page import SOM_ATTRIBUTE
from magma.actions.ui import UIAction


class WebActionError(UserFacingError, RuntimeError):
    """An action that could not be carried out; the message says why and what to do instead."""


def element_locator(session: PageSession, element_id: int) -> Any:
    """The one element with ``data-som-id=element_id`` on the active tab, or WebActionError."""
    locator = session.active.locator(f'[{SOM_ATTRIBUTE}="{element_id}"]')
    if locator.count() == 0:
        raise WebActionError(
            f"no element with id [{element_id}] on the page; use an id from the current observation's listing"
        )
    return locator.first


def _press_keys(page: Any, keys: str) -> None:
    # VWA writes key combinations like "Ctrl+a" or "Meta+v"; Playwright wants "Control+a".
    page.keyboard.press(keys.replace("Ctrl+", "Control+").replace("ctrl+", "Control+"))


def execute_action(session: PageSession, action: UIAction) -> None:
    """Carry out ``action`` on ``session``'s active tab and wait (bounded) for the page to settle."""
    if session.active is None and action.kind not in ("new_tab", "goto", "stop"):
        raise WebActionError(f"no open tab for {action.kind}; open one with new_tab or goto [url]")
    timeout = session.timeouts.action_ms
    blocked_before = len(session.blocked)
    started = session.action_mark()
    try:
        _dispatch(session, action, timeout)
    except WebActionError:
        raise
    except Exception as error:  # Playwright TimeoutError / Error: one clear line, the episode goes on
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        navigation = _blocked_navigation(session, blocked_before)
        if navigation is not None:
            _recover_from_block(session)
            raise _blocked(navigation) from error
        session.stop_loading()  # a navigation that timed out would otherwise block the next observation
        raise WebActionError(
            f"{action.kind} failed: {first_line}; the page may still be loading or the element may be hidden, "
            "try another element or wait with a scroll"
        ) from error
    session.settle(since=started)
    navigation = _blocked_navigation(session, blocked_before)
    if navigation is not None:
        _recover_from_block(session)
        raise _blocked(navigation)


def _blocked_navigation(session: PageSession, blocked_before: int) -> BlockedRequest | None:
    """The last tab navigation the guard blocked since ``blocked_before`` entries, if any."""
    navigations = [entry for entry in session.blocked[blocked_before:] if entry.kind == "navigation"]
    return navigations[-1] if navigations else None


def _recover_from_block(session: PageSession) -> None:
    """A blocked navigation leaves Chromium's error page; return to where the tab was."""
    page = session.active
    if page is not None and page.url.startswith("chrome-error:"):
        with contextlib.suppress(Exception):
            page.go_back(wait_until="domcontentloaded", timeout=session.timeouts.navigation_ms)


def _blocked(entry: BlockedRequest) -> WebActionError:
    return WebActionError(f"{entry.describe()}; stay on the task's sites")


def _dispatch(session: PageSession, action: UIAction, timeout: int) -> None:
    kind = action.kind
    page = session.active
    if kind == "click":
        element_locator(session, action.element_id).click(timeout=timeout)
    elif kind == "hover":
        element_locator(session, action.element_id).hover(timeout=timeout)
    elif kind == "type":
        target = element_locator(session, action.element_id)
        target.fill("", timeout=timeout)  # VWA clears the field before typing
        target.press_sequentially(action.text or "", timeout=timeout)
        if action.press_enter:
            target.press("Enter", timeout=timeout)
    elif kind == "press":
        _press_keys(page, action.keys or "")
    elif kind == "scroll":
        sign = -1 if action.direction == "up" else 1  # one viewport, as VWA scrolls
        page.evaluate("(sign) => window.scrollBy(0, sign * window.innerHeight)", sign)
    elif kind == "goto":
        if not session.is_allowed_navigation(action.url or ""):
            raise _blocked(session.record_blocked(action.url or "", "navigation"))
        if session.active is None:
            session.new_tab()
        session.goto(action.url or "")
    elif kind == "go_back":
        page.go_back(wait_until="domcontentloaded", timeout=session.timeouts.navigation_ms)
    elif kind == "go_forward":
        page.go_forward(wait_until="domcontentloaded", timeout=session.timeouts.navigation_ms)
    elif kind == "new_tab":
        session.new_tab()
    elif kind == "tab_focus":
        if not 0 <= (action.tab_index or 0) < len(session.pages):
            raise WebActionError(
                f"tab_focus [{action.tab_index}]: there are {len(session.pages)} tabs; use an index from 0 to "
                f"{len(session.pages) - 1}"
            )
        session.focus(action.tab_index or 0)
    elif kind == "close_tab":
        page.close()
        if session.active is not None:
            session.active.bring_to_front()
    elif kind == "stop":
        return
    else:
        raise WebActionError(f"{kind} is not a web action; use the VisualWebArena grammar (click [id], type ...)")
