"""VisualWebArena-compatible web environment over Playwright and the system Chromium.

``gymnasium.make("VisualWebArena-v0", **kwargs)`` builds ``envs.web.env.WebEnv``; tasks come from
``envs.web.tasks.load_tasks`` and go in through ``reset(options={"task": task})``. Importing this package
does not import Playwright.

The id is registered ``nondeterministic=True``: pages come from a real browser on live sites and ``info`` holds
wall-clock timings, so the seed cannot make two episodes equal (gymnasium's checker then skips its equality
checks and keeps the rest).
"""

from __future__ import annotations

import gymnasium

ENV_ID = "VisualWebArena-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.web.env:WebEnv", nondeterministic=True)
