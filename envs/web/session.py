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

# Every document of the context keeps the wall-clock time (ms) of its last DOM change, from its first moment, under
# a symbol key (no name a page's own code would see in its globals), so a settle knows whether the action changed
# the page before the settle began.
_CHANGE_CLOCK_KEY = "envs.web.lastDomChange"
_CHANGE_CLOCK_SCRIPT = f"""
(() => {{
  const now = Date.now.bind(Date);  /* the wall clock, even if the page replaces Date.now later */
  let lastChange = 0;
  new MutationObserver(() => {{ lastChange = now(); }})
    .observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
  Object.defineProperty(window, Symbol.for('{_CHANGE_CLOCK_KEY}'), {{
    value: {{lastChange: () => lastChange, now}},
    configurable: true,  /* a window kept from about:blank gets its new document's clock */
  }});
}})();
"""

# Resolves once the page is quiet, or after `limitMs` in any case. Quiet: two animation frames in a row with no DOM
# change and no finite CSS/Web animation about to end (within 1 s), and, if the DOM changed since `sinceMs` (the
# action's start, wall clock), `quietMs` since its last change. A page the action did not change returns after two
# frames; one it changed waits as long as before. A document without the change clock counts as changed at the
# start. A hidden tab gets no animation frames, so it is polled by timer instead.
_DOM_QUIET_SCRIPT = f"""
([quietMs, limitMs, sinceMs]) => new Promise((resolve) => {{
  const start = performance.now();
  const clock = window[Symbol.for('{_CHANGE_CLOCK_KEY}')];
  const now = clock ? clock.now : Date.now.bind(Date);
  let lastChange = clock ? clock.lastChange() : now();
  if (lastChange < sinceMs) lastChange = null;
  let seenChange = lastChange, calmFrames = 0, finished = false;
  const observer = new MutationObserver(() => {{ lastChange = now(); }});
  observer.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
  const finish = () => {{
    if (finished) return;
    finished = true;
    observer.disconnect();
    clearTimeout(bound);
    resolve(performance.now() - start);
  }};
  const bound = setTimeout(finish, limitMs);
  const animating = () => document.getAnimations().some((animation) => {{
    if (animation.playState !== 'running' || !animation.effect) return false;
    const timing = animation.effect.getComputedTiming();
    return Number.isFinite(timing.endTime) && timing.endTime - (timing.localTime || 0) <= 1000;
  }});
  const frame = () => {{
    if (finished) return;
    if (lastChange !== seenChange || animating()) {{ seenChange = lastChange; calmFrames = 0; }}
    else calmFrames += 1;
    if (calmFrames >= 2 && (lastChange === null || now() - lastChange >= quietMs)) return finish();
    if (document.visibilityState === 'hidden') setTimeout(frame, 16); else requestAnimationFrame(frame);
  }};
  if (document.visibilityState === 'hidden') setTimeout(frame, 16); else requestAnimationFrame(frame);
}})
"""

# With no quiet window: resolves after one task turn without DOM mutations (handlers the action queued have run).
_DOM_TURN_SCRIPT = """
(limitMs) => new Promise((resolve) => {
  let timer = null;
  const start = performance.now();
  const done = () => { observer.disconnect(); resolve(performance.now() - start); };
  const observer = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(done, 0); });
  observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  timer = setTimeout(done, 0);
  setTimeout(done, limitMs);
})
"""
_MAX_TRACKED_REQUESTS = 1000


@dataclass(frozen=True)
class Timeouts:
    """Bounds in milliseconds: one action, one navigation, the settle wait after either, and how long the DOM
    must stay unchanged after its last change (0: one task turn without changes)."""

    action_ms: int = 5000
    navigation_ms: int = 15000
    settle_ms: int = 3000
    dom_quiet_ms: int = 100


