"""WebEnv on a real Chromium against small pages served from this test on 127.0.0.1."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("playwright")
if not Path("/usr/bin/chromium").exists():
    pytest.skip("system Chromium not installed", allow_module_level=True)

import envs.web  # noqa: F401  (registers VisualWebArena-v0)
from envs.web.browser import ChromiumBrowser
from envs.web.env import SiteUnreachableError, WebEnv
from envs.web.session import Timeouts
from envs.web.som_page import draw_page_marks, find_page_elements
from envs.web.tasks import load_tasks, task_from_config

VWA_DIR = Path(__file__).resolve().parents[2] / "shared" / "vwa"

PAGES = {
    "/": """<html><body><h1>Shop</h1>
<div id="top"></div>
<button id="buy" onclick="document.getElementById('out').textContent='bought'">Buy</button>
<button id="sell" onclick="document.getElementById('out').textContent='sold'">Sell</button>
<input id="q" placeholder="search">
<a href="/page2">Next page</a>
<a href="http://{other}/elsewhere">Other site</a>
<p id="out">nothing</p></body></html>""",
    "/page2": "<html><body><p>Second page</p><a href='/'>Home</a></body></html>",
    "/react": """<html><body>
<button onclick="fetch('/slow').then((r) => r.text())
  .then((t) => { document.getElementById('answer').textContent = t; })">Ask</button>
<button onclick="let n = 0; const tick = () => { document.getElementById('count').textContent = 'count ' + (++n);
  if (n < 5) setTimeout(tick, 60); }; tick();">Count</button>
<input id="field" placeholder="type here"><label><input type="checkbox">Tick</label>
<p id="answer">no answer</p><p id="count">count 0</p></body></html>""",
    "/tabs": "<html><body><a href='/page2' target='_blank'>Open in new tab</a></body></html>",
    "/geo": """<html><body><p id="geo">unknown</p><script>
navigator.geolocation.getCurrentPosition(
  (p) => {
    document.getElementById('geo').textContent = p.coords.latitude.toFixed(3) + ',' + p.coords.longitude.toFixed(3);
  },
  (e) => { document.getElementById('geo').textContent = 'denied ' + e.code; });
