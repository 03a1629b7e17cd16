"""MJCF of the built-in tabletop scene, designed to render fast on a CPU.

A Cartesian (gantry) gripper moves in the plane above a table: two slide joints driven
by position servos, a vertical post, a palm and two fingers. Everything is flat
coloured: no textures, no shadows (``shadowsize=0``), no reflections, no skybox, one
headlight. Only the gripper and the block collide, so a physics step stays cheap.
"""

from __future__ import annotations

WORKSPACE = 0.3  # the gripper moves in [-WORKSPACE, WORKSPACE]^2 (metres)
TABLE_RGBA = "0.82 0.80 0.74 1"
CAMERAS = ("front", "top")

COLORS = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.75),
    "orange": (1.00, 0.55, 0.05),
}


def _rgba(color: str) -> str:
    r, g, b = COLORS[color]
    return f"{r} {g} {b} 1"


def scene_xml(*, block: bool, num_markers: int, marker_shape: str, buffer_size: int) -> str:
    """The scene: gripper, ``num_markers`` flat markers (mocap bodies), optional block.

    ``marker_shape`` is ``"disc"`` (reach targets) or ``"square"`` (push goal regions).
    Marker colours and positions are set per episode by the task.
    """
    if marker_shape == "disc":
        marker_geom = 'type="cylinder" size="0.04 0.002"'
    else:
        marker_geom = 'type="box" size="0.05 0.05 0.002"'
    markers = "\n".join(
        f'    <body name="marker{i}" mocap="true" pos="0 0 0.002">'
        f'<geom name="marker{i}" {marker_geom} rgba="{_rgba("red")}"/></body>'
        for i in range(num_markers)
    )
    block_body = ""
    if block:
        block_body = """
    <body name="block" pos="0 0 0.025">
      <joint name="block_x" type="slide" axis="1 0 0" damping="2" frictionloss="0.3"/>
      <joint name="block_y" type="slide" axis="0 1 0" damping="2" frictionloss="0.3"/>
      <geom name="block" type="box" size="0.025 0.025 0.025" mass="0.2" rgba="0.15 0.3 0.9 1"
            contype="1" conaffinity="1" condim="3"/>
    </body>"""
    w = WORKSPACE
    return f"""
<mujoco model="embodied_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.005" integrator="implicitfast"/>
  <visual>
    <global offwidth="{buffer_size}" offheight="{buffer_size}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.55 0.55 0.55" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <rgba haze="0.9 0.9 0.9 1"/>
  </visual>
  <default>
    <geom contype="0" conaffinity="0" friction="0.6 0.005 0.0001"/>
  </default>
  <worldbody>
    <geom name="table" type="box" size="0.7 0.5 0.01" pos="0 0 -0.01" rgba="{TABLE_RGBA}"/>
    <geom name="wall" type="box" size="0.7 0.01 0.3" pos="0 0.5 0.29" rgba="0.62 0.68 0.74 1"/>
    <camera name="front" pos="0 -0.58 0.5" xyaxes="1 0 0 0 0.65 0.76" fovy="55"/>
    <camera name="top" pos="0 0 0.95" xyaxes="1 0 0 0 1 0" fovy="45"/>
{markers}{block_body}
    <body name="gripper" pos="0 0 0.03">
      <joint name="grip_x" type="slide" axis="1 0 0" range="{-w} {w}" damping="25"/>
      <joint name="grip_y" type="slide" axis="0 1 0" range="{-w} {w}" damping="25"/>
      <geom name="post" type="cylinder" fromto="0 0 0.02 0 0 0.3" size="0.01" rgba="0.5 0.5 0.55 1" mass="0.1"/>
      <geom name="palm" type="box" pos="0 0 0.02" size="0.035 0.012 0.008" rgba="0.25 0.25 0.3 1" mass="0.3"
            contype="1" conaffinity="1"/>
      <geom name="finger_l" type="box" pos="-0.028 0 -0.005" size="0.006 0.01 0.02" rgba="0.25 0.25 0.3 1"
            mass="0.05" contype="1" conaffinity="1"/>
      <geom name="finger_r" type="box" pos="0.028 0 -0.005" size="0.006 0.01 0.02" rgba="0.25 0.25 0.3 1"
            mass="0.05" contype="1" conaffinity="1"/>
    </body>
  </worldbody>
  <actuator>
    <position name="grip_x" joint="grip_x" kp="300" ctrlrange="{-w} {w}"/>
    <position name="grip_y" joint="grip_y" kp="300" ctrlrange="{-w} {w}"/>
  </actuator>
</mujoco>
"""
