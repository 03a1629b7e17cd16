"""The native VLA on lang_reach for the README: behaviour cloning, then PPO fine-tuning with
the sparse success reward alone and with a GVL process reward mixed in; 5 seeds, reported with
``embodied-report`` (rliable IQM with 95 % stratified-bootstrap CIs, probabilities of improvement).

Per seed ``s``:

1. scripted demonstrations of lang_reach (``embodied-make-dataset kinds=[scripted]``, the
   expert with action noise ``expert_noise``), once;
2. ``learner=vla`` behaviour-clones the native VLA on them (``BC_FLAGS``, seed ``s``): its
   success is the "BC" row;
3. ``+experiment=ppo_vla policy=<that BC run>`` fine-tunes it for ``steps`` env steps on the
   env's binary success reward: the "PPO, sparse" row;
4. the same with ``reward=gvl_oracle +reward.env_weight=1``: GVL's real prompt answered by the
   scripted VLM from the simulator's true progress (the stand-in for a VLM server on a CPU), its
   per-step progress labels plus the success reward: the "PPO, sparse + GVL" row.

Every policy is scored by the run's final evaluation on ``episodes`` episodes whose seeds
depend on the run's seed only (so the three rows of one seed share their eval episodes). Each
finished run's record (``metrics.jsonl``, ``result.json``, its config, a ``run.json`` naming the
method) is kept in ``benchmarks/results/runs/vla/<method>[_<steps>]/s<seed>/`` (a rerun skips it;
a PPO run whose BC policy is gone clones it again with the same seed). The report per PPO budget,
``embodied-report`` over the BC records and that budget's PPO records, goes to
``benchmarks/results/reports/vla/<steps>/``, and the tables with the minutes per run to
``benchmarks/results/vla_demos.md``.

    python -m benchmarks.vla_demos --seeds 5 --jobs 2                 # PPO for 8,192 env steps
    python -m benchmarks.vla_demos --seeds 5 --jobs 2 --steps 32768   # and for 32,768 (its own records)
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.runner import BIN, finished, has_record, keep_run, minutes_per_run, report_section, run_cli

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECORDS = RESULTS / "runs" / "vla"

DEMO_STEPS = 10_000
BC_UPDATES = 3000
BC_FLAGS = ["env=lang_reach", "learner=vla", f"train.offline_updates={BC_UPDATES}", "train.total_steps=0",
            f"checkpoint.every={BC_UPDATES}"]
METHODS = {"bc": "BC (learner=vla)", "ppo": "PPO, sparse success reward",
           "ppo_gvl": "PPO, sparse success + GVL process reward (weight 1)"}


def record(method: str, seed: int, steps: int) -> Path:
    return RECORDS / (method if method == "bc" else f"{method}_{steps}") / f"s{seed}"


def settings(method: str, steps: int, episodes: int) -> dict:
    return {"demo_steps": DEMO_STEPS, "bc_updates": BC_UPDATES, "episodes": episodes,
            "steps": 0 if method == "bc" else steps}


def demos(root: Path) -> Path:
    out = root / "lang_demos"
    if not (out / "scripted" / "meta" / "info.json").exists():
        run_cli([str(BIN / "embodied-make-dataset"), "env=lang_reach", "kinds=[scripted]", f"steps={DEMO_STEPS}",
              "expert_noise=0.1", f"output={out}"], root / "lang_demos.log")
    return out / "scripted"


def one(seed: int, method: str, root: Path, steps: int, episodes: int, data: Path) -> dict:
    flags = [f"seed={seed}", f"eval.episodes={episodes}", "eval.video_episodes=0", "wandb.mode=disabled",
             "train.threads=1"]
    run_dir = root / (f"{method}_s{seed}" if method == "bc" else f"{method}_{steps}_s{seed}")
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt: start it again
    if method == "bc":
        cmd = [*BC_FLAGS, f"train.dataset={data}"]
    else:
        cmd = ["+experiment=ppo_vla", f"policy={root / f'bc_s{seed}'}", f"train.total_steps={steps}",
               f"eval.every={steps}", f"checkpoint.every={steps}"]
        if method == "ppo_gvl":
            cmd += ["reward=gvl_oracle", "+reward.env_weight=1.0"]
    result = run_cli([str(BIN / "embodied-train"), *flags, *cmd, f"run_dir={run_dir}"], run_dir.with_suffix(".log"))
    target = record(method, seed, steps)
    if not (target / "result.json").exists():  # a BC policy cloned again for PPO keeps its first record
        keep_run(run_dir, target, {"learner": method, "env": "lang_reach", "reward": "gvl" if method == "ppo_gvl" else "env",
                                   "seed": seed, "settings": settings(method, steps, episodes)}, result["seconds"])
    print(f"{method} seed {seed} ({0 if method == 'bc' else steps} steps): success {result['eval/success']:.2f} "
          f"in {result['seconds'] / 60:.1f} min", flush=True)
    return result


def budgets() -> list[int]:
    return sorted(int(p.name.rsplit("_", 1)[1]) for p in RECORDS.glob("ppo_*") if not p.name.startswith("ppo_gvl"))


def write_table(n: int) -> str:
    """The report of every PPO budget whose seeds 0..n-1 are all recorded, with the BC records."""
    from embodied.report import make_report

    lines = ["# The native VLA on lang_reach: BC, then PPO (`vla_demos`)", "",
             f"lang_reach (four coloured discs; the instruction names one; a language-blind policy scores about "
             f"0.25-0.35); the VLA reads the top camera (64 px) and the instruction. BC (`bc`): {BC_UPDATES} updates "
             f"(batch 64) on {DEMO_STEPS} scripted steps (expert with action noise 0.1). PPO (`ppo`): "
             "`+experiment=ppo_vla` from each seed's BC policy (4 envs x 128 steps per rollout, 4 critic-only updates "
             "first, curriculum on); `ppo_gvl`: the same with `reward=gvl_oracle +reward.env_weight=1.0`. Success "
             "over each run's final evaluation (deterministic: the most likely token). `python -m benchmarks.vla_demos`.",
             ""]
    for steps in budgets():
        runs = [record(m, s, steps) for m in METHODS for s in range(n)]
        if not finished(runs):
            continue
        out = RESULTS / "reports" / "vla" / str(steps)
        make_report([str(r) for r in runs], out, metric="eval/success", group_by=["learner"],
                    compare=["ppo:bc", "ppo_gvl:bc", "ppo_gvl:ppo"],
                    title=f"VLA on lang_reach, PPO for {steps:,} env steps from each seed's BC policy: eval/success")
        lines += [report_section(out), "", "| method | minutes per run (mean over seeds) |", "|---|---:|"]
        for m, label in METHODS.items():
            lines.append(f"| {label} (`{m}`) | {minutes_per_run([record(m, s, steps) for s in range(n)]):.1f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (RESULTS / "vla_demos.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="runs/vla_demos")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not args.report_only:
        root.mkdir(parents=True, exist_ok=True)
        done = {(m, s) for m in METHODS for s in range(args.seeds)
                if has_record(record(m, s, args.steps), settings(m, args.steps, args.episodes))}
        todo = [(s, m) for s in range(args.seeds) for m in args.methods if m != "bc" and (m, s) not in done]
        # BC first: a seed needs it for its record, or as the policy its PPO runs start from
        bc = [s for s in range(args.seeds) if ("bc", s) not in done
              or any(t == s for t, _ in todo) and not (root / f"bc_s{s}" / "result.json").exists()]
        data = demos(root)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda s: one(s, "bc", root, args.steps, args.episodes, data), bc))
            list(pool.map(lambda sm: one(sm[0], sm[1], root, args.steps, args.episodes, data), todo))
    print(write_table(args.seeds))


if __name__ == "__main__":
    main()
