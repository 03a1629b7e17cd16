"""The three labeling paths between the env loop and the replay, with real parts:
the built-in reach env, the real Replay, a tiny CLIP model and GVL with the scripted VLM."""

from __future__ import annotations

import time

import numpy as np
import pytest

import envs
from embodied.driver import Driver
from embodied.labeling import RewardLabeler
from embodied.replay import Replay
from rewards import make_reward

STEPS = 25  # built-in reach episodes of 25 steps keep this fast


def setup(model=None, oracle=False, **labeler_kw):
    """``oracle``: feed the module's scripted oracle the sim's truth, as reward.oracle=true does."""
    from rewards.oracle import OracleFeed, find_oracle

    venv = envs.make_vec_env("reach", 2, seed=0, pixels=True, image_size=32, max_episode_steps=STEPS)
    replay = Replay(1000, venv.single_observation_space, venv.single_action_space, seed=0)
    taps = [OracleFeed(find_oracle(model), "front")] if oracle else []
    labeler = RewardLabeler(replay, model, camera="front" if model is not None else None, taps=taps, **labeler_kw)
    driver = Driver(venv).on_transition(labeler.add)
    rng = np.random.default_rng(0)
    driver.reset(seed=0)
    return venv, replay, labeler, driver, lambda obs: rng.uniform(-1, 1, (2, 2)).astype(np.float32)


def test_env_reward_is_labeled_on_arrival():
    _, replay, labeler, driver, act = setup()
    for _ in range(10):
        driver.step(act)
    assert labeler.mode == "env" and len(replay) == 20 and replay.num_labeled() > 0


def tiny_clip():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from embodied.cli import CONFIG_DIR, setup_runtime

    setup_runtime()
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = OmegaConf.to_container(compose("config", ["reward=clip_tiny"]).reward, resolve=True)
    return make_reward(cfg.pop("name"), **cfg)


def test_inline_frame_model_scores_in_chunks_with_the_frame_reached():
    model = tiny_clip()
    _, replay, labeler, driver, act = setup(model, chunk=16)
    driver.step(act)
    assert replay.num_labeled() == 0, "a partial chunk must not be labeled yet"
    seen = []
    driver.on_transition(lambda t, i: seen.append(t))
    for _ in range(9):
        driver.step(act)
    labeler.flush()
    slots = np.arange(2, 20)
    stored = replay.reward[slots]
    frames = np.stack([t.next_obs["pixels"]["front"] for t in seen])
    expected = model.score_frames(frames, seen[0].obs["instruction"])
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)


def test_async_episode_model_labels_only_after_the_episode_and_never_blocks():
    model = make_reward("gvl", backend={"kind": "scripted"}, num_frames=10)
    _, replay, labeler, driver, act = setup(model, oracle=True, max_pending=100)
    assert labeler.mode == "async"
    for _ in range(STEPS - 1):
        driver.step(act)
    labeler.poll()
    assert replay.num_labeled() == 0, "nothing may be sampled before its episode is labeled"
    driver.step(act)  # both episodes end here
    deadline = time.time() + 60
    while labeler.stats["labeled_episodes"] < 2 and time.time() < deadline:
        labeler.poll()
        time.sleep(0.05)
    assert labeler.stats["labeled_episodes"] == 2 and labeler.stats["failed_episodes"] == 0
    batch = replay.sample(32)
    assert np.all(np.isfinite(batch["reward"]))
    labeler.close()


def test_failed_episodes_stay_unlabeled_and_are_listed():
    model = make_reward("gvl", backend={"kind": "scripted", "error_rate": 1.0}, num_frames=10, max_retries=1)
    _, replay, labeler, driver, act = setup(model, oracle=True)
    for _ in range(STEPS):
        driver.step(act)
    labeler.close(wait=True)
    assert labeler.stats["failed_episodes"] == 2 and len(labeler.failed) == 2
    assert replay.num_labeled() == 0
    with pytest.raises(ValueError, match="no sampleable"):
        replay.sample(4)


def test_oracle_needs_a_scripted_backend():
    from embodied.build import build_reward

    cfg = {"name": "clip", "model_name": "tiny-clip", "pretrained": None, "oracle": True,
           "model_cfg": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                          "head_width": 16},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}
    with pytest.raises(ValueError, match="scripted"):
        build_reward(cfg)
