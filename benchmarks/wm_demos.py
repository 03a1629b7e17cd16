"""World-model demonstrations for the README, CPU-sized, 5 seeds, rliable IQM with 95 % CIs.

``--study vagram`` — VaGraM vs the maximum-likelihood model loss under distractor dimensions,
with a small model: the built-in ``reach`` task (8-dim state) with 10 chaotic distractor
dimensions appended (``+env.distractor_dims=10``), an MBPO loop around SAC whose ensemble has
two hidden layers of 32 units (``MBPO_FLAGS``), ``objective=mle`` against ``objective=vagram``,
and model-free SAC on the same task for reference. Per run: the final evaluation's return,
and the value error the model's predicted next states induce at the last retrain
(``model/value_error``: mean ``|V(s') - V(s_hat')|`` under the run's own critics, on fresh replay
rows) and its one-step MSE.

``--study visual`` — RePo and InfoPower vs reconstruction under visual distractors: ``reach``
from the top camera at 32 px with a moving background and 3 coloured discs bouncing across it
(``+env.background=a +env.moving_distractors=3``), a CPU-sized RSSM (``LATENT_FLAGS``). Per run:
the final evaluation's return.

``--study probe`` — what the visual study's latents encode (run after ``--study visual``): 100
episodes of random actions in the same env (the same episodes for every model), filtered by each
run's encoder + RSSM (``embodied.world_models.probe``); ridge probes fitted on 80 episodes (the
penalty cross-validated over them) and scored on 20 give the held-out R² of the gripper's and the target's position (the task) and of
the three discs' positions (the distractors). An untrained model of the same size is the
reference of a random latent.

``--study adapt`` — RePo's test-time adaptation (run after ``--study visual``): each seed's RePo
run, trained on background a, is evaluated on background b (before), then adapted to b for
2000 reward-free steps (``train.adapt_from=<its run folder>``, evaluated every 500 steps); the
same 20 evaluation episodes throughout.

Each finished run of ``vagram``, ``visual`` and ``visual_dense`` keeps its record (``metrics.jsonl``,
``result.json``, its config, a ``run.json`` naming the method) in
``benchmarks/results/runs/wm/<study>/<method>_<steps>/s<seed>/`` (a rerun skips it), and the study's
report, ``embodied-report`` on the final return (and, for ``vagram``, on the value error and the
model's MSE), goes to ``benchmarks/results/reports/wm/<study>/``. The probe's measurements and the
adaptation runs are appended to ``benchmarks/results/wm_runs.jsonl``. The tables are rewritten
after each run: ``benchmarks/results/wm_demos.md``.

    python -m benchmarks.wm_demos --study vagram --seeds 5 --jobs 2
    python -m benchmarks.wm_demos --study visual --seeds 5 --jobs 2
    python -m benchmarks.wm_demos --study probe --seeds 5
    python -m benchmarks.wm_demos --study adapt --seeds 5 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.runner import (BIN, finished, has_record, keep_run, minutes_per_run, read_runs, record_run,
                               report_section, run_cli)
from benchmarks.stats import iqm_ci

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "wm_runs.jsonl"  # the probe's measurements and the adaptation runs
RECORDS = RESULTS / "runs" / "wm"

MBPO_FLAGS = ["learner=world_model", "+env.distractor_dims=10", "train.warmup_steps=500", "train.learning_starts=500",
              "learner.model_every=250", "learner.model_train_steps=100", "learner.rollout_batch=100",
              "learner.sac_utd=10", "learner.batch_size=128", "learner.ensemble=5", "learner.elites=3",
              "learner.model_hidden=[32,32]", "learner.sac_hidden=[128,128]"]
SAC_FLAGS = ["learner=sac", "+env.distractor_dims=10", "train.warmup_steps=500", "train.learning_starts=500",
             "learner.hidden=[128,128]", "learner.batch_size=128"]
LATENT_FLAGS = ["learner=world_model", "env.pixels=true", "env.cameras=[top]", "env.image_size=32",
                "+env.background=a", "+env.moving_distractors=3", "train.warmup_steps=1000",
                "train.learning_starts=1000", "learner.sequence_length=16", "learner.batch_size=16",
                "learner.embed=64", "learner.depth=16", "learner.deter=64", "learner.stoch=16", "learner.hidden=64",
                "learner.head_hidden=[64,64]", "learner.actor_hidden=[64,64]", "learner.horizon=10",
                "learner.train_every=5"]
STUDIES = {
    "vagram": {"mle": ("MBPO, maximum-likelihood model (objective=mle)", ["objective=mle", *MBPO_FLAGS]),
               "vagram": ("MBPO, VaGraM model loss (objective=vagram)", ["objective=vagram", *MBPO_FLAGS]),
               "sac": ("SAC, model-free", SAC_FLAGS)},
    "visual": {"recon": ("reconstruction (Dreamer, objective=recon)", ["objective=recon", *LATENT_FLAGS]),
               "repo": ("RePo (objective=repo)", ["objective=repo", *LATENT_FLAGS]),
               "infopower": ("InfoPower (objective=infopower)", ["objective=infopower", *LATENT_FLAGS])},
}
# the same runs with one model update per env step instead of one per 5: 256 frames per env step,
# Dreamer's replay ratio (its 50 x 50 windows every 10 steps)
DENSE = [f if f != "learner.train_every=5" else "learner.train_every=1" for f in LATENT_FLAGS]
STUDIES["visual_dense"] = {m: (f"{label[:-1]}, 1 update per env step)", [f"objective={m}", *DENSE])
                           for m, (label, _) in STUDIES["visual"].items()}
LATENT_STUDIES = ("visual", "visual_dense")
DEFAULT_STEPS = {"vagram": 6000, "visual": 8000, "visual_dense": 8000, "probe": 8000, "adapt": 2000}
PROBE_METHODS = {"untrained": "untrained model of the same size (reference)", **{
    m: label for m, (label, _) in STUDIES["visual"].items()}}
PIXEL_ENV = {"pixels": True, "cameras": ["top"], "image_size": 32, "moving_distractors": 3}
ADAPT_EVERY = 500


def last(run_dir: Path, key: str) -> float:
    """The last logged value of ``key`` in a run's metrics (nan when never logged)."""
    value = float("nan")
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if key in row:
            value = float(row[key])
    return value


