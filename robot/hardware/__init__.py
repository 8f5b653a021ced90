"""Hardware drivers live here, one module per robot or camera (``robot/hardware/my_arm.py``).

A driver subclasses ``robot.interfaces.Robot`` (or ``Camera``) and is named in the daemon's config
by import path, so the daemon needs no change for it::

    robot:
      driver: robot.hardware.my_arm:MyArm
      args: {port: /dev/ttyUSB0}
    cameras:
      - {name: front, driver: robot.hardware.my_camera:UvcCamera, key: image, args: {device: 0, fps: 30}}

What the daemon requires, beyond connect / disconnect / get_observation / send_action: ``action_layout``
(``robot.safety.ActionLayout``: which action entries move the hand and in metres per unit, which rotate it,
which is the gripper; ``robot.safety.DELTA_END_EFFECTOR`` for the usual 7-D delta end-effector action), so the
safety filter can bound every action; a driver without one is refused before anything moves. What it uses
when the driver offers it: ``joint_names`` (the safety config must give limits for each), ``measured_pose(observation)``
(end-effector xyz and joint positions, for the joint checks and the checks of the MEASURED end
effector against the workspace box and speed limit; without it those checks cannot run), ``hold_action(observation)``
(what "hold still" means for the action space), ``stop()`` (the e-stop command or brake),
``start_episode(index)`` (a start pose, or waiting for the operator; returns the task) and ``last_info``
(``terminated`` / ``truncated`` / ``success`` when the robot can tell that a task ended). Each of these has
a default on ``Robot``. A camera implements ``capture()``; its reader thread, timestamps and stale
detection come from ``Camera`` (``rendered_by_robot = True`` makes the daemon pass it the robot).
Test a driver against the simulated one (``robot.sim``) first: both run the same daemon code path.
"""
