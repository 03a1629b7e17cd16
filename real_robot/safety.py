"""What keeps the robot safe whatever the policy or the network does.

:class:`ActionLimits` clips every action to bounds and its change per step to
``max_delta`` (both in the normalised [-1, 1] units), counts and logs each clip.
:class:`Watchdog` is a thread that holds the robot still (``env.hold()``) whenever no
fresh action arrived within ``deadline`` seconds -- a stalled policy, a hung process.
E-stop and episode resets are driven by the actor loop (see ``real_robot.actor``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class SafetyConfig:
    low: float = -1.0  # lowest action allowed per dimension (normalised units)
    high: float = 1.0  # highest action allowed per dimension
    max_delta: float = 2.0  # largest change of any dimension between two steps (2 = no limit)
    watchdog_deadline: float = 0.5  # seconds without a fresh action before holding the robot
    watchdog_period: float = 0.05  # how often the watchdog checks and re-sends the hold


class ActionLimits:
    def __init__(self, low: float | np.ndarray = -1.0, high: float | np.ndarray = 1.0, max_delta: float = 2.0):
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if np.any(self.high < self.low) or max_delta <= 0:
            raise ValueError("safety limits need low <= high and max_delta > 0")
        self.max_delta = float(max_delta)
        self.prev: np.ndarray | None = None
        self.clipped_bounds = 0
        self.clipped_delta = 0

    def reset(self, action: np.ndarray | None = None) -> None:
        """Forget the previous action (new episode) or set it to the robot's hold action."""
        self.prev = None if action is None else np.asarray(action, np.float32)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, np.float32).reshape(-1)
        if not np.all(np.isfinite(a)):
            log.warning("safety: non-finite action %s replaced by the previous one", a)
            self.clipped_bounds += 1
            a = self.prev.copy() if self.prev is not None else np.zeros_like(a)
        out = np.clip(a, self.low, self.high)
        if not np.array_equal(out, a):
            self.clipped_bounds += 1
            log.warning("safety: action %s clipped to bounds [%s, %s]", np.round(a, 3), self.low, self.high)
        if self.prev is not None:
            limited = np.clip(out, self.prev - self.max_delta, self.prev + self.max_delta)
            if not np.array_equal(limited, out):
                self.clipped_delta += 1
                log.warning("safety: action change limited to %.3f per step (%s -> %s)", self.max_delta,
                            np.round(out, 3), np.round(limited, 3))
            out = limited
        self.prev = out
        return out

    def stats(self) -> dict[str, int]:
        return {"clipped_bounds": self.clipped_bounds, "clipped_delta": self.clipped_delta}


class Watchdog:
    """Holds ``env`` still when :meth:`feed` was not called within ``deadline`` seconds."""

    def __init__(self, env, deadline: float = 0.5, period: float = 0.05):
        if deadline <= 0 or period <= 0:
            raise ValueError("watchdog deadline and period must be > 0 seconds")
        self.env, self.deadline, self.period = env, float(deadline), float(period)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._armed = False
        self.trips = 0  # times the deadline was missed
        self.holds = 0  # hold commands sent
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def feed(self) -> None:
        """A fresh action is about to be sent: the robot is under control."""
        self._last = time.monotonic()
        self._armed = True

    def disarm(self) -> None:
        """Between episodes (the robot is being reset) nothing is expected."""
        self._armed = False

    @property
    def holding(self) -> bool:
        return self._armed and time.monotonic() - self._last > self.deadline

    def _run(self) -> None:
        tripped = False
        while not self._stop.wait(self.period):
            if self.holding:
                if not tripped:
                    self.trips += 1
                    log.warning("watchdog: no fresh action for %.2fs, holding the robot still", self.deadline)
                tripped = True
                try:
                    self.env.hold()
                    self.holds += 1
                except Exception as exc:  # a robot error must not kill the watchdog
                    log.error("watchdog: hold failed: %s", exc)
            else:
                tripped = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def stats(self) -> dict[str, int]:
        return {"watchdog_trips": self.trips, "watchdog_holds": self.holds}
