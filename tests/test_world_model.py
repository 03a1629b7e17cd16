"""World models: each objective's terms on hand-computed cases, the dual variable, VaGraM's
cached value gradients, imagination, the distractor envs, and ``embodied-train
learner=world_model objective=...`` end to end with its one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from embodied.contracts import Transition
from embodied.learners.world_model import LatentWorldModel, MBPOWorldModel, WorldModel, WorldModelConfig
from embodied.world_models import objectives as O
from embodied.world_models.nets import Latent

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TINY_LATENT = dict(sequence_length=8, batch_size=3, embed=16, depth=4, deter=16, stoch=4, hidden=16, head_hidden=(16,),
                   actor_hidden=(16,), horizon=4)
TINY_MBPO = dict(batch_size=8, ensemble=3, elites=2, model_hidden=(16,), model_every=3, model_train_steps=2,
                 model_batch=8, rollout_batch=8, sac_utd=2, sac_hidden=(16,))


def pixel_space(size: int = 32) -> gym.spaces.Dict:
    return gym.spaces.Dict({"pixels": gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (size, size, 3), np.uint8)})})


def state_space(dim: int = 3) -> gym.spaces.Dict:
    return gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)})


ACTIONS = gym.spaces.Box(-1, 1, (2,), np.float32)


def windows(b: int = 3, length: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 5:] = False  # one window ends early (padding)
    return {"obs": {"pixels": {"front": torch.randint(0, 256, (b, length + 1, 32, 32, 3), generator=g, dtype=torch.uint8)}},
            "action": torch.rand(b, length, 2, generator=g) * 2 - 1, "reward": torch.rand(b, length, generator=g),
            "terminated": torch.zeros(b, length, dtype=torch.bool), "truncated": torch.zeros(b, length, dtype=torch.bool),
            "mask": mask, "is_first": torch.zeros(b, length, dtype=torch.bool)}


# -- the terms, by hand -------------------------------------------------------------------------
def test_kl_and_its_balance_by_hand():
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    want = math.log(2.0) + (1 + 1) / (2 * 4) - 0.5  # KL(N(0, 1) || N(1, 2^2))
    assert float(O.kl_gauss(zero, one, one, 2 * one)) == pytest.approx(want, rel=1e-6)
    post = Latent(zero, zero, zero.clone().requires_grad_(True), one.clone())
    prior = Latent(zero, zero, one.clone().requires_grad_(True), 2 * one)
    kl = O.balanced_kl(post, prior, 0.8)
    assert float(kl) == pytest.approx(want, rel=1e-6)  # the value is the KL; the balance splits its gradient
    kl.backward()
    d_post = (0.0 - 1.0) / 4  # dKL/dmean_p = (mean_p - mean_q) / var_q
    assert float(post.mean.grad) == pytest.approx(0.2 * d_post) and float(prior.mean.grad) == pytest.approx(-0.8 * d_post)


def test_the_dual_rises_while_the_kl_is_above_its_target_and_falls_below_it_slowly():
    dual = O.Dual(1e-5, 1e-4)
    start = float(dual.log_beta)
    path = []
    for _ in range(100):
        dual.update(torch.tensor(4.0 - 3.0))  # KL 4 nats, target 3
        path.append(float(dual.log_beta))
    assert all(b > a for a, b in zip([start, *path], path))
    assert path[-1] - start == pytest.approx(100 * 1e-4, rel=0.05)  # Adam: ~lr per step, slow by design
    top = path[-1]
    for _ in range(50):
        dual.update(torch.tensor(2.0 - 3.0))
    assert float(dual.log_beta) < top


def test_info_nce_vagram_and_lambda_returns_by_hand():
    z = torch.eye(2)
    want = math.log(math.e / (math.e + 1))
    assert float(O.info_nce(z, z, torch.eye(2))) == pytest.approx(want, rel=1e-6)
    grads = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, K=2, D=2)
    loss = O.vagram_loss(torch.tensor([[[1.0, 1.0]]]), torch.zeros(1, 1, 2), grads, torch.tensor([[0.5]]),
                         torch.tensor([0.0]))
    assert float(loss) == pytest.approx((0.5 + 2.0) / 2 + 0.25)  # dims: mean_k (g e)^2 = 0.5, 2
    r, d = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [0.5]])
    v = torch.tensor([[0.0], [4.0], [8.0]])
    ret = O.lambda_returns(r, v, d, 0.5)
    r1 = 2 + 0.5 * (0.5 * 8 + 0.5 * 8)
    assert ret[:, 0].tolist() == pytest.approx([1 + 0.5 * (0.5 * 4 + 0.5 * r1), r1])


def test_each_latent_objective_composes_its_terms_as_documented():
    batch = windows()
    for objective in ("recon", "repo", "infopower"):
        wm = WorldModel(pixel_space(), ACTIONS, WorldModelConfig(objective=objective, **TINY_LATENT))
        assert isinstance(wm, LatentWorldModel)
        torch.manual_seed(0)
        parts, _, _, _ = wm.model_terms(batch)
        if objective == "recon":
            want = parts["recon_nll"] + parts["reward_nll"] + parts["cont_nll"] + torch.clamp(parts["kl"], min=1.0)
            assert wm.balance == 0.8
        elif objective == "repo":
            want = parts["reward_nll"] + parts["cont_nll"] + 1e-5 * (parts["kl"] - 3.0)
            assert "recon_nll" not in parts and wm.balance == pytest.approx(5 / 6)
        else:
            c = -parts["kl"] + parts["empowerment"] - parts["reward_nll"] - parts["cont_nll"]
            torch.testing.assert_close(parts["constraint"], c)
            want = -parts["nce"] - 1.0 * (c - (-3.0))
        torch.testing.assert_close(parts["loss/model"], want, rtol=1e-5, atol=1e-6)
        if objective != "recon":  # the probe decoder never shapes the latent
            parts["loss/model"].backward()
            assert all(p.grad is None for p in wm.decoder.parameters())


def test_imagination_has_the_promised_shapes_and_reads_only_its_start_states():
    wm = WorldModel(pixel_space(), ACTIONS, WorldModelConfig(objective="infopower", **TINY_LATENT))
    _, posts, mask, _ = wm.model_terms(windows())
    start = posts.detach().map(lambda x: x[:, 0])
    torch.manual_seed(1)
    im = wm.imagine(start)
    h, n, f = wm.cfg.horizon, 3, wm.agent.rssm.feat_dim
    assert im["feat"].shape == (h + 1, n, f) and im["action"].shape == (h, n, 2)
    assert im["reward"].shape == im["discount"].shape == im["logp"].shape == (h, n)
    assert im["action"].abs().max() <= 1 and (im["discount"] <= wm.cfg.gamma).all()
    torch.testing.assert_close(im["feat"][0], start.feat)
    torch.manual_seed(1)
    again = wm.imagine(start)  # nothing but the start states and the model: the same draw gives the same rollout
    torch.testing.assert_close(again["reward"], im["reward"])
    behaviour = wm.behaviour_terms(posts, mask)
    assert torch.isfinite(behaviour["loss/actor"]) and torch.isfinite(behaviour["loss/critic"])


# -- VaGraM's cache ---------------------------------------------------------------------------------
def filled_replay(n: int = 60, dim: int = 3):
    from embodied.replay import Replay

    rng = np.random.default_rng(0)
    r = Replay(200, state_space(dim), ACTIONS)
    s = rng.normal(size=dim).astype(np.float32)
    for i in range(n):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        nxt = (s + 0.1 * np.pad(a, (0, max(0, dim - 2)))[:dim]).astype(np.float32)
        r.add(Transition(obs={"state": s}, action=a, reward=float(-np.abs(nxt).sum()), next_obs={"state": nxt},
                         terminated=False, truncated=i % 20 == 19, is_first=i % 20 == 0, episode_id=i // 20,
                         step=i % 20))
        s = nxt if i % 20 != 19 else rng.normal(size=dim).astype(np.float32)
    return r


def real_batch(rows: int, dim: int = 3, seed: int = 0):
    from embodied.contracts import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch(obs={"state": torch.randn(rows, dim, generator=g)}, action=torch.rand(rows, 2, generator=g) * 2 - 1,
                 reward=torch.randn(rows, generator=g), discount=torch.full((rows,), 0.99),
                 next_obs={"state": torch.randn(rows, dim, generator=g)})


def test_cached_value_gradients_are_refreshed_after_the_model_retrains():
    wm = WorldModel(state_space(), ACTIONS, WorldModelConfig(objective="vagram", **TINY_MBPO))
    assert isinstance(wm, MBPOWorldModel)
    wm.attach_replay(filled_replay())
    wm.update(real_batch(wm.rows_per_update))  # update 0: a retrain fills the cache
    cached = wm.cache_valid.nonzero().squeeze(-1)
    assert cached.numel() > 0 and wm.retrains == 1
    slots = cached[:4]
    stored = wm.cache[slots].clone()
    nxt = torch.as_tensor(wm.replay.next_obs_at(slots.numpy())["state"])
    for i in range(2):  # SAC moves the critics; the cache keeps the gradients of the retrain's critics
        wm.update(real_batch(wm.rows_per_update, seed=i + 1))
    torch.testing.assert_close(wm.cache[slots], stored)
    now = wm.value_grads(nxt)
    assert (now - stored).abs().max() > 1e-6  # the critics did move
    wm.update(real_batch(wm.rows_per_update, seed=9))  # update 3: a retrain clears the cache and refills it
    assert wm.retrains == 2
    refreshed = wm.cache_valid[slots]
    assert refreshed.any() and not torch.allclose(wm.cache[slots][refreshed], stored[refreshed])
    wm.retrain()  # right after a retrain, every cached gradient is the current critics'
    valid = wm.cache_valid.nonzero().squeeze(-1)
    nxt = torch.as_tensor(wm.replay.next_obs_at(valid.numpy())["state"])
    torch.testing.assert_close(wm.cache[valid], wm.value_grads(nxt), rtol=1e-5, atol=1e-6)


def test_vagram_weights_the_model_error_by_the_value_gradient():
    """An error in a dimension the value ignores costs VaGraM nothing; the same error where it matters does."""
    wm = WorldModel(state_space(), ACTIONS, WorldModelConfig(objective="vagram", **TINY_MBPO))
    wm.attach_replay(filled_replay())
    wm.retrains = 2  # past the first retrain: no MSE added
    grads = torch.zeros(8, wm.K, 3)
    grads[:, :, 0] = 1.0  # only dim 0 matters to the value
    wm.cache[:8], wm.cache_valid[:8] = grads, True
    rows = {"state": torch.zeros(1, 8, 3), "action": torch.zeros(1, 8, 2), "reward": torch.zeros(1, 8),
            "cont": torch.ones(1, 8), "slot": torch.arange(8)[None]}
    mean, _, _ = wm.model(rows["state"][0], rows["action"][0])
    base = {**rows, "next_state": (mean[:1, :, :3]).detach()}  # a perfect delta prediction for member 0
    off = {**base, "next_state": base["next_state"] + torch.tensor([0.0, 5.0, 5.0])}  # error where dV/ds = 0
    bad = {**base, "next_state": base["next_state"] + torch.tensor([5.0, 0.0, 0.0])}
    rows_e = lambda r: {k: v.expand(wm.cfg.ensemble, *v.shape[1:]) if v.ndim > 1 else v for k, v in r.items()}  # noqa: E731
    loss_off, loss_bad = wm.model_loss(rows_e(off)), wm.model_loss(rows_e(bad))
    assert float(loss_bad) > float(loss_off) + 5


# -- distractor envs ------------------------------------------------------------------------------------
def test_moving_backgrounds_replace_only_the_table_and_move_every_step():
    import envs
    from envs.distractors import key_mask

    kw = dict(pixels=True, cameras=["top"], image_size=48)
    plain = envs.make_env("reach", **kw)
    busy = envs.make_env("reach", background="a", moving_distractors=3, **kw)
    other = envs.make_env("reach", background="b", **kw)
    p, _ = plain.reset(seed=3)
    b, _ = busy.reset(seed=3)
    o, _ = other.reset(seed=3)
    table = np.all(np.abs(p["pixels"]["top"].astype(int) - p["pixels"]["top"][0, 0].astype(int)) < 30, -1)
    objects = ~table
    assert objects.sum() > 20
    np.testing.assert_array_equal(b["pixels"]["top"][objects], p["pixels"]["top"][objects])  # objects drawn as before
    assert (b["pixels"]["top"][table] != p["pixels"]["top"][table]).any(-1).mean() > 0.9
    assert key_mask(b["pixels"]["top"]).sum() == 0
    frames = [b["pixels"]["top"]]
    for _ in range(3):
        frames.append(busy.step(np.zeros(2, np.float32))[0]["pixels"]["top"])
    assert all((f1[table] != f0[table]).any(-1).mean() > 0.2 for f0, f1 in zip(frames, frames[1:]))
    warm = b["pixels"]["top"][table].mean(0)
    cool = o["pixels"]["top"][table].mean(0)
    assert warm[0] > warm[2] and cool[2] > cool[0]  # the switch: palette a is warm, b cool
    again = envs.make_env("reach", background="a", moving_distractors=3, **kw).reset(seed=3)[0]
    np.testing.assert_array_equal(again["pixels"]["top"], b["pixels"]["top"])
    with pytest.raises(ValueError, match="moving_distractors move across the background layer"):
        envs.make_env("reach", moving_distractors=2, **kw)


def test_distractor_dimensions_are_chaotic_switching_and_ignore_the_task():
    import envs

    a = envs.make_env("reach", distractor_dims=10)
    b = envs.make_env("reach", distractor_dims=10)
    oa, _ = a.reset(seed=0)
    ob, _ = b.reset(seed=0)
    assert oa["state"].shape == (18,) and a.observation_space["state"].shape == (18,)
    rng = np.random.default_rng(0)
    xs = []
    for _ in range(1000):
        oa = a.step(rng.uniform(-1, 1, 2))[0]
        ob = b.step(-rng.uniform(-1, 1, 2))[0]  # other actions: the task part differs, the distractors do not
        np.testing.assert_array_equal(oa["state"][8:], ob["state"][8:])
        xs.append(oa["state"][8:])
    xs = np.array(xs)
    switches = a.get_wrapper_attr("resets")
    assert np.abs(xs).max() <= 20 and switches >= 1  # grows, then switches back
    assert np.abs(np.corrcoef(xs[:, 0], xs[:, 1])[0, 1]) < 0.99


# -- the command line ---------------------------------------------------------------------------------
def train(tmp: Path, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "embodied-train"), "learner=world_model", "train.warmup_steps=60",
                           "train.learning_starts=60", "eval.episodes=1", "log.every=40", "wandb.mode=disabled",
                           *overrides], cwd=tmp, env=ENV, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


LATENT_CLI = ["env.pixels=true", "env.image_size=32", "learner.sequence_length=10", "learner.batch_size=4",
              "learner.embed=16", "learner.depth=4", "learner.deter=16", "learner.stoch=4", "learner.hidden=16",
              "learner.head_hidden=[16]", "learner.actor_hidden=[16]", "learner.horizon=4", "learner.train_every=4",
              "+env.background=a", "+env.moving_distractors=2"]
MBPO_CLI = ["+env.distractor_dims=4", "learner.model_every=40", "learner.model_train_steps=4", "learner.rollout_batch=16",
            "learner.sac_utd=2", "learner.batch_size=16", "learner.ensemble=3", "learner.elites=2",
            "learner.model_hidden=[16]", "learner.sac_hidden=[16]"]


@pytest.mark.parametrize("objective", ["recon", "repo", "infopower", "mle", "vagram"])
def test_each_objective_trains_through_embodied_train_and_resumes(objective, tmp_path):
    flags = LATENT_CLI if objective in ("recon", "repo", "infopower") else MBPO_CLI
    run = tmp_path / "run"
    common = [f"objective={objective}", *flags, f"run_dir={run}", "checkpoint.every=120", "eval.every=120",
              "eval.video_episodes=1"]
    train(tmp_path, *common, "train.total_steps=120")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss/critic" in r]
    assert trained and all(np.isfinite(r["loss/critic"]) for r in trained)
    assert (run / "learning_curve.png").exists()
    videos = sorted(p.name for p in (run / "videos").glob("*.mp4"))
    if objective in ("recon", "repo", "infopower"):
        assert any(v.startswith("imagined_") for v in videos), videos  # predicted vs real frames
        assert "dual" in trained[-1] if objective != "recon" else "recon_nll" in trained[-1]
    else:
        assert "model/value_error" in json.dumps(rows)
    train(tmp_path, *common, "train.total_steps=160", "resume=true")
    after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in after) == 160 and json.loads((run / "result.json").read_text())["eval/episodes"] == 1


def test_bad_world_model_input_is_a_one_line_error(tmp_path):
    cases = [
        (["objective=repo", "env.pixels=false", "learner.inputs=[state]"], "objective=repo learns a latent model of camera frames"),
        (["objective=repo", *LATENT_CLI, "learner.sequence_length=80"],
         "learner.sequence_length=80 is longer than env reach's episodes (50 steps)"),
        (["objective=vagram", "env.pixels=true", "env.image_size=32", "learner.inputs=[pixels]"],
         "objective=vagram models the state vector"),
        (["objective=repo", *LATENT_CLI, f"train.adapt_from={tmp_path}"],
         f"train.adapt_from={tmp_path} holds no saved source replay"),
    ]
    for overrides, message in cases:
        proc = train(tmp_path, *overrides, f"run_dir={tmp_path / 'bad'}", "train.total_steps=10", ok=False)
        assert proc.returncode != 0
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if message in line]
        assert lines, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


def test_repo_adapts_only_its_encoder_to_a_new_background_from_the_saved_source_replay(tmp_path):
    source, target = tmp_path / "source", tmp_path / "adapted"
    train(tmp_path, "objective=repo", *LATENT_CLI, f"run_dir={source}", "train.total_steps=120", "checkpoint.every=120",
          "eval.every=120", "eval.video_episodes=0")
    switched = [f for f in LATENT_CLI if not f.startswith("+env.background")] + ["+env.background=b"]
    train(tmp_path, "objective=repo", *switched, f"train.adapt_from={source}", f"run_dir={target}",
          "train.total_steps=80", "checkpoint.every=80", "eval.every=80", "eval.video_episodes=0")
    rows = [json.loads(line) for line in (target / "metrics.jsonl").read_text().splitlines()]
    adapted = [r for r in rows if "adapt/kl" in r]
    assert adapted and not any("loss/actor" in r for r in rows)  # only the adaptation step ran
    assert all(np.isfinite(r["adapt/inverse_nll"]) for r in adapted)
    from policies import load_policy

    before, after = load_policy(source).state_dict(), load_policy(target).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"encoder"}, changed  # the RSSM and the actor are the source's


def test_edac_diversity_is_the_mean_pairwise_cosine_of_the_members_action_gradients():
    from embodied.learners.sac import SAC, SACConfig

    sac = SAC(state_space(), ACTIONS, SACConfig(hidden=(8,), num_critics=3, num_min=3, critic_diversity=1.0))
    feats, action = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    div = sac.critic.diversity(feats, action)
    grads = []
    for e in range(3):  # each member's gradient, one at a time
        a = action.clone().requires_grad_(True)
        q = sac.critic(feats, a)[e].sum()
        (g,) = torch.autograd.grad(q, a)
        grads.append(g / g.norm(dim=-1, keepdim=True))
    want = sum((grads[i] * grads[j]).sum(-1) for i in range(3) for j in range(3) if i != j) / 2
    torch.testing.assert_close(div, want.mean(), rtol=1e-5, atol=1e-6)
    div.backward()  # it trains the critics
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sac.critic.parameters())


def test_ravl_trains_offline_on_a_dataset_with_ten_diverse_critics(tmp_path):
    subprocess.run([str(BIN / "embodied-make-dataset"), "env=reach", "kinds=[scripted]", "steps=300",
                    f"output={tmp_path / 'data'}"], cwd=tmp_path, env=ENV, check=True, capture_output=True, timeout=600)
    run = tmp_path / "ravl"
    proc = subprocess.run([str(BIN / "embodied-train"), "+experiment=ravl", f"train.dataset={tmp_path / 'data' / 'scripted'}",
                           "train.offline_updates=30", "learner.model_every=20", "learner.model_train_steps=5",
                           "learner.rollout_batch=16", "learner.batch_size=16", "learner.sac_hidden=[16]",
                           "learner.model_hidden=[16]", "learner.ensemble=3", "learner.elites=2", "eval.episodes=1",
                           "eval.video_episodes=0", "log.every=10", "checkpoint.every=30", "wandb.mode=disabled",
                           f"run_dir={run}"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    offline = [r for r in rows if "offline/q/diversity" in r]
    assert offline and all(np.isfinite(r["offline/q/diversity"]) for r in offline)
    assert max(r.get("offline/model/retrains", 0) for r in rows) >= 2
    from embodied import checkpoint

    state = checkpoint.load(checkpoint.latest(run / "checkpoints"))["learner"]
    assert state["sac"]["critic"]["q.0.weight"].shape[0] == 10  # ten critics


def test_a_ridge_probe_reads_out_a_linear_signal_and_not_noise():
    from embodied.world_models.probe import ridge_r2

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8))
    signal = x @ rng.normal(size=(8, 2)) + 0.01 * rng.normal(size=(600, 2))
    noise = rng.normal(size=(600, 2))
    assert ridge_r2(x[:400], signal[:400], x[400:], signal[400:]).min() > 0.99
    assert ridge_r2(x[:400], noise[:400], x[400:], noise[400:]).max() < 0.05


def test_the_probe_filters_each_episode_afresh_as_the_policy_does():
    import envs
    from embodied.world_models.probe import collect_episodes, latent_features, probe_r2, reach_targets
    from policies.world_model import LatentPolicy

    env = envs.make_env("reach", seed=0, pixels=True, cameras=["top"], image_size=32, background="a",
                        moving_distractors=2, max_episode_steps=5)
    data = collect_episodes(env, episodes=3, seed=0, targets=reach_targets, progress=False)
    assert data["pixels"]["top"].shape == (15, 32, 32, 3)
    assert data["first"].nonzero()[0].tolist() == [0, 5, 10]
    assert data["targets"]["gripper"].shape == (15, 2) and data["targets"]["discs"].shape == (15, 4)
    assert data["targets"]["background"].shape == (15, 12)  # 2 x 2 quadrants' mean RGB of the layer alone
    assert not np.allclose(data["targets"]["background"][1], data["targets"]["background"][0])  # it drifts
    assert (data["prev_action"][[0, 5, 10]] == 0).all() and (data["prev_action"][1:5] != 0).all()
    torch.manual_seed(0)
    policy = LatentPolicy(2, 0, {"top": (32, 32, 3)}, embed=16, depth=4, deter=8, stoch=4, hidden=16,
                          actor_hidden=(16,)).eval()
    feats = latent_features(policy, data)
    assert feats.shape == (15, 12)
    for t in (0, 5, 10):  # an episode's first frame filtered alone, from h = 0, as the policy's first step
        step = policy.step({"pixels": {"top": data["pixels"]["top"][t:t + 1]}}, deterministic=True)
        assert np.allclose(feats[t], step.state.latent.feat[0].numpy(), atol=1e-6)
    assert not np.allclose(feats[1], feats[0])
    with pytest.raises(ValueError, match="held-out"):
        probe_r2(feats, data, train_episodes=3)
    more = collect_episodes(env, episodes=12, seed=1, targets=reach_targets, progress=False)
    r2 = probe_r2(np.c_[more["targets"]["gripper"], more["targets"]["target"]], more, train_episodes=8)
    assert r2["gripper"] > 0.95 and r2["target"] > 0.95  # a latent that is the targets reads them out
    assert r2["discs"] < 0.5 and r2["background"] < 0.5  # and not the distractors, which move on their own
