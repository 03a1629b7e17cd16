"""Thin helpers around environments: mp4 video recording.

``VideoRecorder`` takes (H, W, 3) uint8 frames and streams them into an mp4 through
imageio-ffmpeg (used by evaluation); ``RecordEpisodes`` wraps an env and records
``env.render()`` for every ``every``-th episode into ``<folder>/episode_<k>.mp4``.
Distractors and colour randomisation of the built-in tasks are task options
(``make_env("reach", distractors=2, randomize_colors=True)``), not wrappers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


class VideoRecorder:
    """Streams frames into an mp4 file; use as a context manager or call ``close()``.

    Frames are (H, W, 3) uint8 and must all have the same size. Nothing is written
    until the first frame arrives; ``close()`` without frames writes no file.
    """

    def __init__(self, path: str | os.PathLike, fps: int = 20, quality: int = 7):
        self.path, self.fps, self.quality = Path(path), int(fps), int(quality)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"video path must end in .mp4, got {self.path}")
        self._writer: Any = None
        self._shape: tuple[int, ...] | None = None
        self.num_frames = 0

    def add(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
        if self._writer is None:
            import imageio.v2 as imageio

            self.path.parent.mkdir(parents=True, exist_ok=True)
            # macro_block_size=1: any frame size (84x84 too) without resizing
            self._writer = imageio.get_writer(self.path, fps=self.fps, codec="libx264", quality=self.quality,
                                              macro_block_size=1, ffmpeg_log_level="error")
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"video frame size changed from {self._shape} to {frame.shape}")
        self._writer.append_data(frame)
        self.num_frames += 1

    def close(self) -> Path | None:
        """Finish the file; returns its path, or None when no frame was added."""
        if self._writer is None:
            return None
        self._writer.close()
        self._writer = None
        return self.path

    def __enter__(self) -> "VideoRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RecordEpisodes(gym.Wrapper):
    """Records ``env.render()`` of every ``every``-th episode to ``folder/episode_<k>.mp4``."""

    def __init__(self, env: gym.Env, folder: str | os.PathLike, every: int = 1, fps: int | None = None):
        super().__init__(env)
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.folder, self.every = Path(folder), int(every)
        self.fps = int(fps or env.metadata.get("render_fps", 20))
        self.episode = -1
        self.recorder: VideoRecorder | None = None
        self.videos: list[Path] = []

    def reset(self, **kwargs: Any):
        self._finish()
        out = self.env.reset(**kwargs)
        self.episode += 1
        if self.episode % self.every == 0:
            self.recorder = VideoRecorder(self.folder / f"episode_{self.episode}.mp4", fps=self.fps)
            self.recorder.add(self.env.render())
        return out

    def step(self, action):
        out = self.env.step(action)
        if self.recorder is not None:
            self.recorder.add(self.env.render())
        return out

    def _finish(self) -> None:
        if self.recorder is not None:
            path = self.recorder.close()
            if path is not None:
                self.videos.append(path)
            self.recorder = None

    def close(self):
        self._finish()
        super().close()
