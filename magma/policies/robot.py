"""The Magma model as a robot policy: the camera image and the instruction in, 256-bin action
tokens out, decoded with the action statistics saved next to the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_tools.errors import UserFacingError
from magma.actions import ActionParseError, RobotActionCodec, select_statistics
from magma.checkpoint import load_checkpoint_action_statistics
from magma.model import MagmaForCausalLM, default_dtype
from magma.processor import MagmaProcessor, prompt_content
from magma.sampling import AllowedTokensLogitsProcessor, allowed_tokens

DEFAULT_PROMPT = "<image>\nWhat action should the robot take to {instruction}?"


class InstructionError(UserFacingError, ValueError):
    """An instruction that is not text."""


def instruction_text(value: Any) -> str:
    """An instruction as prompt text: a string, or None for none; anything else is refused, never ``str()``-ed
    (a list of two million numbers would become a prompt of millions of characters)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InstructionError(f"the instruction is a {type(value).__name__}; send it as a string")
    return value


class MagmaRobotPolicy:
    """Greedy decoding of one action (``action_dim`` tokens) per step.

    ``constrained`` (the default) lets the decoder choose among the codec's action-bin tokens only, so
    every output is an action; with ``constrained=False`` it decodes over the whole vocabulary, as
    OpenVLA does, and a step whose output is not a valid action token block counts in
    ``invalid_outputs`` and sends ``fallback_action``."""

    def __init__(
        self,
        model: MagmaForCausalLM,
        processor: MagmaProcessor,
        codec: RobotActionCodec,
        prompt: str = DEFAULT_PROMPT,
        image_key: str = "image",
        fallback_action: np.ndarray | None = None,
        constrained: bool = True,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.codec = codec
        self.prompt = prompt
        self.image_key = image_key
        self.fallback_action = np.zeros(codec.action_dim) if fallback_action is None else fallback_action
        self.instruction = ""
        self.invalid_outputs = 0
        self.allowed = allowed_tokens(model.config, codec.token_range) if constrained else None

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, statistics_key: str | None = None, device: str = "cpu", **kwargs: Any
    ) -> MagmaRobotPolicy:
        """A checkpoint directory with its ``dataset_statistics.json`` (which dataset: ``statistics_key``)."""
        model = MagmaForCausalLM.from_pretrained(directory, device=device, dtype=default_dtype(device))
        processor = MagmaProcessor.from_pretrained(directory)
        stats = select_statistics(load_checkpoint_action_statistics(directory), statistics_key)
        codec = RobotActionCodec(stats, model.config.tokens.base_vocab_size)
        return cls(model, processor, codec, **kwargs)

    def reset(self, task: dict[str, Any]) -> None:
        self.instruction = instruction_text(task.get("instruction"))

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        return self.act_batch([observation], [self.instruction])[0]

    @torch.inference_mode()
    def act_batch(self, observations: list[dict[str, Any]], instructions: list[str]) -> list[np.ndarray]:
        """One generate call over several observations (left-padded prompts); an observation's own
        ``instruction`` wins over the one given for it. Instructions are plain text in the prompt: a
        special-token string in one (``<image>``) stays text."""
        prompts = [
            prompt_content(self.prompt, instruction=instruction_text(observation.get("instruction") or instruction))
            for observation, instruction in zip(observations, instructions, strict=True)
        ]
        images = [[np.asarray(observation[self.image_key])] for observation in observations]
        inputs = self.processor(prompts, images).to(self.model.device)
        tokens = self.model.generate(
            **inputs.generation_kwargs(),
            max_new_tokens=self.codec.action_dim,
            eos_token_id=[],  # an action is exactly action_dim tokens
            do_sample=False,
            logits_processor=[] if self.allowed is None else [AllowedTokensLogitsProcessor(self.allowed)],
        )[:, inputs.input_ids.shape[1] :]
        actions = []
        for row in tokens:
            try:
                actions.append(self.codec.decode(row.tolist()))
            except ActionParseError:
                self.invalid_outputs += 1
                actions.append(self.fallback_action.copy())
        return actions
