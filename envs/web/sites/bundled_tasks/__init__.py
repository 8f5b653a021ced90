"""Builds the bundled task suite (`envs/web/tasks/bundled/*.json`, VWA format plus an `oracle` trajectory)
from the sites' deterministic seed data: `python -m envs.web.sites.bundled_tasks` rewrites the files.
One module per site holds its tasks; `common` holds the task skeleton and the oracle step builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.web.sites import classifieds as classifieds_site
from envs.web.sites import reddit as reddit_site
from envs.web.sites import shopping as shopping_site
from envs.web.sites.bundled_tasks.classifieds import classifieds_tasks
from envs.web.sites.bundled_tasks.common import TASKS_DIR
from envs.web.sites.bundled_tasks.reddit import reddit_tasks
from envs.web.sites.bundled_tasks.shopping import shopping_tasks


def build_all(images_root: Path) -> dict[str, list[dict[str, Any]]]:
    """All bundled tasks per site, numbered; `images_root` holds the sites' generated images."""
    suites = {
        "classifieds": classifieds_tasks(images_root / "classifieds"),
        "shopping": shopping_tasks(images_root / "shopping"),
        "reddit": reddit_tasks(images_root / "reddit"),
    }
    for tasks in suites.values():
        for task_id, task in enumerate(tasks):
            task["task_id"] = task_id
    return suites


def write_all() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for module in (classifieds_site, shopping_site, reddit_site):
            (root / module.DEFINITION.name).mkdir()
            module.write_images(root / module.DEFINITION.name)
        suites = build_all(root)
    for site, tasks in suites.items():
        (TASKS_DIR / f"{site}.json").write_text(json.dumps(tasks, indent=1) + "\n")
        print(f"{site}: {len(tasks)} tasks")
