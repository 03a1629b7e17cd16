"""The VLM-feedback offline pipeline end to end, as the documented commands run it:

1. ``embodied-make-dataset env=reach env.pixels=true env.cameras=[front] env.image_size=64
   kinds=[scripted] scripted_noise=1.0 scripted_distracted=0.5``: an unlabeled, suboptimal
   dataset (a noisy controller; half the episodes steer to a random wrong spot; ~35 % success)
2. ``embodied-label reward=rlvlmf_oracle preference_pairs=P``: RL-VLM-F preference labels on
   frame pairs from the scripted labeler (true progress, 10 % flipped labels), a
   Bradley-Terry CNN ensemble fit on them, every frame relabeled -> labeled dataset
3. ``embodied-train env=reach learner=iql train.dataset=<labeled> train.offline_updates=U
   train.total_steps=0``: IQL on the learned rewards, evaluated in the simulator

and the two baselines on the same data: IQL on the true rewards (the unlabeled dataset's
``gt.reward``) and behaviour cloning (the same actor with ``learner.beta=0``: every
advantage weight is 1). Success over seeds -> rliable IQM with 95 % bootstrap CIs.

    python benchmarks/pipeline_offline_vlmf.py            # 3 seeds, full size
    python benchmarks/pipeline_offline_vlmf.py --quick    # small sizes
Writes benchmarks/results/pipeline_offline_vlmf.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "WANDB_MODE": "offline",
       "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run(cmd: list[str]) -> dict:
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def iqm_ci(scores: dict[str, np.ndarray], reps: int = 2000) -> dict[str, tuple[float, float, float]]:
    from rliable import library as rly
    from rliable import metrics

    agg = lambda x: np.array([metrics.aggregate_iqm(x)])  # noqa: E731
    point, ci = rly.get_interval_estimates({k: v[:, None] for k, v in scores.items()}, agg, reps=reps)
    return {k: (float(point[k][0]), float(ci[k][0, 0]), float(ci[k][1, 0])) for k in scores}


def label_quality(labeled: Path) -> dict[str, float]:
    from scipy.stats import spearmanr

    from embodied.datasets.read import iter_episodes, open_dataset

    eps = list(iter_episodes(open_dataset(labeled), cameras=[]))
    learned = np.concatenate([e.columns["next.reward"].reshape(-1) for e in eps])
    true = np.concatenate([e.columns["gt.reward"].reshape(-1) for e in eps])
    return {"spearman_learned_vs_true_reward": float(spearmanr(learned, true).statistic)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--work", default=str(ROOT / "outputs" / "pipeline_offline_vlmf"))
    args = parser.parse_args(argv)
    steps, pairs, updates, episodes = (2000, 600, 600, 10) if args.quick else (10000, 2000, 5000, 20)
    work = Path(args.work) / ("quick" if args.quick else "full")
    data, labeled = work / "data", work / "labeled"
    if not (data / "scripted").exists():
        run(command("embodied.cli.make_dataset", "env=reach", "env.pixels=true", "env.cameras=[front]",
                    "env.image_size=64", "kinds=[scripted]", "scripted_noise=1.0", "scripted_distracted=0.5",
                    f"steps={steps}", f"output={data}"))
    label = run(command("embodied.cli.label", f"input={data / 'scripted'}", f"output={labeled}", "reward=rlvlmf_oracle",
                        "reward.oracle_error_rate=0.1", f"preference_pairs={pairs}"))
    behaviour = json.loads((data / "generation.json").read_text())["stats"]["scripted"]["scripted"]
    conditions = {"IQL, learned reward (RL-VLM-F)": (labeled, []), "IQL, true reward": (data / "scripted", []),
                  "BC": (data / "scripted", ["learner.beta=0.0"])}
    success: dict[str, list[float]] = {k: [] for k in conditions}
    returns: dict[str, list[float]] = {k: [] for k in conditions}
    for seed in range(args.seeds):
        for i, (name, (dataset, extra)) in enumerate(conditions.items()):
            run_dir = work / "runs" / f"c{i}_s{seed}"
            result_file = run_dir / "result.json"
            if result_file.exists():
                result = json.loads(result_file.read_text())
            else:
                result = run(command("embodied.cli.train", "env=reach", "learner=iql", f"train.dataset={dataset}",
                                     f"train.offline_updates={updates}", "train.total_steps=0", f"seed={seed}",
                                     f"eval.episodes={episodes}", "eval.video_episodes=0", "wandb.mode=disabled",
                                     f"checkpoint.every={updates}", f"learner.actor_lr_steps={updates}",
                                     f"run_dir={run_dir}", *extra))
            success[name].append(result["eval/success"])
            returns[name].append(result.get("eval/return", float("nan")))
    table = iqm_ci({k: np.array(v) for k, v in success.items()})
    out = {"quick": args.quick, "seeds": args.seeds, "dataset_steps": steps, "preference_pairs": pairs,
           "offline_updates": updates, "eval_episodes": episodes, "behaviour": behaviour,
           "labeling": {k: label[k] for k in ("episodes_labeled", "episodes_failed", "reward_mean", "reward_std")},
           **label_quality(labeled), "success": success, "return": returns,
           "iqm_success": {k: {"iqm": v[0], "ci95": [v[1], v[2]]} for k, v in table.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline_offline_vlmf.json").write_text(json.dumps(out, indent=2))
    lines = [f"Offline VLM-feedback pipeline on `reach` ({args.seeds} seeds, {steps} transitions, "
             f"{pairs} preference pairs, {updates} IQL updates, {episodes} eval episodes/seed"
             f"{', quick' if args.quick else ''}). Behaviour policy success {behaviour['success_rate']:.2f}; "
             f"Spearman(learned, true reward) = {out['spearman_learned_vs_true_reward']:.2f}.", "",
             "| method | success IQM | 95 % CI | mean return |", "|---|---|---|---|"]
    for name, (iqm, lo, hi) in table.items():
        lines.append(f"| {name} | {iqm:.2f} | [{lo:.2f}, {hi:.2f}] | {np.nanmean(returns[name]):.1f} |")
    (RESULTS / "pipeline_offline_vlmf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
