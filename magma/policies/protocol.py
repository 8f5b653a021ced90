"""The policy protocol every actor implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Policy(Protocol):
    """``reset`` at the start of an episode with its task (instruction and anything else the
    environment tells), then ``act`` once per step with the environment's observation."""

    def reset(self, task: dict[str, Any]) -> None: ...

    def act(self, observation: dict[str, Any]) -> Any: ...
