"""The GRPO core: one group-relative policy optimisation for text with verifiable rewards, web agents
and robot policies.

- ``algorithms``: the math as pure tensor functions (advantages, clipped losses, KL, aggregation);
- ``rollout`` / ``generation``: samples with sampling log-probs, groups, step-level episodes, batches;
- ``trainer``: the loop (``agent rl grpo --config configs/rl/NAME.yaml``), ``config``: its settings;
- ``text_task`` / ``rewards``, ``robot_task``, ``web_task``: the three uses;
- ``ray_rollouts``: the web and robot rollouts on Ray actors (``rollout.engine: ray``), same samples.
"""
