"""Test-time search for UI agents: Reflective MCTS (ExACT) over the web, MiniWoB++ and Android environments
(``rmcts``), its tree (``tree``), candidate-proposing policies (``candidates``), value functions (``values``,
``chat_value``), reflections across tasks (``reflections``) and exploratory-learning samples from the trees
(``traces``)."""
