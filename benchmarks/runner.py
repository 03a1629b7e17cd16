"""What the multi-seed demonstration drivers (``residual_demos``, ``vla_demos``) share: the
project's commands run as subprocesses with one thread each, and a JSONL file of finished runs
that a rerun reads to skip them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa"), "WANDB_MODE": "disabled",
       "OMP_NUM_THREADS": "1"}


def run_cli(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (stderr to ``log``) and return the JSON its last stdout line prints, plus
    ``seconds``; a failing command raises naming the log."""
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=out, text=True, env=env or ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}); see {log}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = time.time() - t0
    return result


def read_runs(path: Path) -> list[dict]:
    """The finished runs recorded in ``path`` (none when it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def record_run(path: Path, row: dict) -> None:
    """Append one finished run to ``path``."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
