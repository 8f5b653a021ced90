"""The system Chromium through Playwright: one browser per process, one context per episode.

Chromium comes from the system package (``/usr/bin/chromium``); ``playwright install`` is never needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_tools.errors import UserFacingError

CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


class BrowserError(UserFacingError, RuntimeError):
    """Chromium could not be started or a context could not be made; the message says what to install or fix."""


@dataclass(frozen=True)
class ContextOptions:
    """Per-episode browser context settings, as a VWA task gives them."""

    viewport: tuple[int, int] = (1280, 720)
    geolocation: dict[str, float] | None = None
    storage_state: str | None = None
    device_scale_factor: float = 1.0


class ChromiumBrowser:
    """A headless system Chromium driven by Playwright's sync API; ``close()`` (or ``with``) stops both."""

    def __init__(self, executable_path: str = CHROMIUM_PATH, headless: bool = True) -> None:
        if not Path(executable_path).exists():
            raise BrowserError(
                f"Chromium not found at {executable_path}; install the system package (apt-get install chromium) "
                "or set CHROMIUM_PATH to its binary"
            )
        from playwright.sync_api import sync_playwright  # lazy: importing envs.web stays cheap

        self._playwright = sync_playwright().start()
        try:
            self.browser = self._playwright.chromium.launch(
                executable_path=executable_path, headless=headless, args=list(CHROMIUM_ARGS)
            )
        except Exception as error:
            self._playwright.stop()
            raise BrowserError(
                f"cannot launch Chromium at {executable_path}: {error}; check the binary runs"
            ) from error

    def new_context(self, options: ContextOptions) -> Any:
        """A fresh context (cookies, storage) with the task's viewport, geolocation and login state."""
        kwargs: dict[str, Any] = {
            "viewport": {"width": options.viewport[0], "height": options.viewport[1]},
            "device_scale_factor": options.device_scale_factor,
            "service_workers": "block",  # their requests would bypass the allowed-hosts guard (envs.web.session)
        }
        if options.geolocation:
            kwargs["geolocation"] = dict(options.geolocation)
            kwargs["permissions"] = ["geolocation"]
        if options.storage_state:
            if not Path(options.storage_state).exists():
                raise BrowserError(
                    f"login state file {options.storage_state} does not exist; log in once and save it with "
                    "context.storage_state(path=...), or pass auth_dir= pointing at VWA's .auth folder"
                )
            kwargs["storage_state"] = options.storage_state
        return self.browser.new_context(**kwargs)

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._playwright.stop()

    def __enter__(self) -> ChromiumBrowser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
