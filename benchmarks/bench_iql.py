"""IQL vs d3rlpy's IQL on the same generated dataset with the same network sizes.

Dataset: ``reach`` (state), the ``scripted`` noisy controller of embodied-make-dataset.
Both learners: 2x256 MLPs, twin Q, batch 256, lr 3e-4, expectile 0.7, beta 3, weights
capped at 100, state standardisation, cosine-annealed actor lr, one CPU thread.
Measured per seed: gradient updates per second (sampling included: ours samples the
Replay, d3rlpy runs ``fit``) and the D4RL-normalised return of the deterministic policy
in the simulator (0 = uniform random actions, 100 = the noise-free controller), then
per-seed records (``benchmarks/results/runs/iql_reach/<learner>_s<seed>/``: a rerun skips
the seeds that have one) reported with ``embodied-report``: IQM with 95 % stratified-bootstrap
CIs and the probability of improvement. d3rlpy 2.8 pins gymnasium 1.0.0, so it
runs in its own venv (benchmarks/_envs/d3rlpy, made on first use) as a subprocess
(benchmarks/d3rlpy_env/iql_worker.py) that receives the dataset as .npz and answers
action queries over a pipe.

    python -m benchmarks.bench_iql [--quick] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.runner import has_record, partial_record, publish

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / "_envs" / "d3rlpy"
RESULTS = HERE / "results"


def _uv() -> list[str]:
    """How to call uv here: by name when it is on PATH, else through the Python 3.12 that
    ``make setup`` installed it into (a fresh machine has no uv on PATH)."""
    if shutil.which("uv"):
        return ["uv"]
    base = getattr(sys, "_base_executable", sys.executable)  # the venv's interpreter, outside the venv
    for py in (base, shutil.which("python3.12")):
        if py and subprocess.run([py, "-m", "uv", "--version"], capture_output=True).returncode == 0:
            return [py, "-m", "uv"]
    raise SystemExit("bench_iql needs uv to make d3rlpy's venv: run `make setup` (it installs uv into python3.12) "
                     "or `python3.12 -m pip install uv`")


def d3rlpy_python() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        uv = _uv()
        subprocess.run([*uv, "venv", "-q", "--python", "3.12", str(VENV)], check=True)
        subprocess.run([*uv, "pip", "install", "-q", "--python", str(py), "-r",
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


LEARNERS = {"ours": "iql", "d3rlpy": "d3rlpy_iql"}  # side -> the learner its records name


def record_dir(study: str, side: str, seed: int) -> Path:
    return RESULTS / "runs" / study / f"{LEARNERS[side]}_s{seed}"


def write_record(study: str, side: str, seed: int, conf: dict, rate: float, ret: float, score: float) -> None:
    """One seed of one side as a run folder embodied-report reads (run.json, metrics.jsonl, result.json)."""
    record = record_dir(study, side, seed)
    partial = partial_record(record)
    row = {"step": conf["updates"], "eval/score": score, "eval/return": ret, "updates_per_s": rate}
    (partial / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    (partial / "run.json").write_text(json.dumps({"learner": LEARNERS[side], "env": "reach", "reward": "gt",
                                                  "seed": seed, "settings": conf}) + "\n")
    (partial / "result.json").write_text(json.dumps(row) + "\n")
    publish(partial, record)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (3 with --quick)")
    args = parser.parse_args(argv)
    n_seeds = args.seeds or (3 if args.quick else 5)
    torch.set_num_threads(1)
    from embodied.datasets import load_replay
    from embodied.datasets.generate import GenerateConfig, generate, scripted_reach
    from embodied.datasets.generate import normalized_score
    from embodied.report import make_report

    steps, data_steps, episodes = (500, 2000, 5) if args.quick else (5000, 10000, 20)
    study = "iql_reach_quick" if args.quick else "iql_reach"
    conf = {"updates": steps, "dataset_steps": data_steps, "eval_episodes": episodes, "batch_size": 256}
    todo = [(seed, side) for seed in range(n_seeds) for side in LEARNERS if not has_record(record_dir(study, side, seed), conf)]
    work = ROOT / "outputs" / "bench_iql" / ("quick" if args.quick else "full")
    if todo:
        if not (work / "scripted").exists():
            generate(GenerateConfig(env="reach", kinds=("scripted",), steps=data_steps, seed=0), work)
        replay = load_replay(work / "scripted", reward_key="gt.reward", cameras=[])
        export_npz(replay, work / "dataset.npz")
        rng = np.random.default_rng(0)
        random_ret = evaluate(lambda s: rng.uniform(-1, 1, (1, 2)), episodes)
        expert = scripted_reach(0.0, rng)
        expert_ret = evaluate(lambda s: expert({"state": s[0]})[None], episodes)
    py = d3rlpy_python() if any(side == "d3rlpy" for _, side in todo) else None
    for seed, side in tqdm(todo, desc="bench_iql (seed, learner)", unit="run"):
        if side == "ours":
            rate, policy = ours(replay, steps, seed)
            ret = evaluate(lambda s: policy.act({"state": s}, True), episodes)
        else:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.Popen([str(py), str(HERE / "d3rlpy_env" / "iql_worker.py"), "--data",
                                     str(work / "dataset.npz"), "--steps", str(steps), "--seed", str(seed)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env=env)
            rate = json.loads(proc.stdout.readline())["updates_per_s"]

            def d3_act(s: np.ndarray) -> np.ndarray:
                proc.stdin.write(json.dumps(s.tolist()) + "\n")
                proc.stdin.flush()
                return np.asarray(json.loads(proc.stdout.readline()), np.float32)

            ret = evaluate(d3_act, episodes)
            proc.stdin.close()
            proc.wait()
        score = normalized_score(ret, random_ret, expert_ret)
        write_record(study, side, seed, conf, rate, ret, score)
        tqdm.write(f"seed {seed} {LEARNERS[side]}: {rate:.0f} updates/s, normalised score {score:.1f}")
    runs = [str(record_dir(study, side, seed)) for side in LEARNERS for seed in range(n_seeds)]
    report_dir = RESULTS / "reports" / study
    data = make_report(runs, report_dir, metric="eval/score", group_by=["learner"], compare=["iql:d3rlpy_iql"],
                       title=f"IQL vs d3rlpy IQL on reach scripted data, {steps} updates: D4RL-normalised score")
    rate = {side: [json.loads((record_dir(study, side, s) / "result.json").read_text())["updates_per_s"]
                   for s in range(n_seeds)] for side in LEARNERS}
    speed = np.median(np.array(rate["ours"]) / np.array(rate["d3rlpy"]))
    agg, pi = data["aggregates"], data["probability_of_improvement"]
    out = {"quick": args.quick, "seeds": n_seeds, "settings": conf, "updates_per_s": rate,
           "speed_ratio_ours_over_d3rlpy": float(speed), "target_speed_ratio": 1.5,
           "iqm_score": {side: agg[LEARNERS[side]]["iqm"] for side in LEARNERS}, "probability_of_improvement": pi,
           "report": str(report_dir.relative_to(ROOT))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "iql.json").write_text(json.dumps(out, indent=2))
    def fmt(e: dict, d: int = 1) -> str:
        return f"{e['value']:.{d}f} [{e['ci'][0]:.{d}f}, {e['ci'][1]:.{d}f}]"

    lines = [f"IQL vs d3rlpy 2.8 IQL on `reach` scripted data ({data_steps} steps, {steps} updates, batch 256, "
             f"{n_seeds} seeds, 1 CPU thread{', quick' if args.quick else ''}). Speed ratio ours/d3rlpy (median of "
             f"the per-seed ratios): **{speed:.2f}x** (target >= 1.5x). Scores: D4RL-normalised return of the "
             "deterministic policy (0 = random actions, 100 = the noise-free controller); IQM with 95 % "
             f"stratified-bootstrap CI from `embodied-report` ({report_dir.relative_to(ROOT)}/).", "",
             "| learner | updates/s (median, min-max) | normalised score IQM [95 % CI] |", "|---|---|---|"]
    for side, name in LEARNERS.items():
        r = rate[side]
        lines.append(f"| {side} | {np.median(r):.0f} ({min(r):.0f}-{max(r):.0f}) | {fmt(agg[name]['iqm'])} |")
    for k, v in pi.items():
        lines += ["", f"Probability of improvement P({k}) = {fmt(v, 2)}."]
    (RESULTS / "iql.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
