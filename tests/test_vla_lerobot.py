"""LeRobot's flow VLAs (SmolVLA, pi0) as project policies, and their flow-SDE log-probs.

Tiny randomly initialised checkpoints for ``lang_reach`` (top camera 64 px, proprio 4, actions 2),
built offline and saved as ``lerobot-train`` saves them (``tests/vla_lerobot_helpers.py``), load
through :class:`policies.lerobot_policy.LeRobotPolicy` with their own pre/post-processors, act
in ``embodied-eval`` and pass ``check_base``; :class:`policies.vla.flow_sde.FlowSDE` samples them
along the flow SDE and recomputes the log-likelihood of a stored path under new weights.
pi0_fast is not covered: it needs the FAST action tokenizer, remote code fetched from the hub
(``trust_remote_code``), and it decodes tokens, so it has token log-probs rather than a flow SDE.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_lerobot_helpers import (ACTION, CHUNK, ENV, EXECUTE, IMAGE, MAX_DIM, STATE, pi0_checkpoint,
                                       smolvla_checkpoint, tiny_pi_gemma, tiny_vlm)

FAMILIES = ["smolvla", "pi0"]
COLOURS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vla")
    vlm = tiny_vlm(root / "vlm")
    return {"vlm": vlm, "smolvla": smolvla_checkpoint(root / "smolvla", vlm), "pi0": pi0_checkpoint(root / "pi0", vlm)}


@pytest.fixture(params=FAMILIES)
def vla(request, folders):
    """``(family, checkpoint folder)``; a pi0 loads inside :func:`tiny_pi_gemma`."""
    with tiny_pi_gemma() if request.param == "pi0" else nullcontext():
        yield request.param, folders[request.param]


@pytest.fixture(scope="module")
def lang_reach_spaces():
    import envs

    env = envs.make_env("lang_reach", **ENV)
    try:
        yield env.observation_space, env.action_space
    finally:
        env.close()


def obs_batch(colours=COLOURS, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = len(colours)
    return {"state": rng.normal(size=(n, STATE)).astype(np.float32),
            "pixels": {"top": rng.integers(0, 256, (n, IMAGE, IMAGE, 3), dtype=np.uint8)},
            "instruction": [f"move the gripper to the {c} target" for c in colours]}


def one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text.strip(), text
    return text


# -- loading and acting -----------------------------------------------------------------------
def test_a_flow_vla_loads_with_its_processors_and_acts_as_lerobot_does(vla, lang_reach_spaces):
    """Deterministic acting is LeRobot's own chunk from zero noise; the instruction reaches the
    model as ``task``; the base fits lang_reach and refuses an env without its camera."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    from policies.base import check_base, load_base

    family, folder = vla
    base = load_base(str(folder))
    assert base.config.type == family and base.chunk_size == CHUNK and base.n_action_steps == EXECUTE
    assert base.io() == {"action_dim": ACTION, "state_dim": STATE, "cameras": {"top": (IMAGE, IMAGE, 3)}}
    check_base(base, *lang_reach_spaces, family)
    obs = obs_batch()
    ours = base.act(obs)
    assert ours.shape == (3, CHUNK, ACTION) and ours.dtype == np.float32 and np.abs(ours).max() <= 1.0
    # the same through LeRobot's API by hand
    model = get_policy_class(family).from_pretrained(str(folder)).eval()
    pre, post = make_pre_post_processors(model.config, pretrained_path=str(folder))
    batch = pre({"observation.state": torch.as_tensor(obs["state"]),
                 "observation.images.top": torch.as_tensor(obs["pixels"]["top"]).permute(0, 3, 1, 2).float() / 255,
                 "task": obs["instruction"]})
    with torch.no_grad():
        want = post(model.predict_action_chunk(batch, noise=torch.zeros(3, CHUNK, MAX_DIM))).clamp(-1, 1).numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(base.act(obs), ours)  # deterministic: zero noise
    assert np.abs(base.act(obs, deterministic=False) - ours).max() > 1e-3  # a seeded draw otherwise
    other = base.act({**obs, "instruction": ["move the gripper to the yellow target"] * 3})
    assert np.abs(other - ours).max() > 1e-4  # the instruction is read
    assert not any(p.requires_grad for p in base.model.parameters())

    import envs

    env = envs.make_env("lang_reach", **{**ENV, "cameras": ["front"]})
    try:
        with pytest.raises(ValueError, match="reads camera 'top', the env has \\['front'\\]") as err:
            check_base(base, env.observation_space, env.action_space, family)
    finally:
        env.close()
    assert "env.cameras" in one_line_error(err)
    with pytest.raises(ValueError, match="reads observation.images.top") as err:
        base.act({**obs, "pixels": {"front": obs["pixels"]["top"]}})
    one_line_error(err)


