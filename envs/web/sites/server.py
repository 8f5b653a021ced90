"""A tiny WSGI framework for the bundled sites, and `start_sites` that runs all three on free ports.

Each site is a `SiteDefinition` (schema, deterministic seed, images, routes). `SiteApp` turns one into a
WSGI app backed by a live SQLite file that `reset()` restores from a seeded template copy. Requests are
served one at a time per site (one connection, one lock): the sites are tiny and this keeps SQLite simple.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl, quote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import jinja2

from data_tools.errors import UserFacingError

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEST_USERNAME = "user"
TEST_PASSWORD = "password"
SITE_NAMES = ("classifieds", "shopping", "reddit")


class SiteStartError(UserFacingError):
    """A bundled site could not be started (bad data directory, unknown site name)."""


def hash_password(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class Request:
    """One parsed HTTP request, with the logged-in user (or None) and the site's database."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]
    params: dict[str, Any]
    db: sqlite3.Connection
    user: str | None
    full_path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass
class Response:
    status: str = "200 OK"
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[["SiteApp", Request], Response]


def redirect(location: str) -> Response:
    return Response("303 See Other", b"", [("Location", location)])


def json_response(data: Any, status: str = "200 OK") -> Response:
    return Response(status, json.dumps(data).encode(), [("Content-Type", "application/json")])


def not_found(message: str = "Not found") -> Response:
    body = f"<!doctype html><html><body><h1>404</h1><p>{message}</p></body></html>".encode()
    return Response("404 Not Found", body, [("Content-Type", "text/html; charset=utf-8")])


class Router:
    """Maps (method, path pattern) to handlers; `{name}` matches one segment, `{name:int}` an integer."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+):int\}", r"(?P<\1>\\d+)", pattern)
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
        self.routes.append((method, re.compile(f"^{regex}/?$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, Any]] | None:
        for route_method, regex, handler in self.routes:
            found = regex.match(path)
            if found and route_method == method:
                params = {k: int(v) if v.isdigit() else v for k, v in found.groupdict().items()}
                return handler, params
        return None


@dataclass
class SiteDefinition:
    """What makes one site: its schema, seed data, images and routes."""

    name: str
    schema: str
    seed: Callable[[sqlite3.Connection], None]
    write_images: Callable[[Path], None]
    routes: Callable[[Router], None]
    base_context: Callable[[Request], dict[str, Any]] | None = None  # what every page's layout needs


class SiteApp:
    """A WSGI app for one site: routing, templates, login sessions, static images and a resettable DB."""

    def __init__(self, definition: SiteDefinition, data_dir: Path) -> None:
        self.definition = definition
        self.name = definition.name
        self.cookie_name = f"{definition.name}_session"  # cookies ignore ports: one name per site
        self.images_dir = data_dir / "images" / definition.name
        self.template_db_path = data_dir / f"{definition.name}.seed.sqlite"
        self.live_db_path = data_dir / f"{definition.name}.sqlite"
        self.sessions: dict[str, str] = {}
        self.api_tokens: set[str] = set()  # bearer tokens of a site's REST API (Shopping's Magento subset)
        self.lock = threading.RLock()
        self.router = Router()
        definition.routes(self.router)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=jinja2.StrictUndefined
        )
        self._prepare_files()
        self.db = sqlite3.connect(self.live_db_path, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.reset()

    def _prepare_files(self) -> None:
        if not self.template_db_path.exists():
            partial = self.template_db_path.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            conn = sqlite3.connect(partial)
            conn.executescript(self.definition.schema)
            self.definition.seed(conn)
            conn.commit()
            conn.close()
            partial.rename(self.template_db_path)
        if not (self.images_dir / ".complete").exists():
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self.definition.write_images(self.images_dir)
            (self.images_dir / ".complete").write_text("ok")
        if not self.live_db_path.exists():
            shutil.copyfile(self.template_db_path, self.live_db_path)

    def reset(self) -> None:
        """Restore the live database from the seeded template and log everyone out."""
        with self.lock:
            template = sqlite3.connect(self.template_db_path)
            try:
                template.backup(self.db)
            finally:
                template.close()
            self.sessions.clear()
            self.api_tokens.clear()

    def login_session(self, username: str) -> str:
        token = secrets.token_hex(16)
        self.sessions[token] = username
        return token

    def render(self, template: str, request: Request, **context: Any) -> Response:
        page = self.templates.get_template(f"{self.name}/{template}")
        shared = self.definition.base_context(request) if self.definition.base_context else {}
        body = page.render(user=request.user, request=request, **(shared | context))
        return Response("200 OK", body.encode(), [("Content-Type", "text/html; charset=utf-8")])

    def _static(self, path: str) -> Response:
        name = path.removeprefix("/static/images/")
        file = self.images_dir / name
        if "/" in name or not file.is_file():
            return not_found("No such image")
        return Response("200 OK", file.read_bytes(), [("Content-Type", "image/png")])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        response = self.handle(environ)
        start_response(response.status, response.headers)
        return [response.body]

    def handle(self, environ: dict[str, Any]) -> Response:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/") or "/"
        query_string = environ.get("QUERY_STRING", "")
        if path.startswith("/static/images/"):
            return self._static(path)
        form: dict[str, str] = {}
        body = b""
        if method == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if "json" not in environ.get("CONTENT_TYPE", ""):
                form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        cookies = {key: morsel.value for key, morsel in cookie.items()}
        matched = self.router.match(method, path)
        if matched is None:
            return not_found(f"No page at {path}")
        handler, params = matched
        with self.lock:
            request = Request(
                method=method,
                path=path,
                query=dict(parse_qsl(query_string, keep_blank_values=True)),
                form=form,
                cookies=cookies,
                params=params,
                db=self.db,
                user=self.sessions.get(cookies.get(self.cookie_name, "")),
                full_path=path + (f"?{query_string}" if query_string else ""),
                body=body,
                headers={"authorization": environ.get("HTTP_AUTHORIZATION", "")},
            )
            try:
                response = handler(self, request)
                self.db.commit()
            except Exception:
                self.db.rollback()
                raise
        return response

    def require_login(self, request: Request) -> Response | None:
        """A redirect to the login page when nobody is logged in, else None."""
        if request.user is None:
            separator = "&" if "?" in self.login_path else "?"
            return redirect(f"{self.login_path}{separator}next={quote(request.full_path)}")
        return None

    @property
    def login_path(self) -> str:
        return {"classifieds": "/index.php?page=login", "shopping": "/customer/account/login/"}.get(self.name, "/login")


def show_login(app: SiteApp, request: Request) -> Response:
    """The login form (shared by the sites; each has its own `login.html`)."""
    return app.render("login.html", request, error=None, next_url=request.query.get("next", "/"))


def do_login(app: SiteApp, request: Request) -> Response:
    """Check the form's username and password, start a session and go to `next`."""
    username = request.form.get("username", "")
    row = request.db.execute("SELECT password_hash FROM users WHERE username = ?", (username,)).fetchone()
    next_url = request.form.get("next") or "/"
    if row is None or row["password_hash"] != hash_password(request.form.get("password", "")):
        response = app.render("login.html", request, error="Wrong username or password.", next_url=next_url)
        response.status = "401 Unauthorized"
        return response
    token = app.login_session(username)
    response = redirect(next_url if next_url.startswith("/") else "/")
    response.headers.append(("Set-Cookie", f"{app.cookie_name}={token}; Path=/; HttpOnly"))
    return response


