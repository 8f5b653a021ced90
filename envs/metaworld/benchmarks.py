"""Meta-World v3's task names and benchmark sets, and the task specs ``agent run --tasks`` takes.

The sets are those of ``metaworld.env_dict`` (MT10, MT25, MT50; the train and test tasks of ML10, ML25,
ML45), written out here so that resolving a spec imports neither MuJoCo nor Meta-World; a test checks
them against the installed package. Task names are Meta-World's without the ``-v3`` suffix."""

from __future__ import annotations

import re

from data_tools.errors import UserFacingError

VERSION_SUFFIX = "-v3"

# In metaworld.env_dict.ALL_V3_ENVIRONMENTS order.
ALL_TASKS: tuple[str, ...] = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown", "button-press-topdown-wall",
    "button-press", "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn", "disassemble",
    "door-close", "door-lock", "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open",
    "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side", "handle-pull",
    "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "peg-insert-side", "peg-unplug-side", "soccer", "stick-push",
    "stick-pull", "push", "push-wall", "push-back", "reach", "reach-wall", "shelf-place", "sweep-into", "sweep",
    "window-open", "window-close",
)  # fmt: skip

MT10 = (
    "reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close", "button-press-topdown",
    "peg-insert-side", "window-open", "window-close",
)  # fmt: skip
MT25 = (
    *MT10, "coffee-pull", "pick-out-of-hole", "disassemble", "pick-place-wall", "basketball", "stick-pull",
    "button-press-wall", "faucet-open", "door-lock", "lever-pull", "sweep-into", "faucet-close", "coffee-button",
    "button-press-topdown-wall", "dial-turn",
)  # fmt: skip
ML10_TRAIN = (
    "reach", "push", "pick-place", "door-open", "drawer-close", "button-press-topdown", "peg-insert-side",
    "window-open", "sweep", "basketball",
)  # fmt: skip
ML10_TEST = ("drawer-open", "door-close", "shelf-place", "sweep-into", "lever-pull")
ML25_TEST = ("basketball", "door-close", "shelf-place", "sweep", "button-press")  # basketball is in train too
ML45_TRAIN = (
    "assembly", "basketball", "button-press-topdown", "button-press-topdown-wall", "button-press",
    "button-press-wall", "coffee-button", "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close",
    "door-open", "drawer-close", "drawer-open", "faucet-open", "faucet-close", "hammer", "handle-press-side",
    "handle-press", "handle-pull-side", "handle-pull", "lever-pull", "pick-place-wall", "pick-out-of-hole",
    "push-back", "pick-place", "plate-slide", "plate-slide-side", "plate-slide-back", "plate-slide-back-side",
    "peg-insert-side", "peg-unplug-side", "soccer", "stick-push", "stick-pull", "push-wall", "push", "reach-wall",
    "reach", "shelf-place", "sweep-into", "sweep", "window-open", "window-close",
)  # fmt: skip
ML45_TEST = ("bin-picking", "box-close", "hand-insert", "door-lock", "door-unlock")

BENCHMARKS: dict[str, tuple[str, ...]] = {
    "MT10": MT10,
    "MT25": MT25,
    "MT50": ALL_TASKS,
    "ML10-train": ML10_TRAIN,
    "ML10-test": ML10_TEST,
    "ML25-train": MT25,  # Meta-World's ML25 trains on the MT25 tasks
    "ML25-test": ML25_TEST,
    "ML45-train": ML45_TRAIN,  # the other 45, in Meta-World's order
    "ML45-test": ML45_TEST,
}
_OTHER_VERSION = re.compile(r"^(?P<task>.+)-v(?P<version>\d+)$")


class UnknownTaskError(UserFacingError, ValueError):
    """A task or benchmark name that Meta-World v3 does not have."""


def _valid_names() -> str:
    return f"benchmarks: {', '.join(BENCHMARKS)}; tasks: {', '.join(ALL_TASKS)}"


def canonical_task(name: str) -> str:
    """``name`` (``"reach"``, ``"reach-v3"``, any case) as the task name without the suffix."""
    task = name.strip().lower()
    if task.endswith(VERSION_SUFFIX):
        task = task[: -len(VERSION_SUFFIX)]
    if task in ALL_TASKS:
        return task
    other = _OTHER_VERSION.match(task)
    if other is not None and other["task"] in ALL_TASKS:
        raise UnknownTaskError(
            f"Meta-World task '{name}' is version v{other['version']}; this toolkit runs the v3 tasks of "
            f"metaworld 3.1 only: use '{other['task']}' or '{other['task']}{VERSION_SUFFIX}'"
        )
    raise UnknownTaskError(f"'{name}' is not a Meta-World v3 task or benchmark; the valid names are {_valid_names()}")


def metaworld_name(task: str) -> str:
    """The name Meta-World itself uses (``"reach-v3"``)."""
    return canonical_task(task) + VERSION_SUFFIX


def resolve_tasks(spec: str) -> list[str]:
    """The tasks of ``spec``: a benchmark (``"MT10"``, ``"MT50"``, ``"ML10-train"``, ``"ML45-test"``, ...; any
    case), a task (``"reach"`` or ``"reach-v3"``) or a comma-separated mix, in order, each task once. An
    optional ``"metaworld:"`` prefix is allowed. Anything unknown raises ``UnknownTaskError`` naming the valid ones."""
    text = spec.strip()
    if text.lower().startswith("metaworld:"):
        text = text[len("metaworld:") :]
    benchmarks = {name.lower(): name for name in BENCHMARKS}
    tasks: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        benchmark = benchmarks.get(item.lower())
        for task in BENCHMARKS[benchmark] if benchmark else (canonical_task(item),):
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise UnknownTaskError(f"the task spec '{spec}' names no task; give one or more of {_valid_names()}")
    return tasks
