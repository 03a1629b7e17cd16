"""``embodied-label ray.address=...``: labeling a LeRobotDataset as a Ray Data pipeline.

    episode indices --map(readers: decode one episode's frames, CPU)-->
        --map_batches(actor pool of ray.actors reward modules, ray.batch_size episodes a call,
                      ray.num_gpus / ray.num_cpus each)--> labels --> this process writes them

Only the labeling moves to the cluster; everything around it is :func:`embodied.datasets.label.label_dataset`'s:
the input checks, the job / resume bookkeeping (one ``<output>.partial/labels/episode_<i>.npz``
per labeled episode, written here as each arrives, so a killed run resumes through either
path), preference fitting and the final write. Each actor builds its reward module once from
what the driver ships (the config's factory, seeded as the local path seeds it; or a module
fitted here first) and labels one episode per call to the module, as the local path does, so
a deterministic module gives byte-for-byte the local labels.

The readers and the actors must see the dataset at the same path (shared storage on a
multi-node cluster); the labels come back through Ray, so only this process writes ``output``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from embodied.contracts import EpisodeLabels
from embodied.schema import num

log = logging.getLogger("embodied")

READER_CPUS = 0.5  # decoding a short episode is light next to the reward module: two readers share a core


@dataclass
class RaySection:
    """``ray:`` of ``embodied-label`` (configs/label.yaml); the defaults fill a partial section."""

    address: str | None = None
    actors: int = num(1, ge=1)
    num_gpus: float = num(0.0, ge=0)
    num_cpus: float = num(1.0, gt=0)
    batch_size: int = num(1, ge=1)
    readers: int = num(1, ge=1)
    local_cpus: int | None = num(None, ge=1)


class _Reader:
    """One episode's frames (and its recorded truth, for a scripted oracle) from the dataset."""

    def __init__(self, root: str, camera: str, keys, with_truth: bool):
        from embodied.datasets.label import truth
        from embodied.datasets.read import open_dataset, read_episode

        self.ds, self.camera, self.keys, self.with_truth = open_dataset(root), camera, keys, with_truth
        self._read, self._truth = read_episode, truth

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        ep = self._read(self.ds, int(row["episode"]), [self.camera], self.keys)
        return {"episode": int(row["episode"]), "frames": ep.frames[self.camera], "task": ep.task,
                "truth": self._truth(ep) if self.with_truth else np.zeros(0)}


class _Labeler:
    """An actor of the pool: the reward module, built once, labeling a batch of episodes."""

    def __init__(self, model, instruction: str | None, threads: int):
        import torch

        from embodied.contracts import RewardModel
        from embodied.datasets.label import label_one
        from rewards import find_oracle

        torch.set_num_threads(int(threads))
        self.model = model if isinstance(model, RewardModel) else model()  # a module, or a factory of one
        self.scripted = find_oracle(self.model)
        self.instruction, self._label = instruction, label_one

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in ("episode", "rewards", "progress", "success", "ok", "error",
                                                "failed_queries")}
        for k in range(len(batch["episode"])):
            frames = np.asarray(batch["frames"][k])
            if self.scripted is not None:
                self.scripted.add_episode(frames, np.asarray(batch["truth"][k], np.float64))
            labels = self._label(self.model, frames, self.instruction or str(batch["task"][k]))
            n = len(frames)
            out["episode"].append(int(batch["episode"][k]))
            out["rewards"].append(np.asarray(labels.rewards, np.float32)[:n])
            # absent progress / success travel as empty arrays (a column cannot hold None)
            out["progress"].append(np.zeros(0, np.float32) if labels.progress is None
                                   else np.asarray(labels.progress, np.float32)[:n])
            out["success"].append(np.zeros(0, bool) if labels.success is None else np.asarray(labels.success, bool)[:n])
            out["ok"].append(bool(labels.ok))
            out["error"].append(labels.error or "")
            out["failed_queries"].append(int(labels.meta.get("failed_queries", 0)))
        return {k: _column(v) for k, v in out.items()}


