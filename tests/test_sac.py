"""SAC: each loss term moves only its own parameters, REDQ subset targets, pixels, checkpoints."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from embodied import checkpoint
from embodied.contracts import Batch
from embodied.learners.sac import SAC, SACConfig
from policies import from_spec

A = 2
ACT = gym.spaces.Box(-1, 1, (A,), np.float32)


def space(pixels: bool):
    d = {"state": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)}
    if pixels:
        d["pixels"] = gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)})
    return gym.spaces.Dict(d)


def make(pixels=False, **kw):
    cfg = dict(hidden=(32, 32), batch_size=8, feature_dim=8, channels=4)
    cfg.update(kw)
    return SAC(space(pixels), ACT, SACConfig(**cfg))


def obs(b, pixels, g):
    o = {"state": torch.randn(b, 3, generator=g)}
    if pixels:
        o["pixels"] = {"front": torch.randint(0, 256, (b, 32, 32, 3), generator=g, dtype=torch.uint8)}
    return o


def batch(b, pixels=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=obs(b, pixels, g), action=torch.rand(b, A, generator=g) * 2 - 1,
                 reward=torch.randn(b, generator=g), discount=torch.full((b,), 0.99),
                 next_obs=obs(b, pixels, g))


def grads(module):
    """Names of parameters that received a non-zero gradient."""
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def zero(sac):
    for m in (sac.actor, sac.encoder, sac.critic, sac.target):
        m.zero_grad(set_to_none=True)
    sac.log_alpha.grad = None


@pytest.mark.parametrize("pixels,encoder", [(False, "shared"), (True, "shared"), (True, "separate"),
                                            (True, "frozen")])
def test_each_loss_moves_only_its_own_parameters(pixels, encoder):
    sac = make(pixels, encoder=encoder)
    b = batch(8, pixels)
    actor_head = {n for n, _ in sac.actor.named_parameters() if not n.startswith("encoder.")}
    actor_enc = {n for n, _ in sac.actor.named_parameters() if n.startswith("encoder.")}
    critic_enc = {n for n, _ in sac.encoder.named_parameters()}  # the actor's own encoder when shared
    trains_encoder = pixels and encoder != "frozen"
    assert (sac.encoder is sac.actor.encoder) == (encoder != "separate")

    zero(sac)
    sac.critic_loss(b)[0].backward()
    assert grads(sac.critic) == {n for n, _ in sac.critic.named_parameters()}
    assert grads(sac.encoder) == (critic_enc if trains_encoder else set())
    assert not grads(sac.actor) & actor_head
    if encoder == "separate":
        assert not grads(sac.actor)
    assert not grads(sac.target) and sac.log_alpha.grad is None

    zero(sac)
    loss, logp = sac.actor_loss(b.obs)
    loss.backward()
    assert not grads(sac.critic) and not grads(sac.encoder) and not grads(sac.target)
    assert sac.log_alpha.grad is None
    assert grads(sac.actor) == actor_head | (actor_enc if encoder == "separate" else set())

    zero(sac)
    sac.alpha_loss(logp).backward()
    assert not grads(sac.actor) and not grads(sac.critic) and not grads(sac.encoder)
    assert sac.log_alpha.grad is not None and sac.log_alpha.grad.abs() > 0


def test_update_steps_networks_and_target_follows_by_polyak():
    sac = make(pixels=True, utd=3, encoder="shared")
    before = {k: v.clone() for k, v in sac.critic.state_dict().items()}
    target_before = {k: v.clone() for k, v in sac.target.state_dict().items()}
    actor_before = {k: v.clone() for k, v in sac.actor.state_dict().items()}
    m = sac.update(batch(24, pixels=True))
    for key in ("loss/critic", "loss/actor", "loss/alpha", "alpha", "q/mean", "entropy"):
        assert np.isfinite(m[key]), key
    assert sac.critic_updates == 3 and sac.updates == 1
    changed = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert changed(sac.critic.state_dict(), before) and changed(sac.actor.state_dict(), actor_before)
    w, w0, t0 = "q.0.weight", before["q.0.weight"], target_before["q.0.weight"]
    step = (sac.target.state_dict()[w] - t0).abs().max()
    assert 0 < step < (sac.critic.state_dict()[w] - w0).abs().max() + (t0 - w0).abs().max()
    with pytest.raises(ValueError, match="batch_size \\* utd = 24"):
        sac.update(batch(8, pixels=True))


def test_frozen_encoder_never_changes_and_actor_every_delays_the_actor():
    sac = make(pixels=True, encoder="frozen", actor_every=2)
    enc = {k: v.clone() for k, v in sac.encoder.state_dict().items()}
    head = sac.actor.net[0].weight.clone()
    m1 = sac.update(batch(8, True, seed=1))
    assert "loss/actor" not in m1 and torch.equal(sac.actor.net[0].weight, head)
    m2 = sac.update(batch(8, True, seed=2))
    assert "loss/actor" in m2 and not torch.equal(sac.actor.net[0].weight, head)
    for k, v in sac.encoder.state_dict().items():
        assert torch.equal(v, enc[k])


def test_targets_use_min_over_random_subset():
    sac = make(num_critics=5, num_min=2, init_temperature=1e-12)
    last = sac.target.q[-1]
    with torch.no_grad():  # target member i predicts exactly i, whatever the input
        last.weight.zero_()
        last.bias.copy_(torch.arange(5.0).view(5, 1, 1))
    b = batch(8)
    b.reward.zero_()
    b.discount.fill_(1.0)
    seen = [round(sac.critic_loss(b)[1]["q/target"].item(), 4) for _ in range(400)]
    values, counts = np.unique(seen, return_counts=True)
    # min of a random pair out of {0..4}: P(min = k) = (4 - k) / 10
    assert list(values) == [0, 1, 2, 3]
    np.testing.assert_allclose(counts / 400, [0.4, 0.3, 0.2, 0.1], atol=0.07)
    full = make(num_critics=5, num_min=5, init_temperature=1e-12)
    full.target.load_state_dict(sac.target.state_dict())
    assert all(abs(full.critic_loss(b)[1]["q/target"].item()) < 1e-6 for _ in range(20))


def test_augmentation_shifts_pixels_during_updates():
    sac = make(pixels=True)
    o = batch(8, True).obs
    a, b = sac._augment(o), sac._augment(o)
    assert a["pixels"]["front"].shape == o["pixels"]["front"].shape
    assert not torch.equal(a["pixels"]["front"], b["pixels"]["front"])
    assert torch.equal(a["state"], o["state"])
    assert make(pixels=True, augment=False)._augment(o)["pixels"]["front"] is o["pixels"]["front"]


def test_policy_exports_weights_a_remote_actor_can_load():
    sac = make(pixels=True)
    sac.update(batch(8, True))
    remote = from_spec(sac.policy().spec())
    remote.load_state_dict(sac.policy_weights())
    o = {k: (v.numpy() if torch.is_tensor(v) else {c: x.numpy() for c, x in v.items()})
         for k, v in batch(4, True).obs.items()}
    np.testing.assert_array_equal(remote.act(o, deterministic=True), sac.policy().act(o, deterministic=True))
    assert not any(k.startswith("q.") for k in sac.policy_weights())


@pytest.mark.parametrize("pixels", [False, True])
def test_checkpoint_round_trip_resumes_identically(tmp_path, pixels):
    a = make(pixels, utd=2, seed=1)
    for s in range(3):
        a.update(batch(16, pixels, seed=s))
    checkpoint.save(tmp_path, 3, {"learner": a.state_dict()})
    b = make(pixels, utd=2, seed=99)
    b.load_state_dict(checkpoint.load(tmp_path)["learner"])
    for s in range(3, 6):
        assert a.update(batch(16, pixels, seed=s)) == b.update(batch(16, pixels, seed=s))
    for k, v in a.state_dict()["critic"].items():
        assert torch.equal(v, b.state_dict()["critic"][k])
    assert b.critic_updates == 12 and b.actor_opt.state_dict()["state"][0]["step"].item() == 6


def test_same_seed_same_weights_and_caller_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = make(seed=4)
    assert torch.equal(torch.rand(3), expected)
    b, c = make(seed=4), make(seed=5)
    assert torch.equal(a.actor.net[0].weight, b.actor.net[0].weight)
    assert not torch.equal(a.actor.net[0].weight, c.actor.net[0].weight)


def test_bad_config_errors():
    with pytest.raises(ValueError, match="num_min"):
        make(num_critics=2, num_min=3)
    with pytest.raises(ValueError, match="encoder must be"):
        make(encoder="tied")
    with pytest.raises(ValueError, match="utd"):
        make(utd=0)
