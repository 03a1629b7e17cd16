"""``embodied-eval-reward``: how well does a reward module track ground truth?

    embodied-eval-reward reward=clip task=push episodes=24
    embodied-eval-reward reward=clip_tiny episodes=4 max_steps=20     # offline smoke run
    embodied-eval-reward reward=gvl dataset_path=/data/recorded_lerobot_dataset

Episodes come from a built-in env (``reach`` / ``push``), collected with a mix of
policies so true progress spreads from 0 to 1: ``scripted`` (the task's controller in
envs/builtin/scripted.py: solves it from the state), ``partial`` (scripted for a random
part of the episode, then random), ``noisy`` (scripted plus Gaussian noise) and
``random``. Or from a recorded LeRobotDataset with
``gt.progress`` / ``gt.success`` columns (:mod:`embodied.datasets`); there, row ``t+1``
holds the frame reached by step ``t``, so frame ``t+1`` is paired with ``gt.*[t]``.

Predictions: frame models score every frame; episode models (GVL, VLAC) give per-frame
progress when they predict it, otherwise their transition rewards stand for the frames
those transitions reach. A failed episode label is counted, never scored as numbers.

Reported (``<out_dir>/metrics.json`` and the console): VOC of the predictions (mean over
episodes, and of the true progress for reference), Pearson / Spearman correlation with
true progress (pooled over all frames and mean per episode), success detection
(precision / recall / accuracy at ``success_threshold`` on scores min-max normalised over
all frames, and the threshold-free AUROC), mean score per collecting policy, and one PNG
per episode (``plots/``) of normalised prediction vs true progress.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from rewards.metrics import progress_correlation, success_detection, voc

log = logging.getLogger("embodied.eval_reward")
POLICIES = ("scripted", "partial", "noisy", "random")


def collect_episodes(env_name: str, episodes: int, max_steps: int, image_size: int, camera: str | None,
                     policy_mix, seed: int) -> list[dict[str, Any]]:
    """Roll out ``episodes`` episodes, cycling through ``policy_mix``; frames of one camera."""
    from tqdm import tqdm

    from envs import make_env
    from envs.builtin.scripted import CONTROLLERS

    bad = [p for p in policy_mix if p not in POLICIES]
    if bad or not policy_mix:
        raise ValueError(f"policy_mix entries must be among {list(POLICIES)}, got {list(policy_mix)}")
    scripted = CONTROLLERS.get(env_name)  # solves the built-in task from its state
    if scripted is None and set(policy_mix) != {"random"}:
        raise ValueError(f"no scripted policy for env {env_name!r}; set policy_mix=[random]")
    env = make_env(env_name, seed=seed, pixels=True, image_size=image_size, max_episode_steps=max_steps)
    cam = camera or list(env.observation_space["pixels"].spaces)[0]
    rng = np.random.default_rng(seed)
    out = []
    for i in tqdm(range(episodes), desc=f"collecting {env_name} episodes"):
        kind = policy_mix[i % len(policy_mix)]
        switch = int(rng.integers(max_steps // 4, 3 * max_steps // 4 + 1))
        obs, info = env.reset()
        if cam not in obs["pixels"]:
            raise ValueError(f"camera {cam!r} not in env cameras {list(obs['pixels'])}; set camera")
        frames, progress, success = [obs["pixels"][cam]], [info["progress"]], [info["success"]]
        for t in range(max_steps):
            act = rng.uniform(-1, 1, 2)
            if kind == "scripted" or (kind == "partial" and t < switch):
                act = scripted(obs["state"])
            elif kind == "noisy":
                act = np.clip(scripted(obs["state"]) + rng.normal(0, 0.7, 2), -1, 1)
            obs, _, terminated, truncated, info = env.step(np.asarray(act, np.float32))
            frames.append(obs["pixels"][cam])
            progress.append(info["progress"])
            success.append(info["success"])
            if terminated or truncated:
                break
        out.append({"frames": np.stack(frames), "progress": np.asarray(progress, np.float64),
                    "success": np.asarray(success, bool), "instruction": obs["instruction"], "policy": kind})
    env.close()
    return out


def load_episodes(dataset: str, episodes: int | None, camera: str | None) -> list[dict[str, Any]]:
    """Episodes of a recorded LeRobotDataset with ground-truth progress and success."""
    from embodied.datasets import iter_episodes, open_dataset
    from embodied.datasets.read import camera_names

    ds = open_dataset(dataset)
    cam = camera or camera_names(ds)[0]
    n = ds.meta.total_episodes if episodes is None else min(int(episodes), ds.meta.total_episodes)
    out = []
    for ep in iter_episodes(ds, cameras=[cam], episodes=range(n)):
        if "gt.progress" not in ep.columns:
            raise ValueError(f"{dataset}: episode {ep.index} has no gt.progress column; "
                             "evaluate on episodes recorded with ground truth (embodied.datasets.DatasetRecorder)")
        progress = np.asarray(ep.columns["gt.progress"], np.float64).reshape(len(ep), -1)[:, 0]
        success = np.asarray(ep.columns.get("gt.success", np.zeros(len(ep))), bool).reshape(len(ep), -1)[:, 0]
        out.append({"frames": ep.frames[cam][1:], "progress": progress[:-1], "success": success[:-1],
                    "instruction": ep.task, "policy": "dataset"})
    return out


# ----------------------------------------------------------------------------- scoring
def predict(model, episode: dict[str, Any]) -> tuple[np.ndarray | None, int, str | None]:
    """-> (predictions, index of the first frame they cover, error)."""
    frames, text = episode["frames"], episode["instruction"]
    if model.granularity == "frame":
        return np.asarray(model.score_frames(frames, text), np.float64), 0, None
    labels = model.label_episode(frames, text)
    if not labels.ok:
        return None, 0, labels.error or "labeling failed"
    if labels.progress is not None:
        return np.asarray(labels.progress, np.float64), 0, None
    return np.asarray(labels.rewards, np.float64), 1, None


def evaluate(model, episodes: list[dict[str, Any]], success_threshold: float = 0.5,
             normalize: str = "minmax") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every episode -> (metrics, per-episode records with predictions)."""
    from tqdm import tqdm

    if normalize not in ("minmax", "none"):
        raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")
    records, failed = [], []
    for i, ep in enumerate(tqdm(episodes, desc=f"scoring with {getattr(model, 'name', 'reward')}")):
        pred, start, error = predict(model, ep)
        if error is not None or not np.all(np.isfinite(pred)):
            failed.append({"episode": i, "error": error or "non-finite predictions"})
            continue
        records.append({"episode": i, "policy": ep["policy"], "pred": pred, "progress": ep["progress"][start:],
                        "success": ep["success"][start:]})
    if not records:
        raise RuntimeError(f"every episode failed to label, e.g. {failed[0]['error'] if failed else 'none given'}")
    pooled = np.concatenate([r["pred"] for r in records])
    lo, hi = (pooled.min(), pooled.max()) if normalize == "minmax" else (0.0, 1.0)
    scale = (hi - lo) or 1.0
    for r in records:
        r["score"] = (r["pred"] - lo) / scale
    true = np.concatenate([r["progress"] for r in records])
    succ = np.concatenate([r["success"] for r in records])
    per_ep = [progress_correlation(r["pred"], r["progress"]) for r in records]
    metrics: dict[str, Any] = {
        "episodes": len(records),
        "failed_episodes": len(failed),
        "frames": int(len(pooled)),
        "voc": float(np.mean([voc(r["pred"]) for r in records])),
        "voc_true_progress": float(np.mean([voc(r["progress"]) for r in records])),
        "progress_corr": progress_correlation(pooled, true),
        "progress_corr_per_episode": {k: float(np.mean([c[k] for c in per_ep])) for k in ("pearson", "spearman")},
        "success": success_detection(np.concatenate([r["score"] for r in records]), succ, success_threshold),
        "success_rate_true": float(succ.mean()),
        "normalize": normalize,
        "score_range": [float(lo), float(hi)],
        "by_policy": {
            p: {"mean_score": float(np.mean([r["score"].mean() for r in records if r["policy"] == p])),
                "mean_true_progress": float(np.mean([r["progress"].mean() for r in records if r["policy"] == p])),
                "episodes": sum(r["policy"] == p for r in records)}
            for p in dict.fromkeys(r["policy"] for r in records)
        },
        "failures": failed,
    }
    return metrics, records