def record(study: str, method: str, seed: int, steps: int) -> Path:
    return RECORDS / study / f"{method}_{steps}" / f"s{seed}"


def settings(study: str, method: str, steps: int, episodes: int) -> dict:
    return {"flags": STUDIES[study][method][1], "steps": steps, "episodes": episodes}


def one(study: str, method: str, seed: int, root: Path, steps: int, episodes: int) -> dict:
    run_dir = root / study / f"{method}_{steps}_s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt: start it again
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    flags = STUDIES[study][method][1]
    cmd = [str(BIN / "embodied-train"), *flags, f"seed={seed}", f"train.total_steps={steps}", f"eval.every={steps}",
           f"eval.episodes={episodes}", "eval.video_episodes=1", f"checkpoint.every={steps}", "log.every=500",
           "wandb.mode=disabled", "train.threads=1", f"run_dir={run_dir}"]
    result = run_cli(cmd, run_dir.with_suffix(".log"))
    keep_run(run_dir, record(study, method, seed, steps), {"learner": method, "env": "reach", "reward": "env",
                                                           "seed": seed, "settings": settings(study, method, steps, episodes)},
             result["seconds"])
    print(f"{study} {method} seed {seed}: return {result['eval/return']:.2f} in {result['seconds'] / 60:.1f} min",
          flush=True)
    return result


def _source(root: Path, method: str, seed: int, study: str) -> Path:
    run_dir = root / study / f"{method}_{DEFAULT_STEPS[study]}_s{seed}"
    if not (run_dir / "policy").is_dir():
        raise FileNotFoundError(f"{run_dir} holds no trained policy: run --study {study} --seeds {seed + 1} first")
    return run_dir


def probe_data(episodes: int = 100):
    """The probe's episodes: random actions in the visual study's env (background a)."""
    import envs
    from embodied.world_models.probe import collect_episodes, reach_targets

    env = envs.make_env("reach", seed=50_000, background="a", **PIXEL_ENV)
    return collect_episodes(env, episodes, seed=50_000, targets=reach_targets)


def probe_one(method: str, seed: int, root: Path, data, source: str, train_episodes: int = 80) -> dict:
    import torch

    import policies
    from embodied.world_models.probe import latent_features, probe_r2

    if method == "untrained":  # the trained RePo run's architecture, freshly initialised
        spec = policies.load_policy(_source(root, "repo", seed, source)).spec()
        torch.manual_seed(seed)
        policy = policies.from_spec(spec).eval()
        kl = float("nan")
    else:
        run_dir = _source(root, method, seed, source)
        policy = policies.load_policy(run_dir)
        kl = last(run_dir, "kl")  # the posterior's KL to the prior at the last update
    r2 = probe_r2(latent_features(policy, data), data, train_episodes)
    row = {"study": "probe", "source": source, "method": method, "seed": seed, "steps": DEFAULT_STEPS[source],
           "episodes": int(data["episode"].max()) + 1, "kl": kl, **{f"r2_{k}": v for k, v in r2.items()}}
    record_run(RUNS, row)
    write_tables()
    return row


