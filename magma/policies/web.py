"""Web agents: the prompt every web policy sees (VisualWebArena's observation, our wording) and the Magma
model as a web policy. The reply ends with the action in a ``` block, as VWA's Set-of-Mark prompts ask."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WEB_SYSTEM_PROMPT = """You operate a web browser to complete a task. Each turn you see a screenshot in which \
the interactive elements carry numbered marks, the same elements listed as [id] [TAG] [text], the page URL, \
the open tabs and the actions you took so far. Answer with exactly one action:
click [id] | type [id] [text] [1 to press Enter after typing, 0 not to] | hover [id] | press [key_comb] | \
scroll [up] | scroll [down] | new_tab | tab_focus [tab_index] | close_tab | goto [url] | go_back | go_forward | \
stop [answer]
Use stop when the task is done; put the answer in the brackets if the task asks a question (N/A when it \
cannot be done) and leave them empty otherwise. Reason briefly, then end with: \
In summary, the next action I will perform is ```action```"""

MAX_LISTING_CHARS = 6000


@dataclass
class WebPrompt:
    """One turn's prompt: the system text, the user text (no image placeholders) and its images in order:
    the Set-of-Mark screenshot first, then the task's input images."""

    system: str
    user: str
    images: list[np.ndarray] = field(default_factory=list)

    def magma_content(self) -> list[dict[str, Any]]:
        """The Magma processor's prompt: the system text, then one image part per image, then the user text.
        Page text, objective and history are text parts, so a ``<image>`` or other special-token string on
        a page stays text and cannot add image slots or turns."""
        parts: list[dict[str, Any]] = [{"type": "text", "text": f"{self.system}\n\n"}]
        for _ in self.images:
            parts += [{"type": "image"}, {"type": "text", "text": "\n"}]
        return [*parts, {"type": "text", "text": self.user}]


def web_prompt(
    observation: dict[str, Any], task: dict[str, Any], history: Sequence[str], system: str = WEB_SYSTEM_PROMPT
) -> WebPrompt:
    """The prompt for one step: objective, URL, tabs, element listing, previous actions, images."""
    listing = str(observation.get("som") or observation.get("text") or "")
    if len(listing) > MAX_LISTING_CHARS:
        listing = listing[:MAX_LISTING_CHARS] + "\n... (listing cut)"
    tabs = observation.get("tabs") or []
    tab_lines = "\n".join(f"Tab {index}: {url}" for index, url in enumerate(tabs)) or "Tab 0: " + str(
        observation.get("url", "")
    )
    task_images = list(task.get("images") or [])
    objective = str(task.get("instruction") or observation.get("instruction") or "")
    if task_images:
        objective += f"\n(The task refers to {len(task_images)} input image(s), shown after the screenshot.)"
    previous = "\n".join(f"{index + 1}. {action}" for index, action in enumerate(history)) or "None"
    user = (
        f"OBJECTIVE: {objective}\nURL: {observation.get('url', '')}\nOPEN TABS:\n{tab_lines}\n"
        f"ELEMENTS:\n{listing}\n{lessons_text(task)}PREVIOUS ACTIONS:\n{previous}"
    )
    images = [np.asarray(observation["image"])] if observation.get("image") is not None else []
    return WebPrompt(system, user, images + [np.asarray(image) for image in task_images])


def lessons_text(task: dict[str, Any]) -> str:
    """The reflections a searched run retrieved for this task (``magma.search.reflections``), as prompt lines;
    empty without any."""
    lessons = [str(lesson) for lesson in task.get("reflections") or []]
    if not lessons:
        return ""
    return "LESSONS FROM EARLIER TASKS:\n" + "\n".join(f"- {lesson}" for lesson in lessons) + "\n"


def build_web_prompt(
    observation: dict[str, Any], task: dict[str, Any], history: Sequence[str]
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """The Magma form of :func:`web_prompt`: the user turn's content (``WebPrompt.magma_content``) and the
    images. GRPO rollouts and :class:`MagmaWebPolicy` use this one function, so training sees what acting sees."""
    prompt = web_prompt(observation, task, history)
    return prompt.magma_content(), prompt.images


class WebHistory:
    """What a web policy remembers within an episode: the task and the actions it chose (as VWA text)."""

    def __init__(self) -> None:
        self.task: dict[str, Any] = {}
        self.actions: list[str] = []

    def reset(self, task: dict[str, Any]) -> None:
        self.task = dict(task)
        self.actions = []

    def record(self, reply: str) -> None:
        from magma.actions.ui import extract_vwa_action

        self.actions.append(extract_vwa_action(reply) or "(no action)")


class MagmaWebPolicy:
    """The Magma model answering the web prompt (or another env's ``prompt``, same signature as
    ``web_prompt``) with greedy decoding; ``act`` returns the whole reply (the environment reads the action
    from its last ``` block)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_new_tokens: int = 256,
        generation_lock: threading.Lock | None = None,
        prompt: Callable[..., WebPrompt] | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.generation_lock = generation_lock or contextlib.nullcontext()  # one model shared by worker threads
        self.history = WebHistory()
        self.prompt = prompt

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", **kwargs: Any) -> MagmaWebPolicy:
        from magma.model import MagmaForCausalLM, default_dtype
        from magma.processor import MagmaProcessor

        model = MagmaForCausalLM.from_pretrained(directory, device=device, dtype=default_dtype(device))
        return cls(model, MagmaProcessor.from_pretrained(directory), **kwargs)

    def reset(self, task: dict[str, Any]) -> None:
        self.history.reset(task)

    def act(self, observation: dict[str, Any]) -> str:
        import torch

        if self.prompt is None:
            content, images = build_web_prompt(observation, self.history.task, self.history.actions)
        else:
            turn = self.prompt(observation, self.history.task, self.history.actions)
            content, images = turn.magma_content(), turn.images
        with self.generation_lock, torch.inference_mode():
            inputs = self.processor(content, images).to(self.model.device)
            tokens = self.model.generate(
                **inputs.generation_kwargs(), max_new_tokens=self.max_new_tokens, do_sample=False
            )[0, inputs.input_ids.shape[1] :]
        reply = self.processor.decode(tokens)
        self.history.record(reply)
        return reply
