"""IQL: the loss formulas on hand-computed cases, term isolation, checkpoint round trip."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from embodied import checkpoint
from embodied.contracts import Batch
import policies
from embodied.learners.iql import IQL, IQLConfig, advantage_weights, expectile_loss


def test_expectile_loss_hand_computed():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # tau=0.7: positive residuals weigh 0.7, negative ones 0.3
    want = (0.7 * 4 + 0.3 * 1 + 0.7 * 0.25 + 0.3 * 9) / 4
    assert expectile_loss(diff, 0.7).item() == pytest.approx(want)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * float((diff ** 2).mean()))


def test_advantage_weights_hand_computed_and_capped():
    adv = torch.tensor([0.0, 0.5, -1.0, 10.0])
    w = advantage_weights(adv, beta=3.0, max_weight=100.0)
    np.testing.assert_allclose(w.numpy(), [1.0, np.exp(1.5), np.exp(-3.0), 100.0], rtol=1e-6)


def spaces_for(state_dim=5, act=2, cams=None):
    obs = {"state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)}
    if cams:
        obs["pixels"] = spaces.Dict({c: spaces.Box(0, 255, (32, 32, 3), np.uint8) for c in cams})
    return spaces.Dict(obs), spaces.Box(-1, 1, (act,), np.float32)


def batch(B=32, state_dim=5, act=2, cams=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    def obs():
        o = {"state": torch.randn(B, state_dim, generator=g)}
        if cams:
            o["pixels"] = {c: torch.randint(0, 256, (B, 32, 32, 3), generator=g, dtype=torch.uint8) for c in cams}
        return o
    return Batch(obs=obs(), action=torch.rand(B, act, generator=g) * 2 - 1, reward=torch.randn(B, generator=g),
                 discount=torch.full((B,), 0.99), next_obs=obs())


# Loss-term isolation, the checkpoint round trip and the policy export: tests/test_learner_contract.py


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=(32, 32), actor_lr_steps=100)
    a = IQL(*spaces_for(), cfg)
    for i in range(3):
        a.update(batch(seed=i))
    checkpoint.save(tmp_path, 3, {"learner": a.state_dict()})
    b = IQL(*spaces_for(), cfg)
    b.load_state_dict(checkpoint.load(tmp_path)["learner"])
    assert b.steps == 3 and b.opt.param_groups[2]["lr"] == a.opt.param_groups[2]["lr"] < cfg.lr
    assert len(b.opt.state_dict()["state"]) == len(a.opt.state_dict()["state"]) > 0
    torch.manual_seed(7)
    ma = a.update(batch(seed=9))
    torch.manual_seed(7)
    mb = b.update(batch(seed=9))
    assert ma == pytest.approx(mb, rel=1e-6)
    obs = {"state": np.ones((3, 5), np.float32)}
    np.testing.assert_allclose(a.policy().act(obs, True), b.policy().act(obs, True), rtol=1e-6)


def test_policy_acts_in_bounds_with_normaliser_and_pixels():
    learner = IQL(*spaces_for(cams=["front"]), IQLConfig(hidden=(16,), feature_dim=4))
    learner.fit_normalizer(np.random.default_rng(0).normal(5.0, 2.0, (100, 5)))
    assert learner.policy().state_mean.mean().item() == pytest.approx(5.0, abs=0.5)
    obs = {"state": np.zeros((2, 5), np.float32), "pixels": {"front": np.zeros((2, 32, 32, 3), np.uint8)}}
    a = learner.policy().act(obs)
    assert a.shape == (2, 2) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    assert set(learner.policy().state_dict()) >= {"state_mean", "state_std"}  # ships with the policy
    remote = policies.from_spec(learner.policy().spec())  # what an actor process rebuilds
    remote.load_state_dict(learner.policy_weights())
    np.testing.assert_allclose(remote.act(obs, True), learner.policy().act(obs, True))
