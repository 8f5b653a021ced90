"""What the policy server serves: a :class:`ServedPolicy` (its spec, a fresh policy state per client,
and an optional batched ``act_batch``), loaded by name (``magma``, ``lapa``, ``scripted``) or from a
``module:callable`` that returns one.

Each websocket client gets its own session (``make_session()``: a Policy with ``reset`` / ``act``), so
episodes of several robots never mix. Requests of several clients are run together through
``act_batch(sessions, observations)`` when the policy has one (the Magma model: one left-padded
generate call); otherwise each session's ``act`` is called in turn (the per-item fallback).

A Magma checkpoint without robot action statistics (a UI/web fine-tune) is served for chat only: its
robot sessions refuse every request, naming the missing file and the fix. A robot-action checkpoint answers
what its action head gives: one action, or a chunk of ``action.chunk_length`` actions; its metadata says
which head, how many actions, and the sizes of the actions and of the state it reads
(:class:`MagmaPolicySpec`).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from data_tools.errors import UserFacingError
from magma.actions.robot import ACTION_STATISTICS_FILENAME
from magma.policies.protocol import Policy
from robot.policy_protocol import PolicySpec, ProtocolError

POLICY_NAMES = ("magma", "lapa", "scripted")


class PolicyLoadError(UserFacingError, ValueError):
    """An unknown policy name, a missing model, or a custom factory that does not give a ServedPolicy."""


@dataclass
class MagmaPolicySpec(PolicySpec):
    """A served Magma checkpoint's spec: the metadata also names its action head (``tokens``, ``l1``,
    ``flow``); ``chunk_length``, ``action_dim`` and ``state_dim`` are the checkpoint's."""

    action_head: str = "tokens"


@dataclass
class ServedPolicy:
    spec: PolicySpec
    make_session: Callable[[], Policy]
    act_batch: Callable[[list[Any], list[dict[str, Any]]], list[np.ndarray]] | None = None
    chat: Any = None  # a robot.openai_chat.ChatModel when the policy has a language model
    processor: Any = None  # the model's MagmaProcessor, whose token and image limits the server sets
    serves_actions: bool = True  # False: a chat-only checkpoint, whose sessions refuse robot requests

    def run_batch(self, sessions: list[Any], observations: list[dict[str, Any]]) -> list[np.ndarray | Exception]:
        """One (chunk, dim) float32 array per request, or the exception its policy raised. A batch call
        that fails is retried item by item, so one bad request does not fail the others."""
        if self.act_batch is not None and len(sessions) > 1:
            try:
                return [self._as_chunk(result) for result in self.act_batch(sessions, observations)]
            except Exception:
                pass
        results: list[np.ndarray | Exception] = []
        for session, observation in zip(sessions, observations, strict=True):
            try:
                results.append(self._as_chunk(session.act(observation)))
            except Exception as error:
                results.append(error)
        return results

    def _as_chunk(self, result: Any) -> np.ndarray:
        array = np.asarray(result, dtype=np.float32)
        if array.ndim not in (1, 2) or array.shape[-1] != self.spec.action_dim:
            raise ValueError(
                f"the policy returned actions of shape {array.shape}; its spec says action_dim={self.spec.action_dim}"
            )
        return array.reshape(-1, self.spec.action_dim)


class DelayedPolicy:
    """A policy that answers ``delay_s`` late: rehearses a slow model or a far server against the daemon
    (``bench/robot_tasks.py``, the latency tests)."""

    def __init__(self, policy: Policy, delay_s: float) -> None:
        self.policy, self.delay_s = policy, delay_s

    def reset(self, task: dict[str, Any]) -> None:
        self.policy.reset(task)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.policy.act(observation)


