"""Step latency of WebEnv (action + Set-of-Mark observation) vs raw Playwright on a bundled page.

The page is the bundled Shopping site's full catalogue listing (products, filters, links) at 1280x720,
served from 127.0.0.1. WebEnv steps alternate hover and scroll actions, each followed by the full
observation (the page settled, marks found in one script pass, screenshot, marks drawn, listing). Baseline,
in the same run and browser, one raw Playwright step after each WebEnv step (interleaved, so both see the
same machine load): the same action on the same element (``locator.hover()``, ``window.scrollBy``), one
``page.screenshot()`` and one bounding-box query, the least an agent loop over raw Playwright does per step.
The earlier baseline, screenshot and bounding box without the action, is printed too
(``web_env_step_median_vs_screenshot_only``): it left out the action that both sides carry out. Then
BrowserGym's ``BrowserEnv`` on the same page with the same action mix
(``bench/browsergym_steps.py``, run in its own venv: ``runs/.bench-venvs/browsergym-miniwob`` if
``bench/miniwob_env.py`` made it, else ``.bench-venvs/browsergym``, installed here from PyPI on first use;
pointed at the system Chromium), with its default 0.5 s pre-observation delay and with 0.

    python bench/web_env.py --steps 40 [--no-browsergym]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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
from envs.web.som_page import find_page_elements  # noqa: E402
from envs.web.tasks import task_from_config  # noqa: E402


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


BROWSERGYM_VENV = ROOT / ".bench-venvs" / "browsergym"
BROWSERGYM_PACKAGE = "browsergym-core>=0.14,<0.15"
# bench/miniwob_env.py's venv holds the same browsergym-core (a dependency of browsergym-miniwob): used if present.
SHARED_BROWSERGYM_VENV = ROOT / "runs" / ".bench-venvs" / "browsergym-miniwob"


def _has_browsergym_core(python: Path) -> bool:
    check = [str(python), "-c", "import browsergym.core, importlib.metadata as m; print(m.version('browsergym-core'))"]
    try:
        done = subprocess.run(check, capture_output=True, text=True, timeout=120)
    except (subprocess.SubprocessError, OSError):
        return False
    return done.returncode == 0 and done.stdout.strip().startswith("0.14.")


def browsergym_python() -> Path | None:
    """The interpreter of a venv with BrowserGym (ours, or bench/miniwob_env.py's), made on first use; None
    (and a note) if it cannot be had."""
    python = BROWSERGYM_VENV / "bin" / "python"
    shared = SHARED_BROWSERGYM_VENV / "bin" / "python"
    if not python.exists() and shared.exists() and _has_browsergym_core(shared):
        return shared
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(BROWSERGYM_VENV)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "-q", BROWSERGYM_PACKAGE], check=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as error:
            report.log("web_env", f"BrowserGym not compared: cannot install {BROWSERGYM_PACKAGE}: {error}")
            return None
    return python


def browsergym_steps(python: Path, url: str, steps: int, delay: float) -> list[float] | None:
    command = [str(python), str(ROOT / "bench" / "browsergym_steps.py"), "--url", url, "--steps", str(steps)]
    done = subprocess.run(
        [*command, "--pre-observation-delay", str(delay)], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        report.log("web_env", f"BrowserGym run failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    parser.add_argument("--no-browsergym", action="store_true", help="skip the BrowserGym comparison")
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
        context = browser.new_context(ContextOptions())
        page = context.new_page()
        page.goto(url)
        find_page_elements(page)  # the same ids on the same elements, for the raw side's hovers
        env_steps, raw_steps, shot_only_steps = [], [], []
        phases: dict[str, list[float]] = {}
        for index in range(args.steps):
            action = (
                f"hover [{ids[(index // 2) % len(ids)]}]"
                if index % 2
                else ("scroll [down]", "scroll [up]")[index // 2 % 2]
            )
            started = time.perf_counter()
            info = env.step(action)[4]
            env_steps.append(time.perf_counter() - started)
            for phase, seconds in info["timings"].items():
                phases.setdefault(phase, []).append(seconds)

            started = time.perf_counter()
            if index % 2:
                page.locator(f'[data-som-id="{ids[(index // 2) % len(ids)]}"]').first.hover()
            else:
                page.evaluate("(sign) => window.scrollBy(0, sign * window.innerHeight)", (1, -1)[index // 2 % 2])
            page.screenshot(type="png")
            page.locator("a").first.bounding_box()
            raw_steps.append(time.perf_counter() - started)

            started = time.perf_counter()
            page.screenshot(type="png")
            page.locator("a").first.bounding_box()
            shot_only_steps.append(time.perf_counter() - started)
        split = ", ".join(f"{phase} {1000 * statistics.median(values):.0f} ms" for phase, values in phases.items())
        report.log("web_env", f"{len(obs['som'].splitlines())} marked elements; median step phases: {split}")
        env.close()
        context.close()
    gym_runs: dict[float, list[float] | None] = {}
    python = None if args.no_browsergym else browsergym_python()
    if python is not None:
        for delay in (0.5, 0.0):
            gym_runs[delay] = browsergym_steps(python, url, args.steps, delay)
    sites.stop()
    for name, fraction in (("median", 0.5), ("p90", 0.9)):
        ours, raw = _percentile(env_steps, fraction), _percentile(raw_steps, fraction)
        report.emit(
            f"web_env_step_{name}",
            1000 * ours,
            "ms",
            baseline=f"raw playwright (action, screenshot, bounding box) {1000 * raw:.1f} ms",
            ratio=ours / raw,
            **({"goal": "<= 1.5"} if name == "median" else {}),
        )
        for delay, steps in gym_runs.items():
            if steps:
                theirs = _percentile(steps, fraction)
                baseline = f"browsergym (pre_observation_delay {delay} s) {1000 * theirs:.1f} ms"
                report.emit(
                    f"web_env_step_{name}_vs_browsergym_delay{delay}", 1000 * ours, "ms", baseline, ours / theirs
                )
    ours, shot_only = statistics.median(env_steps), statistics.median(shot_only_steps)
    report.emit(
        "web_env_step_median_vs_screenshot_only",
        1000 * ours,
        "ms",
        baseline=f"raw playwright (screenshot, bounding box; no action) {1000 * shot_only:.1f} ms",
        ratio=ours / shot_only,
    )
    report.emit("web_env_step_mean", 1000 * statistics.fmean(env_steps), "ms")


if __name__ == "__main__":
    main()
