"""``embodied-report``: rliable aggregates (IQM, mean, median, optimality gap with 95 % CIs,
probability of improvement, performance profiles, sample-efficiency curves) over runs.

    embodied-report runs/reach_sac_s* runs/reach_ppo_s* --metric eval/success --out reports/reach
    embodied-report 'runs/*' --group learner --normalize reach=0:50 --normalize push=0:50 --out reports/all

See embodied/report.py for what is computed and written.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="embodied-report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders or globs (a folder of runs stands for them)")
    parser.add_argument("--metric", default="eval/return", help="the score: a key of result.json / metrics.jsonl")
    parser.add_argument("--group", default="learner,reward",
                        help="comma-separated config fields that name a group (learner, env, reward, seed, or a "
                             "dotted key such as train.ray.workers)")
    parser.add_argument("--task", default="env", help="the config field that names the task")
    parser.add_argument("--normalize", action="append", default=[], metavar="TASK=LOW:HIGH",
                        help="score = (x - low) / (high - low) on that task; needed to pool raw returns of tasks")
    parser.add_argument("--compare", action="append", default=[], metavar="A:B",
                        help="probability that group A improves on B (default: every pair of groups on the same tasks)")
    parser.add_argument("--gamma", type=float, default=1.0, help="the optimality gap's threshold")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--title", default=None)
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and the PNGs")
    args = parser.parse_args(argv)
    from embodied.report import make_report

    try:
        data = make_report(args.runs, args.out, args.metric, [g for g in args.group.split(",") if g], args.task,
                           args.normalize, args.compare, args.gamma, args.reps, args.title, args.digits)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"embodied-report: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from pathlib import Path

    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/report.md, report.json, aggregates.png, profile.png, sample_efficiency.png "
          f"({len(data['runs'])} runs)")


if __name__ == "__main__":
    main()
