"""The UI environments as the search drives them (``magma.search.rmcts.SearchEnvironment``): a restart to
the task's start state for backtracking, the env's step, and the task's grader asked mid-episode (the
privileged ``--value grader``).

- Web (VisualWebArena tasks): a restart resets the bundled sites' data (well under a second) and the logins,
  then opens the task's start page in a fresh browser context. Official sites cannot be reset by us, so a
  backtrack there replays on a site that kept the earlier branch's changes: the replay check then tells.
- MiniWoB++: a restart starts the same seed's episode again on the task page; the grade before the page
  ends its episode is 0 (the page gives its reward only at the end).
- Android: a restart runs the task's setup again (force stop, clear data, launch); the grade is the task's
  checks on the device's current state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TaskEnvironment:
    """An env whose ``reset(options={"task": task})`` starts the task again; ``before_restart`` (optional)
    restores what the reset does not (the bundled sites' data)."""

    def __init__(self, env: Any, task: Any, max_steps: int, before_restart: Callable[[], None] | None = None):
        self.env, self.task, self.max_steps, self.before_restart = env, task, max_steps, before_restart

    def restart(self) -> dict[str, Any]:
        if self.before_restart is not None:
            self.before_restart()
        observation, _ = self.env.reset(options={"task": self.task})
        return observation

    def step(self, reply: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        return self.env.step(reply)


class WebSearchEnvironment(TaskEnvironment):
    """A ``WebEnv`` on one task; ``reset_sites`` (bundled tasks) restores the sites' data before each start."""

    def __init__(self, env: Any, task: Any, reset_sites: Callable[[], None] | None = None) -> None:
        super().__init__(env, task, env.max_steps, reset_sites)

    def grade(self, answer: str) -> float | None:
        from envs.web.grading import grade_task

        env = self.env.unwrapped
        if env.session is None or env._done:
            return None
        url = env.session.active.url if env.session.active is not None else ""
        verdict = grade_task(env.task, env._context, answer, url, env.grading)
        if verdict.status in ("needs_judge", "unsupported"):
            return None
        return float(verdict.score)


class MiniWoBSearchEnvironment(TaskEnvironment):
    """A ``MiniWoBEnv`` on one task and seed."""

    def __init__(self, env: Any, task: str, seed: int) -> None:
        super().__init__(env, task, env.max_steps)
        self.seed = seed

    def restart(self) -> dict[str, Any]:
        observation, _ = self.env.reset(seed=self.seed, options={"task": self.task})
        return observation

    def grade(self, answer: str) -> float | None:
        return 0.0  # the page has not ended its episode: no reward yet


class AndroidSearchEnvironment(TaskEnvironment):
    """An ``AndroidEnv`` on one task (its setup makes the start state again)."""

    def __init__(self, env: Any, task: Any) -> None:
        super().__init__(env, task, task.max_steps or env.config.max_steps)  # what AndroidEnv.reset sets

    def grade(self, answer: str) -> float | None:
        from envs.android.tasks import evaluate_checks

        env = self.env.unwrapped
        passed, _ = evaluate_checks(self.task, env.nodes, env.foreground, answer)
        return 1.0 if passed else 0.0
