"""Step latency of MiniWoBEnv vs raw Playwright and vs BrowserGym's MiniWoB env, same task and actions, same run.

The task is MiniWoB++'s click-checkboxes at seed 0, served from the installed ``miniwob`` package on
127.0.0.1; every step clicks the next checkbox (toggling it, so the episode never ends), with the page's
time limit lifted on all sides. Our step: the click, the page's reward globals read, then the full
observation (Set-of-Mark pass, screenshot, marks drawn, listing). Raw Playwright, in the same browser at the
same 160x210 viewport: the same click on the same seeded page plus one ``page.screenshot()``, the least an
agent loop over raw Playwright does. BrowserGym: ``browsergym-miniwob`` in its own venv under
``runs/.bench-venvs/browsergym-miniwob`` (installed from PyPI on first use, never a toolkit dependency),
pointed at the same served pages and the system Chromium, with its default 0.5 s pre-observation delay and
with 0; its task keeps its own 332x214 viewport and 100 ms ``slow_mo``. This file is also what runs there
(``--browsergym-side``, which imports only the standard library and browsergym).

    python bench/miniwob_env.py --steps 40 [--no-browsergym]
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
TASK = "click-checkboxes"
SEED = 0
NO_TIME_LIMIT_MS = 10_000_000
BROWSERGYM_VENV = ROOT / "runs" / ".bench-venvs" / "browsergym-miniwob"
BROWSERGYM_PACKAGE = "browsergym-miniwob>=0.14,<0.15"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- BrowserGym's side (runs in its own venv) ------------------------------------------------------------------


def browsergym_side(base_url: str, steps: int, delay: float, chromium: str) -> None:
    """Times BrowserGym's click-checkboxes steps; prints one JSON object with the per-step seconds."""
    import os

    os.environ["MINIWOB_URL"] = base_url
    import browsergym.miniwob  # noqa: F401  (registers browsergym/miniwob.<task>)
    import gymnasium
    from playwright.sync_api._generated import BrowserType

    launch = BrowserType.launch

    def launch_system_chromium(self, *positional, **keywords):  # Playwright's own build cannot be fetched here
        keywords.setdefault("executable_path", chromium)
        return launch(self, *positional, **keywords)

    BrowserType.launch = launch_system_chromium
    env = gymnasium.make(f"browsergym/miniwob.{TASK}", headless=True, pre_observation_delay=delay)
    env.reset(seed=SEED)
    page = env.unwrapped.page
    bids = page.evaluate(
        "() => [...document.querySelectorAll('input[type=checkbox]')].map((e) => e.getAttribute('bid'))"
    )
    times = []
    for index in range(steps):
        started = time.perf_counter()
        _, _, terminated, _, info = env.step(f"click('{bids[index % len(bids)]}')")
        times.append(time.perf_counter() - started)
        if terminated or info.get("last_action_error"):
            raise RuntimeError(f"BrowserGym step {index} ended or failed: {info.get('last_action_error')}")
    env.close()
    print(json.dumps({"steps": times, "checkboxes": len(bids)}))


# -- our side ----------------------------------------------------------------------------------------------------


def browsergym_python(report) -> Path | None:
    """The interpreter of BrowserGym's venv, made on first use; None (and a note) if it cannot be had."""
    python = BROWSERGYM_VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(BROWSERGYM_VENV)], check=True, timeout=300)
            subprocess.run([str(python), "-m", "pip", "install", "-q", BROWSERGYM_PACKAGE], check=True, timeout=900)
        except (subprocess.SubprocessError, OSError) as error:
            report.log("miniwob_env", f"BrowserGym not compared: cannot install {BROWSERGYM_PACKAGE}: {error}")
            return None
    return python


