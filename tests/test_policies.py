"""Actor networks: the JSON spec rebuilds the same policy, actions are squashed, augmentation shifts."""

import json

import numpy as np
import pytest
import torch

import policies
from embodied.contracts import Policy
from policies.actor import GaussianActor
from policies.encoders import ObsEncoder, RandomShift

CAMS = {"front": [32, 32, 3], "wrist": [40, 36, 3]}


def obs_batch(b=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(b, 4)).astype(np.float32),
            "pixels": {c: rng.integers(0, 256, size=(b, *s), dtype=np.uint8) for c, s in CAMS.items()},
            "instruction": ["pick"] * b}


def test_spec_rebuilds_the_same_policy_through_json():
    torch.manual_seed(0)
    actor = GaussianActor(3, state_dim=4, cameras=CAMS, hidden=(32, 32), feature_dim=16, channels=8)
    assert isinstance(actor, Policy) and actor.chunk_size == 1
    spec = json.loads(json.dumps(actor.spec()))
    clone = policies.from_spec(spec)
    obs = obs_batch()
    assert not np.allclose(clone.act(obs, deterministic=True), actor.act(obs, deterministic=True))
    clone.load_state_dict(actor.state_dict())
    np.testing.assert_array_equal(clone.act(obs, deterministic=True), actor.act(obs, deterministic=True))


def test_actions_are_float32_in_bounds_and_stochastic():
    actor = GaussianActor(2, state_dim=4, hidden=(16,))
    obs = {"state": np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32) * 100}
    a = actor.act(obs)
    assert a.shape == (64, 2) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    assert not np.array_equal(actor.act(obs), a)
    np.testing.assert_array_equal(actor.act(obs, deterministic=True), actor.act(obs, deterministic=True))


def test_log_prob_matches_torch_tanh_normal():
    torch.manual_seed(0)
    actor = GaussianActor(3, state_dim=4, hidden=(16,))
    feats = torch.randn(10, 4)
    g = torch.Generator().manual_seed(3)
    action, log_prob = actor(feats, generator=g)
    mean, log_std = actor.net(feats).chunk(2, -1)
    log_std = actor.log_std_min + 0.5 * (actor.log_std_max - actor.log_std_min) * (torch.tanh(log_std) + 1)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    expected = dist.log_prob(action.clamp(-0.999999, 0.999999)).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-4)


def test_random_shift_is_a_padded_crop():
    x = torch.arange(2 * 10 * 12 * 3, dtype=torch.int64).reshape(2, 10, 12, 3).to(torch.uint8)
    shifted = RandomShift(pad=2)(x, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape and shifted.dtype == torch.uint8
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2).float(), [2] * 4, mode="replicate")
    padded = padded.permute(0, 2, 3, 1).to(torch.uint8)
    offsets = []
    for b in range(2):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(padded[b, dy:dy + 10, dx:dx + 12], shifted[b])]
        assert found, "each output must be a crop of the padded image"
        offsets.append(found[0])
    many = RandomShift(pad=2)(x.repeat(16, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    assert not all(torch.equal(many[i], many[0]) for i in range(0, 32, 2))  # offsets vary per image


def test_encoder_state_only_passes_state_through():
    enc = ObsEncoder(state_dim=3)
    s = torch.randn(4, 3)
    assert enc.out_dim == 3 and torch.equal(enc({"state": s}), s)
    with pytest.raises(ValueError, match="state vector or at least one camera"):
        ObsEncoder()
    with pytest.raises(ValueError, match="H, W >= 32"):
        ObsEncoder(cameras={"front": (16, 16, 3)})


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown policy kind"):
        policies.from_spec({"kind": "nope"})
    with pytest.raises(ValueError, match="'kind'"):
        policies.from_spec({"action_dim": 2})
    with pytest.raises(ValueError, match="does not match"):
        policies.from_spec({"kind": "gaussian_actor", "action_dim": 2, "wings": 3})
    actor = GaussianActor(2, state_dim=4, cameras={"front": [32, 32, 3]}, channels=4)
    with pytest.raises(ValueError, match="batch"):
        actor.act({"state": np.zeros(4, np.float32), "pixels": {"front": np.zeros((32, 32, 3), np.uint8)}})
    with pytest.raises(ValueError, match="lacks cameras"):
        actor.act({"state": np.zeros((1, 4), np.float32), "pixels": {}})
