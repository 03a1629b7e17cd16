"""World models on the CPU, each figure against a peer measured in the same run (one torch thread).

1. **Latent update throughput**: one :class:`LatentWorldModel` update (world model + dual +
   actor + critic in imagination + probe) at the ``wm_demos`` visual-study sizes (32 px top
   camera, windows of 16 steps, batch 16, belief 64, stochastic 16, horizon 10), per objective:
   updates/s and window steps/s. The peer is the reconstruction objective: ``repo`` /
   ``infopower`` are reported as their throughput over ``recon``'s.
2. **MBPO vs SAC**: one ``update()`` of ``objective=mle`` / ``vagram`` (rollouts into the model
   buffer + ``sac_utd`` SAC critic updates) against a plain SAC ``update()`` with the same
   ``utd`` and sizes on the same rows: the ratio is the model's overhead per env step (retrains,
   every ``model_every`` steps, are timed separately: seconds per retrain).
3. **Env steps with visual distractors**: ``reach`` at 32 px, background + 3 moving discs
   against the plain scene: env steps/s and the ratio.

Each figure is the median of ``rounds`` interleaved rounds with its min - max.
Writes ``benchmarks/results/world_model.{json,md}``.

    python -m benchmarks.bench_world_model [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
LATENT = dict(sequence_length=16, batch_size=16, embed=64, depth=16, deter=64, stoch=16, hidden=64,
              head_hidden=(64, 64), actor_hidden=(64, 64), horizon=10)
MBPO = dict(batch_size=128, ensemble=5, elites=3, model_hidden=(32, 32), model_every=250, model_train_steps=100,
            rollout_batch=100, sac_utd=10, sac_hidden=(128, 128))


def _spread(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _timed(fn, reps: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _windows(b: int, length: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"obs": {"pixels": {"top": torch.randint(0, 256, (b, length + 1, 32, 32, 3), generator=g, dtype=torch.uint8)}},
            "action": torch.rand(b, length, 2, generator=g) * 2 - 1, "reward": torch.rand(b, length, generator=g),
            "terminated": torch.zeros(b, length, dtype=torch.bool), "truncated": torch.zeros(b, length, dtype=torch.bool),
            "mask": torch.ones(b, length, dtype=torch.bool), "is_first": torch.zeros(b, length, dtype=torch.bool)}


def latent(rounds: int, reps: int) -> dict:
    from embodied.learners.world_model import WorldModel, WorldModelConfig

    space = gym.spaces.Dict({"pixels": gym.spaces.Dict({"top": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)})})
    act = gym.spaces.Box(-1, 1, (2,), np.float32)
    learners = {o: WorldModel(space, act, WorldModelConfig(objective=o, **LATENT)) for o in ("recon", "repo", "infopower")}
    batch = _windows(LATENT["batch_size"], LATENT["sequence_length"], 0)
    times = {o: [] for o in learners}
    for _ in range(rounds):
        for o, wm in learners.items():
            times[o].append(_timed(lambda wm=wm: wm.update(batch), reps))
    out = {}
    for o, t in times.items():
        ups = [1.0 / x for x in t]
        out[o] = {"updates_per_s": _spread(ups),
                  "window_steps_per_s": _spread([u * LATENT["batch_size"] * LATENT["sequence_length"] for u in ups])}
        if o != "recon":
            out[o]["vs_recon"] = _spread([r / x for r, x in zip(times["recon"], t)])
    return out


def mbpo(rounds: int, reps: int) -> dict:
    import sys

    from embodied.learners.sac import SAC, SACConfig
    from embodied.learners.world_model import WorldModel, WorldModelConfig

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_world_model import filled_replay, real_batch  # the test suite's replay of linear dynamics

    dim = 18  # reach (8) + 10 distractor dimensions
    space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)})
    act = gym.spaces.Box(-1, 1, (2,), np.float32)
    replay = filled_replay(2000, dim)
    learners = {}
    for o in ("mle", "vagram"):
        wm = WorldModel(space, act, WorldModelConfig(objective=o, **MBPO))
        wm.attach_replay(replay)
        t0 = time.perf_counter()
        wm.update(real_batch(wm.rows_per_update, dim))  # the first update retrains
        learners[o] = (wm, time.perf_counter() - t0)
    sac = SAC(space, act, SACConfig(hidden=MBPO["sac_hidden"], batch_size=MBPO["batch_size"], utd=MBPO["sac_utd"]))
    sac_rows = real_batch(MBPO["batch_size"] * MBPO["sac_utd"], dim)
    times = {k: [] for k in ("sac", "mle", "vagram")}
    for _ in range(rounds):
        times["sac"].append(_timed(lambda: sac.update(sac_rows), reps))
        for o, (wm, _) in learners.items():
            wm.updates = 1  # between retrains (every model_every updates): rollouts + SAC only
            rows = real_batch(wm.rows_per_update, dim)
            times[o].append(_timed(lambda wm=wm, rows=rows: wm.update(rows), reps))
    retrain = {}
    for o, (wm, _) in learners.items():
        retrain[o] = _spread([_timed(wm.retrain, 1) for _ in range(max(2, rounds // 2))])
    return {"sac_updates_per_s": _spread([1 / t for t in times["sac"]]),
            **{o: {"updates_per_s": _spread([1 / t for t in times[o]]),
                   "vs_sac": _spread([s / t for s, t in zip(times["sac"], times[o])]),
                   "seconds_per_retrain": retrain[o]} for o in learners}}


def env_steps(rounds: int, steps: int) -> dict:
    import envs

    kw = dict(pixels=True, cameras=["top"], image_size=32)
    plain = envs.make_env("reach", seed=0, **kw)
    busy = envs.make_env("reach", seed=0, background="a", moving_distractors=3, **kw)
    action = np.zeros(2, np.float32)

    def run(env):
        env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(action)
        return steps / (time.perf_counter() - t0)

    p, b = [], []
    for _ in range(rounds):
        p.append(run(plain))
        b.append(run(busy))
    return {"plain_steps_per_s": _spread(p), "distracted_steps_per_s": _spread(b),
            "ratio": _spread([x / y for x, y in zip(b, p)])}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds, few repetitions (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rounds, reps = (2, 2) if args.quick else (5, 5)
    result = {"machine": platform.processor() or platform.machine(), "threads": 1,
              "latent": latent(rounds, reps), "mbpo": mbpo(rounds, reps),
              "env": env_steps(rounds, 100 if args.quick else 500)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "world_model.json").write_text(json.dumps(result, indent=2))
    f = lambda s, d=1: f"{s['median']:.{d}f} ({s['min']:.{d}f}–{s['max']:.{d}f})"  # noqa: E731
    lat, mb, env = result["latent"], result["mbpo"], result["env"]
    md = ["## World models on the CPU (one torch thread; median (min–max) of interleaved rounds)", "",
          "| what | figure | against its peer |", "|---|---|---|"]
    for o in ("recon", "repo", "infopower"):
        peer = "peer" if o == "recon" else f"{f(lat[o]['vs_recon'], 2)}× recon's"
        md.append(f"| latent `{o}` update (16 × 16 window steps) | {f(lat[o]['updates_per_s'], 2)} updates/s | {peer} |")
    md.append(f"| SAC update (utd {MBPO['sac_utd']}, 128 × 128) | {f(mb['sac_updates_per_s'], 1)} updates/s | peer |")
    for o in ("mle", "vagram"):
        md.append(f"| MBPO `{o}` update (rollouts + SAC) | {f(mb[o]['updates_per_s'], 1)} updates/s | "
                  f"{f(mb[o]['vs_sac'], 2)}× SAC's |")
        md.append(f"| MBPO `{o}` retrain ({MBPO['model_train_steps']} steps) | {f(mb[o]['seconds_per_retrain'], 2)} s | – |")
    md.append(f"| reach 32 px, background + 3 discs | {f(env['distracted_steps_per_s'], 0)} steps/s | "
              f"{f(env['ratio'], 2)}× the plain scene's ({f(env['plain_steps_per_s'], 0)}) |")
    (RESULTS / "world_model.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
