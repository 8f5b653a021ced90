"""The tabletop scene as MJCF, built in Python from primitives (no asset files, nothing downloaded).

A 6-joint arm (yaw, three pitches, a wrist roll and a tool yaw) with gravity compensation and
position servos, a parallel gripper of two slide fingers driven by one actuator through a tendon
(the fingers are coupled by an equality), a table whose top is the plane ``z = 0``, four cubes,
three plates, two bowls, a push-target disc and a drawer in a cabinet. Two cameras:
``third_person`` (fixed) and ``wrist`` (on the hand).

At all-zero joint angles the hand points straight down with the fingers opening along world y;
the end-effector site ``ee`` (between the finger pads) then has the world's orientation, so a
top-down grasp is roll = pitch = 0.

Objects that a task does not use are parked under the table, out of every camera's view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.1),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.92, 0.8, 0.1),
    "white": (0.92, 0.92, 0.9),
}

CUBE_COLORS = ("red", "green", "blue", "yellow")
PLATE_COLORS = ("blue", "white", "green")
BOWL_COLORS = ("white", "yellow")

CUBE_HALF_SIZE = 0.0225  # a 4.5 cm cube
PLATE_RADIUS = 0.07
PLATE_HALF_HEIGHT = 0.005
BOWL_RADIUS = 0.07
BOWL_WALL_HEIGHT = 0.04
TARGET_RADIUS = 0.05

ARM_JOINTS = ("shoulder_yaw", "shoulder_pitch", "elbow_pitch", "wrist_pitch", "wrist_roll", "tool_yaw")
FINGER_JOINTS = ("finger_left", "finger_right")
FINGER_TRAVEL = 0.04  # per finger: the gripper opens up to 8 cm
DRAWER_TRAVEL = 0.16

# The arm's resting pose: hand down, above the middle of the workspace.
HOME_JOINT_POSITIONS = (0.0, 0.17, 0.24, -0.41, 0.0, 0.0)

# Cabinet with the drawer, fixed on the table; the drawer slides out along -y, towards the arm's side.
CABINET_CENTER = (0.5, 0.36)
CABINET_HALF_SIZE = (0.1, 0.09, 0.06)
DRAWER_HANDLE_OFFSET = 0.06  # how far the handle bar stands in front of the drawer's front panel
DRAWER_HANDLE_HEIGHT = 0.05

PHYSICS_TIMESTEP = 0.002


@dataclass(frozen=True)
class SceneObject:
    """One movable object of the scene: its body name, kind and colour."""

    name: str
    kind: str  # "cube", "plate", "bowl" or "target"
    color: str


def scene_objects() -> tuple[SceneObject, ...]:
    """Every movable object of the scene, in a fixed order (the order of their free joints in qpos)."""
    cubes = tuple(SceneObject(f"{color}_cube", "cube", color) for color in CUBE_COLORS)
    plates = tuple(SceneObject(f"{color}_plate", "plate", color) for color in PLATE_COLORS)
    bowls = tuple(SceneObject(f"{color}_bowl", "bowl", color) for color in BOWL_COLORS)
    return (*cubes, *plates, *bowls, SceneObject("target", "target", "green"))


def parking_position(index: int) -> tuple[float, float, float]:
    """Where an unused object waits (its lowest point): on the floor under the table, spread out."""
    return (-0.1 + 0.18 * (index % 5), -0.3 + 0.25 * (index // 5), -0.75)


def _rgba(color: str, alpha: float = 1.0) -> str:
    r, g, b = COLORS[color]
    return f"{r} {g} {b} {alpha}"


def _cube_xml(obj: SceneObject, index: int) -> str:
    x, y, z = parking_position(index)
    h = CUBE_HALF_SIZE
    return f"""
    <body name="{obj.name}" pos="{x} {y} {z}">
      <freejoint name="{obj.name}_joint"/>
      <geom name="{obj.name}_geom" type="box" size="{h} {h} {h}" rgba="{_rgba(obj.color)}" mass="0.06"
            friction="1.2 0.01 0.001" condim="4" priority="1"/>
    </body>"""


def _plate_xml(obj: SceneObject, index: int) -> str:
    x, y, z = parking_position(index)
    return f"""
    <body name="{obj.name}" pos="{x} {y} {z}">
      <freejoint name="{obj.name}_joint"/>
      <geom name="{obj.name}_geom" type="cylinder" size="{PLATE_RADIUS} {PLATE_HALF_HEIGHT}"
            rgba="{_rgba(obj.color)}" mass="0.2"/>
      <geom type="cylinder" size="{PLATE_RADIUS - 0.012} 0.0005" pos="0 0 {PLATE_HALF_HEIGHT}"
            rgba="0.7 0.7 0.7 1" contype="0" conaffinity="0" mass="0"/>
    </body>"""


def _bowl_xml(obj: SceneObject, index: int) -> str:
    x, y, z = parking_position(index)
    walls = []
    count = 12
    for i in range(count):
        angle = 2 * math.pi * i / count
        cx, cy = (BOWL_RADIUS - 0.005) * math.cos(angle), (BOWL_RADIUS - 0.005) * math.sin(angle)
        walls.append(
            f'<geom type="box" size="0.005 0.02 {BOWL_WALL_HEIGHT / 2}" pos="{cx:.4f} {cy:.4f} '
            f'{BOWL_WALL_HEIGHT / 2:.4f}" euler="0 0 {angle:.4f}" rgba="{_rgba(obj.color)}" mass="0.02"/>'
        )
    return f"""
    <body name="{obj.name}" pos="{x} {y} {z}">
      <freejoint name="{obj.name}_joint"/>
      <geom name="{obj.name}_geom" type="cylinder" size="{BOWL_RADIUS - 0.01} 0.004" pos="0 0 0.004"
            rgba="{_rgba(obj.color)}" mass="0.1"/>
      {"".join(walls)}
    </body>"""


def _target_xml(obj: SceneObject, index: int) -> str:
    x, y, z = parking_position(index)
    # A mocap body: the disc is only drawn, never collides, and is placed by the task.
    return f"""
    <body name="{obj.name}" mocap="true" pos="{x} {y} {z}">
      <geom name="{obj.name}_geom" type="cylinder" size="{TARGET_RADIUS} 0.001" rgba="{_rgba(obj.color, 0.6)}"
            contype="0" conaffinity="0"/>
    </body>"""


def _drawer_xml() -> str:
    cx, cy = CABINET_CENTER
    hx, hy, hz = CABINET_HALF_SIZE
    wall = 0.006
    wood = "0.55 0.38 0.22 1"
    front_y = -hy  # the open side of the cabinet faces -y
    inner_hx, inner_hz = hx - 2 * wall - 0.004, hz - wall - 0.008  # a gap all round, so it slides freely
    return f"""
    <body name="cabinet" pos="{cx} {cy} 0">
      <geom type="box" size="{hx} {hy} {wall}" pos="0 0 {2 * hz - wall}" rgba="{wood}"/>
      <geom type="box" size="{wall} {hy} {hz}" pos="{-hx + wall} 0 {hz}" rgba="{wood}"/>
      <geom type="box" size="{wall} {hy} {hz}" pos="{hx - wall} 0 {hz}" rgba="{wood}"/>
      <geom type="box" size="{hx} {wall} {hz}" pos="0 {hy - wall} {hz}" rgba="{wood}"/>
      <body name="drawer" pos="0 0 {inner_hz + 0.004}">
        <joint name="drawer_slide" type="slide" axis="0 -1 0" range="0 {DRAWER_TRAVEL}" damping="8"
               frictionloss="0.3" armature="0.05"/>
        <geom type="box" size="{inner_hx} {wall} {inner_hz}" pos="0 {front_y + wall} 0" rgba="0.7 0.5 0.3 1"
              mass="0.3"/>
        <geom type="box" size="{inner_hx} {hy - 2 * wall - 0.004} {wall / 2}" pos="0 0 {-inner_hz + wall / 2}"
              rgba="0.6 0.45 0.3 1" mass="0.2"/>
        <geom type="box" size="{wall / 2} {hy - 2 * wall - 0.004} {inner_hz * 0.6}" pos="{-inner_hx + wall / 2} 0 0"
              rgba="0.6 0.45 0.3 1" mass="0.05"/>
        <geom type="box" size="{wall / 2} {hy - 2 * wall - 0.004} {inner_hz * 0.6}" pos="{inner_hx - wall / 2} 0 0"
              rgba="0.6 0.45 0.3 1" mass="0.05"/>
        <geom type="box" size="{wall / 2} {DRAWER_HANDLE_OFFSET / 2} 0.006"
              pos="-0.035 {front_y - DRAWER_HANDLE_OFFSET / 2} {DRAWER_HANDLE_HEIGHT - inner_hz - 0.004}"
              rgba="0.2 0.2 0.2 1" mass="0.01"/>
        <geom type="box" size="{wall / 2} {DRAWER_HANDLE_OFFSET / 2} 0.006"
              pos="0.035 {front_y - DRAWER_HANDLE_OFFSET / 2} {DRAWER_HANDLE_HEIGHT - inner_hz - 0.004}"
              rgba="0.2 0.2 0.2 1" mass="0.01"/>
        <geom name="drawer_handle" type="capsule" size="0.007 0.04" euler="0 1.5708 0"
              pos="0 {front_y - DRAWER_HANDLE_OFFSET} {DRAWER_HANDLE_HEIGHT - inner_hz - 0.004}"
              rgba="0.2 0.2 0.2 1" mass="0.02" friction="1.5 0.01 0.001"/>
        <site name="drawer_handle" pos="0 {front_y - DRAWER_HANDLE_OFFSET} {DRAWER_HANDLE_HEIGHT - inner_hz - 0.004}"
              size="0.005" rgba="0 0 0 0"/>
      </body>
    </body>"""


def _arm_xml() -> str:
    gray, dark = "0.75 0.75 0.78 1", "0.25 0.25 0.28 1"
    finger_geom = (
        'type="box" size="0.012 0.006 0.03" pos="0 {y} -0.03" rgba="0.15 0.15 0.15 1" mass="0.04" '
        'friction="2 0.02 0.002" condim="4" priority="2" solref="0.01 1" solimp="0.95 0.99 0.001"'
    )
    return f"""
    <body name="arm_base" pos="0 0 0">
      <geom type="cylinder" size="0.07 0.03" pos="0 0 0.03" rgba="{dark}"/>
      <body name="link1" pos="0 0 0.06" gravcomp="1">
        <joint name="shoulder_yaw" axis="0 0 1" range="-2.9 2.9" class="arm"/>
        <geom type="cylinder" size="0.055 0.05" pos="0 0 0.05" rgba="{gray}" mass="2"/>
        <body name="link2" pos="0 0 0.12" gravcomp="1">
          <joint name="shoulder_pitch" axis="0 1 0" range="-1.8 1.8" class="arm"/>
          <geom type="capsule" fromto="0 0 0 0 0 0.35" size="0.045" rgba="{gray}" mass="1.5"/>
          <body name="link3" pos="0 0 0.35" gravcomp="1">
            <joint name="elbow_pitch" axis="0 1 0" range="-2.6 2.6" class="arm"/>
            <geom type="capsule" fromto="0 0 0 0.35 0 0" size="0.038" rgba="{gray}" mass="1.2"/>
            <body name="link4" pos="0.35 0 0" gravcomp="1">
              <joint name="wrist_pitch" axis="0 1 0" range="-2.8 2.8" class="wrist"/>
              <geom type="capsule" fromto="0 0 0 0 0 -0.05" size="0.032" rgba="{dark}" mass="0.5"/>
              <body name="link5" pos="0 0 -0.06" gravcomp="1">
                <joint name="wrist_roll" axis="1 0 0" range="-2.0 2.0" class="wrist"/>
                <geom type="cylinder" size="0.03 0.012" rgba="{gray}" mass="0.3"/>
                <body name="hand" pos="0 0 -0.02" gravcomp="1">
                  <joint name="tool_yaw" axis="0 0 1" range="-3.0 3.0" class="wrist"/>
                  <geom type="box" size="0.025 0.05 0.015" pos="0 0 -0.015" rgba="{dark}" mass="0.4"/>
                  <camera name="wrist" pos="0.07 0 -0.01" xyaxes="0 -1 0 0.94 0 -0.35" fovy="80"/>
                  <site name="ee" pos="0 0 -0.085" size="0.006" rgba="1 0 0 0"/>
                  <body name="finger_left_body" pos="0 0.006 -0.03" gravcomp="1">
                    <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" class="finger"/>
                    <geom name="finger_left_pad" {finger_geom.format(y=0)}/>
                  </body>
                  <body name="finger_right_body" pos="0 -0.006 -0.03" gravcomp="1">
                    <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" class="finger"/>
                    <geom name="finger_right_pad" {finger_geom.format(y=0)}/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


