"""VisualWebArena task configurations: load, fill site placeholders, validate.

A task file is VWA's ``test_*.raw.json`` (a JSON list of configs), one config object, or a directory of
them. Placeholders such as ``__SHOPPING__`` are replaced everywhere in a config (start URL, evaluation
references) by the site's base URL, taken from the ``site_urls`` argument or else from the environment
variable of VWA's convention (``SHOPPING``, ``REDDIT``, ``CLASSIFIEDS``, ...). Unknown evaluation types
are rejected at load time, naming the task.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from data_tools.errors import UserFacingError

# placeholder -> environment variable (VisualWebArena's browser_env/env_config.py names)
SITE_PLACEHOLDERS: dict[str, str] = {
    "__CLASSIFIEDS__": "CLASSIFIEDS",
    "__SHOPPING__": "SHOPPING",
    "__SHOPPING_ADMIN__": "SHOPPING_ADMIN",
    "__REDDIT__": "REDDIT",
    "__WIKIPEDIA__": "WIKIPEDIA",
    "__HOMEPAGE__": "HOMEPAGE",
    "__GITLAB__": "GITLAB",
    "__MAP__": "MAP",
}
EVAL_TYPES = ("string_match", "url_match", "program_html", "page_image_query")
TAB_SEPARATOR = " |AND| "
DEFAULT_VIEWPORT = (1280, 720)


class TaskConfigError(UserFacingError, ValueError):
    """A task file or config that cannot be used; the message names the task and the fix."""


class SiteUrlMissingError(TaskConfigError):
    """A task refers to a site (``__SHOPPING__``) whose URL is not known: every task of that site would fail."""


@dataclass(frozen=True)
class WebTask:
    """One VisualWebArena task with placeholders filled; ``eval`` is the config's evaluation block."""

    task_id: str
    intent: str
    start_urls: list[str]
    sites: list[str] = field(default_factory=list)
    eval: dict[str, Any] = field(default_factory=dict)
    require_login: bool = False
    storage_state: str | None = None
    geolocation: dict[str, float] | None = None
    viewport: tuple[int, int] = DEFAULT_VIEWPORT
    images: list[str] = field(default_factory=list)
    site_urls: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    base_dir: str = ""

    @property
    def eval_types(self) -> list[str]:
        return list(self.eval.get("eval_types", []))

    @property
    def hosts(self) -> set[str]:
        """Hosts (host:port) of the start URLs and of every site URL the task refers to."""
        urls = [*self.start_urls, *self.site_urls.values()]
        return {urlparse(url).netloc for url in urls if urlparse(url).netloc}


