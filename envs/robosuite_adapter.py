"""robosuite 1.4 tasks (``robosuite/<task>``, e.g. ``robosuite/Lift``) under the contracts.

state: the robots' ``robot*_proprio-state`` followed by ``object-state`` (float32).
pixels (on request): robosuite camera observations (``agentview``, ``robot0_eye_in_hand``,
``frontview``, ``birdview``, ``sideview``, ...), flipped upright (robosuite renders them
upside down). Actions in [-1, 1] are rescaled to the controller's action spec (OSC_POSE
by default). ``info["success"]`` is ``env._check_success()``; ``info["progress"]`` is
robosuite's staged shaped reward normalised to [0, 1] (``reward_shaping=True``,
``reward_scale=1``), which reaches 1 only on success.

robosuite draws its random placements from numpy's global generator: ``reset``
seeds it from the env's own generator and restores the global state afterwards, so
episodes are reproducible under a seed and other users of ``np.random`` are untouched.
Soft resets (``hard_reset=False``, much faster) also zero the grippers' remembered
opening command, which robosuite would otherwise carry into the next episode.
Rendering on a CPU with OSMesa is slow (about 10 steps/s with one 84x84 camera).
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from envs.core import ActionScaler, observation_space, unit_action_space

INSTRUCTIONS = {
    "Lift": "lift the red cube off the table",
    "Stack": "stack the red cube on top of the green cube",
    "Door": "open the door",
    "NutAssembly": "fit the square nut and the round nut onto their pegs",
    "NutAssemblySquare": "fit the square nut onto the square peg",
    "NutAssemblyRound": "fit the round nut onto the round peg",
    "PickPlace": "put each object into its bin",
    "PickPlaceCan": "put the can into its bin",
    "PickPlaceBread": "put the bread into its bin",
    "PickPlaceMilk": "put the milk carton into its bin",
    "PickPlaceCereal": "put the cereal box into its bin",
    "Wipe": "wipe the markings off the table",
    "ToolHang": "hang the tool on the stand",
    "TwoArmLift": "lift the pot with both arms",
    "TwoArmPegInHole": "insert the peg into the hole",
    "TwoArmHandover": "hand the hammer over from one arm to the other",
}
CAMERAS = ("agentview", "robot0_eye_in_hand", "frontview", "birdview", "sideview", "robot0_robotview")


def make_robosuite(task: str, *, pixels: bool = False, cameras: Sequence[str] | str | None = None,
                   image_size: int = 84, max_episode_steps: int | None = None,
                   robots: str | Sequence[str] = "Panda", controller: str = "OSC_POSE",
                   control_freq: int = 20, render_size: int = 256, sparse_reward: bool = False,
                   terminate_on_success: bool = False, **suite_kwargs: Any) -> gym.Env:
    """``robosuite.make(task, ...)`` wrapped into the project's conventions (lazy import).
    ``sparse_reward``: reward 1 on a step that ends in success, else 0 (instead of the staged
    shaped reward); ``terminate_on_success``: the episode ends there (residual RL's setting)."""
    import robosuite
    from gymnasium.wrappers import TimeLimit

    if task not in robosuite.ALL_ENVIRONMENTS:
        raise ValueError(f"robosuite/{task}: unknown task; available: {', '.join(sorted(robosuite.ALL_ENVIRONMENTS))}")
    if isinstance(cameras, str):
        cameras = [cameras]
    cams = list(cameras) if cameras is not None else (["agentview"] if pixels else [])
    if not pixels:
        cams = []
    bad = [c for c in cams if c not in CAMERAS]
    if bad:
        raise ValueError(f"robosuite/{task}: unknown camera {bad[0]!r}; available cameras: {', '.join(CAMERAS)}")
    steps = int(max_episode_steps or 200)
    env = robosuite.make(
        task,
        robots=robots,
        controller_configs=robosuite.load_controller_config(default_controller=controller),
        has_renderer=False,
        has_offscreen_renderer=True,
        use_camera_obs=bool(cams),
        camera_names=cams or "agentview",
        camera_heights=image_size,
        camera_widths=image_size,
        horizon=steps + 1,
        ignore_done=True,
        hard_reset=False,
        reward_shaping=True,
        reward_scale=1.0,
        control_freq=control_freq,
        **suite_kwargs,
    )
    adapter = RobosuiteAdapter(env, task, cams, image_size, render_size)
    adapter.sparse_reward, adapter.terminate_on_success = bool(sparse_reward), bool(terminate_on_success)
    return TimeLimit(adapter, steps)


class RobosuiteAdapter(gym.Env):
    """A robosuite environment as a contract-following ``gymnasium.Env``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    FLIP: tuple[slice, ...] = (slice(None, None, -1),)  # robosuite renders upside down: flip rows
    TERMINATE_ON_SUCCESS = False
    sparse_reward = False
    terminate_on_success = False

    def __init__(self, env: Any, task: str, cameras: list[str], image_size: int, render_size: int,
                 progress: bool = True):
        self.env, self.task, self.cameras, self.progress = env, task, cameras, progress
        self.render_mode = "rgb_array"
        self.render_size = render_size
        self.instruction = INSTRUCTIONS.get(task, f"solve the robosuite {task} task")
        low, high = env.action_spec
        self._scale = ActionScaler(low, high)
        self._expert: Any = None
        obs = env.reset()
        self._state_keys = sorted(k for k in obs if k.endswith("proprio-state")) + \
            [k for k in ("object-state",) if k in obs]
        self.observation_space = observation_space(len(self._state(obs)), cameras, image_size)
        self.action_space = unit_action_space(len(low))

    def _state(self, obs: dict) -> np.ndarray:
        return np.concatenate([np.ravel(obs[k]) for k in self._state_keys]).astype(np.float32)

    def _obs(self, raw: dict) -> dict[str, Any]:
        obs: dict[str, Any] = {"state": self._state(raw), "instruction": self.instruction}
        if self.cameras:
            obs["pixels"] = {c: np.ascontiguousarray(raw[f"{c}_image"][self.FLIP]) for c in self.cameras}
        return obs

    def _success(self, done: bool) -> bool:
        return bool(self.env._check_success())

    def _info(self, reward: float, done: bool = False) -> dict[str, Any]:
        info: dict[str, Any] = {"success": self._success(done)}
        if self.progress:
            info["progress"] = float(np.clip(reward, 0.0, 1.0))
        return info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        saved = np.random.get_state()
        np.random.seed(int(self.np_random.integers(2**31)))
        try:
            raw = self.env.reset()
        finally:
            np.random.set_state(saved)
        self._reset_grippers()
        self._start_episode()
        return self._obs(raw), self._info(float(self.env.reward(None)))

    def _start_episode(self) -> None:
        if self._expert is not None:
            self._expert.reset()

    def expert_action(self) -> np.ndarray:
        """The scripted expert's next action from privileged simulator state (object and
        target poses); see envs/scripted_manipulation.py. Raises for tasks without one."""
        if self._expert is None:
            from envs.scripted_manipulation import SCRIPTED_TASKS, expert_for

            self._expert = expert_for(self)
            if self._expert is None:
                raise ValueError(f"{getattr(self, 'name', self.task)}: no scripted expert for this task; "
                                 f"scripted tasks: {SCRIPTED_TASKS}")
            self._expert.reset()  # created mid-episode: starts from the current state
        return self._expert()

    def _reset_grippers(self) -> None:
        """robosuite keeps a gripper's commanded opening across soft resets: zero it."""
        for robot in self.env.robots:
            grippers = robot.gripper.values() if isinstance(robot.gripper, dict) else [robot.gripper]
            for gripper in grippers:
                gripper.current_action = np.zeros_like(gripper.current_action)

    def step(self, action):
        raw, reward, done, _ = self.env.step(self._scale(action))
        info = self._info(float(reward), bool(done))
        terminated = (self.TERMINATE_ON_SUCCESS or self.terminate_on_success) and info["success"]
        reward = float(info["success"]) if self.sparse_reward else float(reward)
        return self._obs(raw), reward, terminated, False, info

    def render(self):
        camera = self.cameras[0] if self.cameras else "agentview"
        frame = self.env.sim.render(camera_name=camera, width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(frame[self.FLIP])

    def close(self):
        self.env.close()
