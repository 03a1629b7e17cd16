"""Vector-env throughput vs worker count: in-process (SyncVectorEnv) vs subprocess workers
(AsyncVectorEnv, ``train.async_envs=true``), same machine, same run.

For each env and N in ``--envs-per-run`` the vector env from ``envs.make_vec_env`` steps
``--steps`` env steps (all envs together) with uniform random actions; the rate is env
steps/s (autoresets included, SAME_STEP). Each (env, N, mode) is measured in ``--rounds``
interleaved rounds; the table shows the median and the ratio to one in-process env.

Subprocess workers pay a pipe round trip per step; they win once an env step costs more
than that round trip and there are free cores. This machine's core count bounds the
speed-up (reported with the table).

    python -m benchmarks.bench_vec_env [--quick]

Writes ``benchmarks/results/vec_env.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENVS = {  # label -> (env name, make_env settings)
    "gym/Hopper-v5 (state)": ("gym/Hopper-v5", {}),
    "reach, 84x84 pixels": ("reach", {"pixels": True, "cameras": ["top"], "image_size": 84}),
    "libero_object/0 (state)": ("libero/libero_object/0", {"pixels": False}),
}


def rate(name: str, kwargs: dict, num_envs: int, asynchronous: bool, steps: int, seed: int) -> float:
    from envs import make_vec_env

    venv = make_vec_env(name, num_envs, seed=seed, asynchronous=asynchronous, **kwargs)
    try:
        rng = np.random.default_rng(seed)
        shape = (num_envs, *venv.single_action_space.shape)
        venv.reset(seed=seed)
        for _ in range(3):  # warm-up: workers started, first renders done
            venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
        iters = max(1, steps // num_envs)
        start = time.perf_counter()
        for _ in range(iters):
            venv.step(rng.uniform(-1, 1, shape).astype(np.float32))
        return iters * num_envs / (time.perf_counter() - start)
    finally:
        venv.close()


def run(labels: list[str], counts: list[int], steps: int, rounds: int) -> dict:
    out = {"steps": steps, "rounds": rounds, "cpus": os.cpu_count(), "envs": {}}
    for label in labels:
        name, kwargs = ENVS[label]
        heavy = "libero" in label  # builds take 7-35 s each: fewer sizes, one round, fewer steps
        mine = [n for n in counts if n <= 4] if heavy else counts
        per = {f"{mode} x{n}": [] for n in mine for mode in ("sync", "async")}
        budget = max(steps // 10, 40) if heavy else steps
        for r in range(1 if heavy else rounds):
            for n in mine:
                for mode in ("sync", "async"):
                    per[f"{mode} x{n}"].append(rate(name, kwargs, n, mode == "async", budget, r))
                    print(f"  {label} {mode} x{n} round {r}: {per[f'{mode} x{n}'][-1]:.0f} steps/s", flush=True)
        base = statistics.median(per[f"sync x{counts[0]}"])
        out["envs"][label] = {k: {"steps_per_s": statistics.median(v), "rounds": v,
                                  "vs_one_in_process": statistics.median(v) / base} for k, v in per.items()}
        write(out)  # after each env: a crash later keeps what was measured
    return out


def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    result["machine"] = platform.processor() or platform.machine()
    (RESULTS / "vec_env.json").write_text(json.dumps(result, indent=2))
    counts = sorted({int(k.split("x")[-1]) for e in result["envs"].values() for k in e})
    lines = ["## Vector-env throughput vs workers (`bench_vec_env`)", "",
             f"Env steps/s with random actions through `envs.make_vec_env`, median of {result['rounds']} rounds "
             "(LIBERO: 1 round, up to 4 envs, a tenth of the steps), "
             f"on {result['cpus']} CPU cores; in brackets the ratio to one in-process env. `sync`: "
             "SyncVectorEnv in the training process; `async`: one spawned subprocess per env "
             "(`train.async_envs=true`).", "",
             "| env | " + " | ".join(f"sync x{n} | async x{n}" for n in counts) + " |",
             "|---|" + "---:|" * (2 * len(counts))]
    for label, rows in result["envs"].items():
        cells = []
        for n in counts:
            for mode in ("sync", "async"):
                row = rows.get(f"{mode} x{n}")
                cells.append(f"{row['steps_per_s']:.0f} ({row['vs_one_in_process']:.2f})" if row else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (RESULTS / "vec_env.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Hopper only, 1 and 2 envs, 1 round")
    parser.add_argument("--steps", type=int, default=None, help="env steps per measurement (default 4000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--envs-per-run", type=int, nargs="+", default=None, help="vector sizes (default 1 2 4 8)")
    args = parser.parse_args(argv)
    labels = list(ENVS)[:1] if args.quick else list(ENVS)
    counts = args.envs_per_run or ([1, 2] if args.quick else [1, 2, 4, 8])
    return run(labels, counts, args.steps or (400 if args.quick else 4000), args.rounds or (1 if args.quick else 3))


if __name__ == "__main__":
    main()
