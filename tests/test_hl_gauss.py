"""HL-Gauss classification critics: targets on hand cases, the loss, and the option in SAC and IQL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from embodied import checkpoint
from embodied.learners import make_learner
from embodied.learners.hl_gauss import HLGauss
from test_learner_contract import batch, obs_space


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_two_bins_by_hand_and_clipping_into_the_range():
    hl = HLGauss(0.0, 2.0, num_bins=2, sigma_ratio=0.75)  # edges 0, 1, 2; sigma 0.75
    np.testing.assert_allclose(hl.target_probs(torch.tensor(1.0)).numpy(), [0.5, 0.5], rtol=1e-6)
    y, s = 0.5, 0.75
    total = phi((2 - y) / s) - phi((0 - y) / s)
    want = [(phi((1 - y) / s) - phi((0 - y) / s)) / total, (phi((2 - y) / s) - phi((1 - y) / s)) / total]
    np.testing.assert_allclose(hl.target_probs(torch.tensor(y)).numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(hl.target_probs(torch.tensor(7.0)).numpy(), hl.target_probs(torch.tensor(2.0)).numpy())
    np.testing.assert_allclose(hl.centres.numpy(), [0.5, 1.5])


def test_probabilities_sum_to_one_and_their_expectation_recovers_the_target_inside_the_range():
    hl = HLGauss(-10.0, 10.0, num_bins=51)
    y = torch.linspace(-12.0, 12.0, 97)
    p = hl.target_probs(y)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, rtol=1e-5)
    inside = (y > -10 + 4 * hl.sigma) & (y < 10 - 4 * hl.sigma)  # 4 sigma from the ends: no truncation to speak of
    np.testing.assert_allclose((p @ hl.centres)[inside].numpy(), y[inside].numpy(), atol=1e-4)
    # the value of logits = log p is that expectation; the loss there is the entropy of p and flat
    logits = p.log().clamp(min=-50).requires_grad_(True)
    loss = hl.loss(logits, y)
    np.testing.assert_allclose(hl.value(logits)[inside].detach().numpy(), y[inside].numpy(), atol=1e-4)
    np.testing.assert_allclose(loss.detach().numpy(), -(p * p.log().clamp(min=-50)).sum(-1).numpy(), rtol=1e-4)
    loss.sum().backward()
    assert logits.grad.abs().max() < 1e-5
    with pytest.raises(ValueError, match="v_max > v_min"):
        HLGauss(1.0, 1.0)


@pytest.mark.parametrize("name, settings", [
    ("sac", {"hidden": [32, 32], "batch_size": 8, "feature_dim": 8, "channels": 8, "num_critics": 4}),
    ("iql", {"hidden": [32, 32], "batch_size": 8, "feature_dim": 8}),
])
@pytest.mark.parametrize("pixels", [False, True])
def test_sac_and_iql_train_hl_gauss_critics_and_resume_them(name, settings, pixels, tmp_path):
    kw = {**settings, "critic_head": "hl_gauss", "v_min": -5.0, "v_max": 5.0, "num_bins": 21}

    def build():
        torch.manual_seed(0)
        return make_learner(name, obs_space(pixels), spaces.Box(-1, 1, (2,), np.float32), **kw)

    a = build()
    critic = a.critic if name == "sac" else a.q
    assert critic.hl is not None and critic.hl.num_bins == 21
    rows = a.rows_per_update
    metrics = a.update(batch(rows, pixels))
    assert np.isfinite(list(metrics.values())).all()
    feats = torch.zeros(3, (a.encoder.out_dim))
    q = critic(feats, torch.zeros(3, 2)) if name == "sac" else critic(torch.zeros(3, a.encoder.out_dim + 2))
    assert q.shape == (4 if name == "sac" else 2, 3) and ((q >= -5) & (q <= 5)).all(), "a value is an expectation"
    checkpoint.save(tmp_path, 0, {"learner": a.state_dict()})
    b = build()
    b.load_state_dict(checkpoint.load(tmp_path)["learner"])
    nxt = batch(rows, pixels, seed=7)
    torch.manual_seed(3)
    ma = a.update(nxt)
    torch.manual_seed(3)
    assert b.update(nxt) == pytest.approx(ma, rel=1e-6, abs=1e-7)


def test_an_hl_gauss_sac_run_through_the_cli(tmp_path):
    from test_train_cli import TINY, run_train

    run_train(TINY + ["learner.critic_head=hl_gauss", "learner.v_max=60", "wandb.mode=disabled"], tmp_path / "run")
    state = checkpoint.load(tmp_path / "run" / "checkpoints")
    assert any(k.endswith("hl.centres") for k in state["learner"]["critic"])
