"""MiniWoB++ (the Farama ``miniwob`` package's HTML tasks) through the toolkit's Playwright web environment.

``gymnasium.make("MiniWoB-v1", task="click-button")`` builds ``envs.miniwob.env.MiniWoBEnv``; one id serves
every task (``task=`` or ``reset(options={"task": ...})``), ``envs.miniwob.tasks`` lists them
(``resolve_tasks("all")``) and says which are left out and why (``EXCLUDED``). Importing this package imports
neither Playwright nor ``miniwob``.

The id is registered ``nondeterministic=True``: the page's reward is scaled by wall-clock time and ``info``
holds timings, so one seed does not make two episodes equal in every value (the seed does fix the page).
"""

from __future__ import annotations

import gymnasium

ENV_ID = "MiniWoB-v1"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.miniwob.env:MiniWoBEnv", nondeterministic=True)
