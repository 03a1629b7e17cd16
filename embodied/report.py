"""``embodied-report``: rliable aggregates over any set of runs, across seeds and tasks.

A *run* is a folder ``embodied-train`` wrote (``result.json``, ``metrics.jsonl``,
``.hydra/config.yaml``) or any folder with the same files and a ``run.json`` naming its
``learner``, ``env``, ``reward`` and ``seed`` (how a benchmark records a peer library's runs).
Runs are grouped (``--group``, default the learner and the reward) and each group's score matrix
is (runs x tasks), a task being the env (``--task``). Per group, with 95 % stratified-bootstrap
confidence intervals (rliable: runs are resampled within each task):

* interquartile mean (IQM), mean, median (over tasks, of each task's mean), and the optimality gap (for scores in [0, 1]:
  a success rate, or normalised returns);
* the probability of improvement of each group over each other (``--compare A:B``, default every
  pair of groups that ran the same tasks), P(X > Y) averaged over tasks (Mann-Whitney U);
* the performance profile: the fraction of runs scoring above tau, for tau over the scores;
* the sample-efficiency curve: IQM against env steps from the evaluations in ``metrics.jsonl``
  (each run read, at the evaluation steps between the group's latest first evaluation and its
  earliest last one, at its last evaluation so far), with its interval band.

Written to ``--out``: ``report.md`` (the tables), ``report.json`` (every figure), and
``aggregates.png``, ``profile.png``, ``sample_efficiency.png``. Scores of several tasks are only
pooled when they share a scale: success rates, or returns given ``--normalize task=low:high``.
Anything that cannot be reported (a pattern that matches no run, a run without the metric, a
group that mixes tasks on raw returns or has unequal runs per task, a comparison of groups that
do not exist) is a one-line error naming it, before anything is written.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

CONFIDENCE = 0.95
FIELDS = {"learner": "learner.name", "env": "env.name", "reward": "reward.name", "seed": "seed"}


@dataclass
class Run:
    path: Path
    meta: dict[str, Any]  # the run's config (or run.json)
    final: float  # the metric at the end of the run
    curve: list[tuple[int, float]] = field(default_factory=list)  # (env step, metric) of each evaluation
    group: str = ""
    task: str = ""


def is_run(path: Path) -> bool:
    """A run folder: finished (``result.json``) or not (``metrics.jsonl`` alone)."""
    return path.is_dir() and ((path / "result.json").is_file() or (path / "metrics.jsonl").is_file())


def find_runs(patterns: Sequence[str]) -> list[Path]:
    """Run folders named by ``patterns`` (paths or globs; a folder holding runs stands for them)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()))) if glob.has_magic(pattern) \
            else [Path(pattern).expanduser()]
        runs = []
        for path in matches:
            if is_run(path):
                runs.append(path)
            elif path.is_dir():
                runs += sorted(p for p in path.iterdir() if is_run(p))
        if not runs:
            raise FileNotFoundError(f"{pattern}: matches no run folder (one holding result.json and metrics.jsonl "
                                    "from embodied-train)")
        found += [r for r in runs if r.resolve() not in {f.resolve() for f in found}]
    unfinished = [str(r) for r in found if not (r / "result.json").is_file()]
    if unfinished:
        raise ValueError(f"{unfinished[0]}{f' (and {len(unfinished) - 1} more)' if len(unfinished) > 1 else ''} has "
                         "no result.json: an unfinished run (finish it with resume=true, or leave it out)")
    return found


_MISSING = object()


def _lookup(meta: Mapping[str, Any], key: str, missing: Any = None) -> Any:
    value: Any = meta
    for part in FIELDS.get(key, key).split("."):
        if not isinstance(value, Mapping) or part not in value:
            return missing
        value = value[part]
    return value