@dataclass(frozen=True)
class ActionMark:
    """When an action began: the number of requests started before it and the wall-clock time in ms."""

    requests_started: int
    wall_ms: float


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
        self._opening_tab = False  # new_tab is creating a page: it watches that page itself, before navigating
        self._continued: dict[str, str] = {}  # DevTools request id -> URL, for naming a redirect's origin
        self._devtools: dict[Any, Any] = {}  # page -> its DevTools session (also used for screenshots)
        self._requests_started = 0
        self._in_flight: dict[Any, int] = {}  # request -> its number in start order, until it ends
        context.set_default_timeout(timeouts.action_ms)
        context.set_default_navigation_timeout(timeouts.navigation_ms)
        context.add_init_script(_CHANGE_CLOCK_SCRIPT)
        context.on("page", self._on_new_page)
        context.on("request", self._on_request)
        context.on("requestfinished", self._on_request_end)
        context.on("requestfailed", self._on_request_end)
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
            self._devtools[page] = cdp
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

    # -- requests in flight ------------------------------------------------------------------------

    def _on_request(self, request: Any) -> None:
        self._requests_started += 1
        if len(self._in_flight) >= _MAX_TRACKED_REQUESTS:  # long-lived ones (event streams) never end: forget
            self._in_flight.clear()
        self._in_flight[request] = self._requests_started

    def _on_request_end(self, request: Any) -> None:
        self._in_flight.pop(request, None)

    def action_mark(self) -> ActionMark:
        """A mark just before an action: ``settle(since=mark)`` counts the DOM changes and requests after it."""
        return ActionMark(self._requests_started, 1000 * time.time())

    def _requests_pending(self, since: ActionMark) -> bool:
        return any(number > since.requests_started for number in self._in_flight.values())

    # -- tabs --------------------------------------------------------------------------------------

    def _on_new_page(self, page: Any) -> None:
        if page in self.pages:
            return
        self.pages.append(page)  # first: watching makes Playwright calls, which may deliver this event again
        self._announced_tabs = max(0, self._announced_tabs - 1)
        page.on("close", self._on_close)
        if self.follow_new_tabs:
            self.active = page
        if not self._opening_tab:
            self._watch_page(page)

    def devtools(self, page: Any) -> Any:
        """The DevTools session this session holds on ``page``, or None (the page closed while it opened)."""
        return self._devtools.get(page)

    def _on_close(self, page: Any) -> None:
        self._devtools.pop(page, None)
        for pages in (self._watched_pages, self._intercepted_pages):
            if page in pages:
                pages.remove(page)
        if page in self.pages:
            self.pages.remove(page)
        if self.active is page:
            self.active = self.pages[-1] if self.pages else None

    def new_tab(self, url: str | None = None) -> Any:
        """A new tab, watched (and with a guard, intercepted) before it navigates, so that every request of its
        first page meets the interception instead of being fetched hop by hop through ``_follow_redirects``."""
        self._opening_tab = True  # the "page" event may arrive while new_page waits: it must not start a watch
        try:
            page = self.context.new_page()
        finally:
            self._opening_tab = False
        self._on_new_page(page)
        self._watch_page(page)
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
        started = self.action_mark()
        self.active.goto(url, wait_until="domcontentloaded", timeout=self.timeouts.navigation_ms)
        self.settle(since=started)

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

    def settle(self, since: ActionMark | None = None) -> float:
        """Wait (bounded) for the load event and a quiet page (``_DOM_QUIET_SCRIPT``) on the active tab, and for
        the requests started after the ``since`` mark (``action_mark``; default: now) to end; returns seconds
        waited. A tab that a click opened is awaited and becomes the active one, also when Chromium announces it
        only while the first tab is settling (a loaded machine delivers that event late): the new tab is then
        settled."""
        start = time.perf_counter()
        since = since or self.action_mark()
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
            while True:  # quiet again after each answer to a request the action made
                remaining = self.timeouts.settle_ms - int(1000 * (time.perf_counter() - start))
                with contextlib.suppress(Exception):  # a navigation destroys the context; the observation copes
                    if self.timeouts.dom_quiet_ms > 0:
                        page.evaluate(_DOM_QUIET_SCRIPT, [self.timeouts.dom_quiet_ms, max(1, remaining), since.wall_ms])
                    else:
                        page.evaluate(_DOM_TURN_SCRIPT, max(1, remaining))
                if remaining <= 0 or not self._requests_pending(since) or page is not self.active:
                    break
            if not self._announced_tabs and page is self.active:
                break
        return time.perf_counter() - start
