"""`python -m envs.web.sites [DATA_DIR]`: serve the bundled sites on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import sys
import threading

from envs.web.sites.server import TEST_PASSWORD, TEST_USERNAME, start_sites


def main(argv: list[str]) -> None:
    sites = start_sites(argv[0] if argv else None)
    for name, url in sites.items():
        print(f"{name:12s} {url}")
    print(f"login: {TEST_USERNAME} / {TEST_PASSWORD}. Ctrl-C stops.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sites.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
