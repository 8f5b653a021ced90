"""GRPO rollouts on Ray actors (``rollout.engine: ray``, ``agent rl grpo --engine ray``), for the web and robot uses.

Each actor is one rollout worker: a copy of the policy (built from the model's config) and the task's twin
with its own environments (``replica_factory``: a browser with its own bundled sites, MuJoCo envs). Per step
the trainer plans the step's groups as the local path does, puts the policy's weights into Ray's object store
once per change (``ray.put`` of the state dict on CPU, tagged with a version number), sends each actor a
contiguous share of the groups, and gathers the outcomes in plan order with the task's own ``gather``. An
actor loads the weights only when the version it is sent differs from the one it holds, so an actor that
joins mid-step (a replacement) loads them and nothing else is sent twice. Every episode samples with its own
generator, seeded by (seed, step, group position, repeat): the samples, rewards and ids are those of the
local path, whichever actor plays which group (web prompts differ in the port of the actor's own sites, as
they do between any two runs).

An actor whose process dies during a rollout (killed, out of memory, a crash in native code) is replaced by a
fresh one and its share played again, up to ``rollout.max_tries`` plays of that share; then the step fails
with :class:`RolloutWorkerError`, and no update is made on a partial batch (resume continues from the last
checkpoint). An error raised by the task's own code in an actor stops the step as it would locally.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from data_tools.errors import UserFacingError
from data_tools.ray_cluster import RayEngineError, connect, worker_death_errors
from magma.model import MagmaForCausalLM
from magma.rl.config import RolloutEngineConfig
from magma.rl.rollout import GroupedRLTask, RolloutResult

CLOSE_TIMEOUT_S = 60.0  # for the actors to close their environments (browsers, sites) at the end


class RolloutWorkerError(RayEngineError):
    """A share of a step's groups lost its actor ``max_tries`` times; the step is not trained on."""