def test_the_cached_denoise_step_gives_the_training_forwards_velocity(vla):
    """The inference path (prefix K/V cached once, then the expert per step; on transformers
    >= 5.6 through :func:`policies.lerobot_policy.lerobot_compat`) gives the velocity that the
    training forward (prefix and suffix in one pass, no cache) gives, at a first and a second
    step: the second shows that the cache is back to the prefix after the first."""
    from policies.base import load_base
    from policies.vla.flow_sde import FlowSDE

    family, folder = vla
    base = load_base(str(folder))
    model = base.model
    batch = base.preprocess(obs_batch())
    velocity = FlowSDE(model)._velocity(batch)
    if family == "smolvla":
        images, img_masks = model.prepare_images(batch)
    else:
        images, img_masks = model._preprocess_images(batch)
    state = model.prepare_state(batch)
    tokens, masks = batch["observation.language.tokens"], batch["observation.language.attention_mask"]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in (1.0, 0.4):
            x = torch.randn(3, CHUNK, MAX_DIM, generator=gen)
            time = torch.full((3,), t)
            cached = velocity(x, time)
            # forward's loss is (u - v)^2 with u = noise - action at x_t = t noise + (1 - t) action;
            # u = 0 and u = 1 at the same x_t give v = (loss_0 - loss_1 + 1) / 2
            loss0 = model.model.forward(images, img_masks, tokens, masks, state, x, x, time)
            loss1 = model.model.forward(images, img_masks, tokens, masks, state, x - t, x + (1 - t), time)
            np.testing.assert_allclose(cached.numpy(), ((loss0 - loss1 + 1) / 2).numpy(), atol=1e-5)


