"""LeRobot policies as frozen bases: a tiny randomly initialised ACT saved by LeRobot's own
save path, loaded with its pre/post-processors, played with a queue per env. LeRobot's own
trainer (``lerobot-train``) on the project's recorded demonstrations and ``embodied-train
learner=residual`` over that ACT run as the README writes them
(``tests/test_readme_commands.py::test_residual_rl_commands_run_as_written_in_order``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policies.base import check_base, load_base
from policies.chunking import ChunkExecutor

CHUNK, EXECUTE, IMAGE = 6, 4, 32


@pytest.fixture(scope="module")
def act_folder(tmp_path_factory) -> Path:
    """A tiny ACT for push from pixels (front camera, 32 px) + proprio (4), saved as LeRobot does."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    folder = tmp_path_factory.mktemp("act") / "pretrained_model"
    cfg = ACTConfig(
        input_features={"observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, IMAGE, IMAGE)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (4,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        chunk_size=CHUNK, n_action_steps=EXECUTE, dim_model=32, dim_feedforward=64, n_heads=2, n_encoder_layers=1,
        n_decoder_layers=1, latent_dim=4, pretrained_backbone_weights=None, device="cpu")
    torch.manual_seed(0)
    policy = ACTPolicy(cfg)
    stats = {"observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)},
             "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)},
             "action": {"mean": torch.zeros(2), "std": torch.full((2,), 0.5)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(folder)
    pre.save_pretrained(folder)
    post.save_pretrained(folder)
    return folder


def obs_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(n, 4)).astype(np.float32),
            "pixels": {"front": rng.integers(0, 256, (n, IMAGE, IMAGE, 3), dtype=np.uint8)},
            "instruction": ["push the block"] * n}


def test_act_loads_with_its_processors_and_matches_lerobots_own_chunk(act_folder):
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    base = load_base(str(act_folder))
    assert base.chunk_size == CHUNK and base.n_action_steps == EXECUTE
    assert base.io() == {"action_dim": 2, "state_dim": 4, "cameras": {"front": (IMAGE, IMAGE, 3)}}
    obs = obs_batch(3, 0)
    ours = base.act(obs)
    # the same through LeRobot's API by hand: processors + predict_action_chunk
    model = ACTPolicy.from_pretrained(str(act_folder)).eval()
    pre, post = make_pre_post_processors(model.config, pretrained_path=str(act_folder))
    batch = pre({"observation.state": torch.as_tensor(obs["state"]),
                 "observation.images.front": torch.as_tensor(obs["pixels"]["front"]).permute(0, 3, 1, 2).float() / 255,
                 "task": obs["instruction"]})
    with torch.no_grad():
        want = post(model.predict_action_chunk(batch)).clamp(-1, 1).numpy()
    assert ours.shape == (3, CHUNK, 2)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(base.act(obs), ours)  # deterministic
    assert not any(p.requires_grad for p in base.model.parameters())  # frozen


def test_act_chunks_play_from_one_queue_per_env_and_reset_only_the_ended_env(act_folder):
    """Env 1's episode ends after 2 steps: only env 1 gets a fresh chunk; env 0 keeps playing
    its own (LeRobot's select_action keeps one queue for the whole batch and resets all)."""
    base = load_base(str(act_folder))
    ex = ChunkExecutor(base, 2)
    assert ex.execute == EXECUTE  # the checkpoint's n_action_steps
    first = obs_batch(2, 1)
    chunks = base.act(first)
    played = [ex.act(first)]
    played.append(ex.act(obs_batch(2, 2)))
    ex.reset([1])
    later = obs_batch(2, 3)
    played.append(ex.act(later))
    np.testing.assert_array_equal(played[0], chunks[:, 0])
    np.testing.assert_array_equal(played[1], chunks[:, 1])
    np.testing.assert_array_equal(played[2][0], chunks[0, 2])  # env 0: still its first chunk
    fresh = base.act({k: ({c: v[1:] for c, v in x.items()} if isinstance(x, dict) else x[1:])
                      for k, x in later.items()})
    np.testing.assert_allclose(played[2][1], fresh[0, 0], rtol=1e-5, atol=1e-6)  # env 1: a new chunk


def test_a_lerobot_base_that_does_not_fit_the_env_is_refused_in_one_line(act_folder):
    import envs

    env = envs.make_env("push", pixels=True, cameras=["top"], image_size=IMAGE, proprio_only=True)
    try:
        with pytest.raises(ValueError, match="reads camera 'front', the env has \\['top'\\]"):
            check_base(load_base(str(act_folder)), env.observation_space, env.action_space, "act")
    finally:
        env.close()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_base(str(act_folder.parent / "missing"))


def test_embodied_eval_plays_a_lerobot_checkpoint_and_refuses_one_that_does_not_fit(act_folder, tmp_path, capsys):
    """``embodied-eval policy=<LeRobot checkpoint folder>`` evaluates the ACT itself (the row a
    residual run is compared with); a camera the env lacks is a one-line error before a step."""
    import json

    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR
    from embodied.cli.eval import run

    env = ["env=push", "env.pixels=true", f"env.image_size={IMAGE}", "+env.proprio_only=true", "env.max_episode_steps=6",
           f"policy={act_folder}", "episodes=2", "video_episodes=0"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        good = compose("eval", overrides=[*env, "env.cameras=[front]", f"output={tmp_path / 'good'}"])
        bad = compose("eval", overrides=[*env, "env.cameras=[top]", f"output={tmp_path / 'bad'}"])
    out = run(good)["tasks"][0]
    assert out["episodes"] == 2 and out["mean_length"] == 6
    assert json.loads((tmp_path / "good" / "results.json").read_text())["tasks"][0]["episodes"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(bad)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith(("eval:", "push:"))]
    assert len(err) == 1 and err[0].startswith("error: ") and "reads camera 'front'" in err[0], err
    assert not (tmp_path / "bad" / "results.json").exists()
