"""The installed ``miniwob`` package's ``html/`` folder over HTTP on 127.0.0.1 (a free port, a thread per request).

The task pages load their shared scripts by relative URL (``../core/core.js``), and the web environment's
guard opens only http(s) pages on allowed hosts (``file://`` never), so the pages are served. One server per
process is enough (``shared_server``); it stops when the process exits, or earlier with ``stop()``.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from data_tools.errors import UserFacingError

PACKAGE_INSTALL = "pip install 'miniwob>=1.1,<1.2' (make install does)"


class MiniWoBPackageError(UserFacingError, ImportError):
    """The ``miniwob`` package (whose wheel holds the task pages) is missing or incomplete."""


def package_html_dir() -> Path:
    """The ``html/`` folder of the installed ``miniwob`` package, found without importing it."""
    spec = importlib.util.find_spec("miniwob")
    if spec is None or not spec.origin:
        raise MiniWoBPackageError(f"the miniwob package is not installed; {PACKAGE_INSTALL}")
    html_dir = Path(spec.origin).parent / "html"
    if not (html_dir / "core" / "core.js").is_file():
        raise MiniWoBPackageError(
            f"{html_dir} holds no core/core.js: the miniwob install is incomplete; {PACKAGE_INSTALL}"
        )
    return html_dir


class _QuietFiles(SimpleHTTPRequestHandler):
    """Static files without a log line per request."""

    def log_message(self, *args: object) -> None:
        pass


class MiniWoBServer:
    """Serves ``html_dir`` (default: the package's) on ``127.0.0.1:<free port>``; ``with`` or ``stop()`` ends it."""

    def __init__(self, html_dir: Path | None = None) -> None:
        self.html_dir = Path(html_dir) if html_dir is not None else package_html_dir()
        handler = functools.partial(_QuietFiles, directory=str(self.html_dir))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="miniwob-server", daemon=True)
        self._thread.start()
        self._stopped = False

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>/``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def task_url(self, task: str) -> str:
        """The page of one MiniWoB++ task (``click-button`` -> ``.../miniwob/click-button.html``)."""
        return f"{self.url}miniwob/{task}.html"

    def stop(self) -> None:
        """Stops serving and frees the port; safe to call again."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> MiniWoBServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: MiniWoBServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> MiniWoBServer:
    """This process's server of the package's pages, started on first use and stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._stopped:
            _shared = MiniWoBServer()
            atexit.register(_shared.stop)
        return _shared
