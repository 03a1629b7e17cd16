"""Ray scale-out on one machine: rollout env steps/s and labeling frames/s with 1, 2 and 4 Ray
workers against the local path measured in the same run, and memory per worker.

* **Rollouts**: built-in ``reach`` from state, the SAC actor of the default config acting
  (rebuilt from its spec in each worker), ``train.ray.steps_per_call`` 64. The local peer is the
  training loop's own path: a ``Driver`` over ``envs_per_worker x workers`` local envs with the
  same policy. Steps/s count committed transitions after one warm-up call per worker (the
  actors' start-up is reported apart). Ratio at 1 worker: the Ray path's overhead (target
  >= 0.9x the local path); scaling efficiency: steps/s(k) / (k x steps/s(1)).
* **Labeling**: ``embodied-label``'s library on a generated foreign LeRobotDataset (64 px frames)
  with the README's CLIP ViT-B/32 (random weights: the real per-frame cost), the local path
  against ``ray.actors`` 1, 2, 4 (half a CPU each, on a local cluster of 4 logical CPUs);
  frames/s of the labeling phase, the actors' start-up included and also reported alone.
* **Memory**: resident set size of one rollout worker process.

Each figure is the median of ``--rounds`` rounds, with its min-max spread. On this 2-core
machine k > 2 workers share cores: efficiency above 2 workers measures oversubscription, not
scale; the multi-node figures need a cluster (the README's recipe).

    python -m benchmarks.bench_ray --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET = 0.9
STEPS_PER_CALL = 64


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sac_spec() -> dict:
    from gymnasium import spaces

    import envs
    from embodied.learners.sac import SAC, SACConfig

    env = envs.make_env("reach")
    obs = spaces.Dict({"state": env.observation_space["state"]})
    return SAC(obs, env.action_space, SACConfig()).policy().spec()


def local_rollout_rate(spec: dict, num_envs: int, steps: int) -> float:
    import envs
    import policies
    from embodied.driver import Driver
    from policies.chunking import ChunkExecutor

    venv = envs.make_vec_env("reach", num_envs, seed=0)
    driver = Driver(venv)
    executor = ChunkExecutor(policies.from_spec(spec).eval(), num_envs)
    driver.reset(seed=0)
    driver.step(executor)
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        n += driver.step(executor)
    rate = n / (time.perf_counter() - t0)
    venv.close()
    return rate


def ray_rollout_rate(spec: dict, workers: int, steps: int) -> tuple[float, float, float]:
    """(committed steps/s, start-up seconds, RSS MB of one worker)."""
    import torch

    from embodied.scale.rollout import RolloutFleet

    settings = {"address": "local", "workers": workers, "envs_per_worker": 1, "num_cpus": 0.5,
                "steps_per_call": STEPS_PER_CALL, "local_cpus": None}
    t0 = time.perf_counter()
    fleet = RolloutFleet(settings, "reach", {}, 0, spec)
    import policies

    fleet.publish(0, {k: torch.as_tensor(v) for k, v in policies.from_spec(spec).state_dict().items()})
    for _ in range(workers):  # every worker built and through one call
        fleet.collect(random=False)
    startup = time.perf_counter() - t0
    t0, n = time.perf_counter(), 0
    while n < steps:
        n += sum(len(ts) for ts, _ in fleet.collect(random=False))
    rate = n / (time.perf_counter() - t0)
    memory = rss_mb(fleet.ray.get(fleet.workers[0].pid.remote()))
    fleet.close()
    return rate, startup, memory


# the README's reward=clip (ViT-B/32) with random weights: the real per-frame cost, no download
CLIP_B32 = {"name": "clip", "model_name": "ViT-B-32", "pretrained": None, "baseline_prompts": ["a robot arm on a table"],
            "alpha": 0.5, "batch_size": 64}


def label_rates(root: Path, actors_list: list[int], episodes: int, frames: int) -> dict[str, tuple[float, float]]:
    """Per path: (frames/s of the labeling phase, seconds to the first labeled episode)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import functools

    from test_label import foreign_dataset

    from embodied.build import seeded_reward
    from embodied.datasets.label import label_dataset

    src = root / "src"
    if not src.exists():
        foreign_dataset(src, episodes=episodes, T=frames, size=64)
    build = functools.partial(seeded_reward, CLIP_B32, 0)
    out = {}
    for label, settings in [("local", None)] + [(f"ray x{k}", {"address": "local", "actors": k, "num_gpus": 0,
                                                                "num_cpus": 0.5, "batch_size": 2, "readers": 1,
                                                                "local_cpus": 4}) for k in actors_list]:
        dst = root / "out"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(root / "out.partial", ignore_errors=True)
        summary = label_dataset(src, dst, build, CLIP_B32, camera="top", show_progress=False, plot_episodes=0,
                                ray=settings)
        out[label] = (episodes * frames / summary["label_seconds"], summary["first_label_seconds"])
    return out


