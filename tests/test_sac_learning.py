"""SAC learns gymnasium's Pendulum-v1 from its state (slow: about 50 s on one CPU thread)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from embodied.contracts import Transition
from embodied.learners.sac import SAC, SACConfig
from embodied.replay import Replay


def evaluate(env, policy, episodes=3):
    returns = []
    for k in range(episodes):
        o, _ = env.reset(seed=1000 + k)
        done, ret = False, 0.0
        while not done:
            a = policy.act({"state": o[None]}, deterministic=True)[0]
            o, r, term, trunc, _ = env.step(2.0 * a)
            ret, done = ret + r, term or trunc
        returns.append(ret)
    return float(np.mean(returns))


@pytest.mark.slow
def test_sac_learns_pendulum():
    torch.set_num_threads(1)
    torch.manual_seed(0)  # exploration noise of policy.act
    steps, warmup = 5000, 500
    env = gym.make("Pendulum-v1")  # actions in [-2, 2]: the policy's [-1, 1] is scaled by 2
    space = gym.spaces.Dict({"state": env.observation_space})
    act_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    sac = SAC(space, act_space, SACConfig(hidden=(128, 128), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
                                          init_temperature=0.1))
    replay = Replay(steps, space, act_space, seed=0)
    rng = np.random.default_rng(0)
    before = evaluate(env, sac.policy())
    o, _ = env.reset(seed=0)
    episode, t = 0, 0
    for i in range(steps):
        a = rng.uniform(-1, 1, 1).astype(np.float32) if i < warmup else sac.policy().act({"state": o[None]})[0]
        o2, r, term, trunc, _ = env.step(2.0 * a)
        replay.add(Transition({"state": o}, a, r, {"state": o2}, term, trunc, t == 0, episode, t))
        o, t = o2, t + 1
        if term or trunc:
            o, _ = env.reset()
            episode, t = episode + 1, 0
        if i >= warmup:
            sac.update(replay.sample_torch(256))
    after = evaluate(env, sac.policy(), episodes=5)
    assert before < -700  # a random policy swings far from upright
    assert after > -400, f"return {after:.0f} after {steps} steps (random policy: {before:.0f})"
