"""Linear probes of what a latent world model encodes.

A model that spends its capacity on task-irrelevant detail (RePo's and InfoPower's claim about
reconstruction) should encode the distractors well and the task less well. The probe measures
it: episodes of the same env are filtered by a trained :class:`policies.world_model.LatentPolicy`
(encoder + RSSM, as it filters while acting) and a ridge regression from the latent features (its penalty cross-validated over episodes)
to a quantity of the simulator (the gripper's and the target's position; the moving
background's colour layout and its discs' positions) is fitted on some episodes and scored on the others (held-out R²: 1 is a perfect
linear read-out, 0 is no better than the mean).

    data = collect_episodes(env, episodes=100, seed=0, targets=reach_targets)
    feats = latent_features(policy, data)
    r2 = probe_r2(feats, data, train_episodes=80)  # {"gripper", "target", "background", "discs": R²}
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm


def reach_targets(env) -> dict[str, np.ndarray]:
    """The built-in ``reach`` task's probe targets: the task's (gripper xy, target xy) and, with a
    moving background, the distractors': the background layer's colour layout (mean RGB of its
    2 x 2 quadrants, 0..1, gripper and targets excluded: the layer alone) and its discs' centres
    in frame units (0..1)."""
    task = env.unwrapped
    state = task._state()
    out = {"gripper": state[0:2].astype(np.float32), "target": state[4:6].astype(np.float32)}
    if task._backgrounds:  # the episode's background of the (first) rendered frame size
        size, background = next(iter(task._backgrounds.items()))
        half = size // 2
        layer = background.layer()[: 2 * half, : 2 * half].astype(np.float32) / 255.0
        out["background"] = layer.reshape(2, half, 2, half, 3).mean((1, 3)).reshape(-1)
        if len(background.disc_pos):
            out["discs"] = (background.disc_pos / size).reshape(-1).astype(np.float32)
    return out


def collect_episodes(env, episodes: int, seed: int, targets: Callable[[Any], Mapping[str, np.ndarray]],
                     progress: bool = True) -> dict[str, Any]:
    """``episodes`` episodes of uniform random actions in ``env`` (episode i reset with ``seed + i``):
    per step the camera frames, the action that led to it (zeros at a reset), a first-step flag,
    the episode index and the probe ``targets(env)``."""
    if int(episodes) < 2:
        raise ValueError(f"a probe needs at least 2 episodes (train and held-out), got {episodes}")
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    frames: dict[str, list] = {}
    rows: dict[str, list] = {"prev_action": [], "first": [], "episode": []}
    values: dict[str, list] = {}
    for ep in tqdm(range(int(episodes)), desc="probe episodes", unit="ep", disable=not progress):
        obs, _ = env.reset(seed=seed + ep)
        prev, first, done = np.zeros_like(low, dtype=np.float32), True, False
        while not done:
            if "pixels" not in obs:
                raise ValueError("the probe filters camera frames: build the env with pixels=True")
            for cam, frame in obs["pixels"].items():
                frames.setdefault(cam, []).append(frame)
            for key, value in targets(env).items():
                values.setdefault(key, []).append(value)
            rows["prev_action"].append(prev)
            rows["first"].append(first)
            rows["episode"].append(ep)
            action = rng.uniform(low, high).astype(np.float32)
            obs, _, terminated, truncated, _ = env.step(action)
            prev, first, done = action, False, bool(terminated or truncated)
    return {"pixels": {c: np.stack(f) for c, f in frames.items()},
            **{k: np.asarray(v) for k, v in rows.items()},
            "targets": {k: np.stack(v) for k, v in values.items()}}


@torch.no_grad()
def latent_features(policy, data: Mapping[str, Any]) -> np.ndarray:
    """(N, feat) posterior features (``[h, mean of z]``) of ``policy``'s RSSM filtering ``data``'s
    frames step by step (``h = 0`` at every episode start), as it filters while acting."""
    dev = policy.device
    cams = sorted(data["pixels"])
    missing = set(policy.encoder.cameras) - set(cams)
    if missing:
        raise ValueError(f"the policy reads cameras {sorted(missing)} that the probe data lacks")
    n = len(data["first"])
    latent = policy.rssm.zeros(1, dev)
    out = []
    for t in range(n):
        obs = {"pixels": {c: data["pixels"][c][t:t + 1] for c in cams}}
        embed = policy.encoder(policy.encoder.numpy_to_tensors(obs, dev))
        action = torch.as_tensor(data["prev_action"][t:t + 1], device=dev)
        first = torch.as_tensor(data["first"][t:t + 1], device=dev)
        latent = policy.rssm.step(latent, action, embed, first, sample=False)
        out.append(torch.cat([latent.h, latent.mean], -1).cpu().numpy()[0])
    return np.stack(out).astype(np.float64)


def ridge_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             alpha: float = 1.0) -> np.ndarray:
    """Held-out R² per target dimension of a ridge regression (features standardised on the
    training rows, intercept unpenalised)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    b = np.c_[(x_test - mu) / sd, np.ones(len(x_test))]
    penalty = alpha * np.eye(a.shape[1])
    penalty[-1, -1] = 0.0
    w = np.linalg.solve(a.T @ a + penalty, a.T @ y_train)
    resid = ((y_test - b @ w) ** 2).sum(0)
    total = ((y_test - y_test.mean(0)) ** 2).sum(0)
    return 1.0 - resid / np.maximum(total, 1e-12)


ALPHAS = tuple(10.0 ** k for k in range(-1, 6))


def probe_r2(features: np.ndarray, data: Mapping[str, Any], train_episodes: int, alphas=ALPHAS,
             folds: int = 5) -> dict[str, float]:
    """Per target group: the mean held-out R² over its dimensions, the probe fitted on the first
    ``train_episodes`` episodes and scored on the rest. The ridge penalty is chosen per group
    from ``alphas`` by ``folds``-fold cross-validation over whole training episodes (a probe may
    not memorise an episode's constants: its background, its target), so a latent with nothing
    to read scores about 0, not below."""
    episode = np.asarray(data["episode"])
    if not 0 < train_episodes <= episode.max():
        raise ValueError(f"train_episodes must leave held-out episodes: 1..{episode.max()}, got {train_episodes}")
    train, test = episode < train_episodes, episode >= train_episodes
    fold = episode % max(2, min(int(folds), int(train_episodes)))
    out = {}
    for key, y in data["targets"].items():
        def cv(alpha: float) -> float:
            scores = [ridge_r2(features[train & (fold != k)], y[train & (fold != k)], features[train & (fold == k)],
                               y[train & (fold == k)], alpha).mean() for k in np.unique(fold[train])
                      if (train & (fold != k)).any() and (train & (fold == k)).any()]
            return float(np.mean(scores))
        best = max(alphas, key=cv)
        out[key] = float(ridge_r2(features[train], y[train], features[test], y[test], best).mean())
    return out
