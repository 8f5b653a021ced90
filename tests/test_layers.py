"""Imports flow one way (docs/architecture.md, "Layers"): ``data_tools`` <- ``envs`` <- ``magma`` <- ``lapa``,
with ``robot`` beside ``magma``. Every import statement of every module (module level, inside functions,
under ``if TYPE_CHECKING``) is read with ``ast`` and checked against these rules:

- a package imports itself and the packages below it (``ALLOWED``);
- the shared contracts (``magma.actions``, the action vocabulary, and ``magma.policies.protocol``, the
  ``Policy`` protocol) are pure Python and may be imported by ``envs`` and ``robot``;
- ``robot`` may load a Magma model where it serves one (``MODEL_SERVING_MODULES``), and only lazily, inside
  the function that loads or runs it; generic helpers never come from ``magma``;
- the ``agent`` CLI (``magma/cli/`` and the command group each package contributes, ``*/cli.py``) and
  recipes (``*/recipes/``) sit above every package and may import any; only they import a recipe.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("data_tools", "envs", "magma", "lapa", "robot")
ALLOWED: dict[str, set[str]] = {
    "data_tools": set(),
    "envs": {"data_tools"},
    "magma": {"data_tools", "envs"},
    "lapa": {"data_tools", "envs", "magma"},
    "robot": {"data_tools", "envs"},
}
SHARED_CONTRACTS = ("magma.actions", "magma.policies.protocol")
CONTRACT_USERS = {"envs", "robot"}
MODEL_SERVING_MODULES = {"robot/served_policy.py", "robot/openai_chat.py"}  # they load and run Magma models
CLI_DIRECTORY = "magma/cli/"
CLI_MODULE = "cli.py"  # lapa/cli.py, robot/cli.py: the command groups those packages contribute to `agent`
RECIPES_DIRECTORY = "recipes"

# Violations not fixed yet, as (file, imported module). Each must still exist (so the list shrinks when one
# is fixed); a new one fails the test.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()  # (file, module): none left; a new one fails the test


@dataclass(frozen=True)
class ImportSite:
    file: str  # relative to the repository root, with forward slashes
    line: int
    module: str  # absolute dotted name
    in_function: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module}"


def _absolute_module(node: ast.ImportFrom, file: Path) -> str:
    """The dotted module a ``from ... import`` names, with relative levels resolved against ``file``."""
    if node.level == 0:
        return node.module or ""
    package_parts = list(file.relative_to(ROOT).with_suffix("").parts)
    if file.name != "__init__.py":
        package_parts = package_parts[:-1]
    base = package_parts[: len(package_parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports_of(file: Path, source: str | None = None) -> list[ImportSite]:
    """Every import in ``file`` (or in ``source``, read as if it were ``file``)."""
    tree = _parsed(file) if source is None else ast.parse(source, filename=str(file))
    relative = file.relative_to(ROOT).as_posix()
    sites: list[ImportSite] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            sites.extend(ImportSite(relative, node.lineno, alias.name, in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute_module(node, file)
            # `from magma import actions` imports magma.actions: name the submodule when there is one
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                is_submodule = (ROOT / Path(*candidate.split("."))).is_dir() or (
                    ROOT / (Path(*candidate.split(".")).as_posix() + ".py")
                ).is_file()
                sites.append(ImportSite(relative, node.lineno, candidate if is_submodule else module, in_function))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return list(dict.fromkeys(sites))  # one site per module and line, however many names it imports


@functools.cache
def _parsed(file: Path) -> ast.Module:
    return ast.parse(file.read_text(encoding="utf-8"), filename=str(file))


def _package_files() -> list[Path]:
    return [file for package in PACKAGES for file in sorted((ROOT / package).rglob("*.py"))]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _is_cli(file: str) -> bool:
    return file.startswith(CLI_DIRECTORY) or file.split("/")[1:] == [CLI_MODULE]


def _is_recipe(file_or_module: str) -> bool:
    parts = file_or_module.replace("/", ".").split(".")
    return RECIPES_DIRECTORY in parts[1:]


def layer_violation(site: ImportSite) -> str | None:
    """Why ``site`` breaks the layering, or None when it is allowed."""
    package = site.file.split("/")[0]
    target = site.module.split(".")[0]
    if target not in PACKAGES:
        return None
    above_all = _is_cli(site.file) or _is_recipe(site.file)
    if _is_recipe(site.module) and not above_all:
        return "a recipe is imported only by the agent CLI and other recipes"
    if above_all or target == package:
        return None
    if target in ALLOWED[package]:
        return None
    if package in CONTRACT_USERS and any(_within(site.module, contract) for contract in SHARED_CONTRACTS):
        return None
    if package == "robot" and target == "magma" and site.file in MODEL_SERVING_MODULES:
        if site.in_function:
            return None
        return "robot loads a Magma model only lazily, inside the function that loads or runs it"
    below = ", ".join(sorted(ALLOWED[package])) or "nothing of this project"
    return f"{package} may import only {below}"


@functools.cache
def all_import_sites() -> tuple[ImportSite, ...]:
    return tuple(site for file in _package_files() for site in _imports_of(file))


def test_imports_flow_one_way():
    violations = [(site, reason) for site in all_import_sites() if (reason := layer_violation(site)) is not None]
    new = [f"{site}: {reason}" for site, reason in violations if (site.file, site.module) not in KNOWN_VIOLATIONS]
    assert not new, "imports against the layers of docs/architecture.md:\n" + "\n".join(new)
    fixed = KNOWN_VIOLATIONS - {(site.file, site.module) for site, _ in violations}
    assert not fixed, f"these known violations are gone; remove them from KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_magma_outside_the_cli_never_imports_lapa_or_robot():
    offending = [
        str(site)
        for site in all_import_sites()
        if site.file.startswith("magma/")
        and not site.file.startswith(CLI_DIRECTORY)
        and site.module.split(".")[0] in {"lapa", "robot"}
    ]
    assert not offending, "\n".join(offending)


def test_one_home_for_shared_helpers():
    """UserFacingError and write_json_atomically are defined once, in data_tools; magma.errors is gone."""
    definitions: dict[str, list[str]] = {"UserFacingError": [], "write_json_atomically": []}
    for file in _package_files():
        for node in ast.walk(_parsed(file)):
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in definitions:
                definitions[node.name].append(file.relative_to(ROOT).as_posix())
    assert definitions == {
        "UserFacingError": ["data_tools/errors.py"],
        "write_json_atomically": ["data_tools/atomic_files.py"],
    }
    assert not any(site.module == "magma.errors" for site in all_import_sites())


@pytest.mark.parametrize(
    ("site", "allowed"),
    [
        (ImportSite("envs/web/env.py", 1, "magma.actions.ui", False), True),
        (ImportSite("envs/web/env.py", 1, "magma.model", True), False),
        (ImportSite("data_tools/som.py", 1, "envs.web", True), False),
        (ImportSite("magma/evaluation/episodes.py", 1, "robot.sim", True), False),
        (ImportSite("magma/cli/data.py", 1, "robot.sim", True), True),
        (ImportSite("lapa/training.py", 1, "magma.model", False), True),
        (ImportSite("lapa/training.py", 1, "robot.sim", True), False),
        (ImportSite("lapa/recipes/pipeline.py", 1, "robot.sim", True), True),
        (ImportSite("lapa/training.py", 1, "lapa.recipes.pipeline", True), False),
        (ImportSite("lapa/cli.py", 1, "lapa.recipes.pipeline", True), True),
        (ImportSite("robot/cli.py", 1, "robot.daemon", True), True),
        (ImportSite("magma/cli/app.py", 1, "lapa.recipes.pipeline", True), True),
        (ImportSite("robot/served_policy.py", 1, "magma.model", True), True),
        (ImportSite("robot/served_policy.py", 1, "magma.model", False), False),
        (ImportSite("robot/daemon.py", 1, "magma.model", True), False),
        (ImportSite("robot/sim.py", 1, "envs.mujoco.env", False), True),
    ],
)
def test_the_rules_decide_as_written(site: ImportSite, allowed: bool):
    """The checker itself: each rule of the module docstring, on one import each way."""
    assert (layer_violation(site) is None) == allowed, layer_violation(site)


def test_every_kind_of_import_is_seen():
    """Module-level, function-level, ``import x`` and relative ``from . import`` forms are all read."""
    source = "import magma.model\n\ndef load():\n    from magma.processor import MagmaProcessor\n\nfrom . import sim\n"
    sites = _imports_of(ROOT / "robot" / "any_module.py", source)
    assert [(site.line, site.module, site.in_function) for site in sites] == [
        (1, "magma.model", False),
        (4, "magma.processor", True),
        (6, "robot.sim", False),
    ]