def policy_weights(model: MagmaForCausalLM) -> dict[str, torch.Tensor]:
    """The policy's state dict on CPU (what an actor loads into its copy)."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def weights_fingerprint(model: MagmaForCausalLM) -> tuple[int, int]:
    """Changes whenever the policy's weights do: the model's identity and the sum of its tensors' version
    counters (torch bumps a tensor's counter on every in-place change: optimizer steps, ``load_state_dict``)."""
    return id(model), sum(tensor._version for tensor in model.state_dict().values())


class RolloutActor:
    """One rollout worker (wrapped with ``ray.remote`` by :class:`RayRollouts`). ``start`` builds the task's
    twin and the policy copy, so an error there comes back as an ordinary error, not as a dead actor."""

    def __init__(self, task_factory: Any, model_config: Any, dtype: torch.dtype, use_gpu: bool) -> None:
        self.task_factory, self.model_config, self.dtype = task_factory, model_config, dtype
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.task: GroupedRLTask | None = None
        self.model: MagmaForCausalLM | None = None
        self.version: int | None = None

    def start(self) -> int:
        """Build the environments and the policy copy; returns the actor's process id."""
        self.task = self.task_factory()
        self.model = MagmaForCausalLM(self.model_config).to(self.device, self.dtype).eval().requires_grad_(False)
        return os.getpid()

    def play(self, version: int, weights: list[Any], step: int, groups: list[tuple[int, Any]]) -> list[Any]:
        """The outcomes of ``groups`` (``(position, group)`` pairs) under the policy of ``version``. The
        weights come as an object reference inside a list, so they are fetched only when the version changed."""
        assert self.task is not None and self.model is not None, "start() builds the actor first"
        if version != self.version:
            from data_tools.ray_cluster import import_ray

            self.model.load_state_dict(import_ray().get(weights[0]))
            self.version = version
        with torch.no_grad():
            return self.task.play_groups(self.model, step, groups)

    def close(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.close()


def split_groups(groups: list[tuple[int, Any]], parts: int) -> list[list[tuple[int, Any]]]:
    """``groups`` in at most ``parts`` contiguous shares of nearly equal size (none empty)."""
    parts = max(1, min(parts, len(groups)))
    size, extra = divmod(len(groups), parts)
    shares, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        shares.append(groups[start:end])
        start = end
    return shares


@dataclass
class PendingRollout:
    """A rollout in flight: the step, its shares, the call of each share, and how often each was played."""

    step: int
    shares: list[list[tuple[int, Any]]]
    calls: dict[Any, int] = field(default_factory=dict)  # object reference -> share index
    outcomes: dict[int, list[Any]] = field(default_factory=dict)
    tries: list[int] = field(default_factory=list)
    publish_s: float = 0.0
    replaced: int = 0


class RayRollouts:
    """The Ray engine of a GRPO run: ``rollout(model, step)`` as the task's own, played by ``workers`` actors.
    The actors start when the engine is built (they load while the trainer evaluates the initial policy)."""

    def __init__(self, task: GroupedRLTask, model: MagmaForCausalLM, settings: RolloutEngineConfig) -> None:
        if not hasattr(task, "plan_groups"):
            raise RayEngineError(
                f"rollout.engine=ray needs a task whose groups Ray actors can play (web, robot); "
                f"{type(task).__name__} has none: use rollout.engine=local"
            )
        self.ray = connect(settings.address)
        self.task, self.settings = task, settings
        self.death_errors = worker_death_errors(self.ray)
        self.remote_actor = self.ray.remote(num_cpus=settings.worker_cpus, num_gpus=settings.worker_gpus)(RolloutActor)
        self.factory_ref = self.ray.put(task.replica_factory())
        self.model_config, self.dtype = model.config, model.dtype
        self.version: int | None = None  # of the weights last published; actors reload when it changes
        self.published: tuple[int, int] | None = None
        self.weights_ref: Any = None
        self.actors: list[Any] = []
        self.starts: list[Any] = []  # each actor's start() call, awaited before its first play
        self.process_ids: list[int | None] = []
        for _ in range(settings.workers):
            self.actors.append(None)
            self.starts.append(None)
            self.process_ids.append(None)
            self.start_actor(len(self.actors) - 1)

    # ---- actors ---------------------------------------------------------------------------------------
    def start_actor(self, index: int) -> None:
        """A fresh actor in slot ``index`` (its start runs in the background)."""
        actor = self.remote_actor.remote(self.factory_ref, self.model_config, self.dtype, self.settings.worker_gpus > 0)
        self.actors[index], self.starts[index], self.process_ids[index] = actor, actor.start.remote(), None

    def ready(self, index: int) -> None:
        """Wait for the start of actor ``index``; its process id is then known (tests kill it by it)."""
        if self.process_ids[index] is None:
            self.process_ids[index] = self.ray.get(self.starts[index])

    def replace_actor(self, index: int) -> None:
        dead = self.actors[index]
        self.start_actor(index)
        with contextlib.suppress(Exception):  # already gone: nothing to release
            self.ray.kill(dead, no_restart=True)

    # ---- one rollout ----------------------------------------------------------------------------------
    def rollout(self, model: MagmaForCausalLM, step: int) -> RolloutResult:
        return self.collect(self.submit(model, step))

    def submit(self, model: MagmaForCausalLM, step: int) -> PendingRollout:
        """Publish the policy of ``step`` (once per step) and send every actor its share of the step's groups."""
        started = time.perf_counter()
        fingerprint = weights_fingerprint(model)
        if fingerprint != self.published:
            self.weights_ref = None  # the previous weights leave the object store
            self.weights_ref = self.ray.put(policy_weights(model))
            self.version, self.published = (self.version or 0) + 1, fingerprint
        groups = list(enumerate(self.task.plan_groups(step)))
        pending = PendingRollout(step=step, shares=split_groups(groups, len(self.actors)))
        pending.publish_s = time.perf_counter() - started
        pending.tries = [0] * len(pending.shares)
        for index in range(len(pending.shares)):
            self.send(pending, index)
        return pending

    def send(self, pending: PendingRollout, index: int) -> None:
        actor = self.actors[index]
        call = actor.play.remote(self.version, [self.weights_ref], pending.step, pending.shares[index])
        pending.calls[call] = index
        pending.tries[index] += 1

    def collect(self, pending: PendingRollout) -> RolloutResult:
        """Wait for every share; a share whose actor died is played again on a fresh actor, up to max_tries."""
        while pending.calls:
            [call], _ = self.ray.wait(list(pending.calls), num_returns=1)
            index = pending.calls.pop(call)
            try:
                self.ray.get(self.starts[index])  # a failed start is the task's own error, raised here
                pending.outcomes[index] = self.ray.get(call)
            except self.death_errors as error:
                self.retry_or_fail(pending, index, error)
            except self.ray.exceptions.RayTaskError as error:
                cause = getattr(error, "cause", None)
                if isinstance(cause, UserFacingError):
                    raise cause from None
                raise
        outcomes = [outcome for index in range(len(pending.shares)) for outcome in pending.outcomes[index]]
        result = self.task.gather(pending.step, outcomes)
        result.metrics |= {"ray/publish_s": pending.publish_s, "ray/actors_replaced": float(pending.replaced)}
        return result

    def retry_or_fail(self, pending: PendingRollout, index: int, error: BaseException) -> None:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if pending.tries[index] >= self.settings.max_tries:
            for call in pending.calls:  # the other shares' results are not used
                with contextlib.suppress(Exception):
                    self.ray.cancel(call)
            positions = [position for position, _ in pending.shares[index]]
            raise RolloutWorkerError(
                f"rollout of step {pending.step}: the actor playing groups {positions} died "
                f"{pending.tries[index]} times (rollout.max_tries={self.settings.max_tries}; last: {reason}); the "
                "step was not trained on a partial batch. Look at the actors' logs (out of memory? a crash in the "
                "simulator or browser?), give them more memory (rollout.worker_cpus/worker_gpus), raise "
                "--max-tries, then resume the run with --resume"
            ) from None
        self.replace_actor(index)
        pending.replaced += 1
        self.send(pending, index)

    def close(self) -> None:
        """Close every actor's environments, then release the actors."""
        closes = [actor.close.remote() for actor in self.actors]
        try:
            self.ray.wait(closes, num_returns=len(closes), timeout=CLOSE_TIMEOUT_S)
        finally:
            for actor in self.actors:
                with contextlib.suppress(Exception):  # already gone
                    self.ray.kill(actor, no_restart=True)
            self.actors, self.weights_ref = [], None
