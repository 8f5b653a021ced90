"""VWA evaluator semantics: each eval type passes and fails, the fixed bugs, and grading on a real page."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envs.web import evaluators as ev
from envs.web.tasks import TaskConfigError, load_tasks, task_from_config


@pytest.mark.parametrize(
    ("prediction", "reference", "fixed", "official"),
    [
        ("$1,200", "1200", True, False),  # bug 1: number with thousands separator
        ("crocs", "croc", True, False),  # bug 1: plural
        ("id=42081", "id=4208", False, True),  # bug 2: digits glued on
        ("$2080", "$208", False, True),  # bug 2
        ("21. thanks", "21", True, False),  # bug 3: sentence full stop
        ("Paris", "paris", True, True),
        ("London", "paris", False, False),
    ],
)
def test_must_include(prediction, reference, fixed, official):
    assert ev.must_include(prediction, reference, "fixed") is fixed
    assert ev.must_include(prediction, reference, "official") is official


def test_must_include_or_alternatives_and_exclusions():
    assert ev.must_include("it is blue", "red |OR| blue")
    assert ev.must_exclude("$800", "$80")  # bug 2: $80 is not in $800
    assert not ev.must_exclude("$800", "$80", "official")
    assert not ev.must_exclude("total 30000.00", "30000")  # bug 4
    assert ev.must_exclude("ArtisanVideos", "Art")  # no plural/prefix leniency when excluding


def test_string_match_keys():
    assert ev.string_match(' "Blue" ', {"exact_match": "blue"}).status == ev.PASS
    assert ev.string_match("blue", {"exact_match": "red"}).status == ev.FAIL
    assert ev.string_match("it goes round", {"one_of": ["round", "square"]}).status == ev.PASS
    assert ev.string_match("around", {"one_of": ["round"]}).status == ev.FAIL  # bug 5
    assert ev.string_match("around", {"one_of": ["round"]}, mode="official").status == ev.PASS
    both = {"must_include": ["cat"], "must_exclude": ["dog"]}
    assert ev.string_match("cat and dog", both).status == ev.FAIL
    assert ev.string_match("just a cat", both).status == ev.PASS


def test_fuzzy_match_needs_a_judge_not_a_failure():
    assert ev.string_match("N/A", {"fuzzy_match": "N/A"}).status == ev.PASS
    undecided = ev.string_match("about three", {"fuzzy_match": ["3"]})
    assert undecided.status == ev.NEEDS_JUDGE and "judge" in undecided.notes[0]
    judged = ev.string_match("about three", {"fuzzy_match": ["3"]}, judge=lambda pred, ref, intent: "three" in pred)
    assert judged.status == ev.PASS
    # a failing exact part still fails the product even when the fuzzy part is undecided
    assert ev.string_match("x", {"exact_match": "y", "fuzzy_match": ["3"]}).status == ev.FAIL


def test_url_match():
    assert ev.url_match("http://localhost:80/a/", "http://127.0.0.1:80/a").status == ev.PASS
    assert ev.url_match("http://h/a?b", "http://h/a").status == ev.FAIL
    assert ev.url_match("http://h/x", "http://h/y |OR| http://h/x").status == ev.PASS
    assert ev.url_match("http://h/f/a/82896/post", "/82896", "GOLD in PRED").status == ev.PASS
    assert ev.url_match("http://h/f/a/828961/post", "/82896", "GOLD in PRED").status == ev.FAIL  # bug 12
    assert ev.url_match("http://h/f/a/828961/post", "/82896", "GOLD in PRED", "official").status == ev.PASS


def test_required_contents():
    assert ev.required_contents("70.00", {"required_values": ["< 70"]}).status == ev.FAIL  # bug 9
    assert ev.required_contents("70.00", {"required_values": ["< 70"]}, mode="official").status == ev.PASS
    assert ev.required_contents("1,234", {"required_values": [">= 1000"]}).status == ev.PASS
    both = {"must_include": ["aww"], "must_exclude": ["AskReddit"]}
    assert ev.required_contents("aww AskReddit", both).status == ev.FAIL  # bug 6
    assert ev.required_contents("aww AskReddit", both, mode="official").status == ev.PASS
    with pytest.raises(ev.EvaluationConfigError, match="required_values"):
        ev.required_value("5", "about 5")


def test_unknown_eval_type_names_the_task(tmp_path):
    config = {"task_id": 7, "intent": "x", "start_url": "http://h/", "eval": {"eval_types": ["vibes"]}}
    (tmp_path / "tasks.json").write_text(json.dumps([config]))
    with pytest.raises(TaskConfigError, match="task 7: unknown eval type 'vibes'"):
        load_tasks(tmp_path / "tasks.json")
    with pytest.raises(TaskConfigError, match="REDDIT"):
        task_from_config({**config, "start_url": "__REDDIT__", "eval": {"eval_types": ["url_match"]}}, {})


# ------------------------------------------------------------------------ graded on a real page

PAGE = """<html><body><h1 class="title">Tom &amp; Jerry</h1>
<ul id="subs"><li>aww</li><li>pics</li></ul><p id="price">70.00</p>
<img class="photo" src="/red.png"></body></html>"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/red.png":
            from io import BytesIO

            from PIL import Image

            buffer = BytesIO()
            Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
            data, kind = buffer.getvalue(), "image/png"
        else:
            data, kind = PAGE.encode(), "text/html"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def graded_page():
    pytest.importorskip("playwright")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("system Chromium not installed")
    from envs.web.browser import ChromiumBrowser, ContextOptions

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = f"http://127.0.0.1:{server.server_address[1]}"
    with ChromiumBrowser() as browser:
        context = browser.new_context(ContextOptions())
        yield site, context
        context.close()
    server.shutdown()
    server.server_close()


