"""The learner contract, checked on every learner (beside the env contract test).

A new learner joins with one line in ``LEARNERS``: its registry name and a small config.
Each case runs from state and from pixels + state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

import policies
from embodied import checkpoint
from embodied.contracts import Batch, PolicyStep
from embodied.learners import make_learner

LEARNERS = {
    "sac": {"hidden": [32, 32], "batch_size": 8, "feature_dim": 8, "channels": 8, "utd": 2},
    "iql": {"hidden": [32, 32], "batch_size": 8, "feature_dim": 8},
    "ppo": {"hidden": [32, 32], "num_steps": 16, "num_minibatches": 2, "update_epochs": 2, "feature_dim": 8, "channels": 8},
    "bc": {"hidden": [32, 32], "batch_size": 8, "feature_dim": 8, "channels": 8},
    "residual": {"hidden": [32, 32], "actor_hidden": [16], "num_critics": 4, "batch_size": 8, "utd": 2,
                 "actor_every": 2, "critic_warmup": 0, "feature_dim": 8, "channels": 8},
    "vla": {"hidden": [32, 32], "value_hidden": [16], "batch_size": 8, "feature_dim": 8, "channels": 8, "bins": 11,
            "text": "learned", "text_dim": 16},
}
LEARNERS.update({  # "<registry name>/<objective>": the world model's two kinds
    "world_model/repo": {"sequence_length": 6, "batch_size": 3, "embed": 8, "depth": 4, "deter": 8, "stoch": 4,
                         "hidden": 8, "head_hidden": [8], "actor_hidden": [8], "horizon": 3},
    "world_model/vagram": {"batch_size": 8, "ensemble": 3, "elites": 2, "model_hidden": [8], "model_every": 3,
                           "model_train_steps": 2, "model_batch": 8, "rollout_batch": 8, "sac_utd": 2,
                           "sac_hidden": [16], "real_ratio": 0.5},
})
LANGUAGE = {"vla"}  # read obs["instruction"]; and camera images by definition: learner=vla refuses an env without
PIXELS_ONLY = LANGUAGE | {"world_model/repo"}  # a latent model of camera frames
STATE_ONLY = {"world_model/vagram"}  # a model of the state vector
SEQUENCES = {"world_model/repo"}  # trains on windows of consecutive steps (embodied.replay.SequenceSampler)
CASES = [(name, pixels) for name in LEARNERS for pixels in (False, True)
         if (pixels or name not in PIXELS_ONLY) and not (pixels and name in STATE_ONLY)]
IDS = [f"{name}-{'pixels' if pixels else 'state'}" for name, pixels in CASES]


def obs_space(pixels: bool, language: bool = False) -> spaces.Dict:
    parts = {"state": spaces.Box(-np.inf, np.inf, (5,), np.float32)}
    if pixels:
        parts["pixels"] = spaces.Dict({"front": spaces.Box(0, 255, (32, 32, 3), np.uint8)})
    if language:
        from envs.core import instruction_space

        parts["instruction"] = instruction_space()
    return spaces.Dict(parts)


INSTRUCTIONS = ("move the gripper to the red target", "move the gripper to the blue target")


_BASE: dict[str, str] = {}


def base_folder() -> str:
    """A saved chunked BC policy (state only) on disk: the frozen base of the residual case."""
    if "path" not in _BASE:
        import tempfile

        from policies.bc import BCPolicy

        torch.manual_seed(1)
        _BASE["path"] = tempfile.mkdtemp(prefix="residual_base_")
        policies.save_policy(BCPolicy(2, 5, hidden=(16,), chunk=3), _BASE["path"])
    return _BASE["path"]


def build(name: str, pixels: bool):
    torch.manual_seed(0)
    objects = None
    if name == "residual":
        objects = {"base": policies.load_policy(base_folder()), "base_source": base_folder()}
    registry, _, objective = name.partition("/")
    kw = {**LEARNERS[name], **({"objective": objective} if objective else {})}
    space = obs_space(pixels, name in LANGUAGE)
    if name in SEQUENCES:
        space = spaces.Dict({"pixels": space["pixels"]})
    learner = make_learner(registry, space, spaces.Box(-1, 1, (2,), np.float32), objects, **kw)
    if hasattr(learner, "attach_replay"):  # model-based: the loop hands it the replay
        from test_world_model import filled_replay

        learner.attach_replay(filled_replay(dim=5))
    return learner


def numpy_obs(rows: int, pixels: bool, rng: np.random.Generator, name: str = "") -> dict:
    obs = {"state": rng.normal(size=(rows, 5)).astype(np.float32)}
    if pixels:
        obs["pixels"] = {"front": rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)}
    if name in LANGUAGE:
        obs["instruction"] = [INSTRUCTIONS[i] for i in rng.integers(0, 2, rows)]
    return obs


def batch(rows: int, pixels: bool, seed: int = 0, name: str = "") -> Batch:
    if name in SEQUENCES:  # windows: obs (B, L + 1, ...), action / reward / flags / mask (B, L)
        from test_world_model import windows

        return windows(rows, LEARNERS[name]["sequence_length"], seed)
    rng = np.random.default_rng(seed)

    def tensors(obs):
        out = {"state": torch.as_tensor(obs["state"])}
        if pixels:
            out["pixels"] = {c: torch.as_tensor(x) for c, x in obs["pixels"].items()}
        if "instruction" in obs:
            out["instruction"] = obs["instruction"]
        return out

    def column():
        return torch.as_tensor(rng.normal(size=rows), dtype=torch.float32)

    obs, action = tensors(numpy_obs(rows, pixels, rng, name)), torch.as_tensor(rng.uniform(-1, 1, (rows, 2)), dtype=torch.float32)
    reward, next_obs = column(), tensors(numpy_obs(rows, pixels, rng, name))
    # the columns of an on-policy rollout (PPO) and of residual RL; other learners ignore extras
    extras = {"log_prob": column() - 2.0, "value": column(), "advantage": column(), "return": column(),
              "base_action": action.flip(0).clone(), "next_base_action": action.roll(1, 0).clone(),
              "next_extras_known": torch.arange(rows) % 4 != 0}  # some rows end episodes: base asked afresh
    return Batch(obs=obs, action=action, reward=reward, discount=torch.full((rows,), 0.99), next_obs=next_obs,
                 extras=extras)


def params(owners) -> dict[int, torch.Tensor]:
    out = {}
    for item in owners:
        for p in (item.parameters() if isinstance(item, torch.nn.Module) else [item]):
            out[id(p)] = p
    return out


def every_parameter(learner) -> dict[int, torch.Tensor]:
    """Every tensor of the learner that can receive a gradient (modules and bare tensors)."""
    found = {}
    for value in vars(learner).values():
        if isinstance(value, torch.nn.Module):
            found.update({id(p): p for p in value.parameters()})
        elif isinstance(value, torch.Tensor) and value.requires_grad and value.is_leaf:
            found[id(value)] = value
    return found


@pytest.mark.parametrize("name, pixels", CASES, ids=IDS)
def test_each_named_loss_term_moves_only_its_own_parameters(name, pixels):
    learner = build(name, pixels)
    metrics = learner.update(batch(learner.rows_per_update, pixels, name=name))  # off the init: advantages not all 0
    owners = learner.loss_owners()
    terms = learner.losses(batch(8, pixels, seed=1, name=name))
    assert {k for k in terms if k.startswith("loss/")} == set(owners), (sorted(terms), sorted(owners))
    assert set(owners) <= set(metrics), "update() reports every loss term under its name"
    everything = every_parameter(learner)
    for term in owners:
        terms = learner.losses(batch(8, pixels, seed=1, name=name))
        for p in everything.values():
            p.grad = None
        terms[term].backward()
        moved = {i for i, p in everything.items() if p.is_leaf and p.grad is not None and p.grad.abs().sum() > 0}
        own = set(params(owners[term]))
        assert moved and moved <= own, f"{term} moved {len(moved - own)} parameters it does not own"


@pytest.mark.parametrize("name, pixels", CASES, ids=IDS)
def test_state_dict_round_trip_through_a_checkpoint_resumes_identically(name, pixels, tmp_path):
    a = build(name, pixels)
    for seed in range(2):
        a.update(batch(a.rows_per_update, pixels, seed, name=name))
    checkpoint.save(tmp_path, 0, {"learner": a.state_dict()})
    b = build(name, pixels)
    b.load_state_dict(checkpoint.load(tmp_path)["learner"])
    next_batch = batch(a.rows_per_update, pixels, seed=7, name=name)
    torch.manual_seed(3)
    ma = a.update(next_batch)
    torch.manual_seed(3)
    mb = b.update(next_batch)
    assert ma == pytest.approx(mb, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name, pixels", CASES, ids=IDS)
def test_policy_weights_load_into_a_policy_rebuilt_from_its_spec(name, pixels):
    learner = build(name, pixels)
    learner.update(batch(learner.rows_per_update, pixels, name=name))
    remote = policies.from_spec(learner.policy().spec())
    remote.load_state_dict(learner.policy_weights())
    obs = numpy_obs(4, pixels, np.random.default_rng(5), name)
    if name in SEQUENCES:
        obs.pop("state")
    want = learner.policy().act(obs, deterministic=True)
    np.testing.assert_allclose(remote.act(obs, deterministic=True), want, rtol=1e-6, atol=1e-6)
    step = remote.step(obs, deterministic=True)
    assert isinstance(step, PolicyStep) and step.action.shape == (4, 2) and step.action.dtype == np.float32
    remote.reset([0, 2])  # stateless policies accept a per-env reset
    assert learner.rows_per_update >= LEARNERS[name].get("batch_size", LEARNERS[name].get("num_steps"))
