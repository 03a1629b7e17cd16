"""World-model demonstrations for the README, CPU-sized, 3 seeds, rliable IQM with 95 % CIs.

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

Every finished run is appended to ``benchmarks/results/wm_runs.jsonl`` (a rerun skips it) and
the tables are rewritten after each: ``benchmarks/results/wm_demos.md``.

    python -m benchmarks.wm_demos --study vagram --seeds 3 --jobs 2
    python -m benchmarks.wm_demos --study visual --seeds 3 --jobs 2
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.runner import BIN, read_runs, record_run, run_cli
from benchmarks.stats import iqm_ci

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "wm_runs.jsonl"

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
DEFAULT_STEPS = {"vagram": 6000, "visual": 8000}


def last(run_dir: Path, key: str) -> float:
    """The last logged value of ``key`` in a run's metrics (nan when never logged)."""
    value = float("nan")
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if key in row:
            value = float(row[key])
    return value


def one(study: str, method: str, seed: int, root: Path, steps: int, episodes: int) -> dict:
    run_dir = root / study / f"{method}_{steps}_s{seed}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    flags = STUDIES[study][method][1]
    cmd = [str(BIN / "embodied-train"), *flags, f"seed={seed}", f"train.total_steps={steps}", f"eval.every={steps}",
           f"eval.episodes={episodes}", "eval.video_episodes=1", f"checkpoint.every={steps}", "log.every=500",
           "wandb.mode=disabled", "train.threads=1", f"run_dir={run_dir}"]
    result = run_cli(cmd, run_dir.with_suffix(".log"))
    row = {"study": study, "method": method, "seed": seed, "steps": steps, "episodes": episodes,
           "return": float(result["eval/return"]), "success": float(result["eval/success"]),
           "value_error": last(run_dir, "model/value_error"), "model_mse": last(run_dir, "model/mse"),
           "seconds": round(result["seconds"], 1)}
    record_run(RUNS, row)
    write_tables()
    return row


def _interval(scores: np.ndarray) -> str:
    if len(scores) < 2 or not np.isfinite(scores).all():
        return "–"
    point, lo, hi = iqm_ci(scores)
    return f"{point:.2f} [{lo:.2f}, {hi:.2f}]"


def write_tables() -> str:
    rows = read_runs(RUNS)
    lines = ["## World models", ""]
    for study, methods in STUDIES.items():
        got_study = [r for r in rows if r["study"] == study]
        if not got_study:
            continue
        lines += [f"### {study}", "", "| method | env steps | seeds | eval return per seed | return IQM [95 % CI] | "
                  "value error IQM [95 % CI] | model MSE IQM | minutes per run |", "|---|---|---|---|---|---|---|---|"]
        for method, (label, _) in methods.items():
            for steps in sorted({r["steps"] for r in got_study if r["method"] == method}):
                got = sorted((r for r in got_study if r["method"] == method and r["steps"] == steps),
                             key=lambda r: r["seed"])
                ret = np.array([r["return"] for r in got])
                verr = np.array([r["value_error"] for r in got])
                mse = np.array([r["model_mse"] for r in got])
                mse_text = _interval(mse).split(" ")[0] if np.isfinite(mse).all() else "–"
                lines.append(f"| {label} | {steps} | {len(got)} | {', '.join(f'{x:.1f}' for x in ret)} | "
                             f"{_interval(ret)} | {_interval(verr)} | {mse_text} | "
                             f"{np.mean([r['seconds'] for r in got]) / 60:.0f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (RESULTS / "wm_demos.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=list(STUDIES), default="vagram")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="runs/wm_demos")
    args = parser.parse_args(argv)
    steps = args.steps or DEFAULT_STEPS[args.study]
    methods = args.methods or list(STUDIES[args.study])
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    have = {(r["study"], r["method"], r["seed"], r["steps"]) for r in read_runs(RUNS)}
    todo = [(m, s) for s in range(args.seeds) for m in methods if (args.study, m, s, steps) not in have]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda ms: one(args.study, ms[0], ms[1], root, steps, args.episodes), todo))
    print(write_tables())


if __name__ == "__main__":
    main()
