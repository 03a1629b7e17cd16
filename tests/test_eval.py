"""``embodied-eval`` and its library: exact episode counting, Wilson intervals, policy
sources (scripted / random / saved folders), the report files, one-line errors, and one
tiny LIBERO case (fixed initial states per episode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import policies
from embodied.evaluation import (POLICY_SOURCES, _Episodes, evaluate_suite, resolve_policy, resolve_tasks,
                                 wilson_interval)
from envs import make_env
from envs.builtin.scripted import reach_action

BIN = Path(sys.executable).parent


def test_wilson_interval_matches_hand_computed_values():
    # p = k/n, c = (p + z^2/2n) / (1 + z^2/n), h = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    np.testing.assert_allclose(wilson_interval(5, 10), (0.236593, 0.763407), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.277533), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(10, 10), (0.722467, 1.0), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(1, 4), (0.045587, 0.699358), atol=1e-6)


def test_scripted_expert_beats_random_and_intervals_bracket_the_rates():
    res = {src: evaluate_suite(resolve_policy(src, seed=0), ["reach"], 12, num_envs=3, seed=0, progress=False)
           for src in ("scripted", "random")}
    for r in res.values():
        task, overall = r["tasks"][0], r["overall"]
        assert task["episodes"] == overall["episodes"] == 12
        assert task["ci95"][0] <= task["success_rate"] <= task["ci95"][1]
        assert overall["ci95"] == task["ci95"] and overall["mean_task_success_rate"] == task["success_rate"]
        assert task["instruction"].startswith("move the gripper to the")
    scripted, random = res["scripted"]["tasks"][0], res["random"]["tasks"][0]
    assert scripted["success_rate"] > random["success_rate"]
    assert scripted["ci95"][0] > random["ci95"][1], (scripted, random)  # apart beyond the noise of 12 episodes


def test_episode_i_is_sub_env_j_s_k_th_and_exactly_n_count():
    """num_envs=3, episodes=5: sub-env j runs episodes j, j+3; episode 5 (sub-env 2's second)
    is discarded. Episodes end at success, so lengths differ and finishing order is mixed."""
    kw = {"terminate_on_success": True}
    out = evaluate_suite(resolve_policy("scripted"), ["reach"], 5, num_envs=3, seed=7, env_kwargs=kw,
                         progress=False)["tasks"][0]
    assert out["episodes"] == len(out["per_episode"]) == 5
    for j in range(3):  # replay sub-env j alone: same seed, same episodes, same lengths
        env = make_env("reach", seed=7 + j, **kw)
        for k in range(2):
            index = j + 3 * k
            obs, _ = env.reset()
            done, length = False, 0
            while not done:
                obs, _, term, trunc, _ = env.step(reach_action(obs["state"]))
                done, length = term or trunc, length + 1
            if index < 5:
                assert out["per_episode"][index]["length"] == length, (j, k)
        env.close()


def test_quota_ignores_the_order_in_which_episodes_end():
    runs = _Episodes(num_envs=3, quota=5, video_episodes=0, pixels=False)
    for env in (2, 2, 2, 1, 0, 1, 0):  # sub-env 2 is fast: its 2nd and 3rd episodes (5, 8) are past the quota
        runs.on_episode({"success": env == 0, "return": float(env), "length": 10 + env}, env)
    assert runs.complete and sorted(runs.records) == [0, 1, 2, 3, 4]
    assert [runs.records[i]["length"] for i in range(5)] == [10, 11, 12, 10, 11]


def test_saved_policy_round_trips_and_evaluates(tmp_path):
    torch.manual_seed(0)
    actor = policies.from_spec({"kind": "gaussian_actor", "action_dim": 2, "state_dim": 8, "hidden": [16, 16]})
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(torch.randn_like(p))  # not the initialisation a fresh build would give
    run = tmp_path / "run"
    policies.save_policy(actor, run / "policy", step=3)
    policies.save_policy(actor, run / "policy", step=5)
    assert [p.name for p in (run / "policy").glob("step_*")] == ["step_0000000005"]  # one version kept
    obs = {"state": np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)}
    for folder in (run, run / "policy"):  # a run folder or the policy folder itself
        loaded = policies.load_policy(folder)
        np.testing.assert_allclose(loaded.act(obs, deterministic=True), actor.act(obs, deterministic=True), atol=1e-6)
    out = evaluate_suite(resolve_policy(str(run)), ["reach"], 3, num_envs=2, progress=False)
    assert out["tasks"][0]["episodes"] == 3


def test_bad_policy_folders_and_mismatched_policies_give_one_line_errors(tmp_path):
    from embodied import checkpoint

    with pytest.raises(FileNotFoundError, match="does not exist"):
        policies.load_policy(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="policy/"):
        policies.load_policy(tmp_path)
    checkpoint.save(tmp_path / "ckpt", 1, {"learner": {"x": torch.zeros(1)}})
    with pytest.raises(ValueError, match="lacks 'spec'"):
        policies.load_policy(tmp_path / "ckpt")
    actor = policies.from_spec({"kind": "gaussian_actor", "action_dim": 2, "state_dim": 5, "hidden": [8]})
    with pytest.raises(ValueError, match="5-dim state but reach gives 8"):
        evaluate_suite(actor, ["reach"], 1, progress=False)
    with pytest.raises(ValueError, match="neither a policy source"):
        resolve_policy("nonsense")
    assert {"scripted", "random"} <= set(POLICY_SOURCES)


def _env() -> dict[str, str]:
    return dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa")


def test_cli_end_to_end_writes_the_report_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "eval"
    cmd = [str(BIN / "embodied-eval"), "env=reach", "policy=scripted", "episodes=4", "num_envs=2", f"output={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["policy"] == "scripted" and results["overall"]["episodes"] == 4
    assert results["tasks"][0]["video"] == "videos/reach.mp4"
    assert (out / "videos" / "reach.mp4").stat().st_size > 1000
    assert (out / "success.png").stat().st_size > 1000
    table = (out / "results.md").read_text()
    assert "| reach |" in table and "**overall**" in table and "| task | instruction |" in proc.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: output=") and "already holds results" in again.stderr


@pytest.mark.parametrize("overrides,message", [
    (["policy=nonsense"], "neither a policy source (scripted, random"),
    (["policy=scripted", "tasks=[0]"], "tasks=[0] needs a suite env"),
    (["policy=scripted", "episodes=0"], "episodes must be >= 1"),
    (["policy=scripted", "+bogus=1"], "unknown setting 'bogus'"),
    (["tasks=all"], "policy is required"),
])
def test_cli_bad_input_gives_one_line_errors(tmp_path, capsys, overrides, message):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR
    from embodied.cli.eval import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("eval", overrides=["env=reach", f"output={tmp_path / 'out'}", *overrides])
    with pytest.raises(SystemExit) as exit_:
        run(cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_libero_suite_tasks_and_fixed_initial_states():
    pytest.importorskip("libero")
    assert resolve_tasks("libero/libero_object/0", "all") == [f"libero/libero_object/{i}" for i in range(10)]
    assert resolve_tasks("libero/libero_goal/4", [2, 7]) == ["libero/libero_goal/2", "libero/libero_goal/7"]
    with pytest.raises(ValueError, match="not a task id of libero_10"):
        resolve_tasks("libero/libero_10/0", [10])

    seen: list[tuple] = []

    def random_recording_init_states(venv):
        policy = resolve_policy("random")(venv)
        act = policy.act
        policy.act = lambda obs, deterministic=False: (seen.append(venv.get_attr("init_state")), act(obs))[1]
        return policy

    kw = {"pixels": True, "cameras": ["agentview"], "image_size": 64, "max_episode_steps": 4}
    out = evaluate_suite(random_recording_init_states, ["libero/libero_object/0"], 2, env_kwargs=kw, progress=False)
    task = out["tasks"][0]
    assert task["episodes"] == 2 and task["mean_length"] == 4
    assert task["instruction"] == "pick up the alphabet soup and place it in the basket"
    assert [s[0] for s in seen[:4]] == [0] * 4 and [s[0] for s in seen[4:8]] == [1] * 4  # episode i: init state i
