"""Replay memory per pixel transition vs buffers that store next observations separately.

Each buffer is built for the same observation space (84x84 RGB per camera plus a 9-d
state, 7-d action) and filled with the same episodes of 100 steps; the bytes of every
array it allocated are divided by its capacity. Peers:

* a float32 buffer storing ``obs`` and ``next_obs`` apart (images as float32, the layout
  of LeRobot 0.6's online replay);
* stable-baselines3's ``DictReplayBuffer`` (uint8 images, ``next_obs`` stored apart).

Writes ``benchmarks/results/replay_memory.{json,md}``.

    python -m benchmarks.bench_replay_memory [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STATE, ACT, SIDE, EPISODE = 9, 7, 84, 100


def _space(cams):
    import gymnasium as gym

    return gym.spaces.Dict({
        "pixels": gym.spaces.Dict({c: gym.spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8) for c in cams}),
        "state": gym.spaces.Box(-np.inf, np.inf, (STATE,), np.float32)})


def _obs(rng, cams):
    return {"pixels": {c: rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for c in cams},
            "state": rng.normal(size=STATE).astype(np.float32)}


def _episodes(n, cams, seed=0):
    """Yield (obs, action, reward, next_obs, truncated, t, episode) for n steps."""
    rng = np.random.default_rng(seed)
    obs = _obs(rng, cams)
    for i in range(n):
        nxt = _obs(rng, cams)
        t = i % EPISODE
        yield obs, rng.uniform(-1, 1, ACT).astype(np.float32), float(rng.normal()), nxt, t == EPISODE - 1, t, i // EPISODE
        obs = _obs(rng, cams) if t == EPISODE - 1 else nxt


def ours(capacity, cams):
    import gymnasium as gym

    from embodied.contracts import Transition
    from embodied.replay import Replay

    r = Replay(capacity, _space(cams), gym.spaces.Box(-1, 1, (ACT,), np.float32))
    for o, a, rew, nxt, trunc, t, ep in _episodes(capacity, cams):
        r.add(Transition(o, a, rew, nxt, False, trunc, t == 0, ep, t))
    arrays = [*r.obs.values(), *r.final.values(), r.action, r.reward, r.labeled, r.terminated, r.truncated,
              r.intervention, r.episode_id, r.step, r.next_slot, r.prev_slot, r.final_idx, r.final_owner]
    pixels = sum(a.nbytes for d in (r.obs, r.final) for k, a in d.items() if k.startswith("pixels"))
    return sum(a.nbytes for a in arrays) / capacity, pixels / capacity


class Float32Buffer:
    """The peer: preallocated float32 arrays, next observations stored apart."""

    def __init__(self, capacity, cams):
        self.obs = {c: np.zeros((capacity, SIDE, SIDE, 3), np.float32) for c in cams}
        self.next_obs = {c: np.zeros((capacity, SIDE, SIDE, 3), np.float32) for c in cams}
        self.state = np.zeros((capacity, STATE), np.float32)
        self.next_state = np.zeros((capacity, STATE), np.float32)
        self.action = np.zeros((capacity, ACT), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.i = 0

    def add(self, o, a, r, nxt, done):
        for c in self.obs:
            self.obs[c][self.i] = o["pixels"][c] / 255.0
            self.next_obs[c][self.i] = nxt["pixels"][c] / 255.0
        self.state[self.i], self.next_state[self.i] = o["state"], nxt["state"]
        self.action[self.i], self.reward[self.i], self.done[self.i] = a, r, done
        self.i += 1

    def arrays(self):
        return [*self.obs.values(), *self.next_obs.values(), self.state, self.next_state, self.action,
                self.reward, self.done]


def float32_peer(capacity, cams):
    b = Float32Buffer(capacity, cams)
    for o, a, rew, nxt, trunc, _, _ in _episodes(capacity, cams):
        b.add(o, a, rew, nxt, False)
    pixels = sum(a.nbytes for d in (b.obs, b.next_obs) for a in d.values())
    return sum(a.nbytes for a in b.arrays()) / capacity, pixels / capacity


def sb3_peer(capacity, cams):
    import gymnasium as gym
    from stable_baselines3.common.buffers import DictReplayBuffer

    space = gym.spaces.Dict({**{f"pixels_{c}": gym.spaces.Box(0, 255, (SIDE, SIDE, 3), np.uint8) for c in cams},
                             "state": gym.spaces.Box(-np.inf, np.inf, (STATE,), np.float32)})
    b = DictReplayBuffer(capacity, space, gym.spaces.Box(-1, 1, (ACT,), np.float32), device="cpu")
    flat = lambda o: {**{f"pixels_{c}": o["pixels"][c][None] for c in cams}, "state": o["state"][None]}  # noqa: E731
    for o, a, rew, nxt, trunc, _, _ in _episodes(capacity, cams):
        b.add(flat(o), flat(nxt), a[None], np.array([rew]), np.array([False]), [{"TimeLimit.truncated": trunc}])
    arrays = [*b.observations.values(), *b.next_observations.values(), b.actions, b.rewards, b.dones, b.timeouts]
    pixels = sum(a.nbytes for d in (b.observations, b.next_observations) for k, a in d.items() if k != "state")
    return sum(a.nbytes for a in arrays) / capacity, pixels / capacity


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="capacity 1000 instead of 10000")
    args = parser.parse_args(argv)
    capacity = 1000 if args.quick else 10_000
    frame = SIDE * SIDE * 3
    rows, result = [], {"capacity": capacity, "frame_bytes": frame, "cameras": {}}
    for cams in (["front"], ["front", "wrist"]):
        sizes = {"ours (uint8, obs stored once)": ours(capacity, cams),
                 "float32, next_obs apart": float32_peer(capacity, cams),
                 "SB3 DictReplayBuffer (uint8, next_obs apart)": sb3_peer(capacity, cams)}
        mine = sizes["ours (uint8, obs stored once)"][0]
        result["cameras"][len(cams)] = {k: {"bytes_per_transition": v[0], "pixel_bytes_per_transition": v[1],
                                            "ratio_vs_ours": v[0] / mine} for k, v in sizes.items()}
        rows += [f"| {len(cams)} | {k} | {v[0] / 1024:.1f} | {v[1] / (frame * len(cams)):.3f} | {v[0] / mine:.2f} |"
                 for k, v in sizes.items()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replay_memory.json").write_text(json.dumps(result, indent=2))
    lines = ["## Replay memory (`bench_replay_memory`)", "",
             f"Bytes per transition (all arrays / capacity {capacity}), {SIDE}x{SIDE} RGB cameras + {STATE}-d state, "
             f"episodes of {EPISODE} steps. 'frames' = pixel bytes per transition / one uint8 frame per camera.", "",
             "| cameras | buffer | KiB / transition | frames | ratio vs ours |", "|---:|---|---:|---:|---:|", *rows]
    (RESULTS / "replay_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
