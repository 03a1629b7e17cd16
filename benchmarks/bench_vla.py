"""The native VLA on the CPU: acting latency, BC and PPO update throughput, and the cost of
token log-probabilities against a bare forward of the same model, same machine, same run.

The model is ``learner=vla``'s default on ``env=lang_reach`` (top camera 64 px, frozen MiniLM
instruction encoder, 256 bins x 2 action dims, trunk 256x256), one torch thread.

1. **Acting latency**: ``policy.step`` on one observation (features, tokens sampled, their
   log-prob, the value), milliseconds per call, median and p90 over ``calls`` calls.
2. **BC updates**: ``learner=vla`` ``update()`` on batches of 64 demonstration rows: samples/s.
3. **PPO minibatches**: the PPO learner over the VLA (``learner=ppo policy=<it>``): one
   clipped-surrogate + value + entropy forward, backward and AdamW step on a 128-row
   minibatch of stored tokens: samples/s.
4. **Token log-prob vs bare forward**: the PPO scoring path (features -> logits / T ->
   log-softmax -> gather the stored tokens -> sum) against the bare forward (features ->
   logits) on the same 128-row batch, interleaved rounds; reported as
   ``bare seconds / log-prob seconds`` (1.0: the log-prob costs nothing extra; target >= 0.9).

Each figure is the median of ``rounds`` interleaved rounds, with its min - max.
Writes ``benchmarks/results/vla.{json,md}``.

    python -m benchmarks.bench_vla [--quick]
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
INSTRUCTIONS = [f"move the gripper to the {c} target" for c in ("red", "green", "blue", "yellow")]


def _env_spaces():
    import gymnasium as gym

    from envs.core import instruction_space

    obs = gym.spaces.Dict({"pixels": gym.spaces.Dict({"top": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)}),
                           "instruction": instruction_space()})
    return obs, gym.spaces.Box(-1, 1, (2,), np.float32)


def _obs(n: int, rng) -> dict:
    return {"pixels": {"top": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)},
            "instruction": [INSTRUCTIONS[i] for i in rng.integers(0, 4, n)]}


def _tensors(obs: dict) -> dict:
    return {"pixels": {c: torch.as_tensor(x) for c, x in obs["pixels"].items()}, "instruction": obs["instruction"]}


def _timed(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def _spread(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> dict:
    from embodied.contracts import Batch
    from embodied.learners import make_learner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, calls, reps = (3, 20, 3) if args.quick else (7, 100, 10)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    obs_space, act_space = _env_spaces()
    bc = make_learner("vla", obs_space, act_space)
    net = bc.policy()

    # 1. acting latency, one env
    one = _obs(1, rng)
    net.step(one)  # the instruction embeddings are cached from here on, as in a rollout
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        net.step(one)
        lat.append(1e3 * (time.perf_counter() - t0))
    lat.sort()

    # 2. BC updates
    def bc_batch(seed):
        r = np.random.default_rng(seed)
        return Batch(obs=_tensors(_obs(64, r)), action=torch.as_tensor(r.uniform(-1, 1, (64, 2)), dtype=torch.float32),
                     reward=torch.zeros(64), discount=torch.ones(64), next_obs={}, extras={})

    batches = [bc_batch(s) for s in range(reps)]
    bc.update(batches[0])
    bc_rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for b in batches:
            bc.update(b)
        bc_rates.append(64 * len(batches) / (time.perf_counter() - t0))

    # 3. PPO minibatches over the same network, 4. token log-prob vs bare forward
    ppo = make_learner("ppo", obs_space, act_space, {"policy": net}, head="categorical",
                       num_steps=128, num_minibatches=1, update_epochs=1,
                       critic_warmup=0, normalize_reward=False, normalize_obs=False)
    o = _tensors(_obs(128, rng))
    with torch.no_grad():
        feats = net.features(o)
        params = net.dist_params(feats)
        tokens = net.sample(params)
        old = net.log_prob(params, tokens)
        value = net.value_of(feats)
    extras = {"tokens": tokens, "log_prob": old, "value": value, "advantage": torch.randn(128),
              "return": value + torch.randn(128)}
    ppo_batch = Batch(obs={**o, "instruction": net.instruction_ids(o["instruction"])},
                      action=net.to_action(tokens), reward=torch.zeros(128), discount=torch.ones(128), next_obs={},
                      extras=extras)
    ppo_rates = []
    for _ in range(rounds):  # update(): one epoch of one minibatch = one clipped-surrogate step
        t0 = time.perf_counter()
        for _ in range(max(1, reps // 2)):
            ppo.update(ppo_batch)
        ppo_rates.append(128 * max(1, reps // 2) / (time.perf_counter() - t0))

    def bare():
        with torch.no_grad():
            net.logits(net.features(o))

    def scored():
        with torch.no_grad():
            net.log_prob(net.dist_params(net.features(o)), tokens)

    ratios = []
    for _ in range(rounds):
        a = _timed(bare, reps)
        b = _timed(scored, reps)
        ratios.append(a / b)

    result = {"acting_ms": {"median": statistics.median(lat), "p90": lat[int(0.9 * (len(lat) - 1))],
                            "calls": calls},
              "bc_samples_per_s": _spread(bc_rates), "ppo_samples_per_s": _spread(ppo_rates),
              "logprob_vs_bare_forward": _spread(ratios), "rounds": rounds,
              "machine": platform.processor() or platform.machine(), "torch_threads": 1, "quick": args.quick}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vla.json").write_text(json.dumps(result, indent=2))
    f = result
    md = ["## Native VLA on the CPU (`benchmarks/bench_vla.py`)", "",
          "learner=vla's default network on lang_reach (top camera 64 px, frozen MiniLM, 256 bins x 2 dims), one "
          f"torch thread, median of {rounds} interleaved rounds (min - max).", "",
          "| figure | value |", "|---|---|",
          f"| acting latency, one env (`policy.step`) | {f['acting_ms']['median']:.1f} ms median, "
          f"{f['acting_ms']['p90']:.1f} ms p90 |",
          f"| BC updates (batch 64) | {f['bc_samples_per_s']['median']:.0f} samples/s "
          f"({f['bc_samples_per_s']['min']:.0f} - {f['bc_samples_per_s']['max']:.0f}) |",
          f"| PPO minibatch (128 rows, forward + backward + step) | {f['ppo_samples_per_s']['median']:.0f} samples/s "
          f"({f['ppo_samples_per_s']['min']:.0f} - {f['ppo_samples_per_s']['max']:.0f}) |",
          f"| token log-prob vs bare forward (throughput ratio, target >= 0.9) | "
          f"{f['logprob_vs_bare_forward']['median']:.3f} ({f['logprob_vs_bare_forward']['min']:.3f} - "
          f"{f['logprob_vs_bare_forward']['max']:.3f}) |", ""]
    (RESULTS / "vla.md").write_text("\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
