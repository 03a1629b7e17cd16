"""Preference-pair sampling for RL-VLM-F: two frames from two different recent episodes."""

from __future__ import annotations

import numpy as np


def episodes_newest_first(replay) -> np.ndarray:
    """Ids of the episodes stored in ``replay``, ordered by their newest stored step, newest first."""
    size = replay.size
    age = (replay.ptr - 1 - np.arange(size)) % replay.capacity  # 0 = the newest slot
    ids = replay.episode_id[:size][np.argsort(age)]
    ids = ids[ids >= 0]  # -1: an empty slot
    episodes, first = np.unique(ids, return_index=True)  # first = the age rank of each episode's newest step
    return episodes[np.argsort(first)]


def recent_episode_pairs(replay, num_pairs: int, recent_episodes: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Slot pairs ``(a, b)``, ``num_pairs`` each: every pair draws two different episodes
    among the ``recent_episodes`` most recent ones, then one stored slot of each, uniformly
    (two slots of one episode when only one is stored)."""
    episodes = episodes_newest_first(replay)
    if len(episodes) == 0:
        raise ValueError("the replay holds no episodes to sample preference pairs from")
    recent = episodes[:recent_episodes]
    slots = {e: replay.episode_slots(e) for e in recent}
    a, b = np.empty(num_pairs, np.int64), np.empty(num_pairs, np.int64)
    for k in range(num_pairs):
        ea, eb = rng.choice(recent, 2, replace=False) if len(recent) > 1 else (recent[0], recent[0])
        a[k], b[k] = rng.choice(slots[ea]), rng.choice(slots[eb])
    return a, b