def read_meta(path: Path) -> dict[str, Any]:
    """The run's settings: ``.hydra/config.yaml`` of an embodied-train run, else ``run.json``."""
    hydra = path / ".hydra" / "config.yaml"
    if hydra.is_file():
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.load(hydra)
        except Exception as err:  # a hand-edited or truncated file
            raise ValueError(f"{hydra}: not a readable config ({type(err).__name__}: {str(err).splitlines()[0]})") \
                from None
        try:  # ${train.num_envs} and the like become their values ...
            return OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # ... unless one needs Hydra's runtime (${hydra:...}): then as written
            return OmegaConf.to_container(cfg, resolve=False)
    own = path / "run.json"
    if own.is_file():
        meta = _json(own)
        if not isinstance(meta, dict):
            raise ValueError(f"{own}: must be a JSON object naming learner, env, reward and seed")
        # run.json names the fields flat (learner, env, reward, seed): the config's nesting
        return {k: ({"name": v} if k in ("learner", "env", "reward") and not isinstance(v, dict) else v)
                for k, v in meta.items()}
    raise FileNotFoundError(f"{path}: no .hydra/config.yaml (an embodied-train run) or run.json (learner, env, "
                            "reward, seed) says what the run was")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else None


def _json(path: Path, text: str | None = None, line: int | None = None) -> Any:
    try:
        return json.loads(path.read_text() if text is None else text)
    except ValueError as err:
        where = f"{path}" + (f" line {line}" if line is not None else "")
        raise ValueError(f"{where}: not valid JSON ({str(err).splitlines()[0]})") from None


