"""Do SAC and PPO learn with Ray rollout workers as they do with local envs? On the built-in
``reach``, seeds 0..N-1, once with the loop's local envs and once with ``train.ray.address=local
train.ray.workers=2`` (one env each): the default SAC for 8,000 env steps (the README's default
run), and PPO with 2 envs x 512-step rollouts, 16 minibatches, for 16,384 steps (local: 2 envs in
the loop; Ray: the two workers' envs side by side). Scored on the final evaluation (20 episodes).

Each run is an ``embodied-train`` run of a :mod:`benchmarks.seeds` study (``ray_<learner>_local``,
``ray_<learner>_workers``), its record kept under ``benchmarks/results/runs/<study>/s<seed>/`` (a
rerun skips finished seeds). The report is ``embodied-report`` over both studies grouped by
``train.ray.address`` (``null``: local envs, ``local``: Ray workers), with the probability that
the Ray runs score higher: ``benchmarks/results/reports/ray_learning/<learner>/<metric>/``, and the
tables with the minutes per run in ``benchmarks/results/ray_learning.md``.

    python -m benchmarks.ray_learning --seeds 5
    python -m benchmarks.ray_learning --seeds 5 --learner ppo
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import seeds
from benchmarks.runner import finished, minutes_per_run, report_section

RESULTS = seeds.RESULTS
LEARNERS = ("sac", "ppo")
PATHS = {"local": "local envs (the loop's Driver)", "workers": "2 Ray rollout workers"}
METRICS = ("eval/success", "eval/return")
TITLES = {"sac": "SAC defaults on reach, 8,000 env steps",
          "ppo": "PPO on reach, 2 envs x 512-step rollouts, 16 minibatches, 16,384 env steps"}


def records(learner: str, n: int) -> dict[str, list[Path]]:
    return {path: [RESULTS / "runs" / f"ray_{learner}_{path}" / f"s{s}" for s in range(n)] for path in PATHS}


def report(learner: str, n: int) -> str | None:
    """The learner's section of ray_learning.md, or None while a seed is missing."""
    from embodied.report import make_report

    runs = records(learner, n)
    if not finished([r for rs in runs.values() for r in rs]):
        return None
    lines = [f"## {learner.upper()}: Ray rollout workers vs local envs ({n} seeds)", "", f"{TITLES[learner]}.", ""]
    for metric in METRICS:
        out = RESULTS / "reports" / "ray_learning" / learner / metric.replace("/", "_")
        make_report([str(r) for rs in runs.values() for r in rs], out, metric=metric, group_by=["train.ray.address"],
                    compare=["local:null"], title=f"{learner.upper()} on reach, Ray workers (local) vs local envs (null): "
                                                  f"{metric}")
        lines += [report_section(out), ""]
    lines += ["| envs | minutes per run (mean over seeds) |", "|---|---:|"]
    for path, label in PATHS.items():
        lines.append(f"| {label} | {minutes_per_run(runs[path]):.1f} |")
    return "\n".join(lines) + "\n"


def write_tables(n: int) -> str:
    parts = [text for learner in LEARNERS if (text := report(learner, n))]
    text = "\n".join(["# SAC and PPO with Ray rollout workers vs local envs (`ray_learning`)", "", *parts])
    (RESULTS / "ray_learning.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--learner", choices=LEARNERS, action="append", help="default: both")
    parser.add_argument("--scratch", default="runs/ray_learning", help="where the full run folders go")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        for learner in args.learner or LEARNERS:
            for seed in range(args.seeds):
                for path in PATHS:
                    study = f"ray_{learner}_{path}"
                    if not seeds.check_record(study, seed):
                        seeds.run_seed(study, seed, Path(args.scratch))
    print(write_tables(args.seeds))


if __name__ == "__main__":
    main()
