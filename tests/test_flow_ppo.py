"""PPO over LeRobot's flow VLAs (SmolVLA, pi0): the chunk as one decision, flow-SDE log-probs.

Tiny randomly initialised checkpoints from ``tests/vla_lerobot_helpers.py`` (chunk 8, the env
plays 4, actions 2-d, 10 denoising steps). What is checked: the semi-MDP collapse of a chunked
rollout by hand; the played positions alone are random and the packed path's log-likelihood
is the sampling one (ratio 1) yet follows new weights through the deterministic parts; a PPO
update raises the likelihood of chunks with positive advantage and lowers the others; and
``embodied-train learner=ppo policy=<SmolVLA folder>`` trains, saves a ``flow_vla`` policy that
``embodied-eval`` plays, with its bad inputs refused in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_lerobot_helpers import (ACTION, CHUNK, EXECUTE, IMAGE, MAX_DIM, STATE, pi0_checkpoint, smolvla_checkpoint,
                                 tiny_pi_gemma, tiny_vlm)

BIN = Path(sys.executable).parent
COLOURS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow")
    vlm = tiny_vlm(root / "vlm")
    return {"smolvla": smolvla_checkpoint(root / "smolvla", vlm), "pi0": pi0_checkpoint(root / "pi0", vlm)}


@pytest.fixture(params=["smolvla", "pi0"])
def net(request, folders):
    """A :class:`FlowVLAActorCritic` over each family, trainable as PPO makes it."""
    from policies.base import load_base
    from policies.vla.flow_rl import FlowVLAActorCritic

    with tiny_pi_gemma() if request.param == "pi0" else nullcontext():
        base = load_base(str(folders[request.param]))
        net = FlowVLAActorCritic(base=base, critic_hidden=(16,), seed=0)
        net.requires_grad_(True).train()
        yield net


def obs_batch(n: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(n, STATE)).astype(np.float32),
            "pixels": {"top": rng.integers(0, 256, (n, IMAGE, IMAGE, 3), dtype=np.uint8)},
            "instruction": [f"move the gripper to the {COLOURS[i % 4]} target" for i in range(n)]}


# -- the semi-MDP ---------------------------------------------------------------------------
def test_a_chunked_rollout_collapses_to_its_decisions_by_hand():
    from embodied.replay.rollout import chunk_decisions, gae

    g = 0.9
    # env 0: chunks of 3 drawn at rows 0 and 3; an episode ends at row 4 (terminated), a new chunk at 5
    # env 1: one chunk at row 0, truncated at row 1, a new chunk at row 2 running past the rollout's end
    chunk_index = np.array([[0, 0], [1, 1], [2, 0], [0, 1], [1, 2], [0, 0]])
    reward = np.array([[1, 0], [2, 1], [3, 0], [4, 0], [5, 2], [6, 3]], np.float32)
    terminated = np.zeros((6, 2), bool)
    truncated = np.zeros((6, 2), bool)
    terminated[4, 0] = True
    truncated[1, 1] = True
    final_value = np.zeros((6, 2), np.float32)
    final_value[1, 1] = 7.0
    dec = chunk_decisions(chunk_index, reward, terminated, truncated, final_value, np.array([6, 6]), g)
    assert dec.lengths.tolist() == [3, 3]
    assert dec.rows[:, 0].tolist() == [0, 3, 5] and dec.rows[:, 1].tolist() == [0, 2, 5]
    assert dec.steps[:, 0].tolist() == [3, 2, 1] and dec.steps[:, 1].tolist() == [2, 3, 1]
    np.testing.assert_allclose(dec.reward[:, 0], [1 + 2 * g + 3 * g**2, 4 + 5 * g, 6])
    np.testing.assert_allclose(dec.reward[:, 1], [0 + 1 * g, 0 + 0 * g + 2 * g**2, 3])
    np.testing.assert_allclose(dec.discount[:, 0], [g**3, g**2, g])
    assert dec.terminated[:, 0].tolist() == [False, True, False] and dec.truncated[:, 1].tolist() == [True, False, False]
    assert dec.final_value[0, 1] == 7.0

    # GAE with a per-decision discount: env 0, lambda 1, by hand
    value = np.array([[0.5, 0.0], [0.25, 0.0], [1.0, 0.0]], np.float32)
    adv, ret = gae(dec.reward, value, dec.terminated, dec.truncated, dec.final_value, np.array([2.0, 0.0]),
                   dec.discount, 1.0, lengths=dec.lengths)
    r0, r1, r2 = dec.reward[:, 0]
    want_ret = [r0 + g**3 * (r1 + 0.0), r1, r2 + g * 2.0]  # the termination at decision 1 cuts the sum
    np.testing.assert_allclose(ret[:, 0], want_ret, rtol=1e-6)
    np.testing.assert_allclose(adv[:, 0], np.array(want_ret) - value[:, 0], rtol=1e-6)

    bad = chunk_index.copy()
    bad[0, 1] = 2  # a rollout that starts mid-chunk
    with pytest.raises(ValueError, match="begin mid-chunk"):
        chunk_decisions(bad, reward, terminated, truncated, final_value, np.array([6, 6]), g)


# -- sampling and scoring --------------------------------------------------------------------
def test_only_the_played_positions_are_random_and_the_packed_path_scores_exactly(net):
    from policies.vla.flow_sde import sde_step

    sde = net.sde
    assert sde.stochastic == EXECUTE and sde.packed_size == CHUNK * MAX_DIM + sde.num_steps * EXECUTE * ACTION
    batch = net.base.preprocess(obs_batch())
    out = sde.sample(batch, generator=torch.Generator().manual_seed(0))
    velocity = sde._velocity(batch)
    with torch.no_grad():  # every step: beyond the played positions (and action dims) x follows its mean
        for i, (t, sigma) in enumerate(zip(sde.times, sde.sigmas)):
            x = out.path[:, i]
            mean, _ = sde_step(x, velocity(x, sde._time(t, x)), t, sde.dt, sigma)
            torch.testing.assert_close(out.path[:, i + 1, EXECUTE:], mean[:, EXECUTE:])
            torch.testing.assert_close(out.path[:, i + 1, :EXECUTE, ACTION:], mean[:, :EXECUTE, ACTION:])
            assert (out.path[:, i + 1, :EXECUTE, :ACTION] - mean[:, :EXECUTE, :ACTION]).abs().max() > 1e-3
    packed = sde.pack(out.path)
    assert packed.shape == (4, sde.packed_size)
    again = sde.log_prob(batch, packed)
    torch.testing.assert_close(again.detach(), out.log_prob, atol=1e-4, rtol=0)  # the ratio is 1

    # new weights: the deterministic parts are rolled again under them, never read from the path
    with torch.no_grad():
        for p in net.actor.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        rolled = sde.log_prob(batch, packed)  # deterministic parts zero in the unpacked path
        full = sde.log_prob(batch, out.path)  # deterministic parts as sampled under the old weights
    assert (rolled - out.log_prob).abs().max() > 1e-3
    torch.testing.assert_close(full, rolled)
    with pytest.raises(ValueError, match="packed flow path has"):
        sde.log_prob(batch, packed[:, :-1])


def test_ppo_raises_the_likelihood_of_chunks_with_positive_advantage(net):
    from embodied.contracts import Batch
    from embodied.learners.ppo import PPO, PPOConfig

    obs = obs_batch(8, seed=1)
    step = net.step(obs)
    assert step.action.shape == (8, CHUNK, ACTION) and np.abs(step.action).max() <= 1.0
    assert step.log_prob.shape == step.value.shape == (8,)
    cfg = PPOConfig(num_steps=8, num_envs=1, num_minibatches=1, update_epochs=2, lr=1e-4, anneal_lr=False,
                    normalize_obs=False, norm_adv=False, max_grad_norm=10.0, hidden=(16,))
    spaces = _spaces()
    learner = PPO(*spaces, cfg, policy=net)
    assert learner.net is net and learner.chunked
    ids = net.instruction_ids(obs["instruction"])
    advantage = torch.tensor([1.0, -1.0] * 4)
    batch = Batch(obs={"state": torch.as_tensor(obs["state"]), "pixels": {"top": torch.as_tensor(obs["pixels"]["top"])},
                       "instruction": ids},
                  action=torch.as_tensor(step.action[:, 0]), reward=torch.zeros(8), discount=None, next_obs={},
                  extras={"flow_path": torch.as_tensor(step.extras["flow_path"]),
                          "log_prob": torch.as_tensor(step.log_prob), "value": torch.as_tensor(step.value),
                          "advantage": advantage, "return": torch.as_tensor(step.value) + advantage})
    before = learner.losses(batch)
    torch.testing.assert_close(before["loss/policy"], -advantage.mean(), atol=1e-4, rtol=0)  # ratio exactly 1
    metrics = learner.update(batch)
    assert np.isfinite(metrics["loss/policy"]) and metrics["epochs"] >= 1
    with torch.no_grad():
        new, _, _ = net.evaluate(batch.obs, batch.extras["flow_path"])
    gain = new - batch.extras["log_prob"]
    assert gain[advantage > 0].mean() > 0 > gain[advantage < 0].mean(), gain


def _spaces():
    import envs

    env = envs.make_env("lang_reach", pixels=True, cameras=["top"], image_size=IMAGE, proprio_only=True)
    try:
        import gymnasium as gym

        obs = gym.spaces.Dict({k: env.observation_space[k] for k in ("state", "pixels", "instruction")})
        return obs, env.action_space
    finally:
        env.close()


# -- the command line ------------------------------------------------------------------------
def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PATH": str(BIN)}
    import os

    return subprocess.run([str(BIN / "embodied-train"), "+experiment=ppo_flow_vla", "learner.num_steps=16",
                           "train.num_envs=2", "learner.num_minibatches=2", "learner.update_epochs=2",
                           "learner.critic_warmup=1", "learner.hidden=[16]", "train.total_steps=96", "eval.every=96",
                           "eval.episodes=1", "eval.video_episodes=0", "checkpoint.every=96", "log.every=32",
                           "wandb.mode=disabled", *overrides],
                          cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def test_embodied_train_fine_tunes_a_smolvla_checkpoint_with_ppo(folders, tmp_path):
    run = tmp_path / "run"
    proc = _train(tmp_path, f"policy={folders['smolvla']}", f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    updates = [r for r in rows if "rollout/decisions" in r]
    assert len(updates) == 3  # 96 env steps / (16 x 2) per rollout
    for r in updates:  # one decision per chunk of 4 played steps (more where an episode ended early)
        assert r["rollout/trained_steps"] / EXECUTE <= r["rollout/decisions"] <= r["rollout/trained_steps"]
    assert updates[0]["critic_warmup"] == 1.0 and updates[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert updates[1]["critic_warmup"] == 0.0 and updates[1]["grad_norm"] > 0

    from policies import load_policy

    policy = load_policy(run)
    assert policy.kind == "flow_vla" and policy.source == str(folders["smolvla"])
    trained = dict(policy.actor.named_parameters())
    from policies.base import load_base

    start = dict(load_base(str(folders["smolvla"])).model.named_parameters())
    moved = [n for n, p in trained.items() if not torch.equal(p, start[n])]
    frozen = [n for n in trained if "vlm_with_expert.vlm" in n]
    assert moved and not set(moved) & set(frozen)  # SmolVLA's recipe: the VLM stays frozen, the expert moves

    proc = subprocess.run([str(BIN / "embodied-eval"), f"policy={run}", "env=lang_reach", "tasks=all", "episodes=1",
                           "video_episodes=0"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "MUJOCO_GL": "osmesa", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "evals").glob("*/results.json")).read_text())
    assert results["overall"]["episodes"] == 4


def test_bad_flow_vla_fine_tuning_input_is_a_one_line_error(folders, tmp_path):
    for overrides, message in [
        ([f"policy={tmp_path / 'nothing'}"], f"policy={tmp_path / 'nothing'} does not exist"),
        ([f"policy={folders['smolvla']}", "+learner.temperature=1.0"], "learner.temperature applies to token policies"),
        ([f"policy={folders['smolvla']}", "learner.num_steps=4", "learner.num_minibatches=4"],
         "2 chunk decisions per rollout do not fill learner.num_minibatches=4"),
    ]:
        proc = _train(tmp_path, *overrides, f"run_dir={tmp_path / 'bad'}")
        assert proc.returncode != 0
        said = [line for line in (proc.stdout + proc.stderr).splitlines() if message in line]
        assert said, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
