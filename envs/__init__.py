"""Environments of embodied-rl: one ``make_env`` for built-in MuJoCo tasks, gymnasium
MuJoCo, robosuite and LIBERO, all following ``embodied/contracts.py``.

    from envs import make_env, make_vec_env, check_env, list_envs
    env = make_env("reach", seed=0, pixels=True, cameras=["front", "top"])

Simulators are imported lazily by the factory that needs them.
"""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from envs.checker import check_env  # noqa: E402
from envs.registry import kwargs_from_config, list_envs, make_env, make_vec_env, register_env  # noqa: E402

__all__ = ["check_env", "kwargs_from_config", "list_envs", "make_env", "make_vec_env", "register_env"]