def adapt_one(seed: int, root: Path, steps: int, episodes: int, source_study: str) -> dict:
    """Evaluate seed ``seed``'s RePo run on backgrounds a and b, then adapt it to b."""
    import envs
    import policies
    from embodied.evaluation import evaluate

    source = _source(root, "repo", seed, source_study)
    policy = policies.load_policy(source)
    before = {}
    for background in "ab":  # the episodes the training loop's evaluation plays (seed + 100_000 + i)
        env = envs.make_env("reach", seed=seed + 10_000, background=background, **PIXEL_ENV)
        before[background] = evaluate(policy, env, episodes, seed=seed + 100_000)["eval/return"]
    swap = {"+env.background=a": "+env.background=b", "train.learning_starts=1000": "train.learning_starts=200"}
    flags = [swap.get(f, f) for f in STUDIES[source_study]["repo"][1] if f != "objective=repo"]
    run_dir = root / f"adapt_{source_study}" / f"repo_{steps}_s{seed}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "embodied-train"), "objective=repo", *flags, f"train.adapt_from={source}", f"seed={seed}",
           f"train.total_steps={steps}", f"eval.every={ADAPT_EVERY}", f"eval.episodes={episodes}",
           "eval.video_episodes=1", f"checkpoint.every={steps}", "log.every=500", "wandb.mode=disabled",
           "train.threads=1", f"run_dir={run_dir}"]
    result = run_cli(cmd, run_dir.with_suffix(".log"))
    curve = [[int(r["step"]), float(r["eval/return"])] for r in map(json.loads, (run_dir / "metrics.jsonl").open())
             if "eval/return" in r]
    row = {"study": "adapt", "source": source_study, "method": "repo", "seed": seed, "steps": steps, "episodes": episodes,
           "source_a": before["a"], "before_b": before["b"], "return": float(result["eval/return"]),
           "curve": curve, "seconds": round(result["seconds"], 1)}
    record_run(RUNS, row)
    write_tables()
    return row


def _interval(scores: np.ndarray) -> str:
    if len(scores) < 2 or not np.isfinite(scores).all():
        return "–"
    point, lo, hi = iqm_ci(scores)
    return f"{point:.2f} [{lo:.2f}, {hi:.2f}]"


def _probe_table(rows: list[dict]) -> list[str]:
    lines = []
    for source in LATENT_STUDIES:
        lines += _probe_rows([r for r in rows if r["study"] == "probe" and r.get("source", "visual") == source], source)
    return lines


