"""Human in the loop: interventions are flagged, keys label and end episodes, e-stop stops,
return-and-explore restarts from successful states."""

from __future__ import annotations

import numpy as np

from real_robot.actor import Actor, LoopConfig
from real_robot.robots import RobotEnv, SimRobot
from real_robot.teleop import HumanInput, ScriptedHuman, reach_controller


class Collect:
    """The link's place in the loop: keeps what the actor submits."""

    def __init__(self):
        self.transitions = []
        self.policy, self.stats, self.weights_version, self.pending = None, {}, -1, {}

    def submit(self, batch):
        self.transitions += batch


class Still:
    chunk_size = 1

    def act(self, obs, deterministic=False):
        return np.zeros((1, 2), np.float32)


def _run(human, mode="human_guided", steps=120, reward="env", return_prob=0.5):
    env = RobotEnv(SimRobot("reach", seed=1), max_episode_steps=50)
    link = Collect()
    actor = Actor(env, link, human, policy=Still(),
                  cfg=LoopConfig(hz=1000, max_steps=steps, mode=mode, reward=reward, return_prob=return_prob))
    try:
        stats = actor.run()
    finally:
        env.close()
    return link.transitions, stats, actor


def test_interventions_execute_the_humans_action_and_are_flagged():
    human = ScriptedHuman(reach_controller, every=2, start=0, stop=5, label_success=False)
    ts, stats, _ = _run(human, steps=100)
    by_ep = {}
    for t in ts:
        by_ep.setdefault(t.episode_id, []).append(t)
    ep0, ep1 = by_ep[0], by_ep[1]
    assert [t.intervention for t in ep0[:6]] == [True] * 5 + [False]
    assert not any(t.intervention for t in ep1)
    for t in ep0[:5]:  # the executed (recorded) action is the hand's, not the policy's zeros
        np.testing.assert_allclose(t.action, reach_controller(t.obs), atol=1e-6)
        assert np.abs(t.action).max() > 0
    assert stats["interventions"] == sum(t.intervention for t in ts)


def test_mode_none_ignores_interventions():
    ts, stats, _ = _run(ScriptedHuman(reach_controller, every=1, stop=50, label_success=False), mode="none", steps=30)
    assert stats["interventions"] == 0 and not any(t.intervention for t in ts)


def test_success_key_labels_and_ends_the_episode():
    # the hand drives to the target in every episode and presses success when it sees it
    human = ScriptedHuman(reach_controller, every=1, start=0, stop=50, label_success=True)
    ts, stats, _ = _run(human, steps=60, reward="keys")
    ends = [t for t in ts if t.done]
    assert stats["successes"] >= 2 and ends
    for t in ends:
        assert t.terminated and t.reward == 1.0 and t.info["success"]
    assert all(t.reward == 0.0 for t in ts if not t.done)
    assert max(t.step for t in ts) < 49  # episodes ended by the key, before the time limit


class EstopAt:
    def __init__(self, step):
        self.step, self.n = step, 0

    def poll(self, obs=None, info=None):
        self.n += 1
        return HumanInput(estop=self.n == self.step + 1)


def test_estop_holds_and_stops_the_loop():
    ts, stats, actor = _run(EstopAt(7), steps=100)
    assert stats["estops"] == 1 and stats["steps"] == 7
    assert len(ts) == 6  # the step during which e-stop was pressed is not recorded


def test_return_and_explore_restarts_from_successful_states():
    human = ScriptedHuman(reach_controller, every=1, start=0, stop=50, label_success=True)
    ts, stats, actor = _run(human, mode="return_explore", steps=150, return_prob=1.0)
    assert actor.archive and stats["returns"] >= 1
    firsts = [t for t in ts if t.is_first]
    # a returned episode starts from a mid-episode state: the gripper already moved (velocity != 0)
    assert any(np.abs(t.obs["state"][2:4]).max() > 1e-4 for t in firsts[1:])
