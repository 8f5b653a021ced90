"""The MiniWoB++ tasks this toolkit runs: every task the installed ``miniwob`` package registers as a gymnasium
id (``miniwob/<task>-v1``), less ``EXCLUDED`` (task -> why), and ``resolve_tasks`` for task specs.

The package registers 128 ids. It leaves out five task pages of its wheel (they need an agent that waits for
or follows events in real time) and registers three FlightWoB tasks whose form lives inside an iframe, which
this environment's Set-of-Mark pass and id-based actions cannot reach. The 25 ids the package flags
``nondeterministic`` (same seed, not always the same page) are kept: they run and score correctly; they are
listed in ``NONDETERMINISTIC``.
"""

from __future__ import annotations

import difflib
import functools

import gymnasium

from data_tools.errors import UserFacingError
from envs.miniwob.server import package_html_dir

ID_PREFIX = "miniwob/"
ID_SUFFIX = "-v1"
_NOT_REGISTERED = "not registered by the miniwob package (its docs' Excluded Tasks)"
_FLIGHT = (
    "a FlightWoB task: its airline form lives inside an iframe (375x667), which the Set-of-Mark pass and the "
    "id-based actions do not reach; the package also flags it nondeterministic (asynchronous iframe load)"
)
EXCLUDED: dict[str, str] = {
    "button-delay": f"{_NOT_REGISTERED}: the agent must wait a given number of seconds between two clicks",
    "chase-circle": f"{_NOT_REGISTERED}: the mouse must follow a moving circle; scored continuously over time",
    "hover-shape": f"{_NOT_REGISTERED}: the mouse must stay over a shape that moves; scored continuously",
    "moving-items": f"{_NOT_REGISTERED}: circles must be clicked while they move",
    "simon-says": f"{_NOT_REGISTERED}: the agent must watch a sequence of flashing buttons, then repeat it",
    "flight.AA": _FLIGHT,
    "flight.Alaska": _FLIGHT,
    "flight.Alaska-auto": _FLIGHT,
}


class UnknownMiniWoBTaskError(UserFacingError, KeyError):
    """A task name that is not a runnable MiniWoB++ task; the message names close matches or the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


@functools.cache
def _registered_specs() -> dict[str, gymnasium.envs.registration.EnvSpec]:
    """Task name -> the package's gymnasium spec, for every id ``import miniwob`` registers."""
    import miniwob  # noqa: F401  (registers its ids with gymnasium)

    return {
        env_id[len(ID_PREFIX) : -len(ID_SUFFIX)]: spec
        for env_id, spec in gymnasium.registry.items()
        if env_id.startswith(ID_PREFIX) and env_id.endswith(ID_SUFFIX)
    }


@functools.cache
def all_tasks() -> tuple[str, ...]:
    """Every runnable task, sorted: the package's registered tasks that have a page here, less ``EXCLUDED``."""
    pages = {path.stem for path in (package_html_dir() / "miniwob").glob("*.html")}
    return tuple(sorted(name for name in _registered_specs() if name in pages and name not in EXCLUDED))


def nondeterministic_tasks() -> frozenset[str]:
    """Runnable tasks whose id the package registers ``nondeterministic=True`` (page state or timing leaks)."""
    return frozenset(name for name in all_tasks() if _registered_specs()[name].nondeterministic)


def task_name(name: str) -> str:
    """The bare task name of ``name`` (``click-button``, ``miniwob/click-button-v1``, ``miniwob:click-button``);
    UnknownMiniWoBTaskError when it is not a runnable task (an excluded one says why)."""
    bare = name.strip()
    for prefix in (ID_PREFIX, "miniwob:"):
        bare = bare.removeprefix(prefix)
    bare = bare.removesuffix(ID_SUFFIX)
    if bare in all_tasks():
        return bare
    if bare in EXCLUDED:
        raise UnknownMiniWoBTaskError(f"MiniWoB++ task {bare!r} is excluded: {EXCLUDED[bare]}; pick another task")
    close = difflib.get_close_matches(bare, all_tasks(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid tasks: {', '.join(all_tasks())}"
    raise UnknownMiniWoBTaskError(f"unknown MiniWoB++ task {name.strip()!r}; {hint} (or 'all' for every task)")


def resolve_tasks(spec: str) -> list[str]:
    """Task names from a spec: ``all`` or a comma-separated list of names (each with or without ``miniwob/``
    and ``-v1``; the whole spec may start with ``miniwob:``), in the order given, without repeats."""
    body = spec.strip().removeprefix("miniwob:").strip()
    if body == "all":
        return list(all_tasks())
    names = [part for part in (piece.strip() for piece in body.split(",")) if part]
    if not names:
        raise UnknownMiniWoBTaskError(
            f"no MiniWoB++ task in {spec!r}; give 'all' or task names such as 'click-button,enter-text'"
        )
    return list(dict.fromkeys(task_name(name) for name in names))