def browsergym_steps(report, python: Path, base_url: str, steps: int, delay: float) -> list[float] | None:
    command = [str(python), str(Path(__file__).resolve()), "--browsergym-side", "--base-url", base_url]
    command += ["--steps", str(steps), "--pre-observation-delay", str(delay)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        report.log("miniwob_env", f"BrowserGym run failed: {done.stderr.strip().splitlines()[-3:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["steps"]


def interleaved_steps(browser, url: str, steps: int) -> tuple[list[float], list[float], dict[str, float]]:
    """Our env's steps and raw Playwright's, taken in turns (one of ours, one raw) so that both see the same
    machine load; returns (ours, raw, our last step's phase timings)."""
    from envs.miniwob.env import TASK_VIEWPORT, MiniWoBEnv, start_episode_script
    from envs.web.browser import ContextOptions

    env = MiniWoBEnv(browser=browser, max_steps=steps + 10, time_limit_ms=NO_TIME_LIMIT_MS)
    observation, _ = env.reset(seed=SEED, options={"task": TASK})
    ids = [int(line[1 : line.index("]")]) for line in observation["som"].splitlines() if "] [INPUT] [" in line]

    context = browser.new_context(ContextOptions(TASK_VIEWPORT))
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("() => typeof core === 'object' && document.getElementById('sync-task-cover') !== null")
    page.evaluate(start_episode_script(SEED, "train", NO_TIME_LIMIT_MS))
    page.wait_for_function("() => WOB_TASK_READY === true")
    count = page.locator("input[type=checkbox]").count()
    assert count == len(ids), (count, ids)

    ours, raw = [], []
    for index in range(steps):
        started = time.perf_counter()
        _, _, terminated, _, info = env.step(f"click [{ids[index % len(ids)]}]")
        ours.append(time.perf_counter() - started)
        if terminated or info["action_error"]:
            raise RuntimeError(f"our step {index} ended or failed: {info['action_error']}")
        started = time.perf_counter()
        page.locator(f"#ch{index % count}").click()
        page.screenshot(type="png")
        raw.append(time.perf_counter() - started)
    context.close()
    env.close()
    return ours, raw, info["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    parser.add_argument("--no-browsergym", action="store_true", help="skip the BrowserGym comparison")
    parser.add_argument("--browsergym-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--pre-observation-delay", type=float, default=0.5, help=argparse.SUPPRESS)
    parser.add_argument("--chromium", default="/usr/bin/chromium", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.browsergym_side:
        browsergym_side(args.base_url, args.steps, args.pre_observation_delay, args.chromium)
        return

    if str(ROOT) not in sys.path:  # run as a script from a checkout without an installed package
        sys.path.insert(0, str(ROOT))
    import report  # bench/report.py

    from envs.miniwob.server import shared_server
    from envs.web.browser import ChromiumBrowser

    server = shared_server()
    with ChromiumBrowser() as browser:
        ours, raw, timings = interleaved_steps(browser, server.task_url(TASK), args.steps)
    phases = ", ".join(f"{phase} {1000 * seconds:.1f} ms" for phase, seconds in timings.items())
    report.log("miniwob_env", f"{TASK}, our last step: {phases}")
    gym_runs: dict[float, list[float] | None] = {}
    python = None if args.no_browsergym else browsergym_python(report)
    if python is not None:
        for delay in (0.5, 0.0):
            gym_runs[delay] = browsergym_steps(report, python, f"{server.url}miniwob/", args.steps, delay)
    server.stop()
    for name, fraction in (("median", 0.5), ("p90", 0.9)):
        mine, theirs_raw = _percentile(ours, fraction), _percentile(raw, fraction)
        baseline = f"raw playwright click + screenshot {1000 * theirs_raw:.1f} ms"
        report.emit(f"miniwob_env_step_{name}", 1000 * mine, "ms", baseline=baseline, ratio=mine / theirs_raw)
        for delay, steps in gym_runs.items():
            if steps:
                theirs = _percentile(steps, fraction)
                baseline = f"browsergym miniwob (pre_observation_delay {delay} s) {1000 * theirs:.1f} ms"
                report.emit(
                    f"miniwob_env_step_{name}_vs_browsergym_delay{delay}", 1000 * mine, "ms", baseline, mine / theirs
                )
    report.emit("miniwob_env_step_mean", 1000 * statistics.fmean(ours), "ms")


if __name__ == "__main__":
    main()
