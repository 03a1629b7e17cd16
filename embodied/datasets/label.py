"""Label a LeRobotDataset with a reward module into a new, labeled copy: the library
behind ``embodied-label`` (embodied/cli/label.py): input checks, the job / resume
bookkeeping, the per-episode label store, preference fitting, writing and plotting.

    label_dataset("/data/ds", "/data/ds_clip", model, reward_cfg, camera="front")

What is written (a NEW dataset at ``output``, made with LeRobot's ``modify_features``:
videos and every source column are copied unchanged):

``next.reward``  float32, the reward of the transition row t -> row t+1
``progress``     float32 per frame, when the module predicts it
``success``      bool per frame, when the module predicts it
``label_ok``     bool, False on every row of an episode whose labeling failed; those rows
                 hold ``next.reward = NaN`` (and NaN progress / False success): never a
                 number that looks like a label. ``load_replay`` skips them.
``meta/labeling.json``  module, model, prompts, date, source, summary, failed episodes
``meta/labeling/reward_curves.png``  reward curves of a sample of episodes

The last row of an episode has no next frame in a LeRobotDataset; the module sees the
episode's frames with the last one repeated, so that row's reward is the reward of
staying in the final frame.

Trainable modules (RL-VLM-F): before labeling, ``preference_pairs`` frame pairs drawn
from two different episodes are labeled by the module (its VLM, or the scripted oracle,
which answers from the dataset's ``gt.progress`` column), the Bradley-Terry reward is
fit on them and saved in the side store, then every episode is labeled with it.

Resumable: labels go first to ``<output>.partial/labels/episode_<i>.npz`` (one file per
episode, written atomically), then the dataset is written and moved into place. A
killed run continues without redoing labeled episodes; a rerun over a finished output
is a no-op. The source dataset is only read.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embodied.contracts import EpisodeLabels, RewardModel, TrainableReward
from embodied.datasets.keys import DEFAULT_KEYS, DatasetKeys

log = logging.getLogger("embodied")

LABEL_COLUMNS = ("next.reward", "progress", "success", "label_ok")


# ----------------------------------------------------------------------------- checks
def resolve_camera(ds, camera: str | None, keys: DatasetKeys = DEFAULT_KEYS) -> str:
    """The camera to label from, by the env's name (``keys`` maps it to the dataset's column)."""
    from embodied.datasets.read import camera_names

    keys.check(ds)
    cams = camera_names(ds, keys)
    if not cams:
        raise ValueError("the dataset has no camera (observation.images.*); a reward module needs frames")
    if camera is None:
        return cams[0]
    name = keys.env_camera(camera) if camera.startswith("observation.images.") else camera
    if name not in cams:
        raise ValueError(f"the dataset has no camera {camera!r}; its cameras: {cams}")
    return name


def check_source(ds, camera: str, keys: DatasetKeys = DEFAULT_KEYS) -> None:
    """Bad input -> one-line error, before any work: no actions, NaNs, mismatched images."""
    import av

    feats = ds.meta.features
    if keys.action not in feats:
        raise ValueError(f"the dataset has no {keys.action!r} column; labeled data must be usable for offline RL "
                         "(name it with dataset_keys.action)")
    key = keys.column(camera)
    want = tuple(feats[key]["shape"])  # (H, W, 3)
    if feats[key]["dtype"] == "video":
        files = {ds.meta.get_video_file_path(i, key) for i in range(ds.meta.total_episodes)}
        for rel in sorted(files):
            path = ds.root / rel
            if not path.exists():
                raise FileNotFoundError(f"video {path} of camera {camera!r} is missing")
            with av.open(str(path)) as container:
                s = container.streams.video[0]
                if (s.height, s.width) != want[:2]:
                    raise ValueError(f"camera {camera!r}: video {rel} is {s.height}x{s.width} but the dataset "
                                     f"declares {want[0]}x{want[1]}; re-encode it or fix meta/info.json")
    else:
        from embodied.datasets.read import episode_rows

        for i in range(ds.meta.total_episodes):
            img = np.asarray(ds.hf_dataset[episode_rows(ds, i)[0]][key])
            img = img.transpose(1, 2, 0) if img.shape[0] == 3 and img.shape[-1] != 3 else img
            if img.shape[:2] != want[:2]:
                raise ValueError(f"camera {camera!r}: episode {i} has {img.shape[:2]} images, the dataset "
                                 f"declares {want[:2]}")
    table = ds.hf_dataset.with_format("numpy")
    for name, ft in feats.items():
        if ft["dtype"] in ("float32", "float64", "float16") and name not in LABEL_COLUMNS:
            values = np.asarray(table[name], np.float64)
            bad = ~np.isfinite(values)
            if name == "gt.progress":  # NaN there means "not recorded"
                bad = np.isinf(values)
            if bad.any():
                row = int(np.argwhere(bad.reshape(len(values), -1).any(-1))[0, 0])
                raise ValueError(f"column {name!r} holds NaN/inf values (first at row {row}); clean the dataset")


def source_fingerprint(ds) -> str:
    """Hash of the source's metadata files (info, tasks, episode index)."""
    h = hashlib.sha256()
    for path in sorted((ds.root / "meta").rglob("*")):
        if path.is_file() and path.suffix in (".json", ".parquet", ".jsonl"):
            h.update(str(path.relative_to(ds.root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def make_job(ds, reward_cfg: dict, camera: str, instruction: str | None) -> dict[str, Any]:
    """What identifies a labeling run: same job -> resume / no-op, another -> refuse the output."""
    return {"source": str(Path(ds.root).resolve()), "fingerprint": source_fingerprint(ds), "reward": reward_cfg,
            "camera": camera, "instruction": instruction}


def job_id(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_output(output: Path, job: dict) -> str:
    """'done' (finished output of this job), 'resume' or 'new'; anything else is an error."""
    ident = job_id(job)
    partial = partial_dir(output)
    if output.exists() and any(output.iterdir()):
        meta = output / "meta" / "labeling.json"
        if meta.exists() and json.loads(meta.read_text()).get("job_id") == ident:
            return "done"
        what = "a different labeled dataset" if meta.exists() else "other files"
        raise FileExistsError(f"output {output} already holds {what}; choose another output= or delete it")
    if (partial / "job.json").exists():
        if json.loads((partial / "job.json").read_text()).get("job_id") != ident:
            raise FileExistsError(f"{partial} holds an unfinished labeling of a different input/config; "
                                  "delete it or choose another output=")
        return "resume"
    return "new"


def partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


# ----------------------------------------------------------------------------- labeling
def label_file(partial: Path, index: int) -> Path:
    return partial / "labels" / f"episode_{index:06d}.npz"


def save_labels(path: Path, labels: EpisodeLabels, n: int) -> None:
    arrays: dict[str, Any] = {"rewards": np.asarray(labels.rewards, np.float32)[:n], "ok": np.array(labels.ok),
                              "error": np.array(labels.error or ""),
                              "failed_queries": np.array(int(labels.meta.get("failed_queries", 0)))}
    if labels.progress is not None:
        arrays["progress"] = np.asarray(labels.progress, np.float32)[:n]
    if labels.success is not None:
        arrays["success"] = np.asarray(labels.success, bool)[:n]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_labels(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def label_one(model: RewardModel, frames: np.ndarray, instruction: str) -> EpisodeLabels:
    """Label an episode of N frames: the module sees N+1 frames (last repeated), gives N rewards."""
    n = len(frames)
    try:
        labels = model.label_episode(np.concatenate([frames, frames[-1:]]), instruction)
    except Exception as e:  # noqa: BLE001 - a failing query is recorded, never fatal
        return EpisodeLabels.failed(n, f"{type(e).__name__}: {e}")
    if labels.ok and (len(labels.rewards) < n or not np.isfinite(labels.rewards[:n]).all()):
        return EpisodeLabels.failed(n, f"module returned {len(labels.rewards)} rewards with non-finite values "
                                       f"for {n} rows")
    return labels


def truth(ep) -> np.ndarray:
    """An episode's recorded true progress (``gt.progress``), for a scripted oracle."""
    return np.asarray(ep.columns["gt.progress"], np.float64).reshape(-1)


def fit_preferences(ds, model: RewardModel, camera: str, instruction: str | None, pairs: int, seed: int,
                    partial: Path, oracle=None, keys: DatasetKeys = DEFAULT_KEYS) -> dict[str, Any]:
    """Label ``pairs`` frame pairs of the dataset with the module, fit its reward, save it."""
    from embodied import checkpoint
    from embodied.datasets.read import iter_episodes

    store = partial / "reward_model"
    if checkpoint.latest(store) is not None:  # fitted before a kill: reuse, never re-ask
        state = checkpoint.load(store)
        model.load_state_dict(state["model"])
        return dict(state["metrics"])
    episodes = list(iter_episodes(ds, [camera], keys=keys))
    for ep in episodes if oracle is not None else ():
        oracle.add_episode(ep.frames[camera], truth(ep))
    metrics = model.fit_on_episodes([ep.frames[camera] for ep in episodes], pairs,
                                    instruction or episodes[0].task, seed=seed)
    checkpoint.save(store, 0, {"model": model.state_dict(), "metrics": metrics})
    return metrics


def label_dataset(source, output: str | Path, model: RewardModel | Callable[[], RewardModel], reward_cfg: dict[str, Any],
                  camera: str | None = None, instruction: str | None = None, repo_id: str | None = None,
                  plot_episodes: int = 6, show_progress: bool = True, preference_pairs: int = 0,
                  preference_seed: int = 0, keys: DatasetKeys = DEFAULT_KEYS,
                  ray: dict[str, Any] | None = None) -> dict[str, Any]:
    """Label ``source`` (path, hub id or an open LeRobotDataset) into a new dataset at ``output``.

    ``model`` may be a zero-argument factory: it is called only after every input check
    passed and only when there is something to label. A module whose VLM (or preference
    labeler) is the scripted oracle answers from the dataset's ``gt.progress`` column, so
    such a module refuses a dataset without it. ``keys``: the dataset's names of the
    env's cameras and columns (``camera`` is then the env's name, e.g. ``agentview`` for
    LeRobot's LIBERO ``observation.images.image``). ``ray``: the ``ray:`` settings of
    :mod:`embodied.scale.labeling` (``address`` set: the episodes are labeled by an actor pool on
    that cluster, each actor building the module from ``model`` when it is a factory; the same
    label files, so a run killed on one path resumes on the other). Returns the summary also
    stored in ``<output>/meta/labeling.json``.
    """
    from embodied.datasets.read import open_dataset
    from embodied.scale.cluster import ray_section
    from embodied.scale.labeling import RaySection
    from rewards import find_oracle

    ray = ray_section(ray, RaySection)  # None: this process labels
    ds = source if hasattr(source, "meta") else open_dataset(source)
    output = Path(output).expanduser().resolve()
    if output == Path(ds.root).resolve():
        raise ValueError("output must differ from the input dataset; the source is never modified")
    camera = resolve_camera(ds, camera or reward_cfg.get("camera") or getattr(model, "camera", None), keys)
    check_source(ds, camera, keys)
    job = make_job(ds, reward_cfg, camera, instruction)
    if keys != DEFAULT_KEYS:
        job["keys"] = {"cameras": keys.cameras, "state": keys.state, "action": keys.action}
    job["preferences"] = [preference_pairs, preference_seed]
    state = check_output(output, job)
    if state == "done":
        shutil.rmtree(partial_dir(output), ignore_errors=True)
        summary = json.loads((output / "meta" / "labeling.json").read_text())["summary"]
        log.info("%s is already labeled (same input and config): nothing to do", output)
        return summary
    partial = partial_dir(output)
    episodes = range(ds.meta.total_episodes)
    todo = [i for i in episodes if not label_file(partial, i).exists()]
    factory = None if isinstance(model, RewardModel) else model
    if todo and ray:  # the cluster is reachable and has room, and the module can travel: before any work
        from embodied.scale.cluster import check_shippable
        from embodied.scale.labeling import open_cluster

        open_cluster(ray)
        name = type(model).__name__ if factory is None else repr(reward_cfg.get("name"))
        check_shippable(model, f"reward module {name}")
    if todo and factory is not None:
        model = factory()  # here too on the Ray path: every check below runs before any work
    trainable = bool(todo) and isinstance(model, TrainableReward)
    if trainable and preference_pairs < 1:
        raise ValueError(f"reward {reward_cfg.get('name')!r} learns from preferences: set preference_pairs > 0")
    if trainable and ds.meta.total_episodes < 2:
        raise ValueError("preference labeling needs at least two episodes")
    scripted = find_oracle(model) if todo else None
    if scripted is not None and "gt.progress" not in ds.meta.features:
        raise ValueError(f"reward {reward_cfg.get('name')!r} uses the scripted oracle, which answers from the "
                         "simulator's truth, but the dataset has no gt.progress column; use a real VLM backend")
    (partial / "labels").mkdir(parents=True, exist_ok=True)
    (partial / "job.json").write_text(json.dumps({"job_id": job_id(job), **job}, indent=2, default=str))
    preference_metrics = None
    if trainable:
        preference_metrics = fit_preferences(ds, model, camera, instruction, preference_pairs, preference_seed,
                                             partial, scripted, keys)
        log.info("preference reward fit: %s", preference_metrics)
    start = time.time()
    frames_done = 0

    first_label = None

    def record(index: int, labels: EpisodeLabels, n: int) -> None:
        nonlocal frames_done, first_label
        save_labels(label_file(partial, index), labels, n)
        frames_done += n
        first_label = first_label if first_label is not None else time.time() - start

    if todo and ray:
        import torch

        from embodied.scale.labeling import label_on_ray

        from embodied.scale.cluster import check_shippable

        if trainable and factory is not None:  # fitted here: it travels fitted, not as the factory checked before
            check_shippable(model, f"fitted reward module {type(model).__name__}")
        shipped = model if trainable or factory is None else factory
        label_on_ray(ds, todo, shipped, camera, instruction, keys, ray, torch.get_num_threads(),
                     scripted is not None, record, show_progress)
    elif todo:
        _label_here(ds, todo, model, camera, instruction, keys, scripted, record, show_progress)
    label_seconds = time.time() - start
    return _write_output(ds, output, partial, job, camera, reward_cfg, repo_id, plot_episodes,
                         {"label_seconds": label_seconds, "frames_labeled_this_run": frames_done,
                          "first_label_seconds": first_label,  # start-up: the module built, the first episode read
                          **({"preferences": preference_metrics} if preference_metrics else {})})


def _label_here(ds, todo: list[int], model: RewardModel, camera: str, instruction: str | None, keys: DatasetKeys,
                scripted, record: Callable[[int, EpisodeLabels, int], None], show_progress: bool) -> None:
    """Label episodes ``todo`` in this process, decoding the next episode while the model runs."""
    from tqdm import tqdm

    from embodied.datasets.read import read_episode

    total = ds.meta.total_episodes
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(read_episode, ds, todo[0], [camera], keys)
        for k, index in enumerate(tqdm(todo, desc="labeling", unit="ep", disable=not show_progress,
                                       initial=total - len(todo), total=total)):
            ep = fut.result()
            fut = pool.submit(read_episode, ds, todo[k + 1], [camera], keys) if k + 1 < len(todo) else None
            if scripted is not None:
                scripted.add_episode(ep.frames[camera], truth(ep))
            record(index, label_one(model, ep.frames[camera], instruction or ep.task), len(ep))


def _write_output(ds, output: Path, partial: Path, job: dict, camera: str, reward_cfg: dict,
                  repo_id: str | None, plot_episodes: int, timing: dict) -> dict[str, Any]:
    from lerobot.datasets.dataset_tools import modify_features

    from embodied.datasets.read import episode_rows

    n = ds.meta.total_frames
    reward = np.full(n, np.nan, np.float32)
    progress = np.full(n, np.nan, np.float32)
    success = np.zeros(n, bool)
    ok_rows = np.zeros(n, bool)
    has_progress = has_success = False
    failed, failed_queries, curves = [], 0, {}
    for i in range(ds.meta.total_episodes):
        a, b = episode_rows(ds, i)
        lab = load_labels(label_file(partial, i))
        failed_queries += int(lab["failed_queries"])
        if not bool(lab["ok"]):
            failed.append({"episode": i, "error": str(lab["error"])})
            continue
        reward[a:b], ok_rows[a:b] = lab["rewards"], True
        if "progress" in lab:
            progress[a:b], has_progress = lab["progress"], True
        if "success" in lab:
            success[a:b], has_success = lab["success"], True
        curves[i] = (lab["rewards"], lab.get("progress"))
    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    add = {"next.reward": (reward, scalar("float32")), "label_ok": (ok_rows, scalar("bool"))}
    if has_progress:
        add["progress"] = (progress, scalar("float32"))
    if has_success:
        add["success"] = (success, scalar("bool"))
    target = partial / "dataset"
    shutil.rmtree(target, ignore_errors=True)  # a half-written copy from a killed run
    remove = [c for c in LABEL_COLUMNS if c in ds.meta.features]
    modify_features(ds, add_features=add, remove_features=remove or None, output_dir=target,
                    repo_id=repo_id or f"local/{output.name}")
    good = reward[ok_rows]
    summary = {"episodes": ds.meta.total_episodes, "episodes_labeled": ds.meta.total_episodes - len(failed),
               "episodes_failed": len(failed), "failed_queries": failed_queries + len(failed),
               "frames": int(n), "reward_mean": float(good.mean()) if good.size else None,
               "reward_std": float(good.std()) if good.size else None,
               "reward_min": float(good.min()) if good.size else None,
               "reward_max": float(good.max()) if good.size else None, **timing}
    meta = {"job_id": job_id(job), "module": reward_cfg.get("name"),
            "model": reward_cfg.get("model_name") or reward_cfg.get("model") or reward_cfg.get("backend"),
            "prompts": {k: v for k, v in reward_cfg.items() if "prompt" in k},
            "reward_config": reward_cfg, "camera": camera, "instruction_override": job["instruction"],
            "source": job["source"], "source_fingerprint": job["fingerprint"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "columns": sorted(add), "failed_episodes": failed, "summary": summary,
            "failed_rows": "next.reward = NaN, progress = NaN, success = False, label_ok = False"}
    (target / "meta" / "labeling").mkdir(parents=True, exist_ok=True)
    plot_curves(curves, target / "meta" / "labeling" / "reward_curves.png", plot_episodes)
    (target / "meta" / "labeling.json").write_text(json.dumps(meta, indent=2, default=str))
    if output.exists():
        output.rmdir()  # empty (checked): replace it
    os.replace(target, output)
    shutil.rmtree(partial, ignore_errors=True)
    return summary


def plot_curves(curves: dict[int, tuple], path: Path, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    keys = sorted(curves)
    pick = [keys[int(j)] for j in np.linspace(0, len(keys) - 1, min(count, len(keys)))] if keys else []
    for i in dict.fromkeys(pick):
        rewards, progress = curves[i]
        line, = ax.plot(rewards, label=f"episode {i}")
        if progress is not None:
            ax.plot(progress, "--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("next.reward (dashed: progress)")
    ax.set_title("labeled rewards" if pick else "no episode labeled")
    if pick:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
