"""Grade a finished episode once, in a separate page of the episode's browser context.

``grade_task`` multiplies the task's evaluators in order (string_match, url_match, program_html,
page_image_query) as VWA's EvaluatorComb does. The grading page starts at the agent's last URL, so a
program_html target whose url is ``last`` reads the page the agent ended on. ``func:`` expressions are
parsed (never ``eval``-ed) into a call of a named helper: VWA's ``get_query_text`` and
``reddit_get_post_url``, the Magento and Postmill helpers of ``envs.web.site_helpers`` bound to the task's
site URLs, and any registered in ``helpers`` (which win); an unknown one reports the task "unsupported".
Models are pluggable: ``fuzzy_judge`` for fuzzy_match, ``vqa_model(images, prompts) -> answers`` for page_image_query.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import numpy as np
from PIL import Image

from envs.web import evaluators as ev
from envs.web.site_helpers import site_helpers
from envs.web.tasks import WebTask

VqaModel = Callable[[list[Image.Image], list[str]], list[str]]


def get_query_text(page: Any, selector: str) -> str:
    """VWA's helper: ``querySelector(selector).textContent``, ``""`` when missing."""
    try:
        return str(page.evaluate("(s) => document.querySelector(s).textContent", selector))
    except Exception:
        return ""


def reddit_get_post_url(url: str) -> str:
    """VWA's helper: a Postmill comment URL -> its post URL ``scheme://host/f/<forum>/<id>/``."""
    parsed = urlparse(url)
    parts = parsed.path.split("/")
    if len(parts) < 4 or parts[1] != "f":
        return url
    return f"{parsed.scheme}://{parsed.netloc}/f/{parts[2]}/{parts[3]}/"


DEFAULT_HELPERS: dict[str, Callable[..., Any]] = {
    "get_query_text": get_query_text,
    "reddit_get_post_url": reddit_get_post_url,
}


@dataclass
class GradingConfig:
    """What grading may use: evaluator mode, a fuzzy judge, a VQA model, ``func:`` helpers."""

    mode: str = "fixed"
    fuzzy_judge: ev.FuzzyJudge | None = None
    vqa_model: VqaModel | None = None
    helpers: dict[str, Callable[..., Any]] = field(default_factory=lambda: dict(DEFAULT_HELPERS))


class _UnsupportedHelperError(Exception):
    """A ``func:`` helper nobody registered: the grade is undecided, not failed."""


def call_helper(expression: str, page: Any, helpers: Mapping[str, Callable[..., Any]]) -> Any:
    """Run ``func:name(arg, ...)`` with literal args, ``__page__`` and ``__last_url__`` bound; no eval."""
    source = expression.removeprefix("func:").strip()
    try:
        call = ast.parse(source, mode="eval").body
    except SyntaxError as error:
        raise ev.EvaluationConfigError(f"func: expression {source!r} is not a call; write func:name(args)") from error
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ev.EvaluationConfigError(f"func: expression {source!r} must be one call of a named helper")
    name = call.func.id
    if name not in helpers:
        raise _UnsupportedHelperError(
            f"helper {name!r} is not available; register it with GradingConfig(helpers={{{name!r}: fn}})"
        )
    args = []
    for node in call.args:
        if isinstance(node, ast.Name) and node.id == "__page__":
            args.append(page)
        elif (isinstance(node, ast.Constant) and node.value == "__last_url__") or (
            isinstance(node, ast.Name) and node.id == "__last_url__"
        ):
            args.append(page.url)
        else:
            args.append(ast.literal_eval(node))
    return helpers[name](*args)


def _navigate(page: Any, url: str, config: GradingConfig) -> None:
    if url == "last" or not url:
        return
    target = call_helper(url, page, config.helpers) if url.startswith("func:") else url
    page.goto(str(target), wait_until="load")


