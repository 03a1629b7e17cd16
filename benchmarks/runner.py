"""What the multi-seed drivers share: the project's commands run as subprocesses with one thread
each, a JSONL file of finished runs that a rerun reads to skip them (``residual_demos``,
``wm_demos``), and run records that ``embodied-report`` reads (``seeds``, ``gym_vs_sb3``,
``bench_iql``, ``pipeline_offline_vlmf``, ``vla_demos``): written whole into a folder of this process and renamed
into place, so a killed run never leaves a record that looks finished."""

from __future__ import annotations

import json
import os
import re
import shutil
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


def keep_run(run_dir: Path, record: Path, meta: dict | None = None, seconds: float | None = None) -> Path:
    """An embodied-train run's ``metrics.jsonl`` and ``result.json`` under ``record``, and what says
    what the run was: without ``meta`` its ``.hydra/`` folder (the report reads the config); with
    ``meta`` a ``run.json`` of it (``learner``, ``env``, ``reward``, ``seed``: what the report groups
    by, where a driver names its conditions itself; ``settings``: what :func:`has_record` checks)
    and the composed config as ``config.yaml``, kept for the reader."""
    partial = partial_record(record)
    for name in ("metrics.jsonl", "result.json"):
        shutil.copy2(run_dir / name, partial / name)
    if meta is None:
        shutil.copytree(run_dir / ".hydra", partial / ".hydra")
    else:
        if (run_dir / ".hydra" / "config.yaml").exists():
            shutil.copy2(run_dir / ".hydra" / "config.yaml", partial / "config.yaml")
        (partial / "run.json").write_text(json.dumps(meta) + "\n")
    if seconds is not None:
        (partial / "seconds.txt").write_text(f"{seconds:.1f}\n")
    publish(partial, record)
    return record


def finished(records: list[Path]) -> bool:
    """True when every one of ``records`` is whole (``result.json``, written last)."""
    return all((r / "result.json").exists() for r in records)


def minutes_per_run(records: list[Path]) -> float:
    """Mean wall time of ``records``' runs (their ``seconds.txt``), in minutes."""
    return sum(float((r / "seconds.txt").read_text()) for r in records) / len(records) / 60


def report_section(out: Path) -> str:
    """``out``'s report.md one heading level down, to sit under a driver's own heading."""
    return re.sub(r"^(#+) ", r"#\1 ", (out / "report.md").read_text(), flags=re.M)


def has_record(record: Path, settings: dict) -> bool:
    """True when ``record`` is finished (``result.json``) and its ``run.json`` was made with
    ``settings``; a record made with other settings stops the run, naming it."""
    if not (record / "result.json").exists():
        return False
    made = json.loads((record / "run.json").read_text()).get("settings")
    if made != settings:
        raise SystemExit(f"{record} was made with {made}, this run has {settings}: delete the old records "
                         "or keep the settings as they were")
    return True


def partial_record(record: Path) -> Path:
    """A fresh folder of this process beside ``record``, to fill and then :func:`publish`."""
    partial = record.with_name(f".{record.name}.{os.getpid()}.partial")
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, record: Path) -> None:
    """Put the whole record ``partial`` in place, replacing an unfinished earlier attempt."""
    if (record / "result.json").exists():
        raise SystemExit(f"{record} appeared while this run went: two processes ran it")
    if record.exists():
        shutil.rmtree(record)  # an unfinished record (no result.json) of an earlier attempt
    partial.rename(record)
