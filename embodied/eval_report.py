"""What ``embodied-eval`` writes from :func:`embodied.evaluation.evaluate_suite`'s results.

``results.json``  the config, per-task and overall figures (strict JSON: undefined -> null)
``results.md``    a markdown table: task, instruction, successes/N, rate, 95 % CI, mean
                  length, and an overall row (pooled episodes)
``success.png``   per-task success rates with their 95 % Wilson intervals, overall as a line

An output folder that already holds results is refused rather than overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

RESULT_FILES = ("results.json", "results.md", "success.png")


def check_output(output: str | Path) -> Path:
    """``output`` as a folder to write results into; refuses one that already holds results."""
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output={output} is a file; choose a folder")
    held = [f for f in RESULT_FILES if (output / f).exists()]
    if held:
        raise FileExistsError(f"output={output} already holds results ({held[0]}); choose another output= or delete it")
    return output


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "n/a" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _fmt_rate(t: Mapping[str, Any]) -> tuple[str, str]:
    if t["successes"] is None:
        return f"n/a/{t['episodes']}", "n/a"
    return f"{t['successes']}/{t['episodes']}", f"{t['success_rate']:.2f}"


def markdown_table(results: Mapping[str, Any]) -> str:
    """Task, instruction, successes/N, rate, 95 % CI, mean length; an overall row."""
    lines = ["| task | instruction | successes | rate | 95 % CI | mean length |", "|---|---|---|---|---|---|"]
    for t in results["tasks"]:
        text = t["instruction"] + (f" (+{len(t['instructions']) - 1} more)" if len(t["instructions"]) > 1 else "")
        lines.append(f"| {t['task']} | {text.replace('|', '/')} | {' | '.join(_fmt_rate(t))} | {_fmt_ci(t['ci95'])} "
                     f"| {t['mean_length']:.1f} |")
    o = results["overall"]
    tasks = f"{o['tasks']} task" + ("s" if o["tasks"] != 1 else "")
    lines.append(f"| **overall** ({tasks}) | | {' | '.join(_fmt_rate(o))} | {_fmt_ci(o['ci95'])} "
                 f"| {o['mean_length']:.1f} |")
    if o["tasks"] > 1 and o["successes"] is not None:
        lines.append(f"\nMean of the per-task success rates: {o['mean_task_success_rate']:.3f}.")
    return "\n".join(lines)


def plot_success(results: Mapping[str, Any], path: str | Path, title: str = "") -> None:
    """Per-task success rate with 95 % CI error bars and the pooled overall rate as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in results["tasks"] if t["successes"] is not None]
    names = [t["task"] for t in tasks]
    prefix = names[0].rsplit("/", 1)[0] + "/" if len(names) > 1 and names[0].startswith("libero/") else ""
    labels = [n[len(prefix):] if prefix and n.startswith(prefix) else n for n in names]
    rates = np.array([t["success_rate"] for t in tasks])
    low = np.array([t["ci95"][0] for t in tasks])
    high = np.array([t["ci95"][1] for t in tasks])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(tasks) + 2.5), 3.8))
    x = np.arange(len(tasks))
    ax.bar(x, rates, width=0.6, color="#4c72b0", yerr=np.clip([rates - low, high - rates], 0, 1), capsize=3, ecolor="black",
           zorder=2)
    o = results["overall"]
    if o["successes"] is not None:
        ax.axhspan(o["ci95"][0], o["ci95"][1], color="#dd8452", alpha=0.15, lw=0, zorder=0)
        ax.axhline(o["success_rate"], color="#dd8452", ls="--", zorder=3,
                   label=f"overall {o['success_rate']:.2f} {_fmt_ci(o['ci95'])}")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(x, labels, rotation=90 if len(tasks) > 12 else 0, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95 % CI)")
    ax.set_xlabel(f"task ({prefix}<id>)" if prefix else "task")
    ax.set_title(title.replace("`", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(output: str | Path, results: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                 title: str = "") -> Path:
    """results.json (config + figures, strict JSON), results.md, success.png in ``output``."""
    from embodied.logging import json_safe

    output = check_output(output)
    output.mkdir(parents=True, exist_ok=True)
    relative = {**results, "tasks": [{**t, "video": _relative(t.get("video"), output)} for t in results["tasks"]]}
    doc = json.dumps(json_safe({"config": dict(config or {}), **relative}), indent=2, allow_nan=False)
    plot_success(results, output / "success.png", title)
    (output / "results.md").write_text((f"{title}\n\n" if title else "") + markdown_table(results) + "\n")
    (output / "results.json").write_text(doc)  # last: a folder with results.json holds a complete report
    return output


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
