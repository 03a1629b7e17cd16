"""SAC gradient updates per second vs stable-baselines3 SAC, same machine, same run.

Both sides train on state input with HalfCheetah-v5's sizes (17-d observation, 6-d
action) from a replay pre-filled with the same 20k random transitions: 256x256 MLPs,
2 critics, batch 256, one critic + one actor + one temperature update and one Polyak
step per gradient update, one torch thread each. Each timed block includes sampling
the batch from the side's own replay. Blocks alternate between the peers (interleaved
rounds) and the median rate is reported. Ours is measured twice: with the critic
LayerNorm of the default config and without it (exactly SB3's architecture).
Writes ``benchmarks/results/sac_speed.{json,md}``. Target ratio >= 1.2.

    python -m benchmarks.bench_sac_speed [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.2
OBS, ACT, FILL, EPISODE = 17, 6, 20_000, 1000


def _data(seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(FILL + 1, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(FILL, ACT)).astype(np.float32)
    rew = rng.normal(size=FILL).astype(np.float32)
    return obs, act, rew


def _ours(layer_norm: bool):
    import gymnasium as gym

    from embodied.contracts import Transition
    from embodied.learners.sac import SAC, SACConfig
    from embodied.replay import Replay

    space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (ACT,), np.float32)
    sac = SAC(space, act_space, SACConfig(hidden=(256, 256), num_critics=2, batch_size=256, layer_norm=layer_norm))
    replay = Replay(100_000, space, act_space)
    obs, act, rew = _data()
    for i in range(FILL):
        t = i % EPISODE
        replay.add(Transition({"state": obs[i]}, act[i], rew[i], {"state": obs[i + 1]}, False,
                              t == EPISODE - 1, t == 0, i // EPISODE, t))

    def run(n: int) -> None:
        for _ in range(n):
            sac.update(replay.sample_torch(256))

    return run


def _sb3():
    import gymnasium as gym
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.logger import configure

    class Spaces(gym.Env):  # only the spaces matter: SB3 trains from its pre-filled buffer
        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        action_space = gym.spaces.Box(-1, 1, (ACT,), np.float32)

        def reset(self, seed=None, options=None):
            return np.zeros(OBS, np.float32), {}

        def step(self, action):
            return np.zeros(OBS, np.float32), 0.0, False, False, {}

    model = SB3SAC("MlpPolicy", Spaces(), batch_size=256, buffer_size=100_000, learning_starts=0,
                   policy_kwargs={"net_arch": [256, 256]}, device="cpu", seed=0)
    model.set_logger(configure(None, [""]))
    obs, act, rew = _data()
    rb = model.replay_buffer
    rb.observations[:FILL, 0] = obs[:-1]
    rb.next_observations[:FILL, 0] = obs[1:]
    rb.actions[:FILL, 0] = act
    rb.rewards[:FILL, 0] = rew
    rb.timeouts[:FILL, 0] = (np.arange(FILL) % EPISODE) == EPISODE - 1
    rb.pos = FILL

    def run(n: int) -> None:
        model.train(gradient_steps=n, batch_size=256)

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 updates")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--updates", type=int, default=None, help="gradient updates per timed block")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    n = args.updates or (100 if args.quick else 400)
    torch.set_num_threads(1)
    peers = {"ours (LayerNorm critics)": _ours(True), "ours (no LayerNorm, SB3 arch)": _ours(False),
             "stable-baselines3": _sb3()}
    rates: dict[str, list[float]] = {k: [] for k in peers}
    for run in peers.values():
        run(20)  # warm-up
    for _ in range(rounds):
        for name, run in peers.items():
            start = time.perf_counter()
            run(n)
            rates[name].append(n / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    sb3 = med["stable-baselines3"]
    result = {"updates_per_s": med, "rounds": rates, "ratio_vs_sb3": {k: v / sb3 for k, v in med.items()},
              "target": TARGET, "updates_per_round": n, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sac_speed.json").write_text(json.dumps(result, indent=2))
    lines = ["## SAC update speed (`bench_sac_speed`)", "",
             f"Gradient updates/s (sampling included), 17-d state, 6-d action, 256x256, 2 critics, batch 256, "
             f"1 thread; median of {rounds} interleaved rounds of {n} updates (target ratio >= {TARGET}).", "",
             "| learner | updates/s | ratio vs SB3 |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {v / sb3:.2f} |" for k, v in med.items()]
    (RESULTS / "sac_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
