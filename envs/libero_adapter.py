"""LIBERO tasks (``libero/<suite>/<task_id>``, e.g. ``libero/libero_spatial/0``).

Uses the ``libero`` package (PyPI distribution ``hf-libero``). Two things make it safe
to use non-interactively:

* Config: on its first import ``libero`` asks questions on stdin unless
  ``$LIBERO_CONFIG_PATH/config.yaml`` exists. Before importing it we write that file
  into a folder we control (``$EMBODIED_LIBERO_CONFIG``, default
  ``~/.cache/embodied-rl/libero``) and point ``LIBERO_CONFIG_PATH`` there, unless the
  user already set ``LIBERO_CONFIG_PATH`` to a folder holding a config.
* Assets: the scene meshes and textures are not in the package; ``libero`` would try
  to download them at first use. We look for them in ``assets_dir`` (kwarg), else
  ``$EMBODIED_LIBERO_ASSETS``, else ``~/.cache/libero/assets`` (where ``libero``
  itself downloads them) and raise a one-line error naming the download command if
  they are missing. Get them with
  ``hf download lerobot/libero-assets --repo-type dataset --local-dir <assets_dir>``.

The env is LIBERO's ``OffScreenRenderEnv`` (a robosuite env) adapted like
``robosuite/<task>``: state = proprio (+ object state), pixels from ``agentview`` /
``robot0_eye_in_hand``, flipped upright, the task's language instruction, and
``info["success"]`` from the BDDL goal. LIBERO has no progress measure, so ``info``
carries no ``progress``. Each reset starts from one of the suite's fixed initial
states (drawn with the env's seeded generator), as LIBERO's evaluation does; the
init-state files are read with ``torch.load(weights_only=True)`` and a numpy-only
allow-list, never unpickled freely.
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

ASSETS_REPO = "lerobot/libero-assets"
ASSET_SUBDIRS = ("articulated_objects", "stable_scanned_objects", "turbosquid_objects", "stable_hope_objects")
CAMERAS = ("agentview", "robot0_eye_in_hand")
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")


def default_assets_dir() -> Path:
    return Path(os.environ.get("EMBODIED_LIBERO_ASSETS", Path.home() / ".cache" / "libero" / "assets"))


def ensure_config() -> Path:
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
    wanted = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(folder / "datasets"),
        "assets": str(default_assets_dir()),
    }
    if not config.is_file() or yaml.safe_load(config.read_text()) != wanted:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(wanted))
        tmp.replace(config)
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)
    return config


def resolve_task(suite: str, task_id: int) -> Any:
    """The suite's ``task_id``-th task (a LIBERO ``Task``: name, language, bddl file...)."""
    ensure_config()
    from libero.libero import benchmark

    benchmarks = benchmark.get_benchmark_dict()
    if suite not in benchmarks:
        raise ValueError(f"libero: unknown suite {suite!r}; available: {', '.join(sorted(benchmarks))}")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order
        bench = benchmarks[suite]()
    if not 0 <= task_id < bench.n_tasks:
        raise ValueError(f"libero/{suite}: task id {task_id} out of range 0..{bench.n_tasks - 1}")
    return bench, bench.get_task(task_id)


def check_assets(assets_dir: Path) -> None:
    missing = [d for d in ASSET_SUBDIRS if not (assets_dir / d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"LIBERO assets not found in {assets_dir} (missing {missing[0]}/); download them with: "
            f"hf download {ASSETS_REPO} --repo-type dataset --local-dir {assets_dir} "
            f"(or point assets_dir= / EMBODIED_LIBERO_ASSETS at an existing copy)"
        )


def load_init_states(path: str) -> np.ndarray:
    """A LIBERO ``.pruned_init`` file (a pickled numpy array) without free unpickling."""
    import torch

    allowed = [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray,
               np.dtype, (type(np.dtype(np.float64)), "numpy.dtype[float64]")]
    with torch.serialization.safe_globals(allowed):
        states = torch.load(path, weights_only=True)
    return np.asarray(states, np.float64)


def make_libero(spec: str, *, pixels: bool = False, cameras: Sequence[str] | str | None = None,
                image_size: int = 84, max_episode_steps: int | None = None,
                assets_dir: str | os.PathLike | None = None, render_size: int = 256,
                **env_kwargs: Any) -> gym.Env:
    """``libero/<suite>/<task_id>`` -> a contract-following env (see the module doc)."""
    parts = spec.split("/")
    if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"libero/{spec}: expected libero/<suite>/<task_id>, e.g. libero/libero_spatial/0")
    suite, task_id = parts[0], int(parts[1])
    if isinstance(cameras, str):
        cameras = [cameras]
    cams = (list(cameras) if cameras is not None else ["agentview"]) if pixels else []
    bad = [c for c in cams if c not in CAMERAS]
    if bad:
        raise ValueError(f"libero/{spec}: unknown camera {bad[0]!r}; available cameras: {', '.join(CAMERAS)}")
    bench, task = resolve_task(suite, task_id)
    assets = Path(assets_dir) if assets_dir is not None else default_assets_dir()
    check_assets(assets)

    import libero.libero as libero_root
    from gymnasium.wrappers import TimeLimit
    from libero.libero.envs import OffScreenRenderEnv

    libero_root._assets_path_cache = str(assets)  # where libero's objects load meshes from
    steps = int(max_episode_steps or 300)
    control = OffScreenRenderEnv(
        bddl_file_name=bench.get_task_bddl_file_path(task_id), camera_heights=image_size,
        camera_widths=image_size, camera_names=cams or list(CAMERAS[:1]), horizon=steps + 1,
        ignore_done=True, **env_kwargs)
    init_states = load_init_states(os.path.join(
        libero_root.get_libero_path("init_states"), task.problem_folder, task.init_states_file))
    adapter = LiberoAdapter(control, task.language, init_states, cams, image_size, render_size)
    return TimeLimit(adapter, steps)


class LiberoAdapter(RobosuiteAdapter):
    """A LIBERO ``ControlEnv`` as a contract-following env; resets to fixed init states."""

    def __init__(self, control: Any, language: str, init_states: np.ndarray, cameras: list[str],
                 image_size: int, render_size: int):
        self.control, self.init_states = control, init_states
        super().__init__(control.env, "libero", cameras, image_size, render_size, progress=False)
        self.instruction = language

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        gym.Env.reset(self, seed=seed)
        self.control.reset()
        self._reset_grippers()
        index = int(self.np_random.integers(len(self.init_states)))
        raw = self.control.set_init_state(self.init_states[index])
        return self._obs(raw), self._info(0.0)
