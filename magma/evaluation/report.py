"""The static report of a suite run: ``report.html`` (the summary and one row per task or episode) and
``trajectories/<task>/index.html`` (a UI episode's steps: Set-of-Mark screenshot, model text, parsed action,
error and timings; a robot episode's video). Plain HTML with relative links: open it from disk or copy the
folder anywhere."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

_STYLE = markupsafe.Markup(  # our own CSS: autoescape would turn its ">" selectors into "&gt;"
    """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.pass{background:#e6f4e6}.fail{background:#fbe9e9}.undecided{background:#fff7df}.error{background:#eee}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;max-width:60em}
.step{border-top:1px solid #ccc;padding:1em 0}.step img{max-width:100%;border:1px solid #999}
.inputs img{max-height:12em;margin-right:.5em}
.columns{display:flex;gap:1.5em;align-items:flex-start}.columns>div{flex:1 1 55%;min-width:0}
.search{flex:1 1 45%;min-width:0;font-size:.9em}.search ul{padding-left:1.2em;margin:.2em 0}
.search li{margin:.15em 0}.executed>.node{background:#e6f4e6;font-weight:bold}.unexplored>.node{color:#888}
.mismatch{background:#fbe9e9}.privileged{color:#a60}
"""
)

_INDEX = _ENVIRONMENT.from_string(
    """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style></head><body>
<h1>{{ title }}</h1>
<p>{{ results|length }} tasks; policy {{ settings.policy }}{% if settings.model %} ({{ settings.model }}){% endif %};
max {{ settings.max_steps }} steps.</p>
<h2>Summary</h2>
<table><tr><th>group</th><th>tasks</th><th>passed</th><th>failed</th><th>undecided</th><th>errors</th>
<th>success</th><th>mean steps</th><th>mean s</th></tr>
{% for name, row in groups %}<tr><td>{{ name }}</td><td>{{ row.tasks }}</td><td>{{ row.passed }}</td>
<td>{{ row.failed }}</td><td>{{ row.undecided }}</td><td>{{ row.errors }}</td>
<td>{{ "-" if row.success_rate is none else "%.1f%%"|format(100 * row.success_rate) }}</td>
<td>{{ "-" if row.mean_steps is none else row.mean_steps }}</td>
<td>{{ "-" if row.mean_seconds is none else row.mean_seconds }}</td></tr>{% endfor %}
</table>
<h2>Tasks</h2>
<table><tr><th>task</th><th>result</th><th>eval</th><th>steps</th><th>s</th>
{% if searched %}<th>search (simulations / env steps)</th>{% endif %}<th>intent</th><th>notes</th></tr>
{% for r in results %}<tr class="{{ r.css }}"><td><a href="trajectories/{{ r.folder }}/index.html">{{ r.key }}</a></td>
<td>{{ r.outcome }}</td><td>{{ r.eval_types|join(", ") }}</td><td>{{ r.steps }}</td>
<td>{{ "%.1f"|format(r.seconds) }}</td>{% if searched %}<td>{{ r.search_cell }}</td>{% endif %}
<td>{{ r.intent }}</td><td>{{ r.notes }}</td></tr>{% endfor %}
</table></body></html>
"""
)

_EPISODE = _ENVIRONMENT.from_string(
    """<!doctype html><html><head><meta charset="utf-8"><title>{{ r.key }}</title>
<style>{{ style }}</style></head><body>
<p><a href="../../report.html">back to the report</a></p>
<h1>{{ r.key }}: {{ r.outcome }}</h1>
<p>{{ r.intent }}</p>
<p>eval {{ r.eval_types|join(", ") }}; status {{ r.eval_status or r.status }}; answer <code>{{ r.answer }}</code>;
{{ r.steps }} steps ({{ r.failed_steps }} failed); {{ "%.1f"|format(r.seconds) }} s
(policy {{ "%.1f"|format(r.policy_seconds) }} s){% if r.early_stop %}; early stop: {{ r.early_stop }}{% endif %}</p>
{% if r.error %}<pre>{% if r.error_kind %}{{ r.error_kind }}: {% endif %}{{ r.error }}</pre>{% endif %}
{% if r.notes %}<pre>{{ r.notes }}</pre>{% endif %}
{% if r.video %}<video src="../../{{ r.video }}" controls loop muted width="480"></video>{% endif %}
{% if inputs %}<div class="inputs"><h3>Task images</h3>
{% for name in inputs %}<img src="{{ name }}">{% endfor %}</div>{% endif %}
{% if search %}<div class="columns"><div>{% endif %}
{% for s in steps %}<div class="step"><h3>Step {{ s.step }}</h3>
<p>URL: {{ s.url }}</p>
{% if s.image %}<img src="{{ s.image }}" alt="Set-of-Mark screenshot of step {{ s.step }}">{% endif %}
<p>Parsed action: <code>{{ s.action if s.action is not none else "(none)" }}</code>
{% if s.action_error %}<br>Action error: {{ s.action_error }}{% endif %}</p>
{% if s.reply %}<pre>{{ s.reply }}</pre>{% endif %}
<p>Timings (ms): {% for phase, seconds in s.timings.items() %}{{ phase }} {{ "%.0f"|format(1000 * seconds) }}
{% if not loop.last %}· {% endif %}{% endfor %}</p></div>{% endfor %}
{% if search %}</div>{{ search }}</div>{% endif %}
</body></html>
"""
)


_SEARCH = _ENVIRONMENT.from_string(
    """<aside class="search"><h2>Search tree</h2>
{% if error %}<p class="fail">The search tree could not be read: {{ error }}</p>{% else %}
<p>{{ t.count }} nodes, {{ t.explored }} explored; value {{ t.value_kind or "?" }}{% if t.privileged %}
<span class="privileged">(the task's own grader: a privileged oracle value, for studying the search)</span>{% endif %};
budget {% for name, value in t.budget %}{{ name }} {{ value }}{% if not loop.last %}, {% endif %}{% endfor %}.
Executed path (highlighted): {{ t.executed|join(" > ") }}.</p>
<table>{% for name, value in t.stats %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
<ul>{% for n in [t.root] recursive %}<li class="{{ n.css }}"><span class="node">#{{ n.id }}
{{ n.label }}</span>{% if n.executed_step == 0 %} [the executed path starts here]{% elif n.executed_step %}
[executed action {{ n.executed_step }}]{% endif %}:
{% if n.reached %}value {{ n.value }} ({{ n.source }}{% if n.privileged %}, <span class="privileged">privileged</span>
{%- endif %}){% if n.terminal %}, end of episode (reward {{ n.reward }}){% endif %}{% else %}not entered{% endif %};
visits {{ n.visits }}, Q {{ n.q }}, prior {{ n.prior }}{% if n.image %} <a href="{{ n.image }}">screen</a>{% endif %}
{% if n.note %}<br><small>{{ n.note }}</small>{% endif %}
{% if n.kids %}<ul>{{ loop(n.kids) }}</ul>{% endif %}</li>{% endfor %}</ul>
<h3>Backtracks (reset and replay)</h3>
{% if t.backtracks %}<table><tr><th>step</th><th>from</th><th>to</th><th>replayed</th><th>state</th><th>note</th></tr>
{% for b in t.backtracks %}<tr{% if not b.matched %} class="mismatch"{% endif %}><td>{{ b.step }}</td>
<td>{{ b.origin }}</td><td>{{ b.to }}</td><td>{{ b.replayed }}</td><td>{{ "matched" if b.matched else "mismatch" }}</td>
<td>{{ b.note }}</td></tr>
{% endfor %}</table>{% else %}<p>None.</p>{% endif %}
{% if t.reflections %}<h3>Reflections used</h3><ul>{% for text in t.reflections %}<li>{{ text }}</li>{% endfor %}</ul>
{% endif %}{% endif %}</aside>
"""
)
_SEARCH_STATS = (
    ("simulations", "simulations", 0),
    ("environment steps", "environment_steps", 0),
    ("replays", "replays", 0),
    ("replay mismatches", "replay_mismatches", 0),
    ("replay match share", "replay_match_share", 3),
    ("value calls", "value_calls", 0),
    ("value failures", "value_failures", 0),
    ("restart failures", "restart_failures", 0),
    ("candidate batches (proposals)", "proposals", 0),
    ("search seconds", "seconds", 1),
    ("policy seconds", "policy_seconds", 1),
    ("value seconds", "value_seconds", 1),
)
_NODE_IMAGE = re.compile(r"^[A-Za-z0-9_.-]+\.(jpg|jpeg|png)$")


def _figure(value: Any, digits: int = 2) -> str:
    """A number as the page shows it; anything else (a damaged field) as "-"."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _search_view(tree: Any) -> dict[str, Any]:
    """A ``SearchTree`` as the page draws it: nested nodes (from the parent links), backtracks, statistics."""
    executed_steps = {node_id: step for step, node_id in enumerate(tree.executed)}
    views = []
    for node in tree.nodes:
        reached = node.value is not None
        views.append(
            {
                "id": node.id,
                "label": "start" if node.parent is None else (node.action or "(reply without an action)"),
                "reached": reached,
                "value": _figure(node.value),
                "source": str(node.value_source or "?"),
                "privileged": bool(tree.privileged) and node.value_source == "grader",
                "note": str(node.value_note or "")[:400],
                "terminal": bool(node.terminal),
                "reward": _figure(node.reward),
                "visits": _figure(node.visits, 0),
                "q": _figure(node.q) if isinstance(node.visits, int) and _figure(node.value_sum) != "-" else "-",
                "prior": _figure(node.prior),
                "image": node.image if isinstance(node.image, str) and _NODE_IMAGE.match(node.image) else None,
                "executed_step": executed_steps.get(node.id),
                "css": "executed" if node.id in executed_steps else ("" if reached else "unexplored"),
                "kids": [],
            }
        )
    for node in tree.nodes[1:]:
        views[node.parent]["kids"].append(views[node.id])
    stats = vars(tree.stats) | {"replay_match_share": tree.stats.replay_match_share}
    return {
        "root": views[0],
        "count": len(views),
        "explored": sum(view["reached"] for view in views),
        "value_kind": tree.value_kind,
        "privileged": bool(tree.privileged),
        "budget": sorted((str(name), "no cap" if value is None else str(value)) for name, value in tree.budget.items()),
        "executed": list(tree.executed),
        "stats": [(name, _figure(stats.get(key), digits)) for name, key, digits in _SEARCH_STATS],
        "backtracks": [
            {
                "step": backtrack.made_at_step,
                "origin": "-" if backtrack.origin is None else backtrack.origin,
                "to": backtrack.to,
                "replayed": backtrack.replayed,
                "matched": bool(backtrack.matched),
                "note": str(backtrack.note or ""),
            }
            for backtrack in tree.backtracks
        ],
        "reflections": [str(text)[:600] for text in tree.reflections_used],
    }


def _search_section(folder: Path) -> markupsafe.Markup | None:
    """The task's search tree (``search_tree.json``) as HTML, None without one; a tree that cannot be read or
    drawn gives a note saying so, and the rest of the page renders as usual."""
    from magma.search.tree import TREE_FILE, SearchTree, SearchTreeError

    if not (folder / TREE_FILE).exists():
        return None
    try:
        html = _SEARCH.render(t=_search_view(SearchTree.load(folder)), error=None)
    except SearchTreeError as error:
        html = _SEARCH.render(t=None, error=str(error))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError, RecursionError) as error:
        html = _SEARCH.render(t=None, error=f"{folder / TREE_FILE} is damaged ({type(error).__name__}: {error})")
    return markupsafe.Markup(html)


def _search_cell(search: Any) -> str:
    if not isinstance(search, dict):
        return "-"
    return f"{_figure(search.get('simulations'), 0)} / {_figure(search.get('environment_steps'), 0)}"


def _outcome(record: dict[str, Any]) -> tuple[str, str]:
    if record.get("status") == "error":
        return "error", "error"
    if record.get("success") is True:
        return "passed", "pass"
    if record.get("success") is False:
        return "failed", "fail"
    return f"undecided ({record.get('eval_status')})", "undecided"


_STEP_DEFAULTS: dict[str, Any] = {
    "step": 0,
    "url": "",
    "reply": "",
    "action": None,
    "action_error": None,
    "image": None,
}


def _step_row(line: bytes) -> dict[str, Any] | None:
    """One steps.jsonl line as the page shows it, or None for a line that is not a step (cut, edited)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    row = {**_STEP_DEFAULTS, **record}
    timings = row.get("timings")
    if not isinstance(timings, dict) or not all(
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        for value in timings.values()
    ):
        row["timings"] = {}
    return row


def _read_steps(folder: Path) -> list[dict[str, Any]]:
    path = folder / "steps.jsonl"
    if not path.is_file():
        return []
    rows = (_step_row(line) for line in path.read_bytes().splitlines() if line.strip())
    return [row for row in rows if row is not None]


def write_report(
    out_dir: str | Path, results: list[dict[str, Any]], summary: dict[str, Any], title: str = "Run report"
) -> Path:
    """Write report.html and every task's page; returns the report's path."""
    from magma.evaluation.results import REPORT_FILE, read_run_settings
    from magma.evaluation.runner import trajectory_name

    out_dir = Path(out_dir)
    settings = {"policy": "?", "model": None, "max_steps": "?", **read_run_settings(out_dir)}
    rows = []
    for record in results:
        outcome, css = _outcome(record)
        folder = trajectory_name(record["key"])
        row = {**record, "outcome": outcome, "css": css, "folder": folder}
        row["notes"] = "; ".join(record.get("eval_notes") or [])[:500]
        row["search_cell"] = _search_cell(record.get("search"))
        rows.append(row)
        trajectory = out_dir / "trajectories" / folder
        trajectory.mkdir(parents=True, exist_ok=True)
        inputs = sorted(path.name for path in trajectory.glob("input-*.jpg"))
        search = _search_section(trajectory)
        page = _EPISODE.render(r=row, steps=_read_steps(trajectory), inputs=inputs, search=search, style=_STYLE)
        (trajectory / "index.html").write_text(page, encoding="utf-8")
    group_name = summary.get("group_name", "group")
    groups = [(f"{group_name} {name}", row) for name, row in summary["by_group"].items()]
    if len(summary["by_eval_type"]) > 1:
        groups += [(f"eval {name}", row) for name, row in summary["by_eval_type"].items()]
    groups.append(("all", summary["overall"]))
    report = out_dir / REPORT_FILE
    searched = any(isinstance(record.get("search"), dict) for record in results)
    page = _INDEX.render(results=rows, groups=groups, settings=settings, searched=searched, style=_STYLE, title=title)
    report.write_text(page, encoding="utf-8")
    return report
