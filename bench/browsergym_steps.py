"""Step latency of BrowserGym's BrowserEnv on a URL; run by bench/web_env.py inside BrowserGym's own venv.

Prints one JSON object: per-step seconds for the same hover/scroll mix bench/web_env.py times on our env.
Only the standard library and browsergym are imported here (this file runs in another interpreter).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pre-observation-delay", type=float, default=0.5, help="BrowserGym's default is 0.5 s")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from browsergym.core.env import BrowserEnv
    from browsergym.core.task import OpenEndedTask
    from playwright.sync_api._generated import BrowserType

    # BrowserGym launches Chromium twice (the page and its chat window) with Playwright's downloaded build,
    # which cannot be fetched here: point every launch at the system Chromium instead.
    launch = BrowserType.launch

    def launch_system_chromium(self, *positional, **keywords):
        keywords.setdefault("executable_path", args.chromium)
        return launch(self, *positional, **keywords)

    BrowserType.launch = launch_system_chromium

    env = BrowserEnv(
        task_entrypoint=OpenEndedTask,
        task_kwargs={"start_url": args.url, "goal": "bench"},
        viewport={"width": 1280, "height": 720},
        headless=True,
        pre_observation_delay=args.pre_observation_delay,
    )
    observation, _ = env.reset(seed=0)
    bids = [bid for bid, props in observation["extra_element_properties"].items() if props.get("clickable")]
    steps = []
    for index in range(args.steps):
        if index % 2:
            action = f"hover('{bids[(index // 2) % len(bids)]}')"
        else:
            action = "scroll(0, 720)" if index // 2 % 2 == 0 else "scroll(0, -720)"
        started = time.perf_counter()
        env.step(action)
        steps.append(time.perf_counter() - started)
    env.close()
    print(json.dumps({"steps": steps, "marked": len(bids)}))


if __name__ == "__main__":
    main()
