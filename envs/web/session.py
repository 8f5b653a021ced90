"""One episode's browser state: the context, its tabs (new tabs are followed), the allowed-hosts guard,
and a bounded wait for a page to settle (load event, then a quiet DOM) instead of fixed sleeps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

_ALWAYS_ALLOWED_SCHEMES = ("about", "data", "blob", "chrome-error")

# Resolves once no DOM mutation happened for `quietMs`, or after `limitMs` in any case.
_DOM_QUIET_SCRIPT = """
([quietMs, limitMs]) => new Promise((resolve) => {
  let timer = null;
  const start = performance.now();
  const done = () => { observer.disconnect(); resolve(performance.now() - start); };
  const observer = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(done, quietMs); });
  observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  timer = setTimeout(done, quietMs);
  setTimeout(done, limitMs);
})
"""


@dataclass(frozen=True)
class Timeouts:
    """Bounds in milliseconds: one action, one navigation, the settle wait after either, DOM quiet window."""

    action_ms: int = 5000
    navigation_ms: int = 15000
    settle_ms: int = 3000
    dom_quiet_ms: int = 100


def host_of(url: str) -> str:
    return urlparse(url).netloc


class PageSession:
    """Tabs of one browser context; the newest tab that opens becomes the active one (VWA follows new tabs)."""

    def __init__(self, context: Any, timeouts: Timeouts, allowed_hosts: Iterable[str] | None = None) -> None:
        self.context = context
        self.timeouts = timeouts
        self.allowed_hosts = None if allowed_hosts is None else set(allowed_hosts)
        self.blocked_urls: list[str] = []
        self.follow_new_tabs = True
        self.pages: list[Any] = []
        self.active: Any = None
        context.set_default_timeout(timeouts.action_ms)
        context.set_default_navigation_timeout(timeouts.navigation_ms)
        context.on("page", self._on_new_page)
        if self.allowed_hosts is not None:
            context.route("**/*", self._guard)

    # -- guard -------------------------------------------------------------------------------------

    def is_allowed(self, url: str) -> bool:
        if self.allowed_hosts is None:
            return True
        parsed = urlparse(url)
        return parsed.scheme in _ALWAYS_ALLOWED_SCHEMES or parsed.netloc in self.allowed_hosts

    def _guard(self, route: Any) -> None:
        request = route.request
        if request.is_navigation_request() and not self.is_allowed(request.url):
            self.blocked_urls.append(request.url)
            route.abort("blockedbyclient")
        else:
            route.continue_()

    # -- tabs --------------------------------------------------------------------------------------

    def _on_new_page(self, page: Any) -> None:
        if page in self.pages:
            return
        self.pages.append(page)
        page.on("close", self._on_close)
        if self.follow_new_tabs:
            self.active = page

    def _on_close(self, page: Any) -> None:
        if page in self.pages:
            self.pages.remove(page)
        if self.active is page:
            self.active = self.pages[-1] if self.pages else None

    def new_tab(self, url: str | None = None) -> Any:
        page = self.context.new_page()
        self._on_new_page(page)
        self.active = page
        if url:
            self.goto(url)
        return page

    def focus(self, index: int) -> None:
        self.active = self.pages[index]
        self.active.bring_to_front()

    def tab_urls(self) -> list[str]:
        return [page.url for page in self.pages]

    # -- navigation and settling -------------------------------------------------------------------

    def goto(self, url: str) -> None:
        """Navigate the active tab; raises Playwright's error on failure (callers turn it into a step error)."""
        self.active.goto(url, wait_until="domcontentloaded", timeout=self.timeouts.navigation_ms)
        self.settle()

    def stop_loading(self) -> None:
        """Abort a pending navigation of the active tab (Chromium's Page.stopLoading), as the Stop button does."""
        if self.active is None:
            return
        try:
            cdp = self.context.new_cdp_session(self.active)
            try:
                cdp.send("Page.stopLoading")
            finally:
                cdp.detach()
        except Exception:
            pass

    def settle(self) -> float:
        """Wait (bounded) for the load event and a quiet DOM on the active tab; returns seconds waited."""
        start = time.perf_counter()
        page = self.active
        if page is None:
            return 0.0
        with contextlib.suppress(Exception):  # a page that never finishes loading: go on with what is there
            page.wait_for_load_state("load", timeout=self.timeouts.settle_ms)
        remaining = max(1, self.timeouts.settle_ms - int(1000 * (time.perf_counter() - start)))
        with contextlib.suppress(Exception):  # a navigation destroys the context; the next observation copes
            page.evaluate(_DOM_QUIET_SCRIPT, [self.timeouts.dom_quiet_ms, remaining])
        return time.perf_counter() - start
