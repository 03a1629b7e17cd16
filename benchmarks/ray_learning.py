"""Do SAC and PPO learn with Ray rollout workers as they do with local envs? On the built-in
``reach``, seeds 0..N-1, once with the loop's local envs and once with ``train.ray.address=local
train.ray.workers=2`` (one env each): the default SAC for 8,000 env steps (the README's default
run), and PPO with 2 envs x 512-step rollouts, 16 minibatches, for 16,384 steps (local: 2 envs in
the loop; Ray: the two workers' envs side by side). The final evaluation's success and return
(20 episodes), IQM over seeds with a 95 % bootstrap interval (rliable). Rows go to
``benchmarks/results/ray_runs.jsonl`` (a rerun skips finished ones), the table to
``benchmarks/results/ray_learning.md``.

    python -m benchmarks.ray_learning --seeds 3
    python -m benchmarks.ray_learning --seeds 3 --learner ppo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.runner import BIN, read_runs, record_run, run_cli
from benchmarks.stats import iqm_ci

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "ray_runs.jsonl"
PATHS = {"local": ("local envs (the loop's Driver)", []),
         "ray": ("2 Ray rollout workers", ["train.ray.address=local", "train.ray.workers=2"])}
LEARNERS = {  # learner -> (its overrides, env steps)
    "sac": (["learner=sac"], 8000),
    "ppo": (["learner=ppo", "train.num_envs=2", "learner.num_steps=512", "learner.num_minibatches=16"], 16384),
}


def one(learner: str, path: str, seed: int, episodes: int, root: Path) -> dict:
    overrides, steps = LEARNERS[learner]
    run_dir = root / f"{learner}_{path}_s{seed}"
    cmd = [str(BIN / "embodied-train"), "env=reach", *overrides, f"seed={seed}", f"train.total_steps={steps}",
           f"eval.every={steps}", f"eval.episodes={episodes}", "eval.video_episodes=0", f"checkpoint.every={steps}",
           "wandb.mode=disabled", f"run_dir={run_dir}", *PATHS[path][1]]
    result = run_cli(cmd, run_dir.with_suffix(".log"))
    row = {"learner": learner, "path": path, "seed": seed, "steps": steps, "episodes": episodes,
           "success": float(result["eval/success"]), "return": float(result["eval/return"]),
           "seconds": round(result["seconds"], 1)}
    record_run(RUNS, row)
    write_table()
    return row


def _iqm(x: np.ndarray) -> str:
    if len(x) < 2:
        return "–"
    point, lo, hi = iqm_ci(x)
    return f"{point:.2f} [{lo:.2f}, {hi:.2f}]"


def write_table() -> str:
    rows = read_runs(RUNS)
    lines = ["## SAC and PPO with Ray rollout workers vs local envs (`ray_learning`)", "",
             "reach; SAC: the defaults, 8000 env steps; PPO: 2 envs x 512-step rollouts, 16 minibatches, 16384 steps. "
             "Final evaluation over 20 episodes; IQM over seeds [95 % bootstrap CI].", "",
             "| learner | envs | env steps | seeds | success per seed | success IQM | return IQM | minutes per run |",
             "|---|---|---|---|---|---|---|---|"]
    for learner in LEARNERS:
        for path, (label, _) in PATHS.items():
            got = sorted((r for r in rows if r.get("learner", "sac") == learner and r["path"] == path),
                         key=lambda r: r["seed"])
            if got:
                lines.append(f"| {learner.upper()} | {label} | {got[0]['steps']} | {len(got)} | "
                             f"{', '.join(f'{r['success']:.2f}' for r in got)} | "
                             f"{_iqm(np.array([r['success'] for r in got]))} | "
                             f"{_iqm(np.array([r['return'] for r in got]))} | "
                             f"{np.mean([r['seconds'] for r in got]) / 60:.1f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "ray_learning.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--learner", choices=sorted(LEARNERS), default="sac")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--root", default="runs/ray_learning")
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    steps = LEARNERS[args.learner][1]
    have = {(r.get("learner", "sac"), r["path"], r["seed"], r["steps"]) for r in read_runs(RUNS)}
    for seed in range(args.seeds):
        for path in PATHS:
            if (args.learner, path, seed, steps) not in have:
                print(one(args.learner, path, seed, args.episodes, root), flush=True)
    print(write_table())


if __name__ == "__main__":
    main()
