"""How the search scores a state: a ``ValueFunction`` maps what the agent sees (screenshot, Set-of-Mark
listing, instruction, the path's actions; at a terminal state the answer) to a progress value in [0, 1].

- ``GraderValue``: the task's own grader, asked as if the agent stopped here (at a terminal state, the
  environment's own grade). Privileged (it reads the site's database and the task's reference answer): an
  oracle value for studying the search, labelled so everywhere (``privileged``).
- ``magma.search.chat_value.ChatValue``: a vision-language model behind an OpenAI-compatible endpoint (any
  chat model, or a Magma model under ``agent serve``), as a single judge or through ExACT's debate.

A value function that cannot give a value (unreachable, timed out, unparsable) raises ``ValueUnavailableError``;
the search counts it and falls back to the policy's own preference for that state (its prior).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class ValueUnavailableError(RuntimeError):
    """No value for this state (the reason is the message); the search falls back to the policy's prior."""


@dataclass
class ValueContext:
    """What a value function may look at for one state."""

    instruction: str
    observation: dict[str, Any]
    actions: list[str]  # the path's actions from the task's start, VWA text
    terminal: bool = False
    answer: str = ""  # the stop action's answer at a terminal state
    reward: float | None = None  # the environment's grade at a terminal state (privileged)
    environment: Any = field(default=None, repr=False)  # the SearchEnvironment, at this state (privileged)


@dataclass(frozen=True)
class ValueEstimate:
    value: float  # in [0, 1]
    note: str = ""  # the rationale, shown in the report and kept in the traces
    calls: int = 1  # model calls this estimate took


class ValueFunction(Protocol):
    name: str
    privileged: bool

    def evaluate(self, context: ValueContext) -> ValueEstimate: ...


class GraderValue:
    """The task's own grader as the value (privileged: an oracle value for studying the search)."""

    name = "grader"
    privileged = True

    def evaluate(self, context: ValueContext) -> ValueEstimate:
        if context.terminal:
            value = float(context.reward or 0.0)
            return ValueEstimate(min(max(value, 0.0), 1.0), f"the task's grader at the end: {value:g}", calls=0)
        grade = context.environment.grade(context.answer)
        if grade is None:
            raise ValueUnavailableError("the task's grader cannot score this state before the episode ends")
        return ValueEstimate(min(max(float(grade), 0.0), 1.0), f"the task's grader if stopped here: {grade:g}", 0)
