"""Arm control: a 7-D action (delta end effector or absolute joints, plus the gripper) to servo targets.

Delta end-effector mode (``"delta_ee"``): ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``. The
translation is in metres in the world frame; the rotation is extrinsic roll-pitch-yaw about the
world axes (``R_delta = Rz(yaw) Ry(pitch) Rx(roll)``), applied on the left of the current hand
orientation. Each step is clipped to ``max_translation`` per axis and ``max_rotation`` per angle;
the target pose is turned into joint targets by damped least-squares IK (``mj_jacSite``) and the
joint position servos track it over the control period.

Absolute joint mode (``"joint"``): ``[q1 .. q6, gripper]``, joint targets in radians (clipped to
the joint ranges).

Gripper (last dimension, both modes, the Magma/OpenVLA convention): -1 is fully open, +1 fully
closed, linear in between; the servo stops at whatever it grasps.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from envs.mujoco.scene import ARM_JOINTS, FINGER_TRAVEL

ACTION_MODES = ("delta_ee", "joint")
ACTION_DIM = 7


def euler_to_matrix(rpy: np.ndarray) -> np.ndarray:
    """Rotation matrix of extrinsic roll-pitch-yaw about world x, y, z: ``Rz(yaw) Ry(pitch) Rx(roll)``."""
    roll, pitch, yaw = rpy
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def matrix_to_euler(matrix: np.ndarray) -> np.ndarray:
    """Roll, pitch, yaw (the inverse of :func:`euler_to_matrix`), pitch in [-pi/2, pi/2]."""
    pitch = np.arcsin(np.clip(-matrix[2, 0], -1.0, 1.0))
    roll = np.arctan2(matrix[2, 1], matrix[2, 2])
    yaw = np.arctan2(matrix[1, 0], matrix[0, 0])
    return np.array([roll, pitch, yaw])


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The rotation vector (world frame) that turns ``current`` into ``target``."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).flatten())
    velocity = np.empty(3)
    mujoco.mju_quat2Vel(velocity, quat, 1.0)
    return velocity


def gripper_opening_target(command: float) -> float:
    """Per-finger servo target for a gripper command in [-1 (open), 1 (closed)]."""
    return FINGER_TRAVEL * (1.0 - float(np.clip(command, -1.0, 1.0))) / 2.0


@dataclass(frozen=True)
class ControllerConfig:
    """Limits of one control step and of the reachable workspace (metres, radians)."""

    max_translation: float = 0.05
    max_rotation: float = 0.25
    workspace_low: tuple[float, float, float] = (0.1, -0.45, 0.012)
    workspace_high: tuple[float, float, float] = (0.8, 0.45, 0.5)
    ik_iterations: int = 12
    ik_damping: float = 0.05
    ik_tolerance: float = 1e-4


class ArmController:
    """Maps actions to actuator controls; owns a scratch ``MjData`` for IK so the simulation is never touched."""

    def __init__(self, model: mujoco.MjModel, config: ControllerConfig | None = None) -> None:
        self.model = model
        self.config = config or ControllerConfig()
        self._scratch = mujoco.MjData(model)
        self._site = model.site("ee").id
        self._qpos_index = np.array([model.jnt_qposadr[model.joint(name).id] for name in ARM_JOINTS])
        self._dof_index = np.array([model.jnt_dofadr[model.joint(name).id] for name in ARM_JOINTS])
        self._arm_actuators = np.array([model.actuator(name).id for name in ARM_JOINTS])
        self._gripper_actuator = model.actuator("gripper").id
        ranges = np.array([model.jnt_range[model.joint(name).id] for name in ARM_JOINTS])
        self.joint_low, self.joint_high = ranges[:, 0], ranges[:, 1]
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def end_effector_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        """Position and rotation matrix of the ``ee`` site."""
        return data.site_xpos[self._site].copy(), data.site_xmat[self._site].reshape(3, 3).copy()

    def arm_joint_positions(self, data: mujoco.MjData) -> np.ndarray:
        return data.qpos[self._qpos_index].copy()

    def solve_ik(self, joint_start: np.ndarray, target_position: np.ndarray, target_rotation: np.ndarray) -> np.ndarray:
        """Joint angles that put the ``ee`` site at the target pose, by damped least squares from ``joint_start``."""
        scratch, config = self._scratch, self.config
        joints = joint_start.copy()
        damping = config.ik_damping**2 * np.eye(6)
        for _ in range(config.ik_iterations):
            scratch.qpos[self._qpos_index] = joints
            mujoco.mj_kinematics(self.model, scratch)
            mujoco.mj_comPos(self.model, scratch)
            position = scratch.site_xpos[self._site]
            rotation = scratch.site_xmat[self._site].reshape(3, 3)
            error = np.concatenate([target_position - position, rotation_error(target_rotation, rotation)])
            if np.abs(error).max() < config.ik_tolerance:
                break
            mujoco.mj_jacSite(self.model, scratch, self._jacp, self._jacr, self._site)
            jacobian = np.vstack([self._jacp[:, self._dof_index], self._jacr[:, self._dof_index]])
            step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + damping, error)
            joints = np.clip(joints + step, self.joint_low, self.joint_high)
        return joints

    def delta_targets(self, data: mujoco.MjData, action: np.ndarray) -> np.ndarray:
        """Arm joint targets for a delta end-effector action (first six dimensions)."""
        config = self.config
        position, rotation = self.end_effector_pose(data)
        translation = np.clip(action[:3], -config.max_translation, config.max_translation)
        target_position = np.clip(position + translation, config.workspace_low, config.workspace_high)
        target_rotation = euler_to_matrix(np.clip(action[3:6], -config.max_rotation, config.max_rotation)) @ rotation
        return self.solve_ik(self.arm_joint_positions(data), target_position, target_rotation)

    def apply(self, data: mujoco.MjData, action: np.ndarray, mode: str) -> None:
        """Set the actuator controls for one control period from a valid 7-D action."""
        if mode == "delta_ee":
            joints = self.delta_targets(data, action)
        else:
            joints = np.clip(action[:6], self.joint_low, self.joint_high)
        data.ctrl[self._arm_actuators] = joints
        data.ctrl[self._gripper_actuator] = gripper_opening_target(action[6])

    def hold(self, data: mujoco.MjData, gripper_command: float = -1.0) -> None:
        """Servo targets that keep the arm where it is (used after a reset)."""
        data.ctrl[self._arm_actuators] = self.arm_joint_positions(data)
        data.ctrl[self._gripper_actuator] = gripper_opening_target(gripper_command)
