"""Verifiable rewards for text: a reward function scores one completion, ``(prompt, completion, meta)
-> float``, from the decoded text alone (and the prompt's ``meta``, e.g. the expected answer).

A reward is named in the config by a key of :data:`REWARDS` or as ``package.module:function``. Each
built-in reward comes with its own prompt set (:data:`PROMPT_SETS`), used when the config lists none.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from data_tools.errors import UserFacingError

RewardFunction = Callable[[str, str, dict[str, Any]], float]


class RewardError(UserFacingError, ValueError):
    """A reward name that does not resolve to a function."""


@dataclass
class TextPrompt:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


def digit_fraction(prompt: str, completion: str, meta: dict[str, Any]) -> float:
    """The share of the completion's non-space characters that are digits (0 for an empty one): a
    dense format reward a small model can learn from scratch."""
    characters = [c for c in completion if not c.isspace()]
    return sum(c.isdigit() for c in characters) / len(characters) if characters else 0.0


def exact_answer(prompt: str, completion: str, meta: dict[str, Any]) -> float:
    """1.0 when the first integer in the completion equals ``meta["answer"]``, else 0.0."""
    found = re.search(r"-?\d+", completion)
    return float(found is not None and int(found.group()) == int(meta["answer"]))


def digit_prompts(count: int = 64, seed: int = 0) -> list[TextPrompt]:
    rng = random.Random(seed)
    words = ["Write a number", "Give me digits", "Count", "Numbers please", "Say a number", "Digits"]
    return [TextPrompt(f"{rng.choice(words)} {rng.randint(0, 99)}:") for _ in range(count)]


def addition_prompts(count: int = 64, seed: int = 0) -> list[TextPrompt]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        prompts.append(TextPrompt(f"What is {a} + {b}?", {"answer": a + b}))
    return prompts


REWARDS: dict[str, RewardFunction] = {"digit_fraction": digit_fraction, "exact_answer": exact_answer}
PROMPT_SETS: dict[str, Callable[[], list[TextPrompt]]] = {
    "digit_fraction": digit_prompts,
    "exact_answer": addition_prompts,
}


def resolve_reward(name: str) -> RewardFunction:
    """A built-in reward by name, or ``package.module:function``."""
    if name in REWARDS:
        return REWARDS[name]
    module_name, colon, attribute = name.partition(":")
    if not colon:
        raise RewardError(
            f"unknown reward '{name}'; use one of {sorted(REWARDS)} or 'package.module:function' for your own"
        )
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise RewardError(f"reward '{name}' cannot be imported ({err}); check the module path and name") from None
    if not callable(function):
        raise RewardError(f"reward '{name}' is not a function")
    return function


def default_prompts(reward: str) -> list[TextPrompt]:
    """The prompt set that goes with a built-in reward."""
    if reward not in PROMPT_SETS:
        raise RewardError(f"reward '{reward}' has no built-in prompts; list them in text.prompts")
    return PROMPT_SETS[reward]()
