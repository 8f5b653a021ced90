"""Environments with one gymnasium contract: ``web/`` (Playwright, VisualWebArena-compatible,
bundled offline sites), ``android/`` (adb) and ``mujoco/`` (tabletop manipulation suite).
Nothing here imports a model; UI and robot actions go through ``magma.actions``.
Not built yet (issues [4/7], [5/7], [9/9])."""
