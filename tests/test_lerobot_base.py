"""LeRobot policies as frozen bases: a tiny randomly initialised ACT saved by LeRobot's own
save path, loaded with its pre/post-processors, played with a queue per env; LeRobot's own
trainer (``lerobot-train``, the README command) on the project's recorded demonstrations;
``embodied-train learner=residual`` over that ACT."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.base import check_base, load_base
from policies.chunking import ChunkExecutor
from test_train_cli import run_train

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


LEROBOT_TRAIN = ("lerobot-train --dataset.repo_id=local/push --dataset.root={data} --policy.type=act "
                 "--policy.device=cpu --policy.push_to_hub=false --policy.pretrained_backbone_weights=null "
                 "--policy.chunk_size=20 --policy.n_action_steps=20 --output_dir={out} --wandb.enable=false "
                 "--num_workers=0")
TINY_ACT = ("--policy.dim_model=32 --policy.dim_feedforward=64 --policy.n_heads=2 --policy.n_encoder_layers=1 "
            "--policy.n_decoder_layers=1 --policy.latent_dim=4 --batch_size=4 --steps=4 --save_freq=4 --log_freq=2")


@pytest.mark.slow
def test_lerobot_trains_act_on_the_projects_demos_and_residual_rl_runs_over_it(tmp_path):
    """The README's two steps with tiny budgets: LeRobot's own trainer on demonstrations the
    project recorded, then ``embodied-train learner=residual base_policy=<that checkpoint>``."""
    import json

    from embodied.datasets.generate import GenerateConfig, generate

    generate(GenerateConfig(env="push", env_kwargs={"pixels": True, "cameras": ["front"], "image_size": IMAGE,
                                                    "proprio_only": True},
                            kinds=("scripted",), steps=200, seed=0, success_only=True), tmp_path / "demos")
    data, out = tmp_path / "demos" / "scripted", tmp_path / "act"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = (LEROBOT_TRAIN.format(data=data, out=out) + " " + TINY_ACT).split()
    proc = subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "last" / "pretrained_model"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "policy_preprocessor.json").exists()
    run = tmp_path / "run"
    run_train(["env=push_pixels", "env.cameras=[front]", f"env.image_size={IMAGE}", "learner=residual",
               f"base_policy={ckpt}", f"train.dataset={data}", "train.n_step=3", "train.total_steps=40",
               "train.warmup_steps=10", "train.learning_starts=10", "learner.batch_size=8", "learner.hidden=[16,16]",
               "learner.actor_hidden=[16]", "learner.num_critics=2", "learner.critic_warmup=0", "eval.every=40",
               "eval.episodes=1", "eval.video_episodes=0", "checkpoint.every=40", "log.every=20",
               "wandb.mode=disabled"], run, timeout=600)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("residual/actor_updates", 0) for r in rows) > 0
    from policies import load_policy

    policy = load_policy(run)
    assert policy.base.chunk_size == 20 and policy.spec()["base_policy"] == str(ckpt)
