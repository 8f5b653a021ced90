"""Robot and camera interfaces, drivers (MuJoCo-sim and real), the control daemon for the lab
machine, the policy server/client and episode recording in the LeRobotDataset v3 layout.
Not built yet (issues [4/7], [8/9])."""
