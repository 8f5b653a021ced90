"""The Magma model as a robot policy: the camera image, the instruction and (when the model takes it) the
proprioceptive state in; an action, or a chunk of ``action.chunk_length`` actions, out. The token head
decodes 256-bin action tokens one by one; the l1 and flow heads give the whole chunk from one forward
pass. Actions are unnormalised with the statistics saved next to the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_tools.errors import UserFacingError
from data_tools.sample_format import IMAGE_PLACEHOLDER
from magma.action_heads import ActionHeadError
from magma.actions import ActionParseError, ActionStatistics, RobotActionCodec, select_statistics
from magma.checkpoint import load_checkpoint_action_statistics, load_checkpoint_state_statistics
from magma.model import MagmaForCausalLM, default_dtype
from magma.processor import ActionLayout, MagmaProcessor, prompt_content
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
    """The model's action head as a policy: ``act`` gives one action (``action.chunk_length`` 1) or an
    (H, D) chunk. The token head decodes greedily, ``action_dim`` tokens per action; ``constrained`` (the
    default) lets it choose among the codec's action-bin tokens only, so every output is an action; with
    ``constrained=False`` it decodes over the whole vocabulary, as OpenVLA does, and an output that is
    not a valid action token block counts in ``invalid_outputs`` and sends ``fallback_action``. The l1
    and flow heads give the chunk from one forward pass (``generator`` seeds the flow head's noise).
    A model that takes the proprioceptive state reads it from ``observation["state"]``, normalised with
    ``state_statistics``."""

    def __init__(
        self,
        model: MagmaForCausalLM,
        processor: MagmaProcessor,
        codec: RobotActionCodec,
        prompt: str = DEFAULT_PROMPT,
        image_key: str = "image",
        fallback_action: np.ndarray | None = None,
        constrained: bool = True,
        state_statistics: ActionStatistics | None = None,
        generator: torch.Generator | None = None,
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
        self.action = model.config.action
        self.layout = ActionLayout.of(self.action)
        self.generator = generator
        if self.action.parallel and self.action.action_dim != codec.action_dim:
            raise ActionHeadError(
                f"the model's action.action_dim={self.action.action_dim} but the action statistics have "
                f"{codec.action_dim} dimensions; use the statistics the model was trained with"
            )
        self.state_normalizer = None
        if self.action.state_dim:
            if state_statistics is None or state_statistics.action_dim != self.action.state_dim:
                found = "none" if state_statistics is None else f"{state_statistics.action_dim}-D ones"
                raise ActionHeadError(
                    f"the model takes a {self.action.state_dim}-D state (action.state_dim) but the state statistics "
                    f"given are {found}; use the dataset_statistics.json the model was trained with (its 'state' entry)"
                )
            self.state_normalizer = RobotActionCodec(state_statistics, model.config.tokens.base_vocab_size)

    @property
    def chunk_length(self) -> int:
        return self.action.chunk_length

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        statistics_key: str | None = None,
        device: str = "cpu",
        action_head: str | None = None,
        **kwargs: Any,
    ) -> MagmaRobotPolicy:
        """A checkpoint directory with its ``dataset_statistics.json`` (which dataset: ``statistics_key``);
        ``action_head`` (None: the checkpoint's) must be the head the checkpoint was trained with."""
        model = MagmaForCausalLM.from_pretrained(directory, device=device, dtype=default_dtype(device))
        if action_head is not None and action_head != model.config.action.head:
            raise ActionHeadError(
                f"the {action_head} action head was asked for, but '{directory}' has action.head="
                f"{model.config.action.head}; fine-tune it with `agent train ... model={directory} "
                f"action_head={action_head}` first, or leave the head to the checkpoint"
            )
        processor = MagmaProcessor.from_pretrained(directory)
        stats = select_statistics(load_checkpoint_action_statistics(directory), statistics_key)
        codec = RobotActionCodec(stats, model.config.tokens.base_vocab_size)
        state_stats = None
        if model.config.action.state_dim:
            saved = load_checkpoint_state_statistics(directory)
            state_stats = select_statistics(saved, statistics_key) if saved else None
        return cls(model, processor, codec, state_statistics=state_stats, **kwargs)

    def reset(self, task: dict[str, Any]) -> None:
        self.instruction = instruction_text(task.get("instruction"))

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        """One action (D,), or a chunk (H, D) when the model's ``action.chunk_length`` is above 1."""
        return self.act_batch([observation], [self.instruction])[0]

    def normalised_states(self, observations: list[dict[str, Any]]) -> list[list[float]] | None:
        if self.state_normalizer is None:
            return None
        states = []
        for observation in observations:
            if observation.get("state") is None:
                raise ActionHeadError(
                    f"the model takes the robot's state (action.state_dim={self.action.state_dim}) but the observation "
                    "has no 'state'; send it with every observation"
                )
            state = np.asarray(observation["state"], dtype=np.float64).reshape(-1)
            if state.size != self.action.state_dim or not np.all(np.isfinite(state)):
                raise ActionHeadError(
                    f"the observation's 'state' has {state.size} values, the model takes {self.action.state_dim} "
                    "finite numbers (action.state_dim); send the state the model was trained on"
                )
            states.append(self.state_normalizer.normalize(state).tolist())
        return states

    @torch.inference_mode()
    def act_batch(self, observations: list[dict[str, Any]], instructions: list[str]) -> list[np.ndarray]:
        """One generate call over several observations (left-padded prompts); an observation's own
        ``instruction`` wins over the one given for it. Instructions are plain text in the prompt: a
        special-token string in one (``<image>``) stays text."""
        prompts = [
            prompt_content(self.prompt, instruction=instruction_text(observation.get("instruction") or instruction))
            for observation, instruction in zip(observations, instructions, strict=True)
        ]
        with_image = IMAGE_PLACEHOLDER in self.prompt  # a prompt without <image> reads the state and text alone
        images = [[np.asarray(observation[self.image_key])] if with_image else [] for observation in observations]
        states = self.normalised_states(observations)
        inputs = self.processor(prompts, images, action_layout=self.layout, states=states).to(self.model.device)
        steps = self.chunk_length
        if self.action.parallel:
            chunks = self.model.action_chunk(**inputs.as_kwargs(), generator=self.generator).cpu().numpy()
            actions = [self.codec.unnormalize(np.clip(chunk, -1.0, 1.0)) for chunk in chunks]
            return [action if steps > 1 else action[0] for action in actions]
        tokens = self.model.generate(
            **inputs.generation_kwargs(),
            max_new_tokens=self.codec.action_dim * steps,
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
                fallback = self.fallback_action.copy()
                actions.append(np.repeat(fallback[None], steps, axis=0) if steps > 1 else fallback)
        return actions
