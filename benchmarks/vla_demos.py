"""The native VLA on lang_reach for the README: behaviour cloning, then PPO fine-tuning with
the sparse success reward alone and with a GVL process reward mixed in; 3 seeds, rliable IQM
with 95 % bootstrap CIs.

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
finished run is appended to ``benchmarks/results/vla_runs.jsonl`` (a rerun skips it) and the
table is rewritten after each: ``benchmarks/results/vla_demos.md``.

    python -m benchmarks.vla_demos --seeds 3 --jobs 2                 # PPO for 8,192 env steps
    python -m benchmarks.vla_demos --seeds 3 --jobs 2 --steps 32768   # and for 32,768 (its own rows)
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.runner import BIN, read_runs, record_run, run_cli
from benchmarks.stats import iqm_ci

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "vla_runs.jsonl"

DEMO_STEPS = 10_000
BC_UPDATES = 3000
BC_FLAGS = ["env=lang_reach", "learner=vla", f"train.offline_updates={BC_UPDATES}", "train.total_steps=0",
            f"checkpoint.every={BC_UPDATES}"]
METHODS = {"bc": "BC (learner=vla)", "ppo": "PPO, sparse success reward",
           "ppo_gvl": "PPO, sparse success + GVL process reward (weight 1)"}


def _done() -> list[dict]:
    return read_runs(RUNS)


def _record(row: dict) -> None:
    record_run(RUNS, row)


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
    if method == "bc":
        cmd = [*BC_FLAGS, f"train.dataset={data}"]
    else:
        cmd = ["+experiment=ppo_vla", f"policy={root / f'bc_s{seed}'}", f"train.total_steps={steps}",
               f"eval.every={steps}", f"checkpoint.every={steps}"]
        if method == "ppo_gvl":
            cmd += ["reward=gvl_oracle", "+reward.env_weight=1.0"]
    result = run_cli([str(BIN / "embodied-train"), *flags, *cmd, f"run_dir={run_dir}"], run_dir.with_suffix(".log"))
    row = {"method": method, "seed": seed, "steps": 0 if method == "bc" else steps, "episodes": episodes,
           "success": float(result["eval/success"]), "seconds": round(result["seconds"], 1)}
    _record(row)
    write_table()
    return row


def write_table() -> str:
    rows = _done()
    lines = ["## The native VLA on lang_reach: BC, then PPO", "",
             f"lang_reach (four coloured discs; the instruction names one; a language-blind policy scores about "
             f"0.25-0.35); the VLA reads the top camera (64 px) and the instruction. BC: {BC_UPDATES} updates "
             f"(batch 64) on {DEMO_STEPS} scripted steps (expert with action noise 0.1). PPO: `+experiment=ppo_vla` "
             "from each seed's BC policy (4 envs x 128 steps per rollout, 4 critic-only updates first, curriculum on); "
             "'+ GVL': `reward=gvl_oracle +reward.env_weight=1.0`. Success over each run's final evaluation "
             "(deterministic: the most likely token); IQM over seeds with 95 % bootstrap CI (rliable). "
             "`python -m benchmarks.vla_demos`.", "",
             "| method | env steps | eval episodes | seeds | success per seed | IQM | 95 % CI | minutes per run |",
             "|---|---|---|---|---|---|---|---|"]
    groups = sorted({(r["method"], r["steps"]) for r in rows}, key=lambda g: (g[1], list(METHODS).index(g[0])))
    for method, steps in groups:
        label = METHODS[method]
        got = sorted((r for r in rows if r["method"] == method and r["steps"] == steps), key=lambda r: r["seed"])
        scores = np.array([r["success"] for r in got])
        point, lo, hi = iqm_ci(scores) if len(scores) >= 2 else (float(scores[0]), float("nan"), float("nan"))
        minutes = np.mean([r["seconds"] for r in got]) / 60
        lines.append(f"| {label} | {got[0]['steps']} | {got[0]['episodes']} | {len(got)} | "
                     f"{', '.join(f'{s:.2f}' for s in scores)} | {point:.2f} | [{lo:.2f}, {hi:.2f}] | {minutes:.0f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "vla_demos.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="runs/vla_demos")
    args = parser.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    have = {(r["method"], r["seed"], r["steps"]) for r in _done()}
    data = demos(root)
    with ThreadPoolExecutor(args.jobs) as pool:  # the BC policies first: PPO starts from them
        list(pool.map(lambda s: one(s, "bc", root, args.steps, args.episodes, data),
                      [s for s in range(args.seeds) if ("bc", s, 0) not in have]))
        todo = [(s, m) for s in range(args.seeds) for m in args.methods if m != "bc" and (m, s, args.steps) not in have]
        list(pool.map(lambda sm: one(sm[0], sm[1], root, args.steps, args.episodes, data), todo))
    print(write_table())


if __name__ == "__main__":
    main()