def site_urls_from_environment(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Placeholder -> base URL, from ``overrides`` (keyed by placeholder or by variable name) over env vars."""
    urls: dict[str, str] = {}
    overrides = dict(overrides or {})
    for placeholder, variable in SITE_PLACEHOLDERS.items():
        value = overrides.get(placeholder, overrides.get(variable, overrides.get(variable.lower())))
        if value is None:
            value = os.environ.get(variable)
        if value:
            urls[placeholder] = value.rstrip("/")
    return urls


def _fill(value: Any, urls: Mapping[str, str], used: set[str]) -> Any:
    if isinstance(value, str):
        for placeholder in SITE_PLACEHOLDERS:
            if placeholder in value:
                used.add(placeholder)
                if placeholder in urls:
                    value = value.replace(placeholder, urls[placeholder])
        return value
    if isinstance(value, list):
        return [_fill(item, urls, used) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, urls, used) for key, item in value.items()}
    return value


def task_from_config(
    config: Mapping[str, Any], site_urls: Mapping[str, str], source: str = "", base_dir: str | Path = ""
) -> WebTask:
    """One WebTask from a raw VWA config; TaskConfigError names the task and what to change."""
    task_id = f"{source}:{config.get('task_id', '?')}" if source else str(config.get("task_id", "?"))
    for key in ("intent", "start_url", "eval"):
        if key not in config:
            raise TaskConfigError(f"task {task_id} has no {key!r}; every VWA task config needs intent, start_url, eval")
    used: set[str] = set()
    filled = _fill(dict(config), site_urls, used)
    missing = sorted(used - set(site_urls))
    if missing:
        names = ", ".join(f"{SITE_PLACEHOLDERS[p]}" for p in missing)
        raise SiteUrlMissingError(
            f"task {task_id} refers to {', '.join(missing)} but no URL is known; "
            f"set the environment variable(s) {names} or pass site_urls={{'{missing[0]}': 'http://...'}}"
        )
    eval_block = filled["eval"]
    eval_types = eval_block.get("eval_types")
    if not isinstance(eval_types, list) or not eval_types:
        raise TaskConfigError(f"task {task_id}: eval.eval_types must be a non-empty list of {', '.join(EVAL_TYPES)}")
    for eval_type in eval_types:
        if eval_type not in EVAL_TYPES:
            raise TaskConfigError(
                f"task {task_id}: unknown eval type {eval_type!r}; use one of {', '.join(EVAL_TYPES)} "
                "or drop the task from the file"
            )
    viewport = filled.get("viewport_size") or {}
    images = filled.get("image") or []
    return WebTask(
        task_id=task_id,
        intent=str(filled["intent"]),
        start_urls=[url.strip() for url in str(filled["start_url"]).split(TAB_SEPARATOR) if url.strip()],
        sites=list(filled.get("sites") or []),
        eval=eval_block,
        require_login=bool(filled.get("require_login", False)),
        storage_state=filled.get("storage_state") or None,
        geolocation=filled.get("geolocation") or None,
        viewport=(int(viewport.get("width", DEFAULT_VIEWPORT[0])), int(viewport.get("height", DEFAULT_VIEWPORT[1]))),
        images=[images] if isinstance(images, str) else list(images),
        site_urls={p: u for p, u in site_urls.items() if p in used},
        raw=dict(config),
        base_dir=str(base_dir),
    )


def load_tasks(path_or_dir: str | Path, site_urls: Mapping[str, str] | None = None) -> list[WebTask]:
    """All tasks of a JSON file (a list or one config) or of every ``*.json`` in a directory, in file order."""
    path = Path(path_or_dir)
    if not path.exists():
        raise TaskConfigError(f"task path {path} does not exist; pass a VWA task JSON file or a directory of them")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise TaskConfigError(f"no *.json task files in {path}; pass a VWA task JSON file or a directory of them")
    urls = site_urls_from_environment(site_urls)
    tasks: list[WebTask] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise TaskConfigError(f"cannot read task file {file}: {error}; fix or remove the file") from error
        configs = data if isinstance(data, list) else [data]
        source = file.stem if len(files) > 1 else ""
        for config in configs:
            if not isinstance(config, dict):
                raise TaskConfigError(f"{file} holds a {type(config).__name__}, not a task object; each task is a dict")
            tasks.append(task_from_config(config, urls, source, file.parent))
    return tasks


def resolve_task_image(task: WebTask, reference: str, images_root: str | Path | None = None) -> Path:
    """The file of a task's input image. VWA writes them relative to its repository root, our bundled tasks
    relative to ours: tried as given, under ``images_root``, then under each folder above the task file."""
    candidates = [Path(reference)]
    if images_root:
        candidates.append(Path(images_root) / reference)
    if task.base_dir:
        base = Path(task.base_dir).resolve()
        candidates += [folder / reference for folder in (base, *base.parents)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TaskConfigError(
        f"task {task.task_id}: input image {reference} not found; pass --images-root (VWA's repository folder "
        "for the official tasks) or fix the task's image path"
    )


def load_task_images(task: WebTask, images_root: str | Path | None = None) -> list[np.ndarray]:
    """The task's input images as RGB arrays, in order (http(s) URLs are read with a bounded timeout)."""
    images = []
    for reference in task.images:
        if reference.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(reference, timeout=20) as response:
                data = io.BytesIO(response.read())
            images.append(np.asarray(Image.open(data).convert("RGB")))
        else:
            with Image.open(resolve_task_image(task, reference, images_root)) as image:
                images.append(np.asarray(image.convert("RGB")))
    return images
