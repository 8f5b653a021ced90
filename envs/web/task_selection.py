"""Which tasks a run covers: ``--tasks`` specs resolved to raw VWA configs, before any site URL is known.

A spec is ``bundled`` (the whole bundled suite), a bundled site name (``shopping``), a task file or a
directory of them, each optionally followed by ``:`` and task ids (``shopping:0-9``,
``test_reddit.raw.json:3,7,10-12``).
Every selected task gets a run-wide key ``<file stem>:<task_id>`` (``shopping:3``) that names it in results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envs.web.tasks import TaskConfigError, WebTask, task_from_config

BUNDLED_TASKS_DIR = Path(__file__).resolve().parent / "tasks" / "bundled"
BUNDLED_SITES = ("classifieds", "shopping", "reddit")
_ID_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass(frozen=True)
class SelectedTask:
    """One task of a run: its key, its raw config (placeholders unfilled) and the file it came from."""

    key: str
    config: dict[str, Any] = field(repr=False)
    file: Path
    bundled: bool

    @property
    def site(self) -> str:
        sites = self.config.get("sites") or []
        return str(sites[0]) if sites else self.file.stem

    @property
    def eval_types(self) -> list[str]:
        return list((self.config.get("eval") or {}).get("eval_types") or [])

    @property
    def oracle(self) -> list[dict[str, Any]] | None:
        return self.config.get("oracle")

    def web_task(self, site_urls: Mapping[str, str]) -> WebTask:
        """The task with this worker's site URLs filled in."""
        return replace(task_from_config(self.config, site_urls, "", self.file.parent), task_id=self.key)


def parse_id_list(text: str) -> set[int]:
    """``"0-3,7"`` -> ``{0, 1, 2, 3, 7}``."""
    if not _ID_LIST.match(text):
        raise TaskConfigError(f"task ids {text!r} are not a list like 0-9 or 3,5,8-10")
    ids: set[int] = set()
    for part in text.split(","):
        start, _, end = part.partition("-")
        first, last = int(start), int(end or start)
        if last < first:
            raise TaskConfigError(f"task id range {part!r} runs backwards; write it low-high")
        ids.update(range(first, last + 1))
    return ids


def _task_files(target: str) -> tuple[list[Path], bool]:
    if target == "bundled":
        return [BUNDLED_TASKS_DIR / f"{site}.json" for site in BUNDLED_SITES], True
    if target in BUNDLED_SITES:
        return [BUNDLED_TASKS_DIR / f"{target}.json"], True
    path = Path(target)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
    elif path.is_file():
        files = [path]
    else:
        raise TaskConfigError(
            f"--tasks {target}: no such file, directory or bundled site; use bundled, one of "
            f"{', '.join(BUNDLED_SITES)}, a VWA task file or a folder of them, optionally with :ids"
        )
    if not files:
        raise TaskConfigError(f"--tasks {target}: the folder holds no *.json task files")
    bundled = all(file.resolve().parent == BUNDLED_TASKS_DIR for file in files)
    return files, bundled


def _file_stem(file: Path) -> str:
    return file.name.removesuffix(".json").removesuffix(".raw")


def select_tasks(specs: Iterable[str]) -> list[SelectedTask]:
    """The tasks named by ``specs`` in order, each once; unknown ids are an error naming what exists."""
    selected: dict[str, SelectedTask] = {}
    for spec in specs:
        target, ids = spec, None
        head, _, tail = spec.rpartition(":")
        if head and _ID_LIST.match(tail):
            target, ids = head, parse_id_list(tail)
        files, bundled = _task_files(target)
        found: set[int] = set()
        for file in files:
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise TaskConfigError(f"cannot read task file {file}: {error}; fix or remove the file") from error
            for config in data if isinstance(data, list) else [data]:
                if not isinstance(config, dict) or "task_id" not in config:
                    raise TaskConfigError(f"{file} holds an entry without a task_id; every VWA task config has one")
                task_id = config["task_id"]
                if ids is not None and task_id not in ids:
                    continue
                found.add(task_id)
                key = f"{_file_stem(file)}:{task_id}"
                selected.setdefault(key, SelectedTask(key, config, file, bundled))
        if ids is not None and ids - found:
            missing = sorted(ids - found)
            raise TaskConfigError(f"--tasks {spec}: no task with id {missing[:10]} in {target}")
    if not selected:
        raise TaskConfigError(f"--tasks {' '.join(specs)} selects no task")
    return list(selected.values())