def _self_collision_excludes() -> str:
    """The wrist's links overlap at their joints by design; they must not push each other apart."""
    wrist = ("link3", "link4", "link5", "hand", "finger_left_body", "finger_right_body")
    pairs = [(a, b) for i, a in enumerate(wrist) for b in wrist[i + 1 :]]
    return "".join(f'<exclude body1="{a}" body2="{b}"/>' for a, b in pairs)


def build_scene_xml() -> str:
    """The whole scene as one MJCF string (see the module docstring for what it holds)."""
    objects = scene_objects()
    builders = {"cube": _cube_xml, "plate": _plate_xml, "bowl": _bowl_xml, "target": _target_xml}
    object_xml = "".join(builders[obj.kind](obj, i) for i, obj in enumerate(objects))
    arm_gains = (1500, 1500, 1000, 300, 200, 200)
    actuators = "".join(
        f'<position name="{joint}" joint="{joint}" kp="{kp}" ctrlrange="-3.2 3.2" forcerange="-{2 * kp} {2 * kp}"/>'
        for joint, kp in zip(ARM_JOINTS, arm_gains, strict=True)
    )
    return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{PHYSICS_TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="640" offheight="640"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0.1 0.1 0.1"/>
    <quality shadowsize="0"/>
  </visual>
  <default>
    <geom solref="0.005 1" solimp="0.9 0.95 0.001"/>
    <default class="arm"><joint damping="45" armature="0.1"/></default>
    <default class="wrist"><joint damping="6" armature="0.02"/></default>
    <default class="finger"><joint damping="8" armature="0.01"/></default>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" rgb1="0.3 0.32 0.35" rgb2="0.25 0.27 0.3" width="256"
             height="256"/>
    <material name="floor" texture="grid" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light pos="0.4 0 1.5" dir="0 0 -1" diffuse="0.6 0.6 0.6"/>
    <light pos="-0.5 -0.8 1.2" dir="0.5 0.6 -0.8" diffuse="0.3 0.3 0.3"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor"/>
    <geom name="table" type="box" size="0.5 0.6 0.02" pos="0.4 0 -0.02" rgba="0.82 0.74 0.62 1"
          friction="0.8 0.005 0.0001"/>
    <geom type="box" size="0.03 0.03 0.36" pos="0.0 0.5 -0.4" rgba="0.4 0.3 0.2 1"/>
    <geom type="box" size="0.03 0.03 0.36" pos="0.0 -0.5 -0.4" rgba="0.4 0.3 0.2 1"/>
    <geom type="box" size="0.03 0.03 0.36" pos="0.8 0.5 -0.4" rgba="0.4 0.3 0.2 1"/>
    <geom type="box" size="0.03 0.03 0.36" pos="0.8 -0.5 -0.4" rgba="0.4 0.3 0.2 1"/>
    <camera name="third_person" pos="1.0 0 0.55" xyaxes="0 1 0 -0.646 0 0.763" fovy="50"/>
    {_arm_xml()}
    {_drawer_xml()}
    {object_xml}
  </worldbody>
  <contact>
    {_self_collision_excludes()}
  </contact>
  <tendon>
    <fixed name="gripper_split">
      <joint joint="finger_left" coef="0.5"/>
      <joint joint="finger_right" coef="0.5"/>
    </fixed>
  </tendon>
  <equality>
    <joint joint1="finger_left" joint2="finger_right" polycoef="0 1 0 0 0" solref="0.005 1"/>
  </equality>
  <actuator>
    {actuators}
    <position name="gripper" tendon="gripper_split" kp="800" ctrlrange="0 {FINGER_TRAVEL}" forcerange="-25 25"/>
  </actuator>
</mujoco>
"""
