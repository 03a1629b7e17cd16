"""Safety: action limits clip and log; the watchdog holds the robot when the policy stalls."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from real_robot.actor import Actor, LoopConfig
from real_robot.robots import RobotEnv, SimRobot
from real_robot.safety import ActionLimits, Watchdog


def test_action_limits_clip_bounds_and_rate_and_log(caplog):
    lim = ActionLimits(low=-0.5, high=0.5, max_delta=0.2)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(lim(np.array([0.9, -0.1])), [0.5, -0.1])
        np.testing.assert_allclose(lim(np.array([-0.5, 0.4])), [0.3, 0.1])
        np.testing.assert_allclose(lim(np.array([np.nan, 0.1])), [0.3, 0.1])  # non-finite: previous action
    assert lim.stats() == {"clipped_bounds": 2, "clipped_delta": 1}
    text = " ".join(r.message for r in caplog.records)
    assert "clipped to bounds" in text and "change limited" in text and "non-finite" in text
    with pytest.raises(ValueError):
        ActionLimits(low=1, high=-1)


class StallingPolicy:
    """Acts normally, then hangs once for ``stall`` seconds (a stuck GPU, a GC pause)."""

    chunk_size = 1

    def __init__(self, stall_at: int, stall: float):
        self.calls, self.stall_at, self.stall = 0, stall_at, stall
        self.stalling = False

    def act(self, obs, deterministic=False):
        self.calls += 1
        if self.calls == self.stall_at:
            self.stalling = True
            time.sleep(self.stall)
            self.stalling = False
        return np.full((1, 2), 0.8, np.float32)


def test_watchdog_holds_the_robot_while_the_policy_stalls():
    env = RobotEnv(SimRobot("reach", seed=0), max_episode_steps=1000)
    watchdog = Watchdog(env, deadline=0.15, period=0.03).start()
    sent_during_stall = []
    original = env.robot.send_action

    def spy(action):
        if policy.stalling:
            sent_during_stall.append(dict(action))
        return original(action)

    env.robot.send_action = spy
    policy = StallingPolicy(stall_at=5, stall=0.8)
    actor = Actor(env, watchdog=watchdog, policy=policy, cfg=LoopConfig(hz=50, max_steps=10, mode="none"))
    try:
        stats = actor.run()
    finally:
        watchdog.stop()
        env.close()
    assert stats["watchdog_trips"] == 1
    assert stats["watchdog_holds"] >= 10  # re-sent every period while stalled (0.65 s / 0.03 s)
    assert sent_during_stall and all(a == {"a.0": 0.0, "a.1": 0.0} for a in sent_during_stall)
    assert stats["overruns"] >= 1


def test_watchdog_is_quiet_while_actions_flow_and_between_episodes():
    holds = []

    class Env:
        def hold(self):
            holds.append(time.monotonic())

    wd = Watchdog(Env(), deadline=0.1, period=0.02).start()
    stop = threading.Event()
    try:
        wd.disarm()
        time.sleep(0.25)  # disarmed (resetting): no holds
        for _ in range(10):
            wd.feed()
            time.sleep(0.03)
        assert not holds and wd.trips == 0
        time.sleep(0.3)
        assert wd.trips == 1 and len(holds) >= 3
    finally:
        stop.set()
        wd.stop()