def read_run(path: Path, metric: str) -> Run:
    meta = read_meta(path)
    by_step: dict[int, float] = {}  # a resumed run logs some steps again: the last row logged counts
    logged: set[str] = set()
    if (path / "metrics.jsonl").is_file():
        for i, line in enumerate((path / "metrics.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = _json(path / "metrics.jsonl", line, i)
            if not isinstance(row, dict):
                raise ValueError(f"{path / 'metrics.jsonl'} line {i}: not a JSON object")
            logged |= set(row)
            value, step = _finite(row.get(metric)), row.get("step")
            if value is not None and isinstance(step, (int, float)) and not isinstance(step, bool):
                by_step[int(step)] = value
    curve = sorted(by_step.items())
    final = None
    if (path / "result.json").is_file():
        result = _json(path / "result.json")
        if not isinstance(result, dict):
            raise ValueError(f"{path / 'result.json'}: not a JSON object")
        logged |= set(result)
        final = _finite(result.get(metric))
    if final is None and curve:
        final = curve[-1][1]
    if final is None:
        near = sorted(k for k in logged if k.startswith(metric.split("/")[0]) and k != "step")[:6]
        raise ValueError(f"{path}: no {metric} in result.json or metrics.jsonl (it has {', '.join(near) or 'none'}); "
                         "pick --metric from those, or rerun it to the end")
    return Run(path, meta, float(final), curve)


def _parse_normalize(items: Sequence[str]) -> dict[str, tuple[float, float]]:
    out = {}
    for item in items:
        try:
            task, bounds = item.split("=", 1)
            low, high = (float(x) for x in bounds.split(":"))
        except ValueError:
            raise ValueError(f"--normalize {item}: write task=low:high, e.g. reach=0:50") from None
        if not high > low:
            raise ValueError(f"--normalize {item}: high must exceed low")
        out[task] = (low, high)
    return out


def bounded(metric: str) -> bool:
    """Metrics already on a [0, 1] scale shared by every task (success rates)."""
    return metric.split("/")[-1] in ("success", "success_rate", "final_success")


@dataclass
class Report:
    metric: str
    groups: dict[str, dict[str, list[Run]]]  # group -> task -> runs (ordered by seed)
    normalized: bool
    gamma: float | None  # the optimality gap's threshold (None: scores have no common scale)
    normalize: dict[str, tuple[float, float]]

    def score(self, run: Run, value: float | None = None) -> float:
        value = run.final if value is None else value
        if run.task in self.normalize:
            low, high = self.normalize[run.task]
            return (value - low) / (high - low)
        return value

    def matrix(self, group: str) -> np.ndarray:
        """(runs, tasks) final scores of ``group``."""
        tasks = self.groups[group]
        return np.array([[self.score(r) for r in tasks[t]] for t in sorted(tasks)], float).T


def build(run_dirs: Sequence[Path], metric: str, group_by: Sequence[str], task_key: str = "env",
          normalize: Sequence[str] = (), gamma: float = 1.0) -> Report:
    """Read and group the runs; every check that can fail, before anything is computed."""
    norm = _parse_normalize(normalize)
    groups: dict[str, dict[str, list[Run]]] = {}
    for path in run_dirs:
        run = read_run(path, metric)
        parts = []
        for key in group_by:
            value = _lookup(run.meta, key, _MISSING)
            if value is _MISSING:
                raise ValueError(f"{path}: its config has no {FIELDS.get(key, key)} to group by (--group {key})")
            parts.append("null" if value is None else str(value))  # a key set to null is a value: train.ray.address
        run.group = "/".join(parts)
        task = _lookup(run.meta, task_key)
        if task is None:
            raise ValueError(f"{path}: its config has no {FIELDS.get(task_key, task_key)} to read the task from")
        run.task = str(task)
        groups.setdefault(run.group, {}).setdefault(run.task, []).append(run)
    for tasks in groups.values():
        for runs in tasks.values():
            runs.sort(key=lambda r: (str(_lookup(r.meta, "seed")), str(r.path)))
    unknown = sorted(set(norm) - {t for tasks in groups.values() for t in tasks})
    if unknown:
        raise ValueError(f"--normalize names tasks no run has: {', '.join(unknown)}")
    all_tasks = sorted({t for tasks in groups.values() for t in tasks})
    normalized = bool(norm) and all(t in norm for t in all_tasks)
    if norm and not normalized:
        missing = [t for t in all_tasks if t not in norm]
        raise ValueError(f"--normalize covers some tasks but not {', '.join(missing)}: give every task bounds")
    for name, tasks in groups.items():
        if len(tasks) > 1 and not (normalized or bounded(metric)):
            raise ValueError(f"group {name} mixes tasks {', '.join(sorted(tasks))} on {metric}, which has no common "
                             "scale: pass --normalize <task>=<low>:<high> for each, or report a success rate")
        counts = {t: len(r) for t, r in tasks.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"group {name} has unequal runs per task ({', '.join(f'{t}: {n}' for t, n in sorted(counts.items()))}): "
                             "give every task the same seeds")
    shared = normalized or bounded(metric)
    return Report(metric, groups, normalized, gamma if shared else None, norm)


class _seeded:
    """rliable's bootstraps draw from numpy's global generator (its ``random_state`` does not
    reach every draw): seed it for the call, give the caller's state back after."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.saved = np.random.get_state()
        np.random.seed(self.seed)

    def __exit__(self, *exc):
        np.random.set_state(self.saved)


def _interval(score_dict: Mapping[str, Any], func, reps: int, seed: int) -> tuple[dict, dict]:
    import warnings

    from rliable import library as rly

    with warnings.catch_warnings(), _seeded(seed):  # arch's notice that RandomState goes (rliable passes one)
        warnings.simplefilter("ignore", FutureWarning)
        return rly.get_interval_estimates(score_dict, func, reps=reps, confidence_interval_size=CONFIDENCE,
                                          random_state=np.random.RandomState(seed))


def aggregates(report: Report, reps: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per group: IQM, mean, median (and the optimality gap) with 95 % stratified-bootstrap CIs."""
    from rliable import metrics

    names = ["iqm", "mean", "median"] + (["optimality_gap"] if report.gamma is not None else [])

    def func(scores):
        out = [metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores), metrics.aggregate_median(scores)]
        if report.gamma is not None:
            out.append(metrics.aggregate_optimality_gap(scores, report.gamma))
        return np.array(out)

    matrices = {g: report.matrix(g) for g in report.groups}
    point, ci = _interval(matrices, func, reps, seed)
    out = {}
    for g, m in matrices.items():
        out[g] = {"runs": int(m.shape[0]), "tasks": sorted(report.groups[g]),
                  **{n: {"value": float(point[g][i]), "ci": [float(ci[g][0, i]), float(ci[g][1, i])]}
                     for i, n in enumerate(names)},
                  "per_run": {t: [round(report.score(r), 6) for r in report.groups[g][t]] for t in sorted(report.groups[g])}}
    return out


def improvement(report: Report, pairs: Sequence[tuple[str, str]], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """P(X > Y) for each (X, Y), averaged over their tasks, with a 95 % bootstrap CI."""
    from rliable import metrics

    if not pairs:
        return {}
    score_dict = {f"{x} > {y}": [report.matrix(x), report.matrix(y)] for x, y in pairs}
    point, ci = _interval(score_dict, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps, seed)
    return {k: {"value": float(point[k][0]), "ci": [float(ci[k][0, 0]), float(ci[k][1, 0])]} for k in score_dict}


def check_pairs(report: Report, compare: Sequence[str]) -> list[tuple[str, str]]:
    """``A:B`` items, each pair evaluated on the same tasks (default: every pair of groups that
    ran the same tasks)."""
    names = list(report.groups)
    if compare:
        pairs = []
        for item in compare:
            x, sep, y = item.partition(":")
            if not sep or x not in report.groups or y not in report.groups:
                raise ValueError(f"--compare {item}: write A:B with two of the groups {', '.join(names)}")
            pairs.append((x, y))
    else:  # every pair of groups that ran the same tasks
        return [(x, y) for i, x in enumerate(names) for y in names[i + 1:]
                if sorted(report.groups[x]) == sorted(report.groups[y])]
    for x, y in pairs:
        if sorted(report.groups[x]) != sorted(report.groups[y]):
            raise ValueError(f"--compare {x}:{y}: the groups ran different tasks ({', '.join(sorted(report.groups[x]))} "
                             f"vs {', '.join(sorted(report.groups[y]))})")
    return pairs


def profiles(report: Report, points: int = 51, reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Performance profiles: the fraction of runs (pooled over tasks) scoring above tau."""
    from rliable import library as rly

    matrices = {g: report.matrix(g) for g in report.groups}
    every = np.concatenate([m.ravel() for m in matrices.values()])
    low, high = (0.0, 1.0) if report.gamma is not None else (float(every.min()), float(every.max()))
    taus = np.linspace(low, high if high > low else low + 1.0, points)
    with _seeded(seed):
        point, ci = rly.create_performance_profile(matrices, taus, reps=reps)
    return {"tau": taus.tolist(), **{g: {"fraction": point[g].tolist(), "ci": np.asarray(ci[g]).tolist()}
                                     for g in matrices}}


def curves(report: Report, reps: int = 500, seed: int = 0, max_points: int = 25) -> dict[str, Any]:
    """Per group: IQM of the metric against env steps with a 95 % CI band, at the evaluation
    steps every run of the group reached (each run read at its last evaluation at or before)."""
    from rliable import metrics

    out = {}
    for g, tasks in report.groups.items():
        runs = [r for t in sorted(tasks) for r in tasks[t]]
        if any(not r.curve for r in runs):
            continue  # a run without evaluations in metrics.jsonl: no curve for its group
        reach = min(r.curve[-1][0] for r in runs)
        first = max(r.curve[0][0] for r in runs)  # no run is read before its first evaluation
        grid = sorted({s for r in runs for s, _ in r.curve if first <= s <= reach})
        if not grid:
            continue
        if len(grid) > max_points:
            grid = [grid[int(i)] for i in np.linspace(0, len(grid) - 1, max_points).round()]

        def at(run: Run, step: int) -> float:
            before = [v for s, v in run.curve if s <= step]
            return report.score(run, before[-1])

        # (runs, tasks, steps)
        cube = np.array([[[at(r, s) for s in grid] for r in tasks[t]] for t in sorted(tasks)], float).transpose(1, 0, 2)
        point, ci = _interval({g: cube}, lambda x: np.array([metrics.aggregate_iqm(x[..., i])
                                                             for i in range(x.shape[-1])]), reps, seed)
        out[g] = {"step": grid, "iqm": point[g].tolist(), "ci": np.asarray(ci[g]).tolist()}
    return out


def _fmt(entry: Mapping[str, Any] | None, digits: int) -> str:
    if entry is None:
        return "n/a"
    return f"{entry['value']:.{digits}f} [{entry['ci'][0]:.{digits}f}, {entry['ci'][1]:.{digits}f}]"


def markdown(report: Report, agg: Mapping[str, Any], pi: Mapping[str, Any], title: str, digits: int) -> str:
    scale = ("normalised per task (" + ", ".join(f"{t}: {lo:g}..{hi:g}" for t, (lo, hi) in sorted(report.normalize.items()))
             + ")") if report.normalized else "raw"
    lines = [f"## {title}", "", f"`{report.metric}` at the end of each run ({scale}); IQM, mean, median"
             + (f" and optimality gap (γ = {report.gamma:g})" if report.gamma is not None else "")
             + " over runs × tasks with 95 % stratified-bootstrap CIs (rliable).", "",
             "| group | tasks | runs per task | IQM | mean | median |" + (" optimality gap |" if report.gamma is not None else ""),
             "|---|---|---:|---|---|---|" + ("---|" if report.gamma is not None else "")]
    for g, a in agg.items():
        row = (f"| {g} | {', '.join(a['tasks'])} | {a['runs']} | "
               f"{_fmt(a['iqm'], digits)} | {_fmt(a['mean'], digits)} | {_fmt(a['median'], digits)} |")
        if report.gamma is not None:
            row += f" {_fmt(a['optimality_gap'], digits)} |"
        lines.append(row)
    lines += ["", "Per run (" + ("normalised" if report.normalized else report.metric) + "):", ""]
    for g, a in agg.items():
        for t, scores in a["per_run"].items():
            lines.append(f"- {g} on {t}: " + ", ".join(f"{s:.{digits}f}" for s in scores))
    if pi:
        lines += ["", "| probability of improvement | P(X > Y) [95 % CI] |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v, 2)} |" for k, v in pi.items()]
    return "\n".join(lines) + "\n"


def plot(report: Report, agg: Mapping[str, Any], prof: Mapping[str, Any], curv: Mapping[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(agg)
    stats = [n for n in ("iqm", "mean", "median", "optimality_gap") if n in agg[names[0]]]
    fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 0.6 + 0.45 * len(names)), squeeze=False)
    for ax, stat in zip(axes[0], stats):
        for i, g in enumerate(names):
            lo, hi = agg[g][stat]["ci"]
            ax.barh(i, hi - lo, left=lo, height=0.6, color=f"C{i}", alpha=0.75)
            ax.plot([agg[g][stat]["value"]] * 2, [i - 0.3, i + 0.3], color="k", lw=1.5)
        ax.set_yticks(range(len(names)), names if stat == stats[0] else [""] * len(names))
        ax.set_title(stat.replace("_", " ").upper() if stat == "iqm" else stat.replace("_", " "))
    fig.tight_layout()
    fig.savefig(out / "aggregates.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    taus = np.array(prof["tau"])
    for i, g in enumerate(names):
        frac, ci = np.array(prof[g]["fraction"]), np.array(prof[g]["ci"])
        ax.plot(taus, frac, color=f"C{i}", label=g)
        ax.fill_between(taus, ci[0], ci[1], color=f"C{i}", alpha=0.2)
    ax.set_xlabel(("normalised " if report.normalized else "") + report.metric + " τ")
    ax.set_ylabel("fraction of runs > τ")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, g in enumerate(names):
        if g in curv:
            steps, iqm, ci = np.array(curv[g]["step"]), np.array(curv[g]["iqm"]), np.array(curv[g]["ci"])
            ax.plot(steps, iqm, color=f"C{i}", label=g, marker="o", ms=3)
            ax.fill_between(steps, ci[0], ci[1], color=f"C{i}", alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("IQM " + report.metric)
    if curv:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sample_efficiency.png", dpi=120)
    plt.close(fig)


def make_report(patterns: Sequence[str], out: str | Path, metric: str = "eval/return",
                group_by: Sequence[str] = ("learner", "reward"), task_key: str = "env",
                normalize: Sequence[str] = (), compare: Sequence[str] = (), gamma: float = 1.0, reps: int = 2000,
                title: str | None = None, digits: int = 2, seed: int = 0) -> dict[str, Any]:
    """Everything ``embodied-report`` does; returns what ``report.json`` holds."""
    runs = find_runs(patterns)
    report = build(runs, metric, group_by, task_key, normalize, gamma)
    pairs = check_pairs(report, compare)
    out = Path(out).expanduser()
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise FileExistsError(f"--out {out}: {blocked} is a file; choose a folder")
    agg = aggregates(report, reps, seed)
    pi = improvement(report, pairs, reps, seed)
    prof = profiles(report, reps=min(reps, 2000), seed=seed)
    curv = curves(report, reps=min(reps, 500), seed=seed)
    title = title or f"{metric} over {len(runs)} runs"
    data = {"metric": metric, "group_by": list(group_by), "task": task_key, "normalize": report.normalize,
            "confidence": CONFIDENCE, "reps": reps, "runs": [str(p) for p in runs], "aggregates": agg,
            "probability_of_improvement": pi, "performance_profile": prof, "sample_efficiency": curv}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(report, agg, pi, title, digits))
    (out / "report.json").write_text(json.dumps(data, indent=1))
    plot(report, agg, prof, curv, out)
    return data
