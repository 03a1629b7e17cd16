"""SAC gradient updates per second vs stable-baselines3 SAC, same machine, same run.

Both sides train on state input with HalfCheetah-v5's sizes (17-d observation, 6-d
action) from a replay pre-filled with the same 20k random transitions: 256x256 MLPs,
2 critics, batch 256, one critic + one actor + one temperature update and one Polyak
step per gradient update, one torch thread each. Each timed block includes sampling
the batch from the side's own replay. Blocks alternate between the peers (interleaved
rounds); the median rate is reported with the min-max of the per-round ratio. Ours is
measured with the critic LayerNorm of the default config, without it (exactly SB3's
architecture), and in the 10-critic RLPD / REDQ setting (LayerNorm, min over a random 2)
against SB3 with ``n_critics=10`` (min over all 10). A torch.profiler pass over the default
config's updates says where the time goes (matmuls, LayerNorm, optimiser steps, the rest).
Writes ``benchmarks/results/sac_speed.{json,md}``. Target ratio >= 1.5 (default config).

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
TARGET = 1.5
OBS, ACT, FILL, EPISODE = 17, 6, 20_000, 1000


def _data(seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(FILL + 1, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(FILL, ACT)).astype(np.float32)
    rew = rng.normal(size=FILL).astype(np.float32)
    return obs, act, rew


def _ours(layer_norm: bool, critics: int = 2, return_learner: bool = False):
    import gymnasium as gym

    from embodied.contracts import Transition
    from embodied.learners.sac import SAC, SACConfig
    from embodied.replay import Replay

    space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (ACT,), np.float32)
    sac = SAC(space, act_space, SACConfig(hidden=(256, 256), num_critics=critics, num_min=2, batch_size=256,
                                          layer_norm=layer_norm))
    replay = Replay(100_000, space, act_space)
    obs, act, rew = _data()
    for i in range(FILL):
        t = i % EPISODE
        replay.add(Transition({"state": obs[i]}, act[i], rew[i], {"state": obs[i + 1]}, False,
                              t == EPISODE - 1, t == 0, i // EPISODE, t))

    def run(n: int) -> None:
        for _ in range(n):
            sac.update(replay.sample_torch(256))

    return (run, sac) if return_learner else run


GROUPS = {  # profiler op -> where its time goes
    "matmuls (bmm, baddbmm, addmm, mm)": ("aten::bmm", "aten::baddbmm", "aten::addmm", "aten::mm"),
    "LayerNorm (forward, backward, per-member affine)": ("aten::native_layer_norm", "aten::native_layer_norm_backward",
                                                         "aten::addcmul"),
    "optimiser steps and zero_grad": ("Optimizer.step#Adam.step", "Optimizer.zero_grad#Adam.zero_grad"),
    "ReLU forward / backward": ("aten::clamp_min", "aten::threshold_backward"),
}


def profile_default(n: int) -> dict[str, float]:
    """Milliseconds per update of the default config, by kind of op (self time; the
    optimiser's step counted whole)."""
    from torch.profiler import ProfilerActivity, profile

    run = _ours(True)
    run(20)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run(n)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / n
    out, seen = {}, set()
    for group, names in GROUPS.items():
        ms = 0.0
        for e in events:
            if e.key in names:
                # an optimiser step's own ops (the fused Adam kernel, copies) count inside it
                ms += (e.cpu_time_total if e.key.startswith("Optimizer") else e.self_cpu_time_total) / 1e3 / n
                seen.add(e.key)
        out[group] = ms
    inside_opt = sum(e.self_cpu_time_total for e in events if e.key in ("aten::_fused_adam_",)) / 1e3 / n
    out["everything else (elementwise ops, sampling, autograd, Python)"] = total - sum(out.values()) + inside_opt
    out["total (profiled)"] = total
    out["wall per update (profiler on)"] = wall / n * 1e3
    return out


def _sb3(critics: int = 2):
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
                   policy_kwargs={"net_arch": [256, 256], "n_critics": critics}, device="cpu", seed=0)
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


PAIRS = {  # ours -> the SB3 peer it is compared with
    "ours (LayerNorm critics, the default)": "stable-baselines3",
    "ours (no LayerNorm, SB3 arch)": "stable-baselines3",
    "ours, 10 LayerNorm critics (RLPD / REDQ: min of a random 2)": "stable-baselines3, n_critics=10",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 updates")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--updates", type=int, default=None, help="gradient updates per timed block")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    n = args.updates or (100 if args.quick else 400)
    torch.set_num_threads(1)
    names = list(PAIRS)
    peers = {names[0]: _ours(True), names[1]: _ours(False), "stable-baselines3": _sb3(),
             names[2]: _ours(True, critics=10), "stable-baselines3, n_critics=10": _sb3(critics=10)}
    rates: dict[str, list[float]] = {k: [] for k in peers}
    for run in peers.values():
        run(20)  # warm-up
    for _ in range(rounds):
        for name, run in peers.items():
            start = time.perf_counter()
            run(n)
            rates[name].append(n / (time.perf_counter() - start))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {k: med[k] / med[peer] for k, peer in PAIRS.items()}
    spread = {k: [min(a / b for a, b in zip(rates[k], rates[peer])), max(a / b for a, b in zip(rates[k], rates[peer]))]
              for k, peer in PAIRS.items()}
    prof = profile_default(max(50, n // 2))
    result = {"updates_per_s": med, "rounds": rates, "ratio_vs_sb3": ratios, "ratio_min_max": spread,
              "profile_ms_per_update": prof, "target": TARGET, "updates_per_round": n,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sac_speed.json").write_text(json.dumps(result, indent=2))
    lines = ["## SAC update speed (`bench_sac_speed`)", "",
             f"Gradient updates/s (sampling included), 17-d state, 6-d action, 256x256, batch 256, 1 thread; "
             f"median of {rounds} interleaved rounds of {n} updates, ratio with the min-max of the per-round "
             f"ratios (target >= {TARGET} for the default config).", "",
             "| learner | updates/s | SB3 peer | SB3 updates/s | ratio (min-max) |", "|---|---:|---|---:|---|"]
    lines += [f"| {k} | {med[k]:.1f} | {peer} | {med[peer]:.1f} | **{ratios[k]:.2f}** "
              f"({spread[k][0]:.2f}-{spread[k][1]:.2f}) |" for k, peer in PAIRS.items()]
    total = prof["total (profiled)"]
    lines += ["", "Where the default config's update time goes (torch.profiler, self CPU time per update):", "",
              "| part | ms per update | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / total:.0%} |" for k, v in prof.items() if not k.startswith(("total", "wall"))]
    lines += [f"| total | {total:.2f} | 100% |"]
    (RESULTS / "sac_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
