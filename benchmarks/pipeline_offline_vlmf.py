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

Each seed labels the dataset itself (its own preference pairs and reward model) and trains the
three learners; each run's record (``metrics.jsonl``, ``result.json`` and a ``run.json`` naming
its condition) goes to ``benchmarks/results/runs/offline_vlmf/`` (a rerun skips finished runs)
and ``embodied-report`` aggregates them (IQM, 95 % CIs, probability of improvement).

    python -m benchmarks.pipeline_offline_vlmf            # 5 seeds, full size
    python -m benchmarks.pipeline_offline_vlmf --quick    # small sizes, 3 seeds
Writes benchmarks/results/pipeline_offline_vlmf.{json,md} and reports/offline_vlmf/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.runner import has_record, keep_run

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


def label_quality(labeled: Path) -> dict[str, float]:
    from scipy.stats import spearmanr

    from embodied.datasets.read import iter_episodes, open_dataset

    eps = list(iter_episodes(open_dataset(labeled), cameras=[]))
    learned = np.concatenate([e.columns["next.reward"].reshape(-1) for e in eps])
    true = np.concatenate([e.columns["gt.reward"].reshape(-1) for e in eps])
    return {"spearman_learned_vs_true_reward": float(spearmanr(learned, true).statistic)}


# condition -> (the learner its records name, the reward it learns from, extra embodied-train overrides)
CONDITIONS = {"IQL, learned reward (RL-VLM-F)": ("iql_rlvlmf", "rlvlmf", []),
              "IQL, true reward": ("iql_true_reward", "gt", []),
              "BC (same actor, beta = 0)": ("bc", "none", ["learner.beta=0.0"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (3 with --quick)")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "pipeline_offline_vlmf"))
    args = parser.parse_args(argv)
    from embodied.report import make_report

    n_seeds = args.seeds or (3 if args.quick else 5)
    steps, pairs, updates, episodes = (2000, 600, 600, 10) if args.quick else (10000, 2000, 5000, 20)
    conf = {"dataset_steps": steps, "preference_pairs": pairs, "offline_updates": updates, "eval_episodes": episodes}
    study = "offline_vlmf_quick" if args.quick else "offline_vlmf"
    work = Path(args.work) / ("quick" if args.quick else "full")
    data = work / "data"
    record = {(c, s): RESULTS / "runs" / study / f"{c}_s{s}" for s in range(n_seeds) for c, _, _ in CONDITIONS.values()}
    todo = [s for s in range(n_seeds) if not all(has_record(record[c, s], conf) for c, _, _ in CONDITIONS.values())]
    if todo and not (data / "generation.json").exists():  # generate() writes it last
        if data.exists():
            shutil.rmtree(data)  # a generation that did not finish
        run(command("embodied.cli.make_dataset", "env=reach", "env.pixels=true", "env.cameras=[front]",
                    "env.image_size=64", "kinds=[scripted]", "scripted_noise=1.0", "scripted_distracted=0.5",
                    f"steps={steps}", f"output={data}"))
    if todo:
        behaviour = json.loads((data / "generation.json").read_text())["stats"]["scripted"]["scripted"]
    label_conf = {k: conf[k] for k in ("dataset_steps", "preference_pairs")}  # what the labels depend on
    for seed in todo:  # each seed labels the data itself (its own preference pairs and reward model)
        labeled, label_file = work / f"labeled_s{seed}", work / f"label_s{seed}.json"
        label = json.loads(label_file.read_text()) if label_file.exists() else None
        if label is None or label.get("settings") != label_conf:
            if labeled.exists():
                shutil.rmtree(labeled)  # a labeling that did not finish, or one made with other settings
            out = run(command("embodied.cli.label", f"input={data / 'scripted'}", f"output={labeled}",
                              "reward=rlvlmf_oracle", "reward.oracle_error_rate=0.1", f"preference_pairs={pairs}",
                              f"seed={seed}"))
            label = {k: out[k] for k in ("episodes_labeled", "episodes_failed", "reward_mean", "reward_std")}
            label = {**label, **label_quality(labeled), "settings": label_conf}
            label_file.write_text(json.dumps(label))
        label = {k: v for k, v in label.items() if k != "settings"}
        for learner, reward, extra in CONDITIONS.values():
            if has_record(record[learner, seed], conf):
                continue
            dataset = labeled if reward == "rlvlmf" else data / "scripted"
            run_dir = work / "runs" / f"{learner}_s{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an unfinished earlier attempt
            run(command("embodied.cli.train", "env=reach", "learner=iql", f"train.dataset={dataset}",
                        f"train.offline_updates={updates}", "train.total_steps=0", f"seed={seed}",
                        f"eval.episodes={episodes}", "eval.video_episodes=0", "wandb.mode=disabled",
                        f"checkpoint.every={updates}", f"learner.actor_lr_steps={updates}", f"run_dir={run_dir}",
                        *extra))
            # the three conditions all run learner=iql: run.json names the condition for the report to
            # group by, and keeps the behaviour data's and the labels' figures the table needs
            keep_run(run_dir, record[learner, seed], {"learner": learner, "env": "reach", "reward": reward, "seed": seed,
                                                      "settings": conf, "behaviour": behaviour,
                                                      **({"labeling": label} if reward == "rlvlmf" else {})})
    runs = [str(r) for r in record.values()]
    meta = {s: json.loads((record["iql_rlvlmf", s] / "run.json").read_text()) for s in range(n_seeds)}
    labels = {s: m["labeling"] for s, m in meta.items()}
    behaviour = meta[0]["behaviour"]
    report_dir = RESULTS / "reports" / study
    data_out = make_report(runs, report_dir, metric="eval/success", group_by=["learner"],
                           compare=["iql_rlvlmf:iql_true_reward", "iql_rlvlmf:bc", "iql_true_reward:bc"],
                           title="Offline VLM-feedback pipeline on reach: eval/success")
    agg, pi = data_out["aggregates"], data_out["probability_of_improvement"]
    rho = [labels[s]["spearman_learned_vs_true_reward"] for s in range(n_seeds)]
    out = {"quick": args.quick, "seeds": n_seeds, **conf, "behaviour": behaviour, "labeling": labels,
           "spearman_learned_vs_true_reward": rho, "iqm_success": {k: agg[v[0]]["iqm"] for k, v in CONDITIONS.items()},
           "probability_of_improvement": pi, "report": str(report_dir.relative_to(ROOT))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline_offline_vlmf.json").write_text(json.dumps(out, indent=2))

    def fmt(e: dict) -> str:
        return f"{e['value']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]"

    lines = [f"Offline VLM-feedback pipeline on `reach` ({n_seeds} seeds, {steps} transitions, "
             f"{pairs} preference pairs labeled per seed, {updates} IQL updates, {episodes} eval episodes/seed"
             f"{', quick' if args.quick else ''}). Behaviour policy success {behaviour['success_rate']:.2f}; "
             f"Spearman(learned, true reward) median {np.median(rho):.2f} ({min(rho):.2f}-{max(rho):.2f} over seeds). "
             f"IQM with 95 % stratified-bootstrap CIs from `embodied-report` ({report_dir.relative_to(ROOT)}/).", "",
             "| method | success IQM [95 % CI] | per seed |", "|---|---|---|"]
    for name, (learner, _, _) in CONDITIONS.items():
        per = ", ".join(f"{x:.2f}" for x in agg[learner]["per_run"]["reach"])
        lines.append(f"| {name} | {fmt(agg[learner]['iqm'])} | {per} |")
    lines += ["", "| probability of improvement | P(X > Y) [95 % CI] |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in pi.items()]
    (RESULTS / "pipeline_offline_vlmf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
