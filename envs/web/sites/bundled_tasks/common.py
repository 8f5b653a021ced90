"""What the bundled task builders share: the VWA task skeleton, evaluation blocks, oracle steps.

Oracle steps: {"action": "click"|"type"|"hover"|"press"|"scroll"|"goto"|"go_back"|"stop", "selector": CSS,
"text": str, "press_enter": bool, "url": str with site placeholders, "answer": str}.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks" / "bundled"
IMAGES_DIR = TASKS_DIR / "images"
C, S, R = "__CLASSIFIEDS__", "__SHOPPING__", "__REDDIT__"


def seeded_db(module: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.executescript(module.SCHEMA)
    module.seed(conn)
    return conn


def vwa_task(
    site: str,
    intent: str,
    start_url: str,
    evaluation: dict[str, Any],
    oracle: list[dict[str, Any]],
    *,
    login: bool = False,
    reset: bool = False,
    image: str | None = None,
) -> dict[str, Any]:
    full_eval = {"eval_types": [], "reference_answers": None, "reference_url": "", "program_html": []}
    full_eval |= evaluation
    return {
        "sites": [site],
        "task_id": -1,
        "require_login": login,
        "storage_state": f"./.auth/{site}_state.json" if login else None,
        "start_url": start_url,
        "geolocation": None,
        "intent_template": intent,
        "intent": intent,
        "image": image,
        "instantiation_dict": {},
        "require_reset": reset,
        "eval": full_eval,
        "oracle": oracle,
    }


def answer_eval(text: str, **references: Any) -> dict[str, Any]:
    """A string_match evaluation; `text` is the oracle's answer, kept next to its references for reading."""
    return {"eval_types": ["string_match"], "reference_answers": references}


def url_eval(reference: str, note: str = "EXACT") -> dict[str, Any]:
    return {"eval_types": ["url_match"], "reference_url": reference, "url_note": note}


def html_eval(*targets: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    programs = [{"url": url, "locator": loc, "required_contents": req} for url, loc, req in targets]
    return {"eval_types": ["program_html"], "program_html": programs}


def goto_step(url: str) -> dict[str, Any]:
    return {"action": "goto", "url": url}


def click_step(selector: str) -> dict[str, Any]:
    return {"action": "click", "selector": selector}


def type_step(selector: str, text: str, press_enter: bool = False) -> dict[str, Any]:
    return {"action": "type", "selector": selector, "text": text, "press_enter": press_enter}


def stop_step(answer: str = "") -> dict[str, Any]:
    return {"action": "stop", "answer": answer}


def copy_query_image(site_images: Path, name: str, target: str) -> str:
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    (IMAGES_DIR / target).write_bytes((site_images / name).read_bytes())
    return f"envs/web/tasks/bundled/images/{target}"
