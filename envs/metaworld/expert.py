"""Meta-World's scripted expert of each task (``metaworld.policies``) as a policy of this toolkit's
protocol (``reset(task)``, ``act(observation)``). The experts read the goal from the state's last three
values, so they need the goal-observable state that ``MetaWorldEnv`` returns."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from metaworld.policies import ENV_POLICY_MAP

from data_tools.errors import UserFacingError
from envs.metaworld.benchmarks import canonical_task, metaworld_name

# The experts warn on every large correction; the env clips actions anyway, so the warning is noise.
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", module="metaworld.policies")


class ExpertTaskError(UserFacingError, ValueError):
    """The expert was asked to act without knowing its task."""


class MetaWorldExpert:
    """The scripted expert of the episode's task. ``reset({"task": "reach", ...})`` picks it (``task`` given
    here is the fallback when the dict has none); ``act`` reads ``observation[state_key]`` (39-D) and
    returns Meta-World's 4-D action as float32. ``state_key="observation.state"`` reads robot observations."""

    def __init__(self, task: str | None = None, state_key: str = "state") -> None:
        self.default_task = canonical_task(task) if task else None
        self.state_key = state_key
        self.task: str | None = None
        self._policy: Any = None

    def reset(self, task: dict[str, Any]) -> None:
        name = task.get("task") or self.default_task
        if not name:
            raise ExpertTaskError(
                "MetaWorldExpert.reset needs the task's name: pass {'task': 'reach', ...} or MetaWorldExpert(task=...)"
            )
        self.task = canonical_task(name)
        self._policy = ENV_POLICY_MAP[metaworld_name(self.task)]()

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        if self._policy is None:
            raise ExpertTaskError("MetaWorldExpert.act was called before reset(task); reset it with the episode's task")
        state = np.asarray(observation[self.state_key])
        return np.asarray(self._policy.get_action(state), dtype=np.float32)
