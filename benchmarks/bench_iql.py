"""IQL vs d3rlpy's IQL on the same generated dataset with the same network sizes.

Dataset: ``reach`` (state), the ``scripted`` noisy controller of embodied-make-dataset.
Both learners: 2x256 MLPs, twin Q, batch 256, lr 3e-4, expectile 0.7, beta 3, weights
capped at 100, state standardisation, cosine-annealed actor lr, one CPU thread.
Measured per seed: gradient updates per second (sampling included: ours samples the
Replay, d3rlpy runs ``fit``) and the D4RL-normalised return of the deterministic policy
in the simulator (0 = uniform random actions, 100 = the noise-free controller), then
rliable IQM with 95 % bootstrap CIs over seeds. d3rlpy 2.8 pins gymnasium 1.0.0, so it
runs in its own venv (benchmarks/_envs/d3rlpy, made on first use) as a subprocess
(benchmarks/d3rlpy_env/iql_worker.py) that receives the dataset as .npz and answers
action queries over a pipe.

    python -m benchmarks.bench_iql [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / "_envs" / "d3rlpy"
RESULTS = HERE / "results"


def d3rlpy_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run(["uv", "venv", "-q", "--python", "3.12", str(VENV)], check=True)
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(py), "-r",
                        str(HERE / "d3rlpy_env" / "requirements.txt")], check=True)
    return py


def export_npz(replay, path: Path) -> None:
    """The Replay's rows as d3rlpy MDPDataset arrays (rows are stored in episode order)."""
    n = len(replay)
    np.savez(path, observations=replay.obs["state"][:n], actions=replay.action[:n], rewards=replay.reward[:n],
             terminals=replay.terminated[:n].astype(np.float32), timeouts=replay.truncated[:n].astype(np.float32))


def evaluate(act, episodes: int, seed: int = 50_000) -> float:
    import envs

    env = envs.make_env("reach", seed=seed)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        ret, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs["state"][None])[0])
            ret, done = ret + r, term or trunc
        returns.append(ret)
    env.close()
    return float(np.mean(returns))


def ours(replay, steps: int, seed: int) -> tuple[float, object]:
    import gymnasium as gym

    from embodied.learners.iql import IQL, IQLConfig

    torch.manual_seed(seed)
    learner = IQL(gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)}),
                  gym.spaces.Box(-1, 1, (2,), np.float32), IQLConfig(actor_lr_steps=steps))
    learner.fit_normalizer(replay.obs["state"][: len(replay)])
    start = time.perf_counter()
    for _ in range(steps):
        learner.update(replay.sample_torch(256))
    return steps / (time.perf_counter() - start), learner.policy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from embodied.datasets import load_replay
    from embodied.datasets.generate import GenerateConfig, generate, scripted_reach
    from embodied.datasets.generate import normalized_score

    steps, data_steps, episodes = (500, 2000, 5) if args.quick else (5000, 10000, 20)
    work = ROOT / "outputs" / "bench_iql" / ("quick" if args.quick else "full")
    if not (work / "scripted").exists():
        generate(GenerateConfig(env="reach", kinds=("scripted",), steps=data_steps, seed=0), work)
    replay = load_replay(work / "scripted", reward_key="gt.reward", cameras=[])
    export_npz(replay, work / "dataset.npz")
    rng = np.random.default_rng(0)
    random_ret = evaluate(lambda s: rng.uniform(-1, 1, (1, 2)), episodes)
    expert = scripted_reach(0.0, rng)
    expert_ret = evaluate(lambda s: expert({"state": s[0]})[None], episodes)
    py = d3rlpy_python()
    rows = {"ours": {"updates_per_s": [], "score": []}, "d3rlpy": {"updates_per_s": [], "score": []}}
    for seed in range(args.seeds):
        rate, policy = ours(replay, steps, seed)
        rows["ours"]["updates_per_s"].append(rate)
        rows["ours"]["score"].append(normalized_score(evaluate(lambda s: policy.act({"state": s}, True), episodes),
                                                      random_ret, expert_ret))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([str(py), str(HERE / "d3rlpy_env" / "iql_worker.py"), "--data", str(work / "dataset.npz"),
                                 "--steps", str(steps), "--seed", str(seed)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        rows["d3rlpy"]["updates_per_s"].append(json.loads(proc.stdout.readline())["updates_per_s"])

        def d3_act(s: np.ndarray) -> np.ndarray:
            proc.stdin.write(json.dumps(s.tolist()) + "\n")
            proc.stdin.flush()
            return np.asarray(json.loads(proc.stdout.readline()), np.float32)

        rows["d3rlpy"]["score"].append(normalized_score(evaluate(d3_act, episodes), random_ret, expert_ret))
        proc.stdin.close()
        proc.wait()
        print(f"seed {seed}: " + ", ".join(f"{k} {v['updates_per_s'][-1]:.0f} upd/s score {v['score'][-1]:.1f}"
                                            for k, v in rows.items()), flush=True)
    from rliable import library as rly
    from rliable import metrics

    agg = lambda x: np.array([metrics.aggregate_iqm(x)])  # noqa: E731
    point, ci = rly.get_interval_estimates({k: np.array(v["score"])[:, None] for k, v in rows.items()}, agg, reps=2000)
    speed = np.mean(rows["ours"]["updates_per_s"]) / np.mean(rows["d3rlpy"]["updates_per_s"])
    out = {"quick": args.quick, "seeds": args.seeds, "updates": steps, "dataset_transitions": len(replay),
           "eval_episodes": episodes, "random_return": random_ret, "expert_return": expert_ret, "runs": rows,
           "speed_ratio_ours_over_d3rlpy": float(speed), "target_speed_ratio": 1.5,
           "iqm_score": {k: {"iqm": float(point[k][0]), "ci95": [float(ci[k][0, 0]), float(ci[k][1, 0])]} for k in rows}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "iql.json").write_text(json.dumps(out, indent=2))
    lines = [f"IQL vs d3rlpy 2.8 IQL on `reach` scripted data ({len(replay)} transitions, {steps} updates, "
             f"{args.seeds} seeds, 1 CPU thread{', quick' if args.quick else ''}). Speed ratio ours/d3rlpy: "
             f"**{speed:.2f}x** (target >= 1.5x).", "",
             "| learner | updates/s (mean) | normalised score IQM | 95 % CI |", "|---|---|---|---|"]
    for k, v in rows.items():
        lines.append(f"| {k} | {np.mean(v['updates_per_s']):.0f} | {point[k][0]:.1f} | "
                     f"[{ci[k][0, 0]:.1f}, {ci[k][1, 0]:.1f}] |")
    (RESULTS / "iql.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
