"""Residual RL learner speed against the plain SAC learner, and the fused critic ensemble
against a Python loop over heads (speed and memory), same machine, same run.

1. ``update()`` calls per second, state input at push's sizes (14-d state, 2-d action),
   256x256 critics, 10 heads with LayerNorm, min over 2 random heads, batch 256, 4 critic
   updates per call: ``learner=residual`` (one residual-actor update per call, the base a
   256x256 BC MLP asked afresh at the 1 % of rows whose next observation ends an episode)
   vs ``learner=sac`` at the same sizes (``num_critics=10, utd=4``: one actor + temperature
   update per call). Both see the same pre-built batches; blocks alternate between the two
   and the median of the per-round ratios is reported with its min and max.
2. One critic forward + backward (10 heads, batch 256, 256x256, LayerNorm): the fused
   ensemble (``embodied.learners.nets.ensemble_mlp``, one batched matmul per layer) vs ten
   separate ``nn.Sequential`` heads in a Python loop. Memory: bytes of the distinct storages
   autograd keeps for the backward pass (saved-tensor hooks), and parameter bytes.

Writes ``benchmarks/results/residual.{json,md}``.

    python -m benchmarks.bench_residual [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
STATE, ACT, HEADS, BATCH, UTD, HIDDEN = 14, 2, 10, 256, 4, (256, 256)


def _spaces():
    import gymnasium as gym

    return (gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (STATE,), np.float32)}),
            gym.spaces.Box(-1, 1, (ACT,), np.float32))


def _batches(n: int, seed: int = 0):
    from embodied.contracts import Batch

    rng = np.random.default_rng(seed)
    rows = BATCH * UTD
    out = []
    for _ in range(n):
        def t(*shape):
            return torch.as_tensor(rng.normal(size=shape), dtype=torch.float32)

        action = torch.as_tensor(rng.uniform(-1, 1, (rows, ACT)), dtype=torch.float32)
        out.append(Batch(obs={"state": t(rows, STATE)}, action=action, reward=t(rows),
                         discount=torch.full((rows,), 0.99 ** 3), next_obs={"state": t(rows, STATE)},
                         extras={"base_action": action.clamp(-0.9, 0.9), "next_base_action": action.roll(1, 0),
                                 "next_extras_known": torch.as_tensor(rng.random(rows) > 0.01)}))
    return out


def _learners(folder: str):
    import policies
    from embodied.learners import make_learner
    from policies.bc import BCPolicy

    obs, act = _spaces()
    policies.save_policy(BCPolicy(ACT, STATE, hidden=HIDDEN), folder)
    residual = make_learner("residual", obs, act, {"base": policies.load_policy(folder), "base_source": folder},
                            hidden=list(HIDDEN), actor_hidden=list(HIDDEN), num_critics=HEADS, batch_size=BATCH,
                            utd=UTD, actor_every=UTD, critic_warmup=0)
    sac = make_learner("sac", obs, act, hidden=list(HIDDEN), num_critics=HEADS, num_min=2, batch_size=BATCH, utd=UTD)
    return residual, sac


def _rate(learner, batches, calls: int) -> float:
    t0 = time.perf_counter()
    for i in range(calls):
        learner.update(batches[i % len(batches)])
    return calls / (time.perf_counter() - t0)


def bench_learners(rounds: int, calls: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        residual, sac = _learners(folder)
        batches = _batches(8)
        _rate(residual, batches, 3)
        _rate(sac, batches, 3)  # warm-up
        res, ref = [], []
        for _ in range(rounds):
            res.append(_rate(residual, batches, calls))
            ref.append(_rate(sac, batches, calls))
    ratios = [a / b for a, b in zip(res, ref)]
    return {"residual_updates_per_s": statistics.median(res), "sac_updates_per_s": statistics.median(ref),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "rounds": rounds, "calls_per_round": calls}


class LoopedHeads(torch.nn.Module):
    """Ten separate heads, run one after another: what a direct port does."""

    def __init__(self, d_in: int):
        super().__init__()
        from policies.actor import mlp

        self.heads = torch.nn.ModuleList(mlp([d_in, *HIDDEN, 1], layer_norm=True) for _ in range(HEADS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(x) for h in self.heads])


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for the backward pass (an expanded view of
    the input counts once, at its real size; parameters are not counted)."""
    seen: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def bench_ensemble(rounds: int, reps: int) -> dict:
    from embodied.learners.nets import ensemble_mlp

    torch.manual_seed(0)
    d_in = STATE + ACT
    fused = ensemble_mlp(HEADS, [d_in, *HIDDEN, 1], layer_norm=True)
    looped = LoopedHeads(d_in)
    x = torch.randn(BATCH, d_in)
    target = torch.randn(HEADS, BATCH, 1)

    def step_fused():
        loss = (fused(x.expand(HEADS, *x.shape)) - target).pow(2).mean()
        loss.backward()

    def step_looped():
        loss = (looped(x) - target).pow(2).mean()
        loss.backward()

    def time_it(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return reps / (time.perf_counter() - t0)

    time_it(step_fused)
    time_it(step_looped)
    a, b = [], []
    for _ in range(rounds):
        a.append(time_it(step_fused))
        b.append(time_it(step_looped))
    ratios = [f / loop for f, loop in zip(a, b)]
    saved_f = _saved_bytes(lambda: (fused(x.expand(HEADS, *x.shape)) - target).pow(2).mean())
    saved_l = _saved_bytes(lambda: (looped(x) - target).pow(2).mean())
    params = [sum(p.numel() * p.element_size() for p in m.parameters()) for m in (fused, looped)]
    return {"fused_steps_per_s": statistics.median(a), "looped_steps_per_s": statistics.median(b),
            "speed_ratio": statistics.median(ratios), "speed_ratio_min": min(ratios), "speed_ratio_max": max(ratios),
            "saved_bytes_fused": saved_f, "saved_bytes_looped": saved_l, "saved_ratio": saved_f / saved_l,
            "param_bytes_fused": params[0], "param_bytes_looped": params[1], "rounds": rounds, "reps": reps}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rounds, calls, reps = (3, 5, 20) if args.quick else (7, 20, 100)
    learners = bench_learners(rounds, calls)
    ensemble = bench_ensemble(rounds, reps)
    result = {"learners": learners, "ensemble": ensemble, "machine": platform.processor() or platform.machine(),
              "torch_threads": 1, "quick": args.quick}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "residual.json").write_text(json.dumps(result, indent=2))
    L, E = learners, ensemble
    md = [
        "## Residual RL learner (bench_residual)", "",
        f"State {STATE}, action {ACT}, 256x256 critics x {HEADS} heads (LayerNorm), batch {BATCH}, {UTD} critic "
        f"updates per call, 1 torch thread; median of {L['rounds']} interleaved rounds (min - max of the ratio).", "",
        "| measure | residual / fused | SAC / looped | ratio (min - max) |", "|---|---|---|---|",
        f"| update() calls / s, residual vs SAC | {L['residual_updates_per_s']:.1f} | {L['sac_updates_per_s']:.1f} | "
        f"{L['ratio']:.2f} ({L['ratio_min']:.2f} - {L['ratio_max']:.2f}) |",
        f"| critic fwd+bwd / s, fused vs looped heads | {E['fused_steps_per_s']:.0f} | {E['looped_steps_per_s']:.0f} | "
        f"{E['speed_ratio']:.2f} ({E['speed_ratio_min']:.2f} - {E['speed_ratio_max']:.2f}) |",
        f"| activations saved for backward (MB) | {E['saved_bytes_fused'] / 1e6:.2f} | "
        f"{E['saved_bytes_looped'] / 1e6:.2f} | {E['saved_ratio']:.2f} |",
        f"| parameters (MB) | {E['param_bytes_fused'] / 1e6:.2f} | {E['param_bytes_looped'] / 1e6:.2f} | "
        f"{E['param_bytes_fused'] / E['param_bytes_looped']:.2f} |", ""]
    (RESULTS / "residual.md").write_text("\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
