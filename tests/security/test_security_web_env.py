"""The web environment's allowed-hosts guard against hostile pages, on a real Chromium: two local HTTP servers
on 127.0.0.1 at different ports are two hosts; the other one counts every request that reaches it, and the
guard must let none through (redirect hops, images, fetch, WebSockets, frames, new tabs, file: URLs)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from local_servers import QuietHandler, send_body, serve_http, stop_http

pytest.importorskip("playwright")
if not Path("/usr/bin/chromium").exists():
    pytest.skip("system Chromium not installed", allow_module_level=True)

from envs.web.browser import ChromiumBrowser
from envs.web.env import StartUrlBlockedError, WebEnv
from envs.web.tasks import task_from_config

WAIT_S = 120  # generous bound for conditions on a loaded machine


def _pages(other: str) -> dict[str, str]:
    return {
        "/": "<html><body><p>Home</p><a href='/go-other'>Deals</a><a href='/hop1'>Hops</a>"
        "<a href='/go-other' target='_blank'>Deals in a tab</a><a href='/page2' target='_blank'>Tab</a>"
        f"<a href='http://{other}/direct'>Other site</a></body></html>",
        "/page2": "<html><body><p>Second page</p></body></html>",
        "/subresources": f"""<html><body><p id="state">loading</p>
<img src="http://{other}/image.png" onerror="done('image')">
<img src="/img-redirect" onerror="done('redirected image')">
<iframe src="http://{other}/frame"></iframe>
<script>
const finished = new Set();
function done(what) {{
  finished.add(what);
  document.getElementById('state').textContent = [...finished].sort().join(',');
}}
fetch('http://{other}/fetch', {{mode: 'no-cors'}}).then(() => done('fetch'), () => done('fetch'));
fetch('/fetch-redirect', {{mode: 'no-cors'}}).then(() => done('fetch redirect'), () => done('fetch redirect'));
const socket = new WebSocket('ws://{other}/socket');
socket.onclose = () => done('websocket');
</script></body></html>""",
    }


class _Site(QuietHandler):
    def do_GET(self) -> None:
        other = self.server.other
        redirects = {
            "/go-other": f"http://{other}/landing",
            "/hop1": "/hop2",
            "/hop2": f"http://{other}/after-two-hops",
            "/img-redirect": f"http://{other}/redirected.png",
            "/fetch-redirect": f"http://{other}/redirected-fetch",
            "/moved": "/page2",
        }
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _pages(other).get(self.path)
        if body is None:
            self.send_error(404)
            return
        send_body(self, body, "text/html; charset=utf-8")


class _Other(QuietHandler):
    """The host no task allows: it counts every request (a WebSocket handshake is a GET too)."""

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        send_body(self, "<html><body><p>SECRET of the other host</p></body></html>", "text/html")


@pytest.fixture(scope="module")
def hosts():
    other = serve_http(_Other)
    other.hits = []
    site = serve_http(_Site)
    site.other = f"127.0.0.1:{other.server_address[1]}"
    yield f"http://127.0.0.1:{site.server_address[1]}", other
    stop_http(site, other)


@pytest.fixture(scope="module")
def browser():
    with ChromiumBrowser() as shared:
        yield shared


@pytest.fixture
def env(browser, hosts):
    hosts[1].hits.clear()
    environment = WebEnv(browser=browser)
    yield environment
    environment.close()


def _task(start_url: str) -> object:
    config = {
        "task_id": 1,
        "intent": "Look around",
        "start_url": start_url,
        "eval": {"eval_types": ["string_match"], "reference_answers": {"exact_match": "x"}},
    }
    return task_from_config(config, {})


def _id_of(listing: str, text: str) -> int:
    for line in listing.splitlines():
        if line.endswith(f"[{text}]"):
            return int(line[1 : line.index("]")])
    raise AssertionError(f"{text!r} not in listing:\n{listing}")


def _wait_for(condition, what: str, pump=None) -> None:
    """Wait for ``condition``; ``pump``, a page, keeps Playwright delivering events meanwhile: the sync API
    dispatches them (the route and DevTools callbacks that record blocks) only inside its own calls, so a
    wait in time.sleep would wait for records that never arrive."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if pump is not None:
            pump.wait_for_timeout(50)
        else:
            time.sleep(0.05)