</script></body></html>""",
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":  # a slow site: answers after 0.3 s
            time.sleep(0.3)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"answered")
            return
        if self.path == "/hang":
            self.server.release.wait(600)  # never answers until the module's site stops
            return
        body = PAGES.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        data = body.replace("{other}", self.server.other_host).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.block_on_close = False
    server.other_host = "127.0.0.2:9"
    server.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    with ChromiumBrowser() as shared:
        yield shared


def _task(site: str, path: str = "/", eval_block: dict | None = None) -> object:
    config = {
        "task_id": 1,
        "intent": "Buy the item",
        "start_url": "__SHOPPING__" + path,
        "eval": eval_block or {"eval_types": ["string_match"], "reference_answers": {"exact_match": "bought"}},
    }
    return task_from_config(config, {"__SHOPPING__": site})


@pytest.fixture
def env(browser):
    environment = WebEnv(browser=browser, timeouts=Timeouts(action_ms=10_000, navigation_ms=10_000, settle_ms=3000))
    yield environment
    environment.close()


def _wait_for(condition, what: str, bound_s: float = 120, pump=None) -> None:
    """Wait for ``condition``; ``pump``, a page, keeps Playwright delivering events (block records come from
    its callbacks, which the sync API runs only inside its own calls, never during time.sleep)."""
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if pump is not None:
            pump.wait_for_timeout(50)
        else:
            time.sleep(0.05)


def _id_of(listing: str, text: str) -> int:
    for line in listing.splitlines():
        if line.endswith(f"[{text}]"):
            return int(line[1 : line.index("]")])
    raise AssertionError(f"{text!r} not in listing:\n{listing}")


def test_all_official_configs_load():
    urls = {
        name: f"http://127.0.0.1:{9000 + i}"
        for i, name in enumerate(("CLASSIFIEDS", "SHOPPING", "REDDIT", "WIKIPEDIA"))
    }
    tasks = load_tasks(VWA_DIR, urls)
    assert len(tasks) == 910
    multi_tab = [task for task in tasks if len(task.start_urls) > 1]
    assert multi_tab and all(url.startswith("http://127.0.0.1:") for task in multi_tab for url in task.start_urls)
    assert not any("__" in url for task in tasks for url in task.start_urls)
    assert any(task.viewport != (1280, 720) for task in tasks) and any(task.images for task in tasks)


def test_observation_step_and_success(env, site):
    obs, info = env.reset(options={"task": _task(site)})
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (720, 1280, 3)
    assert obs["screenshot"].shape == obs["image"].shape and not np.array_equal(obs["image"], obs["screenshot"])
    assert "[BUTTON] [Buy]" in obs["som"] and obs["url"].startswith(site) and obs["tabs"] == (obs["url"],)
    buy = _id_of(obs["som"], "Buy")
    obs, reward, terminated, truncated, info = env.step(f"I will buy. ```click [{buy}]```")
    assert info["action_error"] is None and "[bought]" in obs["som"]
    assert {"parse", "action", "som", "screenshot", "draw"} <= set(info["timings"])
    obs, reward, terminated, truncated, info = env.step("stop [bought]")
    assert terminated and not truncated and reward == 1.0 and info["success"] is True


def test_a_step_waits_for_the_changes_its_action_starts(env, site):
    """The settle after an action outlasts a request the action made and a chain of timed DOM changes."""
    obs, _ = env.reset(options={"task": _task(site, "/react")})
    obs, *_, info = env.step(f"click [{_id_of(obs['som'], 'Ask')}]")
    assert info["action_error"] is None and "[answered]" in obs["som"]
    obs, *_, info = env.step(f"click [{_id_of(obs['som'], 'Count')}]")
    assert info["action_error"] is None and "[count 5]" in obs["som"]


def test_observed_pixels_are_playwrights_screenshot_with_and_without_a_caret(env, site):
    """Screenshots taken straight through DevTools equal ``page.screenshot``'s pixels; with a focused field
    (a blinking caret) the observation still equals Playwright's caret-free screenshot; and the marks drawn
    while the screenshot was taken are the marks drawn afterwards."""
    obs, _ = env.reset(options={"task": _task(site, "/react")})
    field = _id_of(obs["som"], "type here")
    tick = _id_of(obs["som"], "Tick")  # a focused checkbox shows no caret: taken through DevTools
    for action in ("scroll [down]", f"click [{tick}]", f"click [{field}]", f"type [{field}] [abc] [0]"):
        obs, *_, info = env.step(action)
        assert info["action_error"] is None
        page = env.session.active
        playwright = np.asarray(Image.open(io.BytesIO(page.screenshot(type="png"))).convert("RGB"))
        assert np.array_equal(obs["screenshot"], playwright), action
        assert np.array_equal(obs["image"], draw_page_marks(obs["screenshot"], find_page_elements(page))), action


def test_ids_survive_relayout(env, site):
    obs, _ = env.reset(options={"task": _task(site)})
    sell = _id_of(obs["som"], "Sell")
    env.session.active.evaluate(
        "() => { const b = document.createElement('button'); b.textContent = 'Inserted';"
        " b.onclick = () => { document.getElementById('out').textContent = 'wrong'; };"
        " document.getElementById('top').appendChild(b); }"
    )
    obs, _, _, _, info = env.step(f"click [{sell}]")
    assert info["action_error"] is None and "[sold]" in obs["som"]
    assert _id_of(obs["som"], "Sell") == sell and _id_of(obs["som"], "Inserted") > sell


def test_bad_steps_are_counted_and_the_episode_goes_on(env, site):
    obs, _ = env.reset(options={"task": _task(site)})
    _, _, terminated, _, info = env.step("dance wildly")
    assert info["action_error"] and info["failed_steps"] == 1 and not terminated
    _, _, _, _, info = env.step("click [9999]")
    assert "no element with id [9999]" in info["action_error"] and info["failed_steps"] == 2
    obs, _, _, _, info = env.step(f"click [{_id_of(obs['som'], 'Other site')}]")
    _wait_for(
        lambda: any("/elsewhere" in url for url in env.session.blocked_urls),
        "the cross-site click's block",
        pump=env.session.active,
    )
    assert "blocked" in info["action_error"] and info["failed_steps"] == 3 and obs["url"].startswith(site)
    obs, _, _, _, info = env.step("goto [http://example.com/]")
    assert "blocked" in info["action_error"] and obs["url"].startswith(site)
    obs, _, _, _, info = env.step(f"click [{_id_of(obs['som'], 'Next page')}]")
    assert info["action_error"] is None and obs["url"] == f"{site}/page2"


def test_a_page_that_never_loads_is_bounded(env, site):
    env.reset(options={"task": _task(site)})
    started = time.perf_counter()
    _, _, _, _, info = env.step(f"goto [{site}/hang]")
    assert info["action_error"] and "goto failed" in info["action_error"]
    assert time.perf_counter() - started < 300  # bounded by the navigation timeout, not by the site


def test_unreachable_site_is_a_clear_error(env):
    with pytest.raises(SiteUnreachableError, match="start the site"):
        env.reset(options={"task": _task("http://127.0.0.1:9")})


def test_max_steps_truncates_and_grades(browser, site):
    env = gymnasium.make("VisualWebArena-v0", browser=browser, max_steps=1).unwrapped
    try:
        env.reset(options={"task": _task(site)})
        _, reward, terminated, truncated, info = env.step("scroll [down]")
        assert truncated and not terminated and reward == 0.0 and info["success"] is False
    finally:
        env.close()


def test_new_tabs_are_followed_and_tab_actions_work(env, site):
    obs, _ = env.reset(options={"task": _task(site, "/tabs")})
    obs, *_, info = env.step(f"click [{_id_of(obs['som'], 'Open in new tab')}]")
    assert info["action_error"] is None
    assert obs["url"] == f"{site}/page2" and obs["tabs"] == (f"{site}/tabs", f"{site}/page2")
    assert "Second page" in obs["som"]
    obs, *_ = env.step("tab_focus [0]")
    assert obs["url"] == f"{site}/tabs" and "Open in new tab" in obs["som"]
    obs, *_ = env.step("close_tab")
    assert obs["tabs"] == (f"{site}/page2",) and obs["url"] == f"{site}/page2"
    obs, *_ = env.step("new_tab")
    assert len(obs["tabs"]) == 2 and obs["url"] == "about:blank"
    obs, *_, info = env.step("tab_focus [5]")
    assert info["action_error"] and info["failed_steps"] == 1


def test_multi_tab_start_urls_open_in_order_on_the_first_tab(env, site):
    config = {
        "task_id": 2,
        "intent": "Compare the pages",
        "start_url": "__SHOPPING__/ |AND| __SHOPPING__/page2",
        "eval": {"eval_types": ["url_match"], "reference_url": "__SHOPPING__/page2"},
    }
    obs, _ = env.reset(options={"task": task_from_config(config, {"__SHOPPING__": site})})
    assert obs["tabs"] == (f"{site}/", f"{site}/page2") and obs["url"] == f"{site}/"
    obs, *_ = env.step("tab_focus [1]")
    *_, terminated, _, info = env.step("stop []")
    assert terminated and info["success"] is True


def test_task_geolocation_reaches_the_page(env, site):
    config = {
        "task_id": 3,
        "intent": "Where am I?",
        "start_url": "__SHOPPING__/geo",
        "geolocation": {"latitude": 40.4433, "longitude": -79.9436},
        "eval": {"eval_types": ["string_match"], "reference_answers": {"exact_match": "x"}},
    }
    env.reset(options={"task": task_from_config(config, {"__SHOPPING__": site})})
    page = env.session.active
    page.wait_for_function("document.getElementById('geo').textContent !== 'unknown'", timeout=120_000)
    assert page.text_content("#geo") == "40.443,-79.944"
