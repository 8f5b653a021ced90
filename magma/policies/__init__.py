"""Policies: one small protocol (``reset(task)``, ``act(observation) -> action``) implemented by the
Magma model, by scripted experts (``envs.mujoco.experts``) and, later, by chat endpoints. ``agent run``,
GRPO rollouts and the robot daemon drive policies only through it."""

from magma.policies.protocol import Policy

__all__ = ["Policy"]