def locate_content(page: Any, locator: str, config: GradingConfig) -> str | None:
    """The text a program_html locator selects; None means "nothing usable" (the target fails)."""
    if not locator.strip():
        return ev.unescape_page_html(page.content(), config.mode)
    if locator.startswith(("document.", "[...document.")):
        try:
            value = page.evaluate("() => " + locator)
        except Exception:
            return ""
        return "None" if value is None else str(value)
    if locator.startswith("lambda:"):
        script = ev.lambda_locator_script(locator, config.mode)
        try:
            value = page.evaluate(script)
        except Exception:
            return None
        return str(value) if value else None
    if locator.startswith("func:"):
        return str(call_helper(locator, page, config.helpers))
    raise ev.EvaluationConfigError(f"unknown locator {locator[:60]!r}; use '', document..., lambda: or func:")


def grade_program_html(
    page: Any, targets: Sequence[Mapping[str, Any]], intent: str, config: GradingConfig
) -> ev.Verdict:
    result = ev.Verdict()
    for target in targets:
        try:
            _navigate(page, target.get("url", "last"), config)
            content = locate_content(page, target.get("locator", ""), config)
        except _UnsupportedHelperError as error:
            return result.combine(ev.Verdict(ev.UNSUPPORTED, [str(error)]))
        if content is None:
            return result.combine(ev.Verdict(ev.FAIL, [f"locator {target.get('locator', '')[:60]!r} found nothing"]))
        result = result.combine(
            ev.required_contents(content, target["required_contents"], config.fuzzy_judge, intent, config.mode)
        )
        if config.mode == "official" and result.status == ev.FAIL:
            return result
    return result


# ------------------------------------------------------------------------------------- page images


def ssim(first: Image.Image, second: Image.Image, window: int = 7) -> float:
    """Structural similarity of two images after resizing both to the larger size (LANCZOS), grayscale."""
    size = max(first.size, second.size, key=lambda s: s[0] * s[1])
    a = np.asarray(first.convert("L").resize(size, Image.LANCZOS), dtype=np.float64)
    b = np.asarray(second.convert("L").resize(size, Image.LANCZOS), dtype=np.float64)
    if min(a.shape) < window:
        window = max(1, min(a.shape))

    def box_mean(x: np.ndarray) -> np.ndarray:
        summed = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), axis=0), axis=1)
        w = window
        return (summed[w:, w:] - summed[:-w, w:] - summed[w:, :-w] + summed[:-w, :-w]) / (w * w)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = box_mean(a), box_mean(b)
    var_a = box_mean(a * a) - mu_a**2
    var_b = box_mean(b * b) - mu_b**2
    cov = box_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _fetch_image(page: Any, source: str) -> Image.Image:
    if source.startswith(("http://", "https://")):
        response = page.context.request.get(source, timeout=15000)
        if not response.ok:
            raise OSError(f"HTTP {response.status} for {source}")
        return Image.open(io.BytesIO(response.body())).convert("RGB")
    return Image.open(Path(source)).convert("RGB")


def load_reference_images(page: Any, sources: str, mode: str = "fixed") -> list[Image.Image]:
    """The ``|OR|`` reference images of ``eval_fuzzy_image_match``: URLs (fetched through ``page``) or paths.

    One that cannot be read is skipped in fixed mode; in official mode it ends grading with an error, as it
    does in VWA (bug 15: reddit 184's hostless ``media/...``), which leaves the task out of the scores.
    """
    images = []
    for source in sources.split(ev.OR_SEPARATOR):
        try:
            images.append(_fetch_image(page, source.strip()))
        except Exception as error:
            if mode == "official":
                raise ev.EvaluationConfigError(
                    f"eval_fuzzy_image_match reference {source.strip()!r} cannot be read ({error}); VWA's "
                    "evaluator stops here too (bug 15): grade with mode 'fixed' to skip unreadable references"
                ) from error
    return images