def _probe_rows(got: list[dict], source: str) -> list[str]:
    if not got:
        return []
    groups = [k[3:] for k in got[0] if k.startswith("r2_")]
    lines = [f"### probe of the {source} runs", "", "Held-out R² of ridge probes from the latent features (1: read "
             "out exactly, 0: no better than the mean); IQM over seeds [95 % CI].", "",
             "| latent of | seeds | " + " | ".join(f"R² {g}" for g in groups) + " | KL posterior-prior at the end (nats) |",
             "|---|---|" + "---|" * (len(groups) + 1)]
    for method, label in PROBE_METHODS.items():
        mine = [r for r in got if r["method"] == method]
        if mine:
            cells = [_interval(np.array([r[f"r2_{g}"] for r in mine])) for g in groups]
            kl = np.array([r.get("kl", np.nan) for r in mine])
            cells.append(", ".join(f"{x:.2f}" for x in kl) if np.isfinite(kl).all() else "–")
            lines.append(f"| {label} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines + [""]


def _recovered(row: dict, tolerance: float = 0.05) -> str:
    """The first evaluation step whose return is back within ``tolerance`` (relative) of the source
    run's return on its own background; "no drop" when the switch did not lower it that much."""
    floor = row["source_a"] - tolerance * abs(row["source_a"])
    if row["before_b"] >= floor:
        return "no drop"
    hit = [step for step, ret in row["curve"] if ret >= floor]
    return str(hit[0]) if hit else f"> {row['steps']}"


def _adapt_table(rows: list[dict]) -> list[str]:
    lines = []
    for source in LATENT_STUDIES:
        lines += _adapt_rows(sorted((r for r in rows if r["study"] == "adapt" and r.get("source", "visual") == source),
                                    key=lambda r: r["seed"]), source)
    return lines


def _adapt_rows(got: list[dict], source: str) -> list[str]:
    if not got:
        return []
    steps = [step for step, _ in got[0]["curve"]]
    lines = [f"### adaptation of the {source} RePo runs", "", "RePo trained on background a, evaluated on background "
             "b before and during reward-free adaptation (return over the same evaluation episodes).", "",
             "| seed | source on a | on b, before | " + " | ".join(f"b after {s}" for s in steps) +
             " | reward-free steps back to within 5 % of the source's return |", "|---|---|---|" + "---|" * (len(steps) + 1)]
    for r in got:
        lines.append(f"| {r['seed']} | {r['source_a']:.2f} | {r['before_b']:.2f} | " +
                     " | ".join(f"{ret:.2f}" for _, ret in r["curve"]) + f" | {_recovered(r)} |")
    iqm = [_interval(np.array([r[k] for r in got])) for k in ("source_a", "before_b")]
    iqm += [_interval(np.array([r["curve"][i][1] for r in got])) for i in range(len(steps))]
    lines.append("| IQM [95 % CI] | " + " | ".join(iqm) + " | |")
    return lines + [""]


COMPARE = {"vagram": ["vagram:mle", "vagram:sac", "mle:sac"],
           "visual": ["repo:recon", "infopower:recon"], "visual_dense": ["repo:recon", "infopower:recon"]}


def _study_report(study: str, n: int) -> list[str]:
    """The study's reports over the seeds 0..n-1 of each (method, steps) all its methods ran."""
    from embodied.report import make_report

    methods = STUDIES[study]
    budgets = {int(p.name.rsplit("_", 1)[1]) for p in (RECORDS / study).glob("*_*")}
    lines = []
    for steps in sorted(budgets):
        runs = {m: [record(study, m, s, steps) for s in range(n)] for m in methods}
        if not finished([r for rs in runs.values() for r in rs]):
            continue
        lines += [f"### {study}, {steps:,} env steps", "", "Methods: " + "; ".join(f"`{m}` {label}" for m, (label, _)
                                                                                  in methods.items()) + ".", ""]
        metrics = ["eval/return"] + (["model/value_error", "model/mse"] if study == "vagram" else [])
        for metric in metrics:
            names = [m for m in methods if metric == "eval/return" or m != "sac"]  # model-free SAC has no model
            out = RESULTS / "reports" / "wm" / study / str(steps) / metric.replace("/", "_")
            make_report([str(r) for m in names for r in runs[m]], out, metric=metric, group_by=["learner"],
                        compare=[c for c in COMPARE[study] if set(c.split(":")) <= set(names)],
                        title=f"{study}, {steps:,} env steps: {metric}")
            lines += [report_section(out), ""]
        lines += ["| method | minutes per run (mean over seeds) |", "|---|---:|"]
        lines += [f"| `{m}` | {minutes_per_run(runs[m]):.0f} |" for m in methods]
        lines.append("")
    return lines


def write_tables(n: int = 5) -> str:
    rows = read_runs(RUNS)
    lines = ["# World models (`wm_demos`)", ""]
    for study in STUDIES:
        lines += _study_report(study, n)
    lines += _probe_table(rows) + _adapt_table(rows)
    text = "\n".join(lines) + "\n"
    (RESULTS / "wm_demos.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=[*STUDIES, "probe", "adapt"], default="vagram")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="runs/wm_demos")
    parser.add_argument("--source", choices=LATENT_STUDIES, default="visual",
                        help="--study probe / adapt: the latent study whose runs they read")
    args = parser.parse_args(argv)
    steps = args.steps or DEFAULT_STEPS[args.study]
    methods = args.methods or list(STUDIES.get(args.study, {}))
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    have = {(r["study"], r.get("source", "visual"), r["method"], r["seed"], r["steps"]) for r in read_runs(RUNS)}
    if args.study == "probe":  # in this process: each model filters the same episodes
        steps = args.steps or DEFAULT_STEPS[args.source]
        todo = [(m, s) for s in range(args.seeds) for m in (args.methods or PROBE_METHODS)
                if ("probe", args.source, m, s, steps) not in have]
        data = probe_data() if todo else None
        for method, seed in todo:
            print(probe_one(method, seed, root, data, args.source))
    elif args.study == "adapt":
        todo = [s for s in range(args.seeds) if ("adapt", args.source, "repo", s, steps) not in have]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda s: adapt_one(s, root, steps, args.episodes, args.source), todo))
    else:
        todo = [(m, s) for s in range(args.seeds) for m in methods
                if not has_record(record(args.study, m, s, steps), settings(args.study, m, steps, args.episodes))]
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda ms: one(args.study, ms[0], ms[1], root, steps, args.episodes), todo))
    print(write_tables(args.seeds))


if __name__ == "__main__":
    main()
