"""Environments with one gymnasium contract: ``mujoco/`` (the tabletop manipulation suite), ``web/``
(Playwright, VisualWebArena-compatible, bundled offline sites) and ``android/`` (adb). Every id they register
passes ``gymnasium.utils.env_checker.check_env``; the text spaces of web and Android are
``envs.text_space.UnicodeText`` (any Unicode, bounded lengths). Nothing here imports a model; UI and robot
actions go through ``magma.actions``."""
