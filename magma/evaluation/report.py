"""The static report of a suite run: ``report.html`` (the summary and one row per task or episode) and
``trajectories/<task>/index.html`` (a UI episode's steps: Set-of-Mark screenshot, model text, parsed action,
error and timings; a robot episode's video). Plain HTML with relative links: open it from disk or copy the
folder anywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2

_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.pass{background:#e6f4e6}.fail{background:#fbe9e9}.undecided{background:#fff7df}.error{background:#eee}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5em;max-width:60em}
.step{border-top:1px solid #ccc;padding:1em 0}.step img{max-width:100%;border:1px solid #999}
.inputs img{max-height:12em;margin-right:.5em}
"""

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
<table><tr><th>task</th><th>result</th><th>eval</th><th>steps</th><th>s</th><th>intent</th><th>notes</th></tr>
{% for r in results %}<tr class="{{ r.css }}"><td><a href="trajectories/{{ r.folder }}/index.html">{{ r.key }}</a></td>
<td>{{ r.outcome }}</td><td>{{ r.eval_types|join(", ") }}</td><td>{{ r.steps }}</td>
<td>{{ "%.1f"|format(r.seconds) }}</td>
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
{% for s in steps %}<div class="step"><h3>Step {{ s.step }}</h3>
<p>URL: {{ s.url }}</p>
{% if s.image %}<img src="{{ s.image }}" alt="Set-of-Mark screenshot of step {{ s.step }}">{% endif %}
<p>Parsed action: <code>{{ s.action if s.action is not none else "(none)" }}</code>
{% if s.action_error %}<br>Action error: {{ s.action_error }}{% endif %}</p>
{% if s.reply %}<pre>{{ s.reply }}</pre>{% endif %}
<p>Timings (ms): {% for phase, seconds in s.timings.items() %}{{ phase }} {{ "%.0f"|format(1000 * seconds) }}
{% if not loop.last %}· {% endif %}{% endfor %}</p></div>{% endfor %}
</body></html>
"""
)


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
        rows.append(row)
        trajectory = out_dir / "trajectories" / folder
        trajectory.mkdir(parents=True, exist_ok=True)
        inputs = sorted(path.name for path in trajectory.glob("input-*.jpg"))
        page = _EPISODE.render(r=row, steps=_read_steps(trajectory), inputs=inputs, style=_STYLE)
        (trajectory / "index.html").write_text(page, encoding="utf-8")
    group_name = summary.get("group_name", "group")
    groups = [(f"{group_name} {name}", row) for name, row in summary["by_group"].items()]
    if len(summary["by_eval_type"]) > 1:
        groups += [(f"eval {name}", row) for name, row in summary["by_eval_type"].items()]
    groups.append(("all", summary["overall"]))
    report = out_dir / REPORT_FILE
    page = _INDEX.render(results=rows, groups=groups, settings=settings, style=_STYLE, title=title)
    report.write_text(page, encoding="utf-8")
    return report
