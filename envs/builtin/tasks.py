"""Built-in MuJoCo tasks ``reach`` and ``push``: a gantry gripper over a table.

Action (2,) in [-1, 1]: a planar displacement of the gripper's position-servo target,
``max_delta`` metres per step at full scale, relative to the current gripper position.
One control step is ``frame_skip`` physics steps of 5 ms (default 10 -> 20 Hz).

``reach`` — bring the fingertip over the target disc of the colour the instruction
names ("move the gripper to the red target"). The colour is drawn per episode; optional
``distractors`` add discs of other colours (visible in pixels only).
  state (8): gripper xy, gripper velocity xy, target xy, target - gripper xy.
  reward: ``1 - tanh(10 d)``, ``d`` the planar fingertip-target distance (in (0, 1]).
  success: ``d < success_radius`` (0.04 m, the disc radius).

``push`` — push the block (colour drawn per episode) onto the green square
("push the blue block onto the green square").
  state (14): gripper xy, gripper velocity xy, block xy, block velocity xy, goal xy,
  block - gripper xy, goal - block xy.
  reward: ``0.25 (1 - tanh(10 d_gb)) + (1 - tanh(10 d_bg))``: ``d_gb`` gripper-block,
  ``d_bg`` block-goal distance.
  success: ``d_bg < success_radius`` (0.04 m).

``lang_reach`` — the language-conditioning suite: all four target discs (red, green, blue,
yellow) lie in the scene at once and the instruction names the one to reach, so a
policy that ignores the instruction succeeds about once in four. ``task=<colour>`` fixes
the instructed colour (``lang_reach/<colour>`` names it; ``embodied-eval env=lang_reach
tasks=all`` scores each instruction); otherwise it is drawn per episode with the
probabilities ``set_task_probs`` sets (uniform by default; a PPO curriculum moves them).
  state (12): gripper xy, gripper velocity xy, then the xy of the red, green, blue and
  yellow discs in that fixed order: the state shows every disc, the instruction says which.
  ``info["task_id"]``: the instructed colour's index in that order.

With ``proprio_only=True`` (needs pixels) the state is only the gripper's position and
velocity (4): where the target, block and goal are must be read from the images.

``info["progress"] = clip(1 - d / d_0, 0, 1)`` with ``d`` the task distance
(fingertip-target, block-goal) and ``d_0`` its value at reset. By default an episode
runs to its time limit (``terminate_on_success=False``): the policy learns to stay at
the goal, and every episode has the same length for video and reward-model evaluation.
``sparse_reward=True`` replaces the dense reward by the success indicator (1 on a step
that ends at success, else 0): the binary reward of residual RL (ResFiT), usually with
``terminate_on_success=True``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from envs.builtin.scene import CAMERAS, COLORS, WORKSPACE, scene_xml
from envs.core import check_cameras, get_physics, observation_space, set_physics, unit_action_space

TARGET_COLORS = ("red", "green", "blue", "yellow")
BLOCK_COLORS = ("blue", "red", "yellow", "purple")
PROPRIO_DIM = 4  # gripper xy and velocity: the first entries of every task's state


class TabletopEnv(gym.Env):
    """Shared machinery: model, servo control, rendering, pixels and info."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    name = "tabletop"
    state_dim = 0
    # State layout, written once here: scripted controllers and tests index through these.
    GRIPPER, GRIPPER_VEL = slice(0, 2), slice(2, 4)  # the first PROPRIO_DIM entries of every task
    _grip_qpos = slice(0, 2)  # qpos of grip_x, grip_y (after the block's joints in push)

    def __init__(
        self,
        *,
        pixels: bool = False,
        cameras: Sequence[str] | str | None = None,
        image_size: int = 84,
        render_size: int = 256,
        frame_skip: int = 10,
        max_delta: float = 0.04,
        success_radius: float = 0.04,
        terminate_on_success: bool = False,
        sparse_reward: bool = False,
        distractors: int = 0,
        randomize_colors: bool = False,
        background: str | None = None,
        moving_distractors: int = 0,
        proprio_only: bool = False,
        render_mode: str | None = "rgb_array",
        block: bool = False,
        marker_shape: str = "disc",
    ):
        import mujoco

        self._mj = mujoco
        if image_size < 8 or render_size < 8:
            raise ValueError(f"{self.name}: image_size and render_size must be >= 8 pixels")
        if not 0 <= distractors <= 3:
            raise ValueError(f"{self.name}: distractors must be between 0 and 3, got {distractors}")
        self.cameras = check_cameras(cameras, CAMERAS, ("front",), self.name) if pixels else []
        self.image_size, self.render_size = int(image_size), int(render_size)
        self.frame_skip, self.max_delta = int(frame_skip), float(max_delta)
        self.success_radius = float(success_radius)
        self.terminate_on_success = bool(terminate_on_success)
        self.sparse_reward = bool(sparse_reward)
        self.distractors, self.randomize_colors = int(distractors), bool(randomize_colors)
        if background is not None and randomize_colors:
            raise ValueError(f"{self.name}: background and randomize_colors both recolour the table; use one")
        if moving_distractors and background is None:
            raise ValueError(f"{self.name}: moving_distractors move across the background layer; set background=a or b")
        if background is not None:
            from envs.distractors import PALETTES

            if background not in PALETTES:
                raise ValueError(f"{self.name}: background must be one of {sorted(PALETTES)} or null, got {background!r}")
        self.background, self.moving_distractors = background, int(moving_distractors)
        self._backgrounds: dict[int, Any] = {}  # per frame size: this episode's moving background
        self._background_seed = 0
        self.proprio_only = bool(proprio_only)
        self.render_mode = render_mode
        buffer = max(self.image_size, self.render_size)
        xml = scene_xml(block=block, num_markers=1 + self.distractors,
                        marker_shape=marker_shape, buffer_size=buffer)
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self._table_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "table")
        if self.background is not None:  # table and wall in the key colour the background replaces
            from envs.distractors import KEY_RGBA

            for name in ("table", "wall"):
                self.model.geom_rgba[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)] = KEY_RGBA
        self._marker_geoms = [
            mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, f"marker{i}")
            for i in range(1 + self.distractors)
        ]
        self._renderers: dict[int, Any] = {}  # one reused Renderer per image size
        state_dim = PROPRIO_DIM if self.proprio_only else self.state_dim
        if self.proprio_only and not self.cameras:
            raise ValueError(f"{self.name}: proprio_only=True hides the task from the state; set pixels=True")
        self.observation_space = observation_space(state_dim, self.cameras, self.image_size)
        self.action_space = unit_action_space(2)
        self.instruction = ""
        self._d0 = 1.0

    # --- task-specific hooks -------------------------------------------------------
    def _sample_task(self) -> None:
        """Place gripper, markers (and block); set colours and the instruction."""
        raise NotImplementedError

    def _state(self) -> np.ndarray:
        raise NotImplementedError

    def _task_distance(self) -> float:
        raise NotImplementedError

    def _reward(self, dist: float) -> float:
        """Dense reward given the task distance ``dist``."""
        raise NotImplementedError

    # --- gymnasium API ---------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._mj.mj_resetData(self.model, self.data)
        if self.randomize_colors:
            self.model.geom_rgba[self._table_geom, :3] = self.np_random.uniform(0.45, 0.95, 3)
        self._sample_task()
        if self.background is not None:
            self._backgrounds, self._background_seed = {}, int(self.np_random.integers(2**31))
        self.data.ctrl[:2] = self.data.qpos[self._grip_qpos]
        self._mj.mj_forward(self.model, self.data)
        self._d0 = max(self._task_distance(), 1e-6)
        return self._obs(), self._info(self._task_distance())

    def step(self, action):
        if type(action) is np.ndarray and action.shape == (2,):  # the vector env's row: 4x cheaper
            ax, ay = action.tolist()
        else:
            ax, ay = np.asarray(action, np.float64).reshape(2).tolist()  # scalar maths: cheaper than numpy here
        gx, gy = self.data.qpos[self._grip_qpos].tolist()
        step, w = self.max_delta, WORKSPACE
        self.data.ctrl[0] = min(max(gx + step * min(max(ax, -1.0), 1.0), -w), w)
        self.data.ctrl[1] = min(max(gy + step * min(max(ay, -1.0), 1.0), -w), w)
        self._mj.mj_step(self.model, self.data, nstep=self.frame_skip)
        for background in self._backgrounds.values():
            background.step()
        dist = self._task_distance()
        info = self._info(dist)
        terminated = bool(self.terminate_on_success and info["success"])
        reward = float(info["success"]) if self.sparse_reward else self._reward(dist)
        return self._obs(), reward, terminated, False, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        self._mj.mj_kinematics(self.model, self.data)
        return self._render(self.cameras[0] if self.cameras else "front", self.render_size)

    def close(self):
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    # --- simulator state (return-and-explore) --------------------------------------------
    def get_state(self) -> np.ndarray:
        """The simulator's state (MuJoCo's integration state, marker positions included).
        What reset drew besides it (colours, instruction) is not in it: restore it into
        the same task, i.e. after ``reset(seed=...)`` with the episode's seed."""
        return get_physics(self.model, self.data)

    def set_state(self, saved: np.ndarray) -> dict[str, Any]:
        """Continue from a :meth:`get_state` of this episode's task; returns the observation there."""
        set_physics(self.model, self.data, saved)
        return self._obs()

    def expert_action(self) -> np.ndarray:
        """The task's scripted controller (``envs.builtin.scripted.CONTROLLERS``) on the full
        state, privileged even with ``proprio_only``: what ``embodied-eval policy=scripted``
        runs, as the robosuite / LIBERO adapters' experts read their simulator."""
        from envs.builtin.scripted import CONTROLLERS

        return CONTROLLERS[self.name](self._state(), max_delta=self.max_delta)

    # --- helpers -----------------------------------------------------------------------
    def _render(self, camera: str, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._mj.Renderer(self.model, size, size)
            flags = renderer.scene.flags
            for flag in (self._mj.mjtRndFlag.mjRND_SHADOW, self._mj.mjtRndFlag.mjRND_REFLECTION,
                         self._mj.mjtRndFlag.mjRND_SKYBOX, self._mj.mjtRndFlag.mjRND_FOG):
                flags[flag] = False
            self._renderers[size] = renderer
        renderer.update_scene(self.data, camera=camera)
        frame = renderer.render()
        if self.background is None:
            return frame
        from envs.distractors import Background, composite

        background = self._backgrounds.get(size)
        if background is None:  # every frame size draws the same episode's pattern
            background = Background(np.random.default_rng(self._background_seed), size, self.background,
                                    self.moving_distractors)
            self._backgrounds[size] = background
        return composite(frame, background.layer())

    def _obs(self) -> dict[str, Any]:
        state = self._state()
        obs: dict[str, Any] = {"state": state[:PROPRIO_DIM] if self.proprio_only else state,
                               "instruction": self.instruction}
        if self.cameras:
            self._mj.mj_kinematics(self.model, self.data)  # mj_step leaves poses one substep stale
            obs["pixels"] = {cam: self._render(cam, self.image_size) for cam in self.cameras}
        return obs

    def _info(self, dist: float) -> dict[str, Any]:
        return {
            "success": bool(dist < self.success_radius),
            "progress": min(max(1.0 - dist / self._d0, 0.0), 1.0),
        }

    def _place_markers(self, positions: np.ndarray, colors: Sequence[str]) -> None:
        for i, (pos, color) in enumerate(zip(positions, colors)):
            self.data.mocap_pos[i, :2] = pos
            self.model.geom_rgba[self._marker_geoms[i], :3] = COLORS[color]

    def _spread_points(self, n: int, low: float, high: float, min_gap: float,
                       avoid: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
        """``n`` planar points uniformly in ``[low, high]^2``, pairwise ``min_gap`` apart."""
        points: list[np.ndarray] = list(avoid)
        for _ in range(n):
            for _attempt in range(100):
                p = self.np_random.uniform(low, high, 2)
                if all(np.linalg.norm(p - q) >= min_gap for q in points):
                    break
            points.append(p)
        return points[len(avoid):]


class ReachEnv(TabletopEnv):
    """Move the fingertip over the target disc of the named colour."""

    name = "reach"
    state_dim = 8
    TARGET, TO_TARGET = slice(4, 6), slice(6, 8)  # target xy, target - gripper xy

    def __init__(self, **kwargs):
        super().__init__(block=False, marker_shape="disc", **kwargs)
        self._target = (0.0, 0.0)  # python floats: scalar maths per step is cheaper than numpy

    def _sample_task(self) -> None:
        grip = self.np_random.uniform(-0.2, 0.2, 2)
        self.data.qpos[0:2] = grip
        colors = list(self.np_random.permutation(TARGET_COLORS)[: 1 + self.distractors])
        markers = self._spread_points(1 + self.distractors, -0.25, 0.25, 0.12, avoid=[grip])
        self._place_markers(np.asarray(markers), colors)
        self._target = tuple(markers[0].tolist())
        self.instruction = f"move the gripper to the {colors[0]} target"

    def _state(self) -> np.ndarray:
        (x, y), (vx, vy), (tx, ty) = self.data.qpos[0:2].tolist(), self.data.qvel[0:2].tolist(), self._target
        return np.array([x, y, vx, vy, tx, ty, tx - x, ty - y], np.float32)

    def _task_distance(self) -> float:
        x, y = self.data.qpos[0:2].tolist()  # the fingertip is right below the gripper origin
        return math.hypot(x - self._target[0], y - self._target[1])

    def _reward(self, dist: float) -> float:
        return 1.0 - math.tanh(10.0 * dist)


class PushEnv(TabletopEnv):
    """Push the coloured block onto the green square."""

    name = "push"
    state_dim = 14
    BLOCK, BLOCK_VEL, GOAL = slice(4, 6), slice(6, 8), slice(8, 10)
    TO_BLOCK, BLOCK_TO_GOAL = slice(10, 12), slice(12, 14)  # block - gripper xy, goal - block xy
    _grip_qpos = slice(2, 4)  # the block's joints come first in the MJCF

    def __init__(self, **kwargs):
        super().__init__(block=True, marker_shape="square", **kwargs)
        import mujoco

        self._block_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "block")
        self._goal = (0.0, 0.0)

    def _sample_task(self) -> None:
        block = self.np_random.uniform(-0.15, 0.15, 2)
        goal, *distractors = self._spread_points(1 + self.distractors, -0.2, 0.2, 0.15, avoid=[block])
        grip = self._spread_points(1, -0.2, 0.2, 0.09, avoid=[block])[0]
        self.data.qpos[0:2], self.data.qpos[2:4] = block, grip
        color = str(self.np_random.choice(BLOCK_COLORS))
        others = [c for c in ("orange", "purple", "yellow") if c != color]
        self._place_markers(np.asarray([goal, *distractors]), ["green", *others[: self.distractors]])
        self.model.geom_rgba[self._block_geom, :3] = COLORS[color]
        self._goal = tuple(goal.tolist())
        self.instruction = f"push the {color} block onto the green square"

    def _state(self) -> np.ndarray:
        bx, by, x, y = self.data.qpos[0:4].tolist()
        bvx, bvy, vx, vy = self.data.qvel[0:4].tolist()
        gx, gy = self._goal
        return np.array([x, y, vx, vy, bx, by, bvx, bvy, gx, gy, bx - x, by - y, gx - bx, gy - by], np.float32)

    def _task_distance(self) -> float:
        x, y = self.data.qpos[0:2].tolist()
        return math.hypot(x - self._goal[0], y - self._goal[1])

    def _reward(self, dist: float) -> float:
        bx, by, gx, gy = self.data.qpos[0:4].tolist()
        d_gb = math.hypot(gx - bx, gy - by)
        return 0.25 * (1.0 - math.tanh(10.0 * d_gb)) + 1.0 - math.tanh(10.0 * dist)



class LangReachEnv(ReachEnv):
    """Reach the disc of the instructed colour among all four (see the module docstring)."""

    name = "lang_reach"
    state_dim = 12
    MARKERS = slice(4, 12)  # xy of each colour's disc, in TARGET_COLORS order
    TASKS = TARGET_COLORS

    def __init__(self, task: str | None = None, **kwargs):
        if task is not None and task not in TARGET_COLORS:
            raise ValueError(f"lang_reach: task must be one of {list(TARGET_COLORS)} (the instructed colour), "
                             f"got {task!r}")
        kwargs.pop("distractors", None)
        super().__init__(distractors=len(TARGET_COLORS) - 1, **kwargs)
        self.task = task
        self.task_probs = np.full(len(TARGET_COLORS), 1.0 / len(TARGET_COLORS))
        self.task_id = 0
        self._discs = np.zeros((len(TARGET_COLORS), 2))

    def set_task_probs(self, probs) -> None:
        """Probabilities of each instructed colour for the next episodes (TARGET_COLORS order)."""
        p = np.asarray(probs, np.float64).reshape(-1)
        if p.shape != (len(TARGET_COLORS),) or (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"lang_reach: task_probs must be {len(TARGET_COLORS)} non-negative weights, got {probs}")
        self.task_probs = p / p.sum()

    def _sample_task(self) -> None:
        grip = self.np_random.uniform(-0.2, 0.2, 2)
        self.data.qpos[0:2] = grip
        n = len(TARGET_COLORS)
        self.task_id = TARGET_COLORS.index(self.task) if self.task is not None else \
            int(self.np_random.choice(n, p=self.task_probs))
        self._discs = np.asarray(self._spread_points(n, -0.25, 0.25, 0.12, avoid=[grip]))
        self._place_markers(self._discs, TARGET_COLORS)
        color = TARGET_COLORS[self.task_id]
        self._target = tuple(self._discs[self.task_id].tolist())
        self.instruction = f"move the gripper to the {color} target"

    def _state(self) -> np.ndarray:
        (x, y), (vx, vy) = self.data.qpos[0:2].tolist(), self.data.qvel[0:2].tolist()
        return np.concatenate([[x, y, vx, vy], self._discs.reshape(-1)]).astype(np.float32)

    def _info(self, dist: float) -> dict[str, Any]:
        return {**super()._info(dist), "task_id": self.task_id}

    def expert_action(self) -> np.ndarray:
        """Steer to the instructed disc (privileged: knows which one)."""
        from envs.builtin.scripted import reach_action

        goal = np.asarray(self._target, np.float32)
        return reach_action(self._state(), goal=goal, max_delta=self.max_delta)
