"""Success rate of the scripted experts (``envs/scripted_manipulation.py``).

For each env name, runs N episodes (seeds 0..N-1 via ``env.reset(seed=i)``; LIBERO resets
draw the suite's init states) with ``expert_for(env.unwrapped)`` until the env's default
time limit (robosuite 200 steps, LIBERO the adapter's default) and counts an episode as a
success when ``info["success"]`` is true at any step. Prints and writes
``benchmarks/results/scripted_success.{json,md}``; results for envs not run this time are
kept from the previous file (``--fresh`` drops them).

    python -m benchmarks.scripted_success                       # the default envs, 20 episodes
    python -m benchmarks.scripted_success robosuite/Lift -n 5
    python -m benchmarks.scripted_success libero/libero_object/0 --noise 0.1

Simulators are CPU-bound: run one of these at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.8
DEFAULT_ENVS = (
    ["robosuite/Lift", "robosuite/PickPlaceCan"]
    + [f"libero/libero_object/{i}" for i in range(10)]
    + [f"libero/libero_spatial/{i}" for i in range(10)]
    + ["libero/libero_goal/6", "libero/libero_goal/8"]  # cream cheese in the bowl, bowl on the plate
)


def time_limit(env) -> int | None:
    """The ``TimeLimit`` of a wrapped env (None when there is none)."""
    while env is not None:
        steps = getattr(env, "_max_episode_steps", None)
        if steps:
            return int(steps)
        env = getattr(env, "env", None) if hasattr(env, "unwrapped") and env is not env.unwrapped else None
    return None


def run_env(name: str, episodes: int, noise: float, bar) -> dict:
    import numpy as np

    from envs import make_env
    from envs.scripted_manipulation import expert_for

    env = make_env(name, seed=0)
    try:
        expert = expert_for(env.unwrapped, noise=noise, seed=0)
        if expert is None:
            bar.update(episodes)
            return {"env": name, "supported": False}
        lengths, steps, failed, start = [], [], [], time.perf_counter()
        for seed in range(episodes):
            env.reset(seed=seed)
            expert.reset()
            first, t, done = None, 0, False
            while not done:
                _, _, terminated, truncated, info = env.step(expert())
                t += 1
                done = terminated or truncated
                if first is None and info.get("success"):
                    first = t
            steps.append(t)
            if first is not None:
                lengths.append(first)
            else:
                failed.append(seed)
            bar.update(1)
            bar.set_postfix_str(f"{name} {len(lengths)}/{seed + 1}")
        return {
            "env": name, "supported": True, "episodes": episodes, "successes": len(lengths),
            "success_rate": len(lengths) / episodes,
            "mean_steps_to_success": float(np.mean(lengths)) if lengths else None,
            "time_limit": time_limit(env), "longest_episode": max(steps), "failed_seeds": failed,
            "noise": noise, "seconds": round(time.perf_counter() - start, 1),
        }
    finally:
        env.close()


def write(results: dict[str, dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scripted_success.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["## Scripted experts: success rate", "",
             "`python -m benchmarks.scripted_success` (`envs/scripted_manipulation.py`); seeds 0..N-1,",
             "success = `info[\"success\"]` at any step within the env's time limit; noise = std of",
             f"the Gaussian action noise; target >= {TARGET:.0%}.", "",
             "| env | success | rate | mean steps to success | time limit | noise | failed seeds | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if not r.get("supported"):
            lines.append(f"| {name} | no expert | | | | | | |")
            continue
        mean = f"{r['mean_steps_to_success']:.1f}" if r["mean_steps_to_success"] is not None else "-"
        ok = "yes" if r["success_rate"] >= TARGET else "NO"
        lines.append(f"| {name} | {r['successes']}/{r['episodes']} | {r['success_rate']:.0%} | {mean} | "
                     f"{r.get('time_limit')} | {r.get('noise', 0.0)} | {r.get('failed_seeds', '')} | {ok} |")
    (RESULTS / "scripted_success.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("envs", nargs="*", default=DEFAULT_ENVS, help="env names (default: all supported)")
    parser.add_argument("-n", "--episodes", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise std")
    parser.add_argument("--fresh", action="store_true", help="do not keep results of envs not run now")
    args = parser.parse_args()
    from tqdm import tqdm

    previous = {}
    path = RESULTS / "scripted_success.json"
    if path.is_file() and not args.fresh:
        try:
            previous = json.loads(path.read_text()).get("results", {})
        except (ValueError, AttributeError):
            previous = {}
    results = dict(previous)
    with tqdm(total=len(args.envs) * args.episodes, unit="ep", dynamic_ncols=True) as bar:
        for name in args.envs:
            results[name] = run_env(name, args.episodes, args.noise, bar)
            r = results[name]
            if r.get("supported"):
                bar.write(f"{name}: {r['successes']}/{r['episodes']} ({r['seconds']} s)")
            else:
                bar.write(f"{name}: no scripted expert")
    order = {n: i for i, n in enumerate(DEFAULT_ENVS)}
    results = dict(sorted(results.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    write(results, {"machine": platform.platform(), "python": platform.python_version()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
