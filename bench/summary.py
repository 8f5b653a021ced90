"""One table of every benchmark ratio: figure, ours, baseline, ratio, goal, whether the goal is met.

Reads the JSON-lines records the benches append to ``$BENCH_RECORDS`` (``make bench`` collects them in
``runs/bench/records.jsonl``) or any files of their stdout lines. A figure printed twice keeps its last
value. ``--docs docs/performance.md`` rewrites the summary block of that page from the same table, so
the page and the printed table agree.

Usage: ``python bench/summary.py RECORDS.jsonl [MORE.jsonl ...] [--docs docs/performance.md] [--all]``
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from dataclasses import dataclass
from pathlib import Path

DOCS_START = "<!-- bench-summary:start (bench/summary.py --docs writes this block) -->"
DOCS_END = "<!-- bench-summary:end -->"
COMPARISONS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
COLUMNS = ("figure", "ours", "baseline", "ratio", "goal", "met", "load")


class SummaryError(ValueError):
    """A records file or goal the summary cannot read; the message names the place and the fix."""


@dataclass(frozen=True)
class Figure:
    """One benchmark figure as the summary shows it."""

    name: str
    value: float
    unit: str
    baseline: str
    ratio: float | None
    goal: str | None
    load: str

    @property
    def goal_met(self) -> bool | None:
        """True or False against the goal; None when the figure has no goal or no ratio."""
        if self.goal is None or self.ratio is None:
            return None
        return goal_holds(self.goal, self.ratio)


def goal_holds(goal: str, ratio: float) -> bool:
    """``goal_holds("<= 1.5", 1.2)`` is True; the goal reads as an operator and a number."""
    parts = goal.split()
    if len(parts) != 2 or parts[0] not in COMPARISONS:
        raise SummaryError(f"goal {goal!r} is not '<op> <number>' with op one of {', '.join(COMPARISONS)}")
    try:
        target = float(parts[1])
    except ValueError:
        raise SummaryError(f"goal {goal!r}: {parts[1]!r} is not a number") from None
    return COMPARISONS[parts[0]](ratio, target)


def read_figures(paths: list[Path]) -> list[Figure]:
    """Every figure in the files, in first-seen order; a figure seen again takes its later value."""
    figures: dict[str, Figure] = {}
    for path in paths:
        if not path.is_file():
            raise SummaryError(f"{path}: no such records file; run `make bench` (or a bench with BENCH_RECORDS=FILE)")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.startswith("{"):
                continue  # a bench's stdout may hold other lines
            try:
                record = json.loads(line)
                figure = figure_from(record)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise SummaryError(
                    f"{path}:{number}: not a bench record ({error}); records come from bench/report.py"
                ) from None
            figures[figure.name] = figure
    return list(figures.values())


def figure_from(record: dict) -> Figure:
    baseline = record.get("baseline") or ""
    if record.get("baseline_value") is not None:
        baseline = f"{baseline}: {record['baseline_value']}"
    load = record.get("load")
    goal = record.get("goal")
    if goal is not None:
        goal_holds(goal, 1.0)  # refuse a malformed goal when reading, not when printing
    return Figure(
        name=str(record["name"]),
        value=float(record["value"]),
        unit=str(record["unit"]),
        baseline=str(baseline),
        ratio=None if record.get("ratio") is None else float(record["ratio"]),
        goal=goal,
        load=" / ".join(f"{value:.1f}" for value in load) if load else "",
    )


def table_rows(figures: list[Figure], every_figure: bool) -> list[tuple[str, ...]]:
    """Figures with a ratio (or, with ``every_figure``, all), goal-carrying ones first."""
    shown = [figure for figure in figures if every_figure or figure.ratio is not None]
    shown.sort(key=lambda figure: figure.goal is None)  # stable: bench order kept within each group
    rows = []
    for figure in shown:
        met = {None: "", True: "yes", False: "**no**"}[figure.goal_met]
        rows.append(
            (
                figure.name,
                f"{figure.value:g} {figure.unit}",
                figure.baseline,
                "" if figure.ratio is None else f"{figure.ratio:.2f}",
                figure.goal or "",
                met,
                figure.load,
            )
        )
    return rows


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    def escaped(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(escaped(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_docs_block(page: Path, table: str) -> None:
    """Replace the text between the summary markers of ``page`` with ``table``."""
    text = page.read_text(encoding="utf-8")
    if text.count(DOCS_START) != 1 or text.count(DOCS_END) != 1:
        raise SummaryError(f"{page}: needs exactly one pair of summary markers:\n{DOCS_START}\n{DOCS_END}")
    head, rest = text.split(DOCS_START)
    _, tail = rest.split(DOCS_END)
    page.write_text(f"{head}{DOCS_START}\n{table}\n{DOCS_END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="records files (JSON lines from bench/report.py)")
    parser.add_argument("--docs", type=Path, help="also rewrite the summary block of this markdown page")
    parser.add_argument("--all", action="store_true", help="every figure, not only those with a ratio")
    args = parser.parse_args(argv)
    try:
        figures = read_figures(args.records)
        table = markdown_table(table_rows(figures, args.all))
        if args.docs:
            write_docs_block(args.docs, table)
    except SummaryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    missed = [figure.name for figure in figures if figure.goal_met is False]
    met = sum(figure.goal_met is True for figure in figures)
    print(f"\n{met} goal(s) met, {len(missed)} missed{': ' + ', '.join(missed) if missed else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
