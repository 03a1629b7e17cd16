"""Does SAC learn with Ray rollout workers as it does with local envs? The default SAC on the
built-in ``reach`` (8,000 env steps, the README's default run), seeds 0..N-1, once with the
loop's local env and once with ``train.ray.address=local train.ray.workers=2`` (one env each);
the final evaluation's success and return (20 episodes), IQM over seeds with a 95 % bootstrap
interval (rliable). Rows go to ``benchmarks/results/ray_runs.jsonl`` (a rerun skips finished
ones), the table to ``benchmarks/results/ray_learning.md``.

    python -m benchmarks.ray_learning --seeds 3
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
PATHS = {"local": ("local env (the loop's Driver)", []),
         "ray": ("2 Ray rollout workers", ["train.ray.address=local", "train.ray.workers=2"])}


def one(path: str, seed: int, steps: int, episodes: int, root: Path) -> dict:
    run_dir = root / f"{path}_s{seed}"
    cmd = [str(BIN / "embodied-train"), "env=reach", "learner=sac", f"seed={seed}", f"train.total_steps={steps}",
           f"eval.every={steps}", f"eval.episodes={episodes}", "eval.video_episodes=0", f"checkpoint.every={steps}",
           "wandb.mode=disabled", f"run_dir={run_dir}", *PATHS[path][1]]
    result = run_cli(cmd, run_dir.with_suffix(".log"))
    row = {"path": path, "seed": seed, "steps": steps, "episodes": episodes, "success": float(result["eval/success"]),
           "return": float(result["eval/return"]), "seconds": round(result["seconds"], 1)}
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
    lines = ["## SAC with Ray rollout workers vs local envs (`ray_learning`)", "",
             "reach, default SAC, final evaluation over 20 episodes; IQM over seeds [95 % bootstrap CI].", "",
             "| envs | env steps | seeds | success per seed | success IQM | return IQM | minutes per run |",
             "|---|---|---|---|---|---|---|"]
    for path, (label, _) in PATHS.items():
        got = sorted((r for r in rows if r["path"] == path), key=lambda r: r["seed"])
        if got:
            lines.append(f"| {label} | {got[0]['steps']} | {len(got)} | {', '.join(f'{r['success']:.2f}' for r in got)} | "
                         f"{_iqm(np.array([r['success'] for r in got]))} | {_iqm(np.array([r['return'] for r in got]))} | "
                         f"{np.mean([r['seconds'] for r in got]) / 60:.1f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "ray_learning.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--root", default="runs/ray_learning")
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    have = {(r["path"], r["seed"], r["steps"]) for r in read_runs(RUNS)}
    for seed in range(args.seeds):
        for path in PATHS:
            if (path, seed, args.steps) not in have:
                print(one(path, seed, args.steps, args.episodes, root), flush=True)
    print(write_table())


if __name__ == "__main__":
    main()
