"""Android phones and emulators through adb, with Set-of-Mark observations and the AITW / AndroidWorld action
spaces. ``gymnasium.make("Android-v0", serial=..., adb_port=...)`` builds ``envs.android.env.AndroidEnv``;
tasks come from ``envs.android.tasks.load_tasks``. ``envs.android.simulated_device`` is a simulated phone
behind a real-protocol adb server, for tests, benchmarks and trying the environment without a phone.

The id is registered ``nondeterministic=True``: a phone is a live system (clocks, animations, other apps) and
``info`` holds wall-clock timings, so the seed cannot make two episodes equal.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "Android-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.android.env:AndroidEnv", nondeterministic=True)
