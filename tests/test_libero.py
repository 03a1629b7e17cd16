"""LIBERO for real: every suite builds from the package-index assets and passes the env
contract; fixed initial states, the LeRobot layout (state, image orientation) and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import envs
from envs import check_env, make_env
from envs.libero_adapter import STATE_LAYOUT, installed_assets_dir


@pytest.fixture(autouse=True)
def package_assets(monkeypatch):
    """Every test here uses the assets installed from the package index, nothing else."""
    monkeypatch.delenv("EMBODIED_LIBERO_ASSETS", raising=False)


def test_assets_come_from_the_package_index():
    assets = installed_assets_dir()
    assert assets is not None and "site-packages" in str(assets)
    assert (assets / "scenes" / "libero_tabletop_base_style.xml").is_file()


@pytest.mark.parametrize("suite", ["libero_spatial", "libero_object", "libero_goal", "libero_10"])
def test_contract(suite):
    env = make_env(f"libero/{suite}/0", seed=0, pixels=True, image_size=64, max_episode_steps=8)
    try:
        assert env.observation_space["state"].shape == (8,)
        assert set(env.observation_space["pixels"].spaces) == {"agentview", "robot0_eye_in_hand"}
        check_env(env, steps=5, info_keys=("success",))
    finally:
        env.close()


def test_lerobot_layout_and_fixed_initial_states():
    from robosuite.utils.transform_utils import quat2axisangle

    env = make_env("libero/libero_object/1", seed=0, pixels=True, cameras=["agentview"], image_size=64,
                   max_episode_steps=5, init_state_id=3, init_state_stride=2)
    adapter = env.unwrapped
    try:
        assert "pick up the cream cheese and place it in the basket" == env.reset()[0]["instruction"]
        assert adapter.init_state == 3
        env.reset()
        assert adapter.init_state == 5  # advances by the stride
        obs, _ = env.reset(options={"init_state_id": 40})
        assert adapter.init_state == 40
        raw = adapter.env._get_observations(force_update=True)
        state = obs["state"]
        np.testing.assert_allclose(state[STATE_LAYOUT["eef_pos"]], raw["robot0_eef_pos"], atol=1e-4)
        np.testing.assert_allclose(state[STATE_LAYOUT["eef_axis_angle"]], quat2axisangle(raw["robot0_eef_quat"]),
                                   atol=1e-4)
        np.testing.assert_allclose(state[STATE_LAYOUT["gripper_qpos"]], raw["robot0_gripper_qpos"], atol=1e-4)
        # rotated by 180 degrees from robosuite's raw render, as LeRobot's LIBERO datasets store it
        np.testing.assert_array_equal(obs["pixels"]["agentview"], raw["agentview_image"][::-1, ::-1])
        # the same init state gives the same scene (fixture placement seeded too)
        first = env.reset(seed=1, options={"init_state_id": 7})[0]
        again = env.reset(seed=1, options={"init_state_id": 7})[0]
        np.testing.assert_array_equal(first["pixels"]["agentview"], again["pixels"]["agentview"])
        with pytest.raises(ValueError, match=r"init_state_id 50 out of range 0..49"):
            env.reset(options={"init_state_id": 50})
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert reward == 0.0 and not terminated and info == {"success": False}
    finally:
        env.close()


def test_bad_input_gives_one_line_errors(tmp_path):
    cases = [
        (dict(name="libero/libero_nope/0"), ValueError, "unknown suite 'libero_nope'; available: libero_spatial"),
        (dict(name="libero/libero_spatial/12"), ValueError, "task id 12 out of range 0..9"),
        (dict(name="libero/libero_spatial"), ValueError, "expected libero/<suite>/<task_id>"),
        (dict(name="libero/libero_goal/0", init_state_id=99), ValueError, "init_state_id 99 out of range 0..49"),
        (dict(name="libero/libero_goal/0", pixels=True, cameras=["frontview"]), ValueError,
         "unknown camera 'frontview'; available cameras: agentview, robot0_eye_in_hand"),
        (dict(name="libero/libero_goal/0", assets_dir=tmp_path / "nowhere"), FileNotFoundError,
         "does not exist; fix env.assets_dir"),
        (dict(name="libero/libero_goal/0", assets_dir=tmp_path), FileNotFoundError,
         "is not a LIBERO assets tree (no scenes/ folder"),
    ]
    for kwargs, error, message in cases:
        kwargs = dict(kwargs)
        with pytest.raises(error) as err:
            make_env(kwargs.pop("name"), **kwargs)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(tmp_path / "home"), EMBODIED_LIBERO_CONFIG=str(tmp_path / "libero_cfg"),
               PYTHONPATH=str(Path(envs.__file__).parents[1]))
    env.pop("LIBERO_CONFIG_PATH", None)
    env.pop("EMBODIED_LIBERO_ASSETS", None)
    return env


def test_import_never_prompts(tmp_path):
    """With stdin closed, an interactive prompt would die with EOFError: the import must succeed."""
    code = textwrap.dedent("""
        from envs.libero_adapter import ensure_config, resolve_task
        config = ensure_config()
        import libero.libero
        _, task = resolve_task("libero_spatial", 0)
        print(config, "|", task.language, "|", libero.libero.get_libero_path("assets"))
    """)
    out = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=120, env=_subprocess_env(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(tmp_path / "libero_cfg" / "config.yaml") in out.stdout
    assert "pick up the black bowl" in out.stdout
    assert str(installed_assets_dir()) in out.stdout  # LIBERO's own config points at the package assets
    assert not (tmp_path / "home" / ".libero").exists()  # nothing written to the user's default place


def test_config_camera_list_applies_only_with_pixels():
    from envs import kwargs_from_config

    section = {"name": "libero/libero_object/0", "pixels": False, "cameras": ["agentview"], "image_size": 64}
    assert kwargs_from_config(section) == {"pixels": False, "image_size": 64}
    assert kwargs_from_config(section, pixels=True)["cameras"] == ["agentview"]