def _column(values: list) -> np.ndarray:
    if values and isinstance(values[0], np.ndarray):  # ragged per-episode arrays
        col = np.empty(len(values), dtype=object)
        col[:] = values
        return col
    return np.asarray(values)


def _labels(row: dict[str, Any]) -> EpisodeLabels:
    progress, success = np.asarray(row["progress"]), np.asarray(row["success"])
    return EpisodeLabels(np.asarray(row["rewards"], np.float32), progress if progress.size else None,
                         success.astype(bool) if success.size else None, ok=bool(row["ok"]),
                         error=str(row["error"]) or None, meta={"failed_queries": int(row["failed_queries"])})


def open_cluster(settings: dict[str, Any]):
    """Join the cluster ``settings["address"]`` names and check the pool fits in it; the ``ray``
    module. Called before anything is built or written."""
    from embodied.scale.cluster import Demand, connect, require

    ray = connect(settings["address"], settings.get("local_cpus"))
    actors, readers = int(settings["actors"]), int(settings["readers"])
    require(ray, Demand(f"labeling with ray.actors={actors} (ray.num_gpus={settings['num_gpus']:g}, "
                        f"ray.num_cpus={settings['num_cpus']:g} each) and ray.readers={readers}",
                        cpus=actors * float(settings["num_cpus"]) + readers * READER_CPUS,
                        gpus=actors * float(settings["num_gpus"])))
    return ray


def label_on_ray(ds, todo: list[int], model, camera: str, instruction: str | None, keys, settings: dict[str, Any],
                 threads: int, with_truth: bool, record: Callable[[int, EpisodeLabels, int], None],
                 show_progress: bool = True) -> None:
    """Label episodes ``todo`` of ``ds`` on the cluster ``settings`` names; ``record(index, labels,
    n)`` is called here for each episode as its labels arrive. ``model``: a reward module or a
    zero-argument function that builds one (what each actor receives). The cluster was joined and
    checked by :func:`open_cluster` before."""
    from pathlib import Path

    import ray
    from tqdm import tqdm

    actors, readers = int(settings["actors"]), int(settings["readers"])
    from ray.data import ActorPoolStrategy, DataContext

    for name in ("ray", "ray.data"):  # after ray.data configured them: its INFO lines would bury the bar
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # this process draws the one bar (episodes, with ETA)
    ctx.execution_options.preserve_order = False
    pipeline = (ray.data.from_items([{"episode": int(i)} for i in todo], override_num_blocks=max(1, len(todo)))
                .map(_Reader, compute=ActorPoolStrategy(size=readers), num_cpus=READER_CPUS,
                     fn_constructor_kwargs={"root": str(Path(ds.root).resolve()), "camera": camera, "keys": keys,
                                            "with_truth": with_truth})
                .map_batches(_Labeler, compute=ActorPoolStrategy(size=actors), batch_size=int(settings["batch_size"]),
                             batch_format="numpy", num_gpus=float(settings["num_gpus"]),
                             num_cpus=float(settings["num_cpus"]),
                             fn_constructor_kwargs={"model": model, "instruction": instruction,
                                                    "threads": threads}))
    bar = tqdm(total=ds.meta.total_episodes, initial=ds.meta.total_episodes - len(todo), desc="labeling (ray)",
               unit="ep", disable=not show_progress)
    try:
        for row in pipeline.iter_rows():
            labels = _labels(row)
            record(int(row["episode"]), labels, len(labels.rewards))
            bar.update(1)
    except Exception as err:  # noqa: BLE001 - a worker's error arrives wrapped; keep its first line
        raise RuntimeError(f"labeling on Ray failed: {_first_cause(err)}; the episodes labeled so far are kept, "
                           "rerun the same command to continue") from None
    finally:
        bar.close()


def _first_cause(err: BaseException) -> str:
    """The innermost error's one-line text (Ray wraps a worker's exception in its own)."""
    while getattr(err, "cause", None) is not None and err.cause is not err:
        err = err.cause
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"