def table(result: dict) -> list[str]:
    """The markdown table of a ``ray.json`` result."""
    rollout, startup, memory, counts = (result["rollout_steps_per_s"], result["rollout_startup_s"],
                                        result["rollout_worker_rss_mb"], result["counts"])
    labeling, first = result["label_frames_per_s"], result["label_first_episode_s"]
    episodes, frames = result["label_episodes"], result["label_frames"]
    med = {k: statistics.median(v) for k, v in rollout.items()}

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"

    lines = ["## Ray scale-out on one machine (`bench_ray`)", "",
             f"{result['cpu_count']} CPUs; median of {result['rounds']} rounds (min–max). Rollouts: reach from state, the "
             f"default SAC actor acting, {STEPS_PER_CALL} steps per worker call; local peer: the loop's Driver over the "
             "same number of envs. Above 2 workers this machine's cores are oversubscribed.", "",
             "| workers | local steps/s | Ray steps/s | Ray / local | scaling efficiency (Ray) | Ray start-up s |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in counts:
        eff = med[f"ray {k}"] / (k * med["ray 1"])
        lines.append(f"| {k} | {cell(rollout[f'local {k}'])} | {cell(rollout[f'ray {k}'])} | "
                     f"{med[f'ray {k}'] / med[f'local {k}']:.2f} | {eff:.2f} | "
                     f"{statistics.median(startup[str(k)]):.1f} |")
    lines += ["", f"Ray path at 1 worker: **{result['overhead_1_worker']:.2f}×** the local path (target ≥ {TARGET}×). "
              f"One rollout worker's resident memory: {statistics.median(memory):.0f} MB.", "",
              f"| labeling ({episodes} episodes × {frames} frames, CLIP ViT-B/32, random weights) | frames/s | vs local "
              "| s to the first labeled episode (start-up) |", "|---|---:|---:|---:|"]
    base = statistics.median(labeling["local"])
    for name, values in labeling.items():
        rate, first_s = statistics.median(values), statistics.median(first[name])
        lines.append(f"| {name} | {rate:.1f} ({min(values):.1f}–{max(values):.1f}) | {rate / base:.2f} | {first_s:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    import ray

    rounds = args.rounds or (2 if args.quick else 3)
    steps = 3000 if args.quick else 10000
    counts = [1, 2, 4]
    spec = sac_spec()
    rollout = {k: [] for k in ["local 1", *[f"local {k}" for k in counts[1:]], *[f"ray {k}" for k in counts]]}
    startup, memory = {str(k): [] for k in counts}, []  # str keys: as they read back from ray.json
    for _ in range(rounds):
        for k in counts:
            rollout[f"local {k}"].append(local_rollout_rate(spec, k, steps))
            rate, start, mem = ray_rollout_rate(spec, k, steps)
            ray.shutdown()
            rollout[f"ray {k}"].append(rate)
            startup[str(k)].append(start)
            memory.append(mem)
    labeling: dict[str, list[float]] = {}
    first: dict[str, list[float]] = {}
    episodes, frames = (12, 20) if args.quick else (24, 20)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, (rate, first_s) in label_rates(Path(tmp), counts, episodes, frames).items():
                labeling.setdefault(name, []).append(rate)
                first.setdefault(name, []).append(first_s)
                ray.shutdown()
    result = {"benchmark": "ray", "quick": args.quick, "cpu_count": os.cpu_count(), "rounds": rounds,
              "counts": counts, "rollout_steps_per_s": rollout, "rollout_startup_s": startup,
              "rollout_worker_rss_mb": memory, "label_frames_per_s": labeling, "label_first_episode_s": first,
              "label_episodes": episodes, "label_frames": frames}
    result["overhead_1_worker"] = statistics.median(rollout["ray 1"]) / statistics.median(rollout["local 1"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray.json").write_text(json.dumps(result, indent=2))
    lines = table(result)
    (RESULTS / "ray.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
