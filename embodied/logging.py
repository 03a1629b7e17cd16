"""Run logging: a JSON-lines file, the console, wandb, and a learning-curve PNG.

``metrics.jsonl`` is the record of a run: one line per logged step, appended and
flushed, so a killed run keeps everything it logged. wandb runs offline unless the
user turns it on (``wandb.mode=online``); ``wandb.mode=disabled`` switches it off.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any, Mapping

import numpy as np


class Logger:
    def __init__(self, run_dir: str | Path, config: Mapping[str, Any] | None = None,
                 wandb_mode: str = "offline", project: str = "embodied-rl", name: str | None = None,
                 resume: bool = False):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if not resume and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a")
        self._wandb = None
        if wandb_mode != "disabled":
            import wandb

            run_id_file = self.dir / "wandb_id"
            run_id = run_id_file.read_text().strip() if resume and run_id_file.exists() else secrets.token_hex(6)
            run_id_file.write_text(run_id)
            self._wandb = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(self.dir),
                                     mode=wandb_mode, config=dict(config or {}), reinit="finish_previous")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        clean = {k: _plain(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))

    def history(self) -> list[dict[str, Any]]:
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def plot(self, keys=("eval/success", "eval/return", "train/return"), filename="learning_curve.png") -> Path:
        """Learning curves of ``keys`` against env steps, as a PNG in the run folder."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        rows = self.history()
        present = [k for k in keys if any(r.get(k) is not None for r in rows)]  # null: undefined for this task
        fig, axes = plt.subplots(1, max(1, len(present)), figsize=(4.5 * max(1, len(present)), 3.2), squeeze=False)
        for ax, key in zip(axes[0], present):
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if key.startswith("eval") else None, ms=3, lw=1.2)
            ax.set_xlabel("env steps")
            ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
            ax.set_title(key)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.dir / filename
        fig.savefig(out, dpi=110)
        plt.close(fig)
        if self._wandb is not None:
            import wandb

            self._wandb.log({"learning_curve": wandb.Image(str(out))})
        return out

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def json_safe(obj: Any) -> Any:
    """Numbers, numpy scalars and nested dicts / lists as strict JSON values: NaN / inf
    (an undefined metric, e.g. success on a task without a success signal) become null."""
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return _plain(obj)


def _plain(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