_IMAGE_SOURCES = """
(cls) => {
  const found = [];
  const nodes = cls ? document.querySelectorAll(cls) : document.querySelectorAll('img,[role=img]');
  for (const node of nodes) {
    if (node.tagName === 'IMG') found.push(node.getAttribute('src'));
    else for (const img of node.querySelectorAll('img')) found.push(img.getAttribute('src'));
  }
  return found.filter((src) => src);
}
"""


def grade_page_images(page: Any, queries: Sequence[Mapping[str, Any]], config: GradingConfig) -> ev.Verdict:
    result = ev.Verdict()
    for query in queries:
        _navigate(page, query.get("eval_image_url", "last"), config)
        sources = page.evaluate(_IMAGE_SOURCES, query.get("eval_image_class", ""))
        images = []
        for source in sources:
            try:
                images.append(_fetch_image(page, urljoin(page.url, source)))
            except Exception:
                continue
        if not images:
            return result.combine(
                ev.Verdict(ev.FAIL, [f"no images at {page.url} for {query.get('eval_image_class')!r}"])
            )
        score = ev.Verdict()
        for item in query.get("eval_vqa") or []:
            if config.vqa_model is None:
                score = score.combine(ev.Verdict(ev.NEEDS_JUDGE, ["eval_vqa needs a VQA model; pass vqa_model="]))
                continue
            outputs = config.vqa_model(images, [f"Q: {item['question']} A:"] * len(images))
            found = ev.vqa_answer_found(outputs, item["answer"], config.mode)
            score = score.combine(ev.verdict(found, f"no VQA output contains {str(item['answer']).lower()!r}"))
        if query.get("eval_fuzzy_image_match"):
            references = load_reference_images(page, str(query["eval_fuzzy_image_match"]), config.mode)
            threshold = float(query.get("ssim_threshold", 0.8))
            similar = any(ssim(image, ref) > threshold for image in images for ref in references)
            score = score.combine(ev.verdict(similar, f"no page image is similar (SSIM > {threshold}) to a reference"))
        result = ev.image_queries_product(result, score, config.mode)
    return result


# ------------------------------------------------------------------------------------------- grading


PAGE_EVAL_TYPES = frozenset({"program_html", "page_image_query"})  # the evaluators that read the grading page


def grade_task(
    task: WebTask, context: Any, answer: str, last_url: str, config: GradingConfig | None = None
) -> ev.Verdict:
    """The product of ``task``'s evaluators, graded in a new page of ``context`` that starts at ``last_url``
    (opened only when an evaluator reads a page: ``string_match`` and ``url_match`` grade without one)."""
    config = config or GradingConfig()
    ev.check_mode(config.mode)
    spec = task.eval
    page = context.new_page() if PAGE_EVAL_TYPES.intersection(task.eval_types) else None
    if page is not None:
        config = replace(config, helpers={**site_helpers(page, task.site_urls, config.mode), **config.helpers})
    try:
        if page is not None and last_url and last_url != "about:blank":
            try:
                page.goto(last_url, wait_until="load")
            except Exception as error:
                return ev.Verdict(ev.FAIL, [f"cannot reopen the last URL {last_url}: {error}"])
        result = ev.Verdict()
        for eval_type in task.eval_types:
            if eval_type == "string_match":
                part = ev.string_match(
                    answer,
                    spec.get("reference_answers") or {},
                    task.intent,
                    config.fuzzy_judge,
                    config.mode,
                    str(spec.get("string_note") or ""),
                )
            elif eval_type == "url_match":
                part = ev.url_match(last_url, spec.get("reference_url") or "", spec.get("url_note"), config.mode)
            elif eval_type == "program_html":
                part = grade_program_html(page, spec.get("program_html") or [], task.intent, config)
            elif eval_type == "page_image_query":
                part = grade_page_images(page, spec.get("page_image_query") or [], config)
            else:
                raise ev.EvaluationConfigError(f"task {task.task_id}: unknown eval type {eval_type!r}")
            result = result.combine(part)
        return result
    finally:
        if page is not None:
            page.close()
