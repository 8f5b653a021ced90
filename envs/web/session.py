"""One episode's browser state: the context, its tabs (new tabs are followed), the allowed-hosts guard,
and a bounded wait for a page to settle (load event, then a quiet DOM) instead of fixed sleeps.

The guard checks every request a page makes (documents, frames, images, fetch, workers' first requests),
every redirect hop, and every WebSocket against the allowed hosts, before anything is sent: Playwright's
routing sees each request's first hop, a per-tab DevTools ``Fetch`` interception sees every hop after it
(Playwright lets redirects through unrouted), and ``route_web_socket`` sees sockets. A new tab's first
navigation, which starts before its interception can attach, is followed hop by hop here instead. Service
workers are blocked by the browser context (``envs.web.browser``). What was blocked is kept as
``BlockedRequest`` records for the observation's info.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlparse

_NETWORK_SCHEMES = ("http", "https", "ws", "wss")
_LOCAL_SCHEMES = ("about", "data", "blob")  # no network request: harmless as parts of a page
_MAX_REDIRECTS = 20

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


@dataclass(frozen=True)
class BlockedRequest:
    """A request the guard stopped: its URL, what it was (``navigation`` of a tab, ``frame``, ``resource``,
    ``websocket``) and the URL it was redirected from, if it was a redirect hop."""

    url: str
    kind: str
    redirected_from: str | None = None

    def describe(self) -> str:
        what = "navigation" if self.kind == "navigation" else f"{self.kind} request"
        via = f" (a redirect from {self.redirected_from})" if self.redirected_from else ""
        if urlparse(self.url).scheme not in _NETWORK_SCHEMES:
            return f"{what} to {self.url}{via} blocked: only http(s) URLs on allowed_hosts are opened"
        return f"{what} to {self.url}{via} blocked: its host is not in allowed_hosts"


def host_of(url: str) -> str:
    return urlparse(url).netloc


def _request_kind(request: Any) -> tuple[str, Any]:
    """(``navigation``/``frame``/``resource``, the request's page or None when its frame does not exist yet)."""
    try:
        frame = request.frame
    except Exception:  # a new tab's first navigation is issued before its frame exists
        return "navigation", None
    if not request.is_navigation_request():
        return "resource", frame.page
    return ("navigation" if frame.parent_frame is None else "frame"), frame.page


class PageSession:
    """Tabs of one browser context; the newest tab that opens becomes the active one (VWA follows new tabs)."""

    def __init__(self, context: Any, timeouts: Timeouts, allowed_hosts: Iterable[str] | None = None) -> None:
        self.context = context
        self.timeouts = timeouts
        self.allowed_hosts = None if allowed_hosts is None else set(allowed_hosts)
        self.blocked: list[BlockedRequest] = []
        self.follow_new_tabs = True
        self.pages: list[Any] = []
        self.active: Any = None
        self._watched_pages: list[Any] = []
        self._intercepted_pages: list[Any] = []  # pages whose every request hop the Fetch interception checks
        self._announced_tabs = 0  # tabs a page said it opens that have not arrived yet
        self._continued: dict[str, str] = {}  # DevTools request id -> URL, for naming a redirect's origin
        context.set_default_timeout(timeouts.action_ms)
        context.set_default_navigation_timeout(timeouts.navigation_ms)
        context.on("page", self._on_new_page)
        if self.allowed_hosts is not None:
            context.route("**/*", self._guard_route)
            context.route_web_socket("**/*", self._guard_websocket)

    # -- guard -------------------------------------------------------------------------------------

    @property
    def blocked_urls(self) -> list[str]:
        """URLs of blocked navigations of a tab (the ones an action or a start URL led to)."""
        return [entry.url for entry in self.blocked if entry.kind == "navigation"]

    def is_allowed(self, url: str) -> bool:
        """May a page fetch ``url``: on an allowed host over http(s)/ws(s), or a local data:/blob:/about: URL."""
        parsed = urlparse(url)
        if parsed.scheme in _LOCAL_SCHEMES:
            return True
        if parsed.scheme not in _NETWORK_SCHEMES:
            return False  # file:, chrome:, javascript: and the like never leave through the guard
        return self.allowed_hosts is None or parsed.netloc in self.allowed_hosts

    def is_allowed_navigation(self, url: str) -> bool:
        """May a tab be sent to ``url``: an http(s) URL on an allowed host, or about:blank."""
        parsed = urlparse(url)
        return url == "about:blank" or (parsed.scheme in ("http", "https") and self.is_allowed(url))

    def record_blocked(self, url: str, kind: str, redirected_from: str | None = None) -> BlockedRequest:
        entry = BlockedRequest(url, kind, redirected_from)
        self.blocked.append(entry)
        return entry

    def _guard_route(self, route: Any) -> None:
        """First hop of every request (Playwright routing)."""
        request = route.request
        kind, page = _request_kind(request)
        if not self.is_allowed(request.url):
            self.record_blocked(request.url, kind)
            route.abort("blockedbyclient")
        elif page is None or page not in self._intercepted_pages:
            if page is not None:
                self._watch_page(page)  # its later requests; this one is already under way unguarded
            self._follow_redirects(route, kind)
        else:
            route.continue_()  # the tab's interception checks each redirect hop

    def _follow_redirects(self, route: Any, kind: str) -> None:
        """Fetch a request hop by hop, checking each redirect before it is sent, and serve the last answer
        (for a tab's first navigation the tab then shows the first URL, not the last)."""
        request = route.request
        url, method, body = request.url, request.method, request.post_data_buffer
        try:
            for _ in range(_MAX_REDIRECTS):
                response = route.fetch(
                    url=url, method=method, post_data=body, max_redirects=0, timeout=self.timeouts.navigation_ms
                )
                location = response.headers.get("location")
                if not (300 <= response.status < 400 and location):
                    route.fulfill(response=response)
                    return
                target = urljoin(url, location)
                if not self.is_allowed(target):
                    self.record_blocked(target, kind, redirected_from=url)
                    route.abort("blockedbyclient")
                    return
                if response.status in (301, 302, 303) and method != "HEAD":
                    method, body = "GET", None
                url = target
            route.abort("failed")  # a redirect loop
        except Exception:  # the site did not answer; the tab shows Chromium's error page
            with contextlib.suppress(Exception):
                route.abort("failed")

    def _guard_websocket(self, websocket: Any) -> None:
        if self.is_allowed(websocket.url):
            websocket.connect_to_server()
        else:
            self.record_blocked(websocket.url, "websocket")
            websocket.close(code=1008, reason="host not in allowed_hosts")

    def _watch_page(self, page: Any) -> None:
        """A DevTools session on ``page``: it announces tabs the page opens (so ``settle`` waits for them) and,
        with a guard, checks every later request of the page, redirect hops included (``Fetch`` interception)."""
        if page in self._watched_pages:
            return
        self._watched_pages.append(page)
        try:
            cdp = self.context.new_cdp_session(page)
            cdp.on("Page.windowOpen", self._on_window_open)
            cdp.send("Page.enable")
            if self.allowed_hosts is not None:
                main_frame = cdp.send("Page.getFrameTree")["frameTree"]["frame"]["id"]
                cdp.on("Fetch.requestPaused", lambda event: self._guard_paused(cdp, main_frame, event))
                cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*", "requestStage": "Request"}]})
                self._intercepted_pages.append(page)
        except Exception:  # a tab closed while it opened: nothing left to watch
            pass

    def _on_window_open(self, _event: dict[str, Any]) -> None:
        self._announced_tabs += 1

    def _guard_paused(self, cdp: Any, main_frame: str, event: dict[str, Any]) -> None:
        url = event["request"]["url"]
        with contextlib.suppress(Exception):  # the tab may close while a request waits
            if self.is_allowed(url):
                if len(self._continued) > 1000:
                    self._continued.clear()
                self._continued[event["requestId"]] = url  # a redirect from it names it as its origin
                cdp.send("Fetch.continueRequest", {"requestId": event["requestId"]})
                return
            if event.get("resourceType") == "Document":
                kind = "navigation" if event.get("frameId") == main_frame else "frame"
            else:
                kind = "resource"
            self.record_blocked(url, kind, self._continued.get(event.get("redirectedRequestId") or ""))
            cdp.send("Fetch.failRequest", {"requestId": event["requestId"], "errorReason": "BlockedByClient"})

    # -- tabs --------------------------------------------------------------------------------------

    def _on_new_page(self, page: Any) -> None:
        if page in self.pages:
            return
        self.pages.append(page)  # first: watching makes Playwright calls, which may deliver this event again
        self._announced_tabs = max(0, self._announced_tabs - 1)
        page.on("close", self._on_close)
        if self.follow_new_tabs:
            self.active = page
        self._watch_page(page)

    def _on_close(self, page: Any) -> None:
        for pages in (self._watched_pages, self._intercepted_pages):
            if page in pages:
                pages.remove(page)
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
        """Wait (bounded) for the load event and a quiet DOM on the active tab; returns seconds waited. A tab
        that a click opened is awaited and becomes the active one, also when Chromium announces it only while
        the first tab is settling (a loaded machine delivers that event late): the new tab is then settled."""
        start = time.perf_counter()
        for _ in range(3):
            if self._announced_tabs:  # a click opened a tab that Playwright has not handed over yet: wait for it
                with contextlib.suppress(Exception):
                    self.context.wait_for_event("page", timeout=self.timeouts.navigation_ms)
                self._announced_tabs = 0
            page = self.active
            if page is None:
                break
            with contextlib.suppress(Exception):  # a page that never finishes loading: go on with what is there
                page.wait_for_load_state("load", timeout=self.timeouts.settle_ms)
            remaining = max(1, self.timeouts.settle_ms - int(1000 * (time.perf_counter() - start)))
            with contextlib.suppress(Exception):  # a navigation destroys the context; the next observation copes
                page.evaluate(_DOM_QUIET_SCRIPT, [self.timeouts.dom_quiet_ms, remaining])
            if not self._announced_tabs and page is self.active:
                break
        return time.perf_counter() - start
