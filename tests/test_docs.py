"""The README and docs/ stay true to the tree: every relative link resolves to a file (and its `#anchor` to a
heading of that file, by GitHub's slug rules), and every `agent` command they show exists in the typer app.

Links and commands are read from the Markdown itself, so a page added to docs/ is checked without
touching this file. Commands are resolved in-process through click's own command tree, not by running
`agent ... --help` once per command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

from magma.cli.app import app

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
CLI_SECTION_HEADING = "## The `agent` command line"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
EXTERNAL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A path into this repository named in the text (code or prose): it starts at a top-level folder of ours.
REPOSITORY_PATH = re.compile(
    r"(?<![\w/.$-])((?:data_tools|envs|magma|lapa|robot|configs|bench|scripts|tests|docs)/[\w/.-]*)(?![\w*{<$-])"
)
PLACEHOLDER_SEGMENT = re.compile(r"/[A-Z][A-Z_]+(?:\.|/|$)")  # bench/NAME.py: a name to fill in, not a file


@dataclass(frozen=True)
class Link:
    """One relative link as written: the page it is on, its line, and the target path and anchor."""

    page: Path
    line: int
    target: str

    def where(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page
        return f"{page}:{self.line}: ({self.target})"


def documentation_pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for the lines outside fenced code blocks: code is shown, not linked."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            yield number, line


def fenced_blocks(text: str) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """(language, [(line number, line)]) for every fenced code block."""
    language, block, fence = "", [], None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence, language, block = opening.group(1), line.strip()[len(opening.group(1)) :].strip(), []
        elif fence is not None and line.strip().startswith(fence):
            yield language, block
            fence = None
        elif fence is not None:
            block.append((number, line))


def relative_links(page: Path) -> list[Link]:
    """Inline links, images and reference definitions whose target is in this repository."""
    links = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        without_code = CODE_SPAN.sub("", line)
        targets = [match.group(1) for match in INLINE_LINK.finditer(without_code)]
        definition = REFERENCE_DEFINITION.match(without_code)
        if definition:
            targets.append(definition.group(1))
        links.extend(Link(page, number, target) for target in targets if not EXTERNAL_SCHEME.match(target))
    return links


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation dropped (letters, digits,
    '_', '-' and spaces stay), each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = CODE_SPAN.sub(lambda match: match.group(2), text)
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def heading_anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the page's headings; a repeated slug gets -1, -2, ... as GitHub does."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        heading = ATX_HEADING.match(line)
        if not heading:
            continue
        slug = github_slug(heading.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def link_problems(links: list[Link]) -> list[str]:
    """One line per link whose file is missing or whose anchor names no heading of its target."""
    problems = []
    for link in links:
        path, _, anchor = link.target.partition("#")
        target = (link.page.parent / path).resolve() if path else link.page
        if not target.exists():
            problems.append(f"{link.where()} no such file: {target}")
        elif anchor:
            if target.suffix != ".md":
                problems.append(f"{link.where()} an anchor into a file that is not Markdown")
            elif anchor not in heading_anchors(target):
                problems.append(f"{link.where()} no heading of {target.name} has the anchor #{anchor}")
    return problems


@cache
def agent_command() -> Any:
    """The `agent` app as click's command tree, built once (typer builds it anew on every call). Typer
    ships its own copy of click, so groups are told apart by what they do (list and get subcommands),
    not by their class."""
    return typer.main.get_command(app)


def is_group(command: Any) -> bool:
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def subcommand_names(group: Any) -> list[str]:
    return list(group.list_commands(group.context_class(group)))


def subcommand(group: Any, name: str) -> Any:
    return group.get_command(group.context_class(group), name)


def resolve_command(words: list[str]) -> tuple[str, str | None]:
    """Walk `agent WORD WORD ...` down click's command tree (options, placeholders and arguments stop the
    walk at the leaf). Returns (the command path found, the problem or None)."""
    command = agent_command()
    path = ["agent"]
    for word in words:
        if not is_group(command):
            break
        if word.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9-]*", word):
            return " ".join(path), f"'{' '.join(path)}' is a group: name one of its subcommands"
        found = subcommand(command, word)
        if found is None:
            known = ", ".join(subcommand_names(command))
            return " ".join(path), f"'{' '.join(path)}' has no subcommand '{word}' (it has: {known})"
        command, path = found, [*path, word]
    if is_group(command):
        return " ".join(path), f"'{' '.join(path)}' is a group: name one of its subcommands"
    return " ".join(path), None


def leaf_commands() -> set[str]:
    """Every runnable command of the app, as `agent a b`."""
    leaves = set()

    def visit(command: Any, path: list[str]) -> None:
        if is_group(command):
            for name in subcommand_names(command):
                visit(subcommand(command, name), [*path, name])
        else:
            leaves.add(" ".join(path))

    visit(agent_command(), ["agent"])
    return leaves


def cli_table_rows() -> list[tuple[int, str]]:
    """(line, the command cell's text) for each row of the README's CLI table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(CLI_SECTION_HEADING)
    rows = []
    for number, line in enumerate(lines[start + 1 :], start=start + 2):
        if line.startswith("## "):
            break
        cell = re.match(r"^\|\s*`(agent[^`]*)`\s*\|", line)
        if cell:
            rows.append((number, cell.group(1)))
    return rows


def shown_commands(page: Path) -> list[tuple[int, list[str]]]:
    """(line, words after `agent`) for each shell line of a bash/sh block that runs `agent`."""
    commands = []
    for language, block in fenced_blocks(page.read_text(encoding="utf-8")):
        if language not in ("bash", "sh", "shell", "console"):
            continue
        for number, line in block:
            code = line.split(" #")[0].strip()
            if not code or code.startswith("#"):
                continue
            try:
                words = shlex.split(code.rstrip("\\&").strip())
            except ValueError:
                words = code.split()
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
                words = words[1:]  # VAR=value before the command
            if words and words[0] == "agent":
                commands.append((number, words[1:]))
    return commands


def test_every_relative_link_resolves():
    links = [link for page in documentation_pages() for link in relative_links(page)]
    assert len(links) > 20, "the link parser found almost no links: is it still reading the pages?"
    problems = link_problems(links)
    assert not problems, "broken documentation links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / link.target.partition("#")[0]).resolve() for link in relative_links(README)}
    unlinked = [page.name for page in documentation_pages()[1:] if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README's Documentation list does not link: {unlinked}"


def test_every_command_of_the_cli_table_exists_and_every_command_is_in_it():
    rows = cli_table_rows()
    assert rows, f"no rows found under {CLI_SECTION_HEADING!r} in README.md"
    found, problems = set(), []
    for number, cell in rows:
        path, problem = resolve_command(cell.split()[1:])
        found.add(path)
        if problem:
            problems.append(f"README.md:{number}: `{cell}`: {problem}")
    assert not problems, "CLI table rows that are not commands:\n" + "\n".join(problems)
    missing = sorted(leaf_commands() - found)
    assert not missing, f"commands of `agent` the README's CLI table does not list: {missing}"


def test_every_agent_command_shown_in_a_shell_block_exists():
    problems = []
    for page in documentation_pages():
        for number, words in shown_commands(page):
            _, problem = resolve_command(words)
            if problem:
                problems.append(f"{page.relative_to(REPO)}:{number}: agent {' '.join(words)}: {problem}")
    assert not problems, "commands in the docs that `agent` does not have:\n" + "\n".join(problems)


def test_every_repository_path_the_docs_name_exists():
    """Files and folders named in the pages (`magma/rl/trainer.py`, `configs/robot/sim-tabletop.yaml`) exist, so a
    moved or renamed module shows up here rather than in a newcomer's failed search."""
    problems = []
    for page in documentation_pages():
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            for match in REPOSITORY_PATH.finditer(line):
                path = match.group(1).rstrip(".")
                if not PLACEHOLDER_SEGMENT.search(path) and not (REPO / path).exists():
                    problems.append(f"{page.relative_to(REPO)}:{number}: {path}")
    assert not problems, "paths the docs name that are not in the repository:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Training (agent train)", "training-agent-train"),
        ("Model (bench/model.py)", "model-benchmodelpy"),
        ("Trace-of-Mark (bench/data_tools.py)", "trace-of-mark-benchdata_toolspy"),
        ("The `agent` command line", "the-agent-command-line"),
        ("Every environment id passes gymnasium's checker", "every-environment-id-passes-gymnasiums-checker"),
        ("Layout (magma/rl/)", "layout-magmarl"),
    ],
)
def test_github_slug_follows_githubs_rules(heading, slug):
    assert github_slug(heading) == slug


def test_checker_reports_a_missing_file_a_missing_anchor_and_a_repeated_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Part\n\n## Part\n\n"
        "[ok](#part-1) [ok](other.md#a-b) [gone](missing.md) [bad](other.md#nope) [bad](#part-2)\n"
        "```\n[in code](missing-too.md)\n```\n`[in a span](missing-three.md)`\n"
        "[external](https://example.com/x.md)\n",
        encoding="utf-8",
    )
    (tmp_path / "other.md").write_text("# A b\n", encoding="utf-8")
    problems = link_problems(relative_links(page))
    assert [problem.split(": (")[1].split(")")[0] for problem in problems] == [
        "missing.md",
        "other.md#nope",
        "#part-2",
    ]