class _MagmaSession:
    """One client's episode state over a shared Magma model: its instruction."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.instruction = ""

    def reset(self, task: dict[str, Any]) -> None:
        from magma.policies.robot import instruction_text  # the Magma session: torch is loaded already

        self.instruction = instruction_text(task.get("instruction"))

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        return _magma_batch(self.policy, [self], [observation])[0]


def _magma_batch(policy: Any, sessions: list[_MagmaSession], observations: list[dict[str, Any]]) -> list[np.ndarray]:
    """One generate call over several clients' observations (``MagmaRobotPolicy.act_batch``)."""
    return policy.act_batch(observations, [session.instruction for session in sessions])


class ChatOnlySession:
    """A robot client's session on a checkpoint that serves chat only (no action statistics): every reset
    and observation is refused with the reason and the fix, and the server goes on serving."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint

    def reset(self, task: dict[str, Any]) -> None:
        self._refuse()

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        self._refuse()

    def _refuse(self) -> NoReturn:
        raise ProtocolError(
            "unsupported",
            f"checkpoint '{self.checkpoint}' has no {ACTION_STATISTICS_FILENAME} (robot action statistics), so "
            "this server answers chat only (POST /v1/chat/completions); to serve robot actions, serve a "
            f"checkpoint fine-tuned on robot actions, or put its dataset's {ACTION_STATISTICS_FILENAME} into "
            "that folder and restart agent serve",
        )


def load_magma(
    model: str | None,
    spec: PolicySpec,
    name: str = "magma",
    statistics_key: str | None = None,
    chunk_length: int | None = None,
    state_dim: int | None = None,
) -> ServedPolicy:
    """A Magma checkpoint: robot actions (``magma.policies.robot.MagmaRobotPolicy``) and its chat model, or
    chat alone when the checkpoint has no action statistics (a UI/web fine-tune); robot clients are then
    refused with the reason (:class:`ChatOnlySession`). ``chunk_length`` and ``state_dim`` (``--chunk-length``,
    ``--state-dim``; None: the checkpoint's) must be the checkpoint's when given."""
    from robot.openai_chat import ChatModel

    if not model:
        raise PolicyLoadError(f"--policy {name} needs --model DIR (a Magma checkpoint directory)")
    if not Path(model).is_dir():
        raise PolicyLoadError(f"--model '{model}' is not a checkpoint directory; give the folder with config.json")
    device = "cuda" if _cuda_available() else "cpu"
    spec.policy, spec.model_id = name, spec.model_id or Path(model).resolve().name
    if not (Path(model) / ACTION_STATISTICS_FILENAME).is_file():
        if statistics_key is not None:
            raise PolicyLoadError(
                f"--statistics-key {statistics_key}: checkpoint '{model}' has no {ACTION_STATISTICS_FILENAME}; "
                "leave --statistics-key out to serve it for chat only, or serve a robot-action checkpoint"
            )
        chat_model, processor = _load_chat_model(model, device)
        spec.action_statistics = None
        spec.chunk_length = 1
        if state_dim is not None:
            spec.state_dim = state_dim
        return ServedPolicy(
            spec=spec,
            make_session=lambda: ChatOnlySession(model),
            chat=ChatModel(chat_model, processor, spec.model_id),
            processor=processor,
            serves_actions=False,
        )
    from magma.checkpoint import load_checkpoint_config
    from magma.policies.robot import MagmaRobotPolicy

    action = load_checkpoint_config(model).action  # checked before the weights load
    _check_matches_checkpoint("--chunk-length", chunk_length, action.chunk_length, "action.chunk_length", model)
    if action.state_dim:
        _check_matches_checkpoint("--state-dim", state_dim, action.state_dim, "action.state_dim", model)
    policy = MagmaRobotPolicy.from_pretrained(model, statistics_key=statistics_key, device=device)
    common = {entry.name: getattr(spec, entry.name) for entry in dataclasses.fields(PolicySpec)}
    served_spec = MagmaPolicySpec(**common, action_head=action.head)
    served_spec.chunk_length = action.chunk_length
    # a model without state input reads none; --state-dim still makes clients send one of that size
    served_spec.state_dim = action.state_dim or (state_dim if state_dim is not None else spec.state_dim)
    served_spec.action_dim = policy.codec.action_dim
    served_spec.action_statistics = policy.codec.stats.to_dict()
    return ServedPolicy(
        spec=served_spec,
        make_session=lambda: _MagmaSession(policy),
        act_batch=lambda sessions, observations: _magma_batch(policy, sessions, observations),
        chat=ChatModel(policy.model, policy.processor, served_spec.model_id),
        processor=policy.processor,
    )


def _check_matches_checkpoint(option: str, asked: int | None, saved: int, field: str, model: str) -> None:
    if asked is not None and asked != saved:
        raise PolicyLoadError(
            f"{option} {asked}: checkpoint '{model}' was trained with {field}={saved}, and serves exactly that; "
            f"pass {option} {saved} or leave {option} out"
        )


def _load_chat_model(directory: str, device: str) -> tuple[Any, Any]:
    """The model and processor of a checkpoint, as ``MagmaRobotPolicy.from_pretrained`` loads them."""
    from magma.model import MagmaForCausalLM, default_dtype
    from magma.processor import MagmaProcessor

    model = MagmaForCausalLM.from_pretrained(directory, device=device, dtype=default_dtype(device)).eval()
    return model, MagmaProcessor.from_pretrained(directory)


def load_scripted(model: str | None, spec: PolicySpec) -> ServedPolicy:
    """The MuJoCo tabletop scripted expert, fed simulator truth through the observation (robot.privileged_state);
    ``spec.chunk_length`` > 1 serves it as a chunking policy, planned ahead for ``spec.control_hz``."""
    from robot.privileged_state import ObservedScriptedExpert

    spec.policy, spec.model_id = "scripted", spec.model_id or "tabletop-scripted-expert"
    spec.action_dim, spec.action_space = 7, "delta_ee"
    spec.chunk_length = max(1, int(spec.chunk_length))
    spec.cameras = {}  # the expert reads no image
    chunk_length, control_hz = spec.chunk_length, spec.control_hz
    return ServedPolicy(spec=spec, make_session=lambda: ObservedScriptedExpert(chunk_length, control_hz))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_served_policy(
    name: str,
    model: str | None,
    spec: PolicySpec,
    statistics_key: str | None = None,
    chunk_length: int | None = None,
    state_dim: int | None = None,
) -> ServedPolicy:
    """``magma`` | ``lapa`` | ``scripted`` | ``package.module:factory`` (``factory(model, spec) -> ServedPolicy``).

    ``lapa`` serves a latent-VLA checkpoint fine-tuned to robot actions by the lapa pipeline: that
    checkpoint is a robot-action Magma checkpoint (same format, same codec), so it loads as ``magma``.
    ``chunk_length`` and ``state_dim`` are what the command line asked for (None: not asked): a checkpoint
    serves its own and refuses others; any other policy gets them in ``spec`` (``spec``'s own when None).
    The spec to serve is the returned policy's ``spec``.
    """
    if name in ("magma", "lapa"):
        return load_magma(model, spec, name, statistics_key, chunk_length, state_dim)
    if chunk_length is not None:
        spec.chunk_length = chunk_length
    if state_dim is not None:
        spec.state_dim = state_dim
    if name == "scripted":
        return load_scripted(model, spec)
    if ":" not in name:
        raise PolicyLoadError(
            f"unknown policy '{name}'; use one of {list(POLICY_NAMES)} or a factory as package.module:function"
        )
    module_name, _, attribute = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise PolicyLoadError(f"cannot load policy factory '{name}' ({error}); check the module path") from None
    served = factory(model, spec)
    if not isinstance(served, ServedPolicy):
        raise PolicyLoadError(f"policy factory '{name}' returned {type(served).__name__}, not a ServedPolicy")
    return served
