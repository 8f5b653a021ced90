"""Step latency of WebEnv (action + Set-of-Mark observation) vs raw Playwright on a bundled page.

The page is the bundled Shopping site's full catalogue listing (products, filters, links) at 1280x720,
served from 127.0.0.1. WebEnv steps alternate hover and scroll actions, each followed by the full
observation (marks found in one script pass, screenshot, marks drawn, listing). Baseline, in the same
run and browser: one ``page.screenshot()`` plus one bounding-box query, the least an agent loop over raw
Playwright does per step. BrowserGym is not compared: it needs Playwright's own browser download, which
this machine cannot fetch.

    python bench/web_env.py --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
    sys.path.insert(0, str(ROOT))

import report  # noqa: E402  (bench/report.py)

from envs.web.browser import ChromiumBrowser, ContextOptions  # noqa: E402
from envs.web.env import WebEnv  # noqa: E402
from envs.web.sites.server import start_sites  # noqa: E402
from envs.web.tasks import task_from_config  # noqa: E402


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    args = parser.parse_args()
    sites = start_sites(names=("shopping",))
    url = f"{sites['shopping']}/catalogsearch/result/?q="
    task = task_from_config(
        {
            "task_id": 0,
            "intent": "bench",
            "start_url": url,
            "eval": {"eval_types": ["url_match"], "reference_url": url},
        },
        {},
    )
    with ChromiumBrowser() as browser:
        env = WebEnv(browser=browser, max_steps=10 * args.steps + 10)
        obs, _ = env.reset(options={"task": task})
        ids = [int(line[1 : line.index("]")]) for line in obs["som"].splitlines()]
        env_steps = []
        for index in range(args.steps):
            started = time.perf_counter()
            action = (
                f"hover [{ids[(index // 2) % len(ids)]}]"
                if index % 2
                else ("scroll [down]", "scroll [up]")[index // 2 % 2]
            )
            env.step(action)
            env_steps.append(time.perf_counter() - started)
        timings = env.step("scroll [down]")[4]["timings"]
        phases = ", ".join(f"{phase} {1000 * seconds:.0f} ms" for phase, seconds in timings.items())
        report.log("web_env", f"{len(obs['som'].splitlines())} marked elements; one step: {phases}")
        env.close()

        context = browser.new_context(ContextOptions())
        page = context.new_page()
        page.goto(url)
        raw_steps = []
        for _ in range(args.steps):
            started = time.perf_counter()
            page.screenshot(type="png")
            page.locator("a").first.bounding_box()
            raw_steps.append(time.perf_counter() - started)
        context.close()
    sites.stop()
    for name, fraction in (("median", 0.5), ("p90", 0.9)):
        ours, raw = _percentile(env_steps, fraction), _percentile(raw_steps, fraction)
        report.emit(
            f"web_env_step_{name}", 1000 * ours, "ms", baseline=f"raw playwright {1000 * raw:.1f} ms", ratio=ours / raw
        )
    report.emit("web_env_step_mean", 1000 * statistics.fmean(env_steps), "ms")


if __name__ == "__main__":
    main()