def test_a_start_url_redirecting_on_its_host_shows_where_it_landed_its_tab_guarded_before_it_navigates(env, hosts):
    """The env's own tabs get the DevTools interception before their first navigation, so the browser follows
    an allowed redirect itself (each hop checked) and the observation's URL is the page the tab shows."""
    site, other = hosts
    observation, _ = env.reset(options={"task": _task(site + "/moved")})
    assert observation["url"] == site + "/page2" and "Second page" in env.session.active.content()
    assert other.hits == []


@pytest.mark.parametrize("path", ["/go-other", "/hop1"])
def test_a_start_url_that_redirects_to_another_host_is_refused_before_any_request_reaches_it(env, hosts, path):
    site, other = hosts
    with pytest.raises(StartUrlBlockedError, match="redirect from") as refused:
        env.reset(options={"task": _task(site + path)})
    assert "127.0.0.1:" in str(refused.value) and "allowed" in str(refused.value)
    assert other.hits == [] and env.session is None  # nothing observed of the other host, the context closed


def test_images_fetch_websockets_and_frames_to_another_host_never_leave(env, hosts):
    site, other = hosts
    env.reset(options={"task": _task(site + "/subresources")})
    wanted = "fetch,fetch redirect,image,redirected image,websocket"
    page = env.session.active
    _wait_for(lambda: page.text_content("#state") == wanted, "every cross-host attempt of the page to end")
    expected = {"image.png", "redirected.png", "fetch", "redirected-fetch", "socket", "frame"}

    def blocked_by_name() -> dict:
        return {entry.url.rsplit("/", 1)[-1]: entry for entry in env.session.blocked}

    # the page sees a request fail as soon as it is refused; on a loaded machine the record of a redirect hop's
    # block can come a moment later, so wait for every record (each is asserted by name below)
    _wait_for(lambda: expected <= set(blocked_by_name()), f"blocks of {sorted(expected)}", pump=page)
    blocked = blocked_by_name()
    assert expected <= set(blocked)
    assert blocked["redirected.png"].redirected_from == f"{site}/img-redirect"
    assert blocked["socket"].kind == "websocket" and blocked["frame"].kind == "frame"
    assert other.hits == []


def test_a_click_that_redirects_off_the_sites_is_blocked_and_reported(env, hosts):
    site, other = hosts
    obs, info = env.reset(options={"task": _task(site + "/")})
    assert info["blocked"] == []
    for link in ("Deals", "Hops", "Other site"):
        obs, _, _, _, info = env.step(f"click [{_id_of(obs['som'], link)}]")
        assert "blocked" in info["action_error"] and info["blocked"], (link, info)
        assert obs["url"] == f"{site}/" and "SECRET" not in obs["som"]
    assert "redirect from" in env.session.blocked[0].describe()
    assert other.hits == []


def test_a_new_tab_is_awaited_and_its_redirect_off_the_sites_is_blocked(env, hosts):
    site, other = hosts
    obs, _ = env.reset(options={"task": _task(site + "/")})
    obs, *_, info = env.step(f"click [{_id_of(obs['som'], 'Tab')}]")
    assert info["action_error"] is None and obs["url"] == f"{site}/page2" and len(obs["tabs"]) == 2
    obs, *_ = env.step("tab_focus [0]")
    obs, *_, info = env.step(f"click [{_id_of(obs['som'], 'Deals in a tab')}]")

    def tab_blocked() -> bool:
        return any(entry.url.endswith("/landing") for entry in env.session.blocked)

    _wait_for(tab_blocked, "the tab's block", pump=env.session.active)
    assert "SECRET" not in obs["som"] and other.hits == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "data:text/html,<p>hi</p>", "javascript:alert(1)", "chrome://version"]
)
def test_urls_that_are_not_http_on_the_sites_are_refused(env, hosts, url):
    site, _ = hosts
    with pytest.raises(StartUrlBlockedError, match="only http"):
        env.reset(options={"task": _task(url)})
    obs, _ = env.reset(options={"task": _task(site + "/")})
    obs, _, _, _, info = env.step(f"goto [{url}]")
    assert "blocked" in info["action_error"] and obs["url"] == f"{site}/"
