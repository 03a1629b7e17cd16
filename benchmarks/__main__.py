"""Run every benchmark and collect the tables into benchmarks/results/SUMMARY.md.

    python -m benchmarks            # all, full size
    python -m benchmarks --quick    # all, small sizes (minutes)
    python -m benchmarks sac_speed env_overhead   # a selection (names without bench_)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def available() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def summarize() -> None:
    """Collect every results table into benchmarks/results/SUMMARY.md."""
    summary = ["# Benchmark results", "", "Produced by `make bench` (`python -m benchmarks`); each table below",
               "is a ratio against a peer measured in the same run on the same machine.", ""]
    for table in sorted(RESULTS.glob("*.md")):
        if table.name != "SUMMARY.md":
            summary += [table.read_text().strip(), ""]
    (RESULTS / "SUMMARY.md").write_text("\n".join(summary))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(available())}")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--summary", action="store_true", help="only collect the existing tables into SUMMARY.md")
    args = parser.parse_args()
    if args.summary:
        summarize()
        return 0
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(available())}")
    failed = []
    for name in names:
        print(f"== bench_{name}", flush=True)
        t0 = time.time()
        try:
            mod = importlib.import_module(f"benchmarks.bench_{name}")
            argv = ["--quick"] if args.quick else []
            if inspect.signature(mod.main).parameters:
                mod.main(argv)
            else:
                sys.argv = [f"bench_{name}", *argv]
                mod.main()
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"== bench_{name} took {time.time() - t0:.0f} s", flush=True)
    summarize()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