def test_embodied_eval_plays_a_flow_vla_on_lang_reach_and_refuses_a_missing_camera(vla, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR
    from embodied.cli.eval import run

    family, folder = vla
    env = ["env=lang_reach", "env.max_episode_steps=3", f"policy={folder}", "episodes=1", "video_episodes=0"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        good = compose("eval", overrides=[*env, f"output={tmp_path / 'good'}"])
        bad = compose("eval", overrides=[*env, "env.cameras=[front]", f"output={tmp_path / 'bad'}"])
    out = run(good)["tasks"][0]
    assert out["episodes"] == 1 and 1 <= out["mean_length"] <= 3
    assert json.loads((tmp_path / "good" / "results.json").read_text())["tasks"][0]["episodes"] == 1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(bad)
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith(("eval:", "lang_reach:"))]
    assert len(err) == 1 and err[0].startswith("error: ") and "reads camera 'top'" in err[0], err
    assert not (tmp_path / "bad" / "results.json").exists()


def test_a_checkpoint_of_unknown_type_unreadable_vlm_or_no_weights_is_a_one_line_error(folders, tmp_path):
    """Each is one line naming what to fix."""
    from policies.base import load_base

    def edited(name: str, **fields) -> Path:
        folder = tmp_path / name
        shutil.copytree(folders["smolvla"], folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **fields}))
        return folder

    with pytest.raises(ValueError, match="config.json has type='smolvla_v9', which lerobot .* does not know") as err:
        load_base(str(edited("unknown", type="smolvla_v9")))
    assert "known: act," in one_line_error(err) and "fix the type" in str(err.value)
    missing = str(tmp_path / "no_vlm_here")
    with pytest.raises(ValueError, match="builds its VLM from vlm_model_name=") as err:
        load_base(str(edited("no_vlm", vlm_model_name=missing)))
    assert missing in one_line_error(err) and "point vlm_model_name" in str(err.value)
    weightless = edited("weightless")
    (weightless / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors there") as err:
        load_base(str(weightless))
    one_line_error(err)


# -- flow-SDE log-probs ------------------------------------------------------------------------
def test_sigma_schedule_and_sde_step_by_hand():
    from types import SimpleNamespace

    from policies.vla.flow_sde import FlowSDE, gaussian_log_prob, sde_step, sigma_schedule

    sigmas = sigma_schedule(10, 0.5)
    assert len(sigmas) == 10
    assert sigmas[0] == pytest.approx(0.5 * math.sqrt(10))  # t = 1 divides by 1 - t_1 = 0.1
    assert sigmas[1] == pytest.approx(1.5)  # 0.5 * sqrt(0.9 / 0.1)
    assert sigmas[9] == pytest.approx(0.5 / 3)  # 0.5 * sqrt(0.1 / 0.9)
    # x = 1, v = 2, t = 0.5, dt = -0.1, sigma = 0.5: 1 - 0.1 * (2 + 0.25 / 1 * (1 + 0.5 * 2)) = 0.75
    mean, std = sde_step(torch.tensor([1.0]), torch.tensor([2.0]), 0.5, -0.1, 0.5)
    assert mean.item() == pytest.approx(0.75) and std == pytest.approx(0.5 * math.sqrt(0.1))
    assert gaussian_log_prob(torch.tensor([1.0]), torch.tensor([0.0]), 2.0).item() == pytest.approx(
        -1 / 8 - math.log(2) - 0.5 * math.log(2 * math.pi))
    with pytest.raises(ValueError, match="LeRobot flow policies"):
        FlowSDE(SimpleNamespace(config=SimpleNamespace(type="act")))


def test_the_flow_sde_keeps_the_odes_marginals_on_a_gaussian():
    """With the exact velocity of data N(1.5, 0.3^2) the SDE ends at that distribution; the
    same noise without the drift correction (or with its sign flipped) does not."""
    from policies.vla.flow_sde import sde_step, sigma_schedule

    mu, s, k = 1.5, 0.3, 50

    def velocity(x, t):  # E[noise - x_0 | x_t] for x_t = t noise + (1 - t) x_0
        return -mu + (t - (1 - t) * s**2) / (t**2 + (1 - t) ** 2 * s**2) * (x - (1 - t) * mu)

    def run(correction: float):
        gen = torch.Generator().manual_seed(0)
        x, dt = torch.randn(20000, generator=gen, dtype=torch.float64), -1.0 / k
        for t, sigma in zip([1 + i * dt for i in range(k)], sigma_schedule(k, 0.5)):
            v = velocity(x, t)
            mean, std = sde_step(x, v, t, dt, sigma)
            mean = x + dt * v + correction * (mean - x - dt * v)
            x = mean + std * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        return x.mean().item(), x.std().item()

    mean, std = run(1.0)
    assert abs(mean - mu) < 0.02 and abs(std - s) < 0.02
    assert abs(run(0.0)[1] - s) > 0.1 and abs(run(-1.0)[1] - s) > 0.1


def _flow(folder: Path):
    """A loaded VLA with its weights trainable again, its FlowSDE and a preprocessed batch."""
    from policies.base import load_base
    from policies.vla.flow_sde import FlowSDE

    base = load_base(str(folder))
    base.model.requires_grad_(True)
    return base, FlowSDE(base.model), base.preprocess(obs_batch())


def test_the_log_prob_of_a_stored_path_is_the_sampling_log_prob_and_has_gradients(vla):
    family, folder = vla
    base, sde, batch = _flow(folder)
    out = sde.sample(batch, generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (3, CHUNK, ACTION) and out.path.shape == (3, sde.num_steps + 1, CHUNK, MAX_DIM)
    assert sde.num_steps == 10 and out.log_prob.shape == (3,) and torch.isfinite(out.log_prob).all()
    torch.testing.assert_close(out.path[:, -1, :, :ACTION], out.actions)
    chunk = base.postprocess(out.actions)
    assert chunk.shape == (3, CHUNK, ACTION) and np.abs(chunk).max() <= 1.0
    again = sde.sample(batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.path, out.path)  # seeded
    new = sde.log_prob(batch, out.path)
    torch.testing.assert_close(new.detach(), out.log_prob, atol=1e-4, rtol=0)
    torch.testing.assert_close((new.detach() - out.log_prob).exp(), torch.ones(3), atol=1e-4, rtol=0)
    new.sum().backward()
    grads = {name: p.grad for name, p in base.model.named_parameters() if p.requires_grad}
    assert grads["model.action_out_proj.weight"] is not None and grads["model.action_out_proj.weight"].abs().sum() > 0
    expert = "vlm_with_expert.lm_expert" if family == "smolvla" else "paligemma_with_expert.gemma_expert"
    moved = [n for n, g in grads.items() if expert in n and g is not None and g.abs().sum() > 0]
    assert moved, f"no gradient reached the action expert ({expert})"
    assert grads["model.state_proj.weight"].abs().sum() > 0  # through the cached prefix (SmolVLA) / the suffix (pi0)


def test_one_step_up_the_log_prob_of_a_path_moves_the_ratio_away_from_one(vla):
    """One SGD step along the gradient of the stored paths' log-likelihood, sized to raise it
    by about 0.5 nats to first order: PPO's ratio exp(new - old) is no longer 1."""
    _, folder = vla
    base, sde, batch = _flow(folder)
    out = sde.sample(batch, generator=torch.Generator().manual_seed(2))
    params = [p for p in base.model.parameters() if p.requires_grad]
    sde.log_prob(batch, out.path).sum().backward()
    norm2 = sum(float((p.grad**2).sum()) for p in params if p.grad is not None)
    optimizer = torch.optim.SGD(params, lr=0.5 / norm2, maximize=True)
    optimizer.step()
    with torch.no_grad():
        new = sde.log_prob(batch, out.path)
    gain = float((new - out.log_prob).sum())
    assert 0.1 < gain < 2.0, gain
    ratio = (new - out.log_prob).exp()
    assert (ratio - 1).abs().max() > 1e-2 and ratio.prod() > 1.1, ratio


def test_the_flow_sde_without_noise_is_lerobots_own_ode_sample(vla):
    _, folder = vla
    base, sde, batch = _flow(folder)
    noise = torch.randn(3, CHUNK, MAX_DIM, generator=torch.Generator().manual_seed(3))
    ode = sde.sample(batch, noise=noise, deterministic=True)
    assert ode.log_prob is None
    want = base.model.predict_action_chunk(batch, noise=noise.clone())
    torch.testing.assert_close(ode.actions, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ode.path[:, 0], noise)
    from policies.vla.flow_sde import FlowSDE

    faint = FlowSDE(base.model, noise_level=1e-4).sample(batch, noise=noise, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(faint.actions, want, atol=1e-2, rtol=0)  # sigma -> 0 approaches the ODE
