"""Environments with one gymnasium contract: ``mujoco/`` (the tabletop manipulation suite), ``metaworld/``
(Meta-World v3's 50 tasks from its package), ``web/`` (Playwright, VisualWebArena-compatible, bundled offline
sites), ``miniwob/`` (MiniWoB++'s task pages from its package, through the web env) and ``android/`` (adb).
Every id they register passes ``gymnasium.utils.env_checker.check_env``; the text spaces of the UI envs are
``envs.text_space.UnicodeText`` (any Unicode, bounded lengths). Nothing here imports a model; UI and robot
actions go through ``magma.actions``."""
