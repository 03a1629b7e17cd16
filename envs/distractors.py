"""Task-irrelevant detail for world-model experiments: moving visual backgrounds with coloured
distractors for the built-in tasks' cameras, and chaotic distractor dimensions for any state.

**Visual** (``make_env("reach", pixels=True, background="a", moving_distractors=3)``): the
table and the wall are rendered in a key colour (pure cyan, which no object of the scene has),
and every key pixel of a camera frame is replaced by a background layer: a per-episode
random pattern of coloured sinusoidal gratings drifting every step, with ``moving_distractors``
coloured discs bouncing across it. Objects (gripper, targets, block) are drawn over it, so
the task stays solvable and only what surrounds it moves. Two background families give the
switch of an adaptation experiment (RePo's test-time alignment): ``"a"`` (warm palette, coarse
gratings) and ``"b"`` (cool palette, fine gratings). A frame costs a few numpy operations on top
of the render (``benchmarks`` measure it).

**State** (``make_env(..., distractor_dims=10)``; VaGraM's Hopper + 10): ``x`` is appended to the
state and evolves as ``x <- W x + 0.1 sin(P x)`` (the state's columns of W are zero, so x is
uncorrelated with the task), with W scaled to a spectral radius above 1 so that it grows,
and any ``|x_i| > 20`` resets x to a fixed random vector: a chaotic signal that switches.
W, P and the reset vector come from ``distractor_seed`` (the same for every env of a run);
each episode starts at the reset vector plus N(0, 0.1) noise from the env's own generator.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

KEY_RGBA = (0.0, 1.0, 1.0, 1.0)  # pure cyan: rendered as (0, g, b) with g, b >= 140 under the headlight
PALETTES = {
    "a": np.array([[0.95, 0.45, 0.10], [0.80, 0.15, 0.35], [0.95, 0.80, 0.20], [0.55, 0.30, 0.10]]),
    "b": np.array([[0.10, 0.45, 0.85], [0.30, 0.75, 0.55], [0.50, 0.25, 0.80], [0.15, 0.20, 0.35]]),
}
FREQUENCIES = {"a": (1.0, 3.0), "b": (4.0, 8.0)}  # grating cycles across the frame


def key_mask(frame: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels rendered in the key colour."""
    r, g, b = (frame[..., i].astype(np.int16) for i in range(3))
    return (r < 60) & (g > 100) & (b > 100) & (np.abs(g - b) < 40)


class Background:
    """One episode's moving background for frames of ``size`` pixels (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, size: int, family: str, num_discs: int):
        if family not in PALETTES:
            raise ValueError(f"background must be one of {sorted(PALETTES)} (or null), got {family!r}")
        self.size, self.t = int(size), 0
        lo, hi = FREQUENCIES[family]
        palette = PALETTES[family]
        n = 3
        self.angle = rng.uniform(0, np.pi, n)
        self.freq = rng.uniform(lo, hi, n) * 2 * np.pi / self.size
        self.speed = rng.uniform(0.15, 0.45, n) * rng.choice([-1, 1], n)  # radians of phase per step
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.colors = palette[rng.integers(0, len(palette), n)]
        self.base = palette[rng.integers(0, len(palette))] * 0.6
        self.disc_colors = rng.uniform(0.1, 1.0, (num_discs, 3))
        self.disc_pos = rng.uniform(0.15, 0.85, (num_discs, 2)) * self.size
        self.disc_vel = rng.uniform(-1, 1, (num_discs, 2)) * self.size * 0.03
        self.radius = max(2.0, self.size * 0.07)
        yy, xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)
        self._xx, self._yy = xx, yy

    def step(self) -> None:
        self.t += 1
        self.disc_pos += self.disc_vel
        for d in range(2):  # bounce off the frame's edges
            out = (self.disc_pos[:, d] < 0) | (self.disc_pos[:, d] > self.size)
            self.disc_vel[out, d] *= -1
            self.disc_pos[:, d] = np.clip(self.disc_pos[:, d], 0, self.size)

    def layer(self) -> np.ndarray:
        """(size, size, 3) uint8 background of the current step."""
        img = np.broadcast_to(self.base, (self.size, self.size, 3)).astype(np.float32).copy()
        for a, f, s, p, c in zip(self.angle, self.freq, self.speed, self.phase, self.colors):
            wave = 0.5 + 0.5 * np.sin(f * (self._xx * np.cos(a) + self._yy * np.sin(a)) + p + s * self.t)
            img += 0.35 * wave[..., None] * c
        for (x, y), c in zip(self.disc_pos, self.disc_colors):
            inside = (self._xx - x) ** 2 + (self._yy - y) ** 2 < self.radius**2
            img[inside] = c
        return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def composite(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``frame`` with its key-coloured pixels replaced by ``background``."""
    out = frame.copy()
    mask = key_mask(frame)
    out[mask] = background[mask]
    return out


class DistractorDims(gym.Wrapper):
    """Appends ``dims`` chaotic, switching, task-uncorrelated dimensions to ``obs["state"]``."""

    def __init__(self, env: gym.Env, dims: int, seed: int = 0, limit: float = 20.0, radius: float = 1.05):
        super().__init__(env)
        if int(dims) < 1:
            raise ValueError(f"distractor_dims must be >= 1, got {dims}")
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or "state" not in space.spaces:
            raise ValueError("distractor_dims needs an env with a state observation (obs['state'])")
        self.dims, self.limit = int(dims), float(limit)
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(self.dims, self.dims))
        self.W = w * (radius / np.max(np.abs(np.linalg.eigvals(w))))
        self.P = rng.normal(size=(self.dims, self.dims))
        self.x0 = rng.uniform(-1.0, 1.0, self.dims)
        self.x = self.x0.copy()
        self.resets = 0  # switches (|x| past the limit) so far
        state = space["state"]
        low = np.concatenate([np.broadcast_to(state.low, state.shape), np.full(self.dims, -np.inf)])
        high = np.concatenate([np.broadcast_to(state.high, state.shape), np.full(self.dims, np.inf)])
        self.observation_space = gym.spaces.Dict(
            {**space.spaces, "state": gym.spaces.Box(low.astype(np.float32), high.astype(np.float32),
                                                     dtype=np.float32)})

    def _with_x(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {**obs, "state": np.concatenate([obs["state"], self.x]).astype(np.float32)}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.x = self.x0 + self.env.unwrapped.np_random.normal(0.0, 0.1, self.dims)
        return self._with_x(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.x = self.W @ self.x + 0.1 * np.sin(self.P @ self.x)
        if np.abs(self.x).max() > self.limit:
            self.x = self.x0.copy()
            self.resets += 1
        return self._with_x(obs), reward, terminated, truncated, info