def do_logout(app: SiteApp, request: Request) -> Response:
    app.sessions.pop(request.cookies.get(app.cookie_name, ""), None)
    response = redirect("/")
    response.headers.append(("Set-Cookie", f"{app.cookie_name}=; Path=/; Max-Age=0"))
    return response


def add_login_routes(router: Router, login_path: str, logout_path: str) -> None:
    router.add("GET", login_path, show_login)
    router.add("POST", login_path, do_login)
    router.add("GET", logout_path, do_logout)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class _RunningSite:
    app: SiteApp
    server: ThreadingWSGIServer
    thread: threading.Thread
    url: str


class RunningSites(dict):
    """The started sites as `{"classifieds": url, "shopping": url, "reddit": url}`, with `stop()` and `reset()`."""

    def __init__(self, sites: dict[str, _RunningSite], owned_data_dir: Path | None) -> None:
        super().__init__({name: site.url for name, site in sites.items()})
        self._sites = sites
        self._owned_data_dir = owned_data_dir

    def app(self, name: str) -> SiteApp:
        return self._sites[name].app

    def reset(self) -> None:
        """Restore every site's database from its seeded copy and end every login session."""
        for site in self._sites.values():
            site.app.reset()

    def storage_state(self, name: str, username: str = TEST_USERNAME) -> dict[str, Any]:
        """A Playwright storage state in which `username` is logged in to site `name` (valid until reset)."""
        app = self._sites[name].app
        token = app.login_session(username)
        cookie = {"name": app.cookie_name, "value": token, "domain": "127.0.0.1", "path": "/"}
        cookie |= {"expires": -1, "httpOnly": True, "secure": False, "sameSite": "Lax"}
        return {"cookies": [cookie], "origins": []}

    def stop(self) -> None:
        for site in self._sites.values():
            site.server.shutdown()
            site.server.server_close()
            site.thread.join(timeout=5)
            site.app.db.close()
        self._sites = {}
        if self._owned_data_dir is not None:
            shutil.rmtree(self._owned_data_dir, ignore_errors=True)

    def __enter__(self) -> RunningSites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def site_definition(name: str) -> SiteDefinition:
    """The definition of bundled site `name` (imported on demand)."""
    if name not in SITE_NAMES:
        raise SiteStartError(f"Unknown bundled site {name!r}; choose from {list(SITE_NAMES)}.")
    return importlib.import_module(f"envs.web.sites.{name}").DEFINITION


def start_sites(data_dir: str | Path | None = None, names: tuple[str, ...] = SITE_NAMES, port: int = 0) -> RunningSites:
    """Start the bundled sites on 127.0.0.1 (free ports unless `port` is given: then port, port+1, ...).

    `data_dir` keeps the seeded databases and images between runs; without it a temporary directory is
    used and removed by `stop()`.
    """
    definitions = {name: site_definition(name) for name in names}
    owned = None
    if data_dir is None:
        owned = Path(tempfile.mkdtemp(prefix="bundled_sites_"))
        data_dir = owned
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SiteStartError(f"Cannot create the sites' data directory {data_dir}: {error}. Pass another.") from error
    running: dict[str, _RunningSite] = {}
    for offset, name in enumerate(names):
        app = SiteApp(definitions[name], data_dir)
        server = make_server(
            "127.0.0.1", port + offset if port else 0, app, ThreadingWSGIServer, handler_class=_QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, name=f"site-{name}", daemon=True)
        thread.start()
        running[name] = _RunningSite(app, server, thread, f"http://127.0.0.1:{server.server_port}")
    return RunningSites(running, owned)
