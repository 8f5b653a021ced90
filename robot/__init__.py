"""Robots and cameras behind LeRobot-style interfaces (``interfaces``), safety clipping (``safety``),
the MuJoCo-backed simulated robot (``sim``) and episode recording in the LeRobotDataset v3 layout
(``recording``). The control daemon and the policy server come later (issue [8/9])."""