def _program_task(site: str, targets: list[dict], kind: str = "program_html") -> object:
    config = {"task_id": 3, "intent": "i", "start_url": site, "eval": {"eval_types": [kind], kind: targets}}
    return task_from_config(config, {})


def test_program_html_on_a_page(graded_page):
    from envs.web.grading import GradingConfig, grade_task

    site, context = graded_page
    cases = [
        ({"url": "last", "locator": "", "required_contents": {"must_include": ["Tom & Jerry"]}}, ev.PASS),  # bug 7
        (
            {
                "url": site,
                "locator": "document.querySelector('#price').textContent",
                "required_contents": {"required_values": ["< 71"]},
            },
            ev.PASS,
        ),
        (
            {
                "url": "last",
                "locator": "lambda:document.querySelector('#price').textContent",
                "required_contents": {"exact_match": "70.00"},
            },
            ev.PASS,
        ),  # bug 8: prefix, not a char set
        (
            {
                "url": "last",
                "locator": "func:get_query_text(__page__, '#subs')",
                "required_contents": {"must_include": ["aww"], "must_exclude": ["pics"]},
            },
            ev.FAIL,
        ),  # bug 6
        (
            {
                "url": "last",
                "locator": "document.querySelector('#missing').textContent",
                "required_contents": {"must_include": ["x"]},
            },
            ev.FAIL,
        ),
        (
            {
                "url": "func:shopping_get_latest_order_url()",
                "locator": "",
                "required_contents": {"must_include": ["x"]},
            },
            ev.UNSUPPORTED,
        ),
    ]
    for target, expected in cases:
        result = grade_task(_program_task(site, [target]), context, "", site + "/", GradingConfig())
        assert result.status == expected, (target, result)
    official = grade_task(_program_task(site, [cases[2][0]]), context, "", site + "/", GradingConfig(mode="official"))
    assert official.status == ev.FAIL  # lstrip("lambda:") eats the "d" of document


def test_page_image_query(graded_page):
    from envs.web.grading import GradingConfig, grade_task

    site, context = graded_page
    query = {
        "eval_image_url": "last",
        "eval_image_class": ".photo",
        "eval_vqa": [{"question": "Is it red?", "answer": "yes"}],
    }
    task = _program_task(site, [query], "page_image_query")
    assert grade_task(task, context, "", site + "/").status == ev.NEEDS_JUDGE
    sure = GradingConfig(vqa_model=lambda images, prompts: ["yes, it is red"] * len(images))
    assert grade_task(task, context, "", site + "/", sure).status == ev.PASS
    unsure = GradingConfig(vqa_model=lambda images, prompts: ["i don't know"] * len(images))
    assert grade_task(task, context, "", site + "/", unsure).status == ev.FAIL
    similar = {
        "eval_image_url": "last",
        "eval_image_class": ".photo",
        "eval_fuzzy_image_match": f"{site}/red.png",
        "ssim_threshold": 0.8,
    }
    assert grade_task(_program_task(site, [similar], "page_image_query"), context, "", site + "/").status == ev.PASS
    missing = {"eval_image_url": "last", "eval_image_class": ".nothing", "eval_fuzzy_image_match": f"{site}/red.png"}
    assert grade_task(_program_task(site, [missing], "page_image_query"), context, "", site + "/").status == ev.FAIL
