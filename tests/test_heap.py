"""Long training runs give freed heap memory back (embodied/heap.py).

SAC acting on one observation between updates on batches of 256 leaves glibc holding freed
blocks it does not reuse (a 100k-step push run grew to 16 GB). These tests reproduce that
pattern with the real learner and check that the trim returns the memory and that the training
loop trims while it runs.
"""

import gymnasium as gym
import numpy as np
import pytest

from embodied import heap
from embodied.contracts import Transition

pytestmark = pytest.mark.skipif(heap.libc() is None, reason="glibc only: other allocators are not affected")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def _act_and_update(learner, replay, n: int) -> None:
    policy = learner.policy()
    rng = np.random.default_rng(0)
    for _ in range(n):
        policy.act({"state": rng.standard_normal((1, 14)).astype(np.float32)})
        learner.update(replay.sample_torch(256))


def test_trim_returns_the_memory_a_sac_act_update_loop_leaves_in_the_heap():
    import torch

    from embodied.learners import make_learner
    from embodied.replay import Replay

    torch.manual_seed(0)
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (14,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    replay = Replay(10_000, obs_space, act_space)
    rng = np.random.default_rng(0)
    for i in range(2000):
        replay.add(Transition({"state": rng.standard_normal(14).astype(np.float32)}, np.zeros(2, np.float32), 0.0,
                              {"state": np.zeros(14, np.float32)}, False, i % 100 == 99, i % 100 == 0, i // 100,
                              i % 100))
    learner = make_learner("sac", obs_space, act_space, None)  # the default 256x256 SAC
    _act_and_update(learner, replay, 100)
    heap.trim()
    start = _rss_mb()
    _act_and_update(learner, replay, 500)
    grown = _rss_mb() - start
    assert grown > 30, f"the act/update pattern grew the heap by only {grown:.0f} MB: the test no longer shows the issue"
    assert heap.trim()
    assert _rss_mb() - start < 0.25 * grown  # what the loop left behind was free memory, now returned
    trimmed_start = _rss_mb()
    for _ in range(5):  # trimming every 100 updates keeps the process flat
        _act_and_update(learner, replay, 100)
        heap.trim()
    assert _rss_mb() - trimmed_start < 0.25 * grown


def test_the_training_loop_trims_the_heap_every_thousand_env_steps(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR, setup_runtime
    from embodied.logging import Logger
    from embodied.loop import Trainer

    calls = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(1) or True)
    setup_runtime()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=["env=reach", "learner.hidden=[16,16]", "learner.batch_size=16",
                                           "train.total_steps=2500", "train.warmup_steps=100",
                                           "train.learning_starts=100", "eval.every=100000", "eval.episodes=1",
                                           "eval.video_episodes=0", "checkpoint.every=100000", "wandb.mode=disabled"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run(Logger(tmp_path / "run", wandb_mode="disabled"))
    assert len(calls) == 2  # at 1,000 and 2,000 env steps
