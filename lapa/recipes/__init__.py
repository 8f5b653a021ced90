"""Recipes: end-to-end runs that compose several packages (here LAPA on the MuJoCo suite, which records
episodes with ``robot``, trains with ``lapa`` and ``magma`` and evaluates in ``envs``).

A recipe sits above every package, like the ``agent`` CLI: it may import any of them, and only the CLI
(and tests) import a recipe. ``tests/test_layers.py`` checks both."""
