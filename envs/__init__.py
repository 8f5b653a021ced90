"""Environments with one gymnasium contract: ``mujoco/`` (the tabletop manipulation suite), and later
``web/`` (Playwright, VisualWebArena-compatible, bundled offline sites) and ``android/`` (adb).
Nothing here imports a model; UI and robot actions go through ``magma.actions``."""