def plot_episode(path: Path, record: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    t = np.arange(len(record["score"]))
    ax.plot(t, record["progress"], label="true progress", color="black", lw=2)
    ax.plot(t, record["score"], label="predicted (normalised)", color="tab:orange", lw=2)
    if record["success"].any():
        ax.fill_between(t, 0, 1, where=record["success"], color="tab:green", alpha=0.15, label="true success")
    ax.set(xlabel="frame", ylabel="progress", ylim=(-0.05, 1.05), title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(metrics: dict[str, Any]) -> str:
    s = metrics["success"]
    lines = [
        f"episodes {metrics['episodes']} (failed {metrics['failed_episodes']}), frames {metrics['frames']}",
        f"VOC {metrics['voc']:+.3f}   (true progress: {metrics['voc_true_progress']:+.3f})",
        f"progress correlation: pearson {metrics['progress_corr']['pearson']:+.3f}  "
        f"spearman {metrics['progress_corr']['spearman']:+.3f}  (per episode: "
        f"{metrics['progress_corr_per_episode']['pearson']:+.3f} / {metrics['progress_corr_per_episode']['spearman']:+.3f})",
        f"success @ {s['threshold']:.2f}: precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
        f"accuracy {s['accuracy']:.3f}  AUROC {s['auroc']:.3f}  (true success rate {metrics['success_rate_true']:.3f})",
    ]
    lines += [f"  {p:9s} score {v['mean_score']:.3f}  true progress {v['mean_true_progress']:.3f}  ({v['episodes']} ep)"
              for p, v in metrics["by_policy"].items()]
    return "\n".join(lines)


def run(cfg) -> dict[str, Any]:
    """The command's body on a composed config (used by :func:`main` and tests)."""
    import torch
    from omegaconf import OmegaConf

    from embodied.build import build_reward
    from embodied.contracts import TrainableReward
    from embodied.logging import json_safe

    torch.set_num_threads(1)
    if cfg.reward.name == "env":
        raise ValueError("reward=env has no model to evaluate; choose reward=clip, gvl, vlac or rlvlmf")
    torch.manual_seed(int(cfg.seed))  # random-init modules (clip_tiny) give the same scores every run
    built = build_reward(cfg.reward)  # training-loop settings stay with the labeler
    model, oracle = built.model, built.oracle
    camera = cfg.camera or model.camera
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def gather(seed: int) -> list[dict[str, Any]]:
        if cfg.dataset_path:
            eps = load_episodes(cfg.dataset_path, cfg.episodes, camera)
        else:
            eps = collect_episodes(cfg.task, int(cfg.episodes), int(cfg.max_steps), int(cfg.image_size), camera,
                                   list(cfg.policy_mix), seed)
        for ep in eps if oracle is not None else []:
            oracle.add_episode(ep["frames"], ep["progress"])  # the oracle answers from the truth
        return eps

    fit: dict[str, float] = {}
    if isinstance(model, TrainableReward):
        if cfg.dataset_path:
            raise ValueError("a trainable reward (rlvlmf) is fitted on collected episodes; evaluate it on an env")
        # fitted on episodes of their own (another seed), never on the episodes it is scored on
        train_eps = gather(int(cfg.seed) + 1_000)
        fit = model.fit_on_episodes([ep["frames"] for ep in train_eps], int(cfg.preference_pairs),
                                    train_eps[0]["instruction"], seed=int(cfg.seed))
    episodes = gather(int(cfg.seed))
    metrics, records = evaluate(model, episodes, float(cfg.success_threshold), str(cfg.normalize))
    metrics["reward"] = built.name
    metrics["oracle"] = oracle is not None
    if fit:
        metrics["reward_fit"] = fit
    metrics["source"] = str(cfg.dataset_path or cfg.task)
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False))
    plots = []
    if cfg.plots:
        (out / "plots").mkdir(exist_ok=True)
        for r in records[: int(cfg.plots)]:
            path = out / "plots" / f"episode_{r['episode']:03d}_{r['policy']}.png"
            plot_episode(path, r, f"{built.name}: episode {r['episode']} ({r['policy']}), VOC {voc(r['pred']):+.2f}")
            plots.append(path)
    print(report(metrics))
    print(f"wrote {out / 'metrics.json'} and {len(plots)} plots")
    if cfg.wandb:
        import wandb

        run_ = wandb.init(project="embodied-rl", dir=str(out), mode=os.environ.get("WANDB_MODE", "offline"),
                          job_type="eval_reward", config=OmegaConf.to_container(cfg, resolve=True))
        flat = {"voc": metrics["voc"], "pearson": metrics["progress_corr"]["pearson"],
                "spearman": metrics["progress_corr"]["spearman"],
                **{f"success/{k}": v for k, v in metrics["success"].items()}}
        run_.log({**flat, "plots": [wandb.Image(str(p)) for p in plots]})
        run_.finish()
    return metrics


def main() -> None:
    import hydra

    from embodied.cli import CONFIG_DIR, one_line_errors, setup_runtime

    setup_runtime()
    hydra.main(config_path=CONFIG_DIR, config_name="eval_reward", version_base=None)(one_line_errors(run))()


if __name__ == "__main__":
    main()
