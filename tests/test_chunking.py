"""Action chunks through the one executor in the Driver, evaluation and the robot actor,
and ``Transition.extras`` through the bridge.

``ChunkPolicy`` is a real (if tiny) chunked policy: chunk K=3, and every action it emits
encodes which call drew it and its position in the chunk, so the order of play is visible.
Episodes are 4 steps long (a time-limit truncation) so a chunk is always cut by an episode
end: the next episode must start from a fresh chunk.
"""

from __future__ import annotations

import numpy as np
import pytest

import envs
from embodied.contracts import PolicyBase, PolicyStep, Transition
from embodied.driver import Driver
from embodied.evaluation import evaluate
from policies.chunking import ChunkExecutor
from real_robot.bridge import schema

K, EPISODE = 3, 4


class ChunkPolicy(PolicyBase):
    chunk_size = K

    def __init__(self, action_dim: int = 2):
        self.action_dim, self.calls, self.resets = action_dim, [], []

    def act(self, obs, deterministic=False):
        return self.step(obs).action

    def step(self, obs, state=None, deterministic=False):
        rows = len(obs["state"])
        call = len(self.calls)
        self.calls.append(rows)
        chunk = np.zeros((rows, K, self.action_dim), np.float32)
        chunk[:, :, 0] = 0.1 * call  # which call drew it
        chunk[:, :, 1] = np.arange(K) / 10  # the position in the chunk
        return PolicyStep(chunk, log_prob=np.full(rows, -1.5 - call, np.float32),
                          extras={"base_action": chunk[:, 0]})

    def reset(self, env_ids=None):
        self.resets.append(list(env_ids) if env_ids is not None else None)


def test_executor_plays_chunks_open_loop_one_queue_per_env():
    policy = ChunkPolicy()
    ex = ChunkExecutor(policy, num_envs=2)
    obs = {"state": np.zeros((2, 8), np.float32), "instruction": ["a", "b"]}
    steps = [ex(obs) for _ in range(4)]
    assert policy.calls == [2, 2]  # one chunk for both envs, then the next one after K steps
    np.testing.assert_allclose([s.action[0, 1] for s in steps], [0.0, 0.1, 0.2, 0.0])
    assert [int(s.extras["chunk_index"][0]) for s in steps] == [0, 1, 2, 0]
    np.testing.assert_allclose([s.extras["log_prob"][1] for s in steps], [-1.5, 0.0, 0.0, -2.5])  # with its chunk
    ex.reset([1])  # env 1's episode ended: only it draws now
    step = ex(obs)
    assert policy.calls[-1] == 1 and step.extras["chunk_index"].tolist() == [1, 0]
    assert policy.resets[-1] == [1]


def test_executor_rejects_a_policy_that_breaks_its_chunk_size():
    policy = ChunkPolicy()
    policy.step = lambda obs, state=None, deterministic=False: PolicyStep(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(B, 3, A\) chunks"):
        ChunkExecutor(policy, 2)({"state": np.zeros((2, 8), np.float32)})


def test_driver_runs_chunks_and_clears_the_queue_on_truncation():
    venv = envs.make_vec_env("reach", 2, seed=0, max_episode_steps=EPISODE)
    policy = ChunkPolicy()
    ex = ChunkExecutor(policy, 2)
    got: list[Transition] = []
    driver = Driver(venv).on_transition(lambda t, i: got.append(t))
    for _ in range(2 * EPISODE):
        driver.step(ex)
    venv.close()
    env0 = [t for t in got if t.episode_id % 2 == 0 and t.episode_id in (0, 2)]
    assert [t.truncated for t in env0] == [False, False, False, True] * 2
    # step 3 of each episode starts a new chunk; the next episode starts one again (not chunk index 1)
    assert [int(t.extras["chunk_index"]) for t in env0] == [0, 1, 2, 0, 0, 1, 2, 0]
    assert policy.resets and all(r == [0, 1] for r in policy.resets)
    first = env0[0]
    assert first.extras["log_prob"].shape == () and first.extras["base_action"].shape == (2,)
    np.testing.assert_allclose(first.action, first.extras["base_action"])


def test_evaluation_runs_chunks_and_starts_each_episode_on_a_fresh_chunk():
    env = envs.make_env("reach", seed=0, max_episode_steps=EPISODE)
    policy = ChunkPolicy()
    result = evaluate(policy, env, episodes=3, seed=0)
    env.close()
    assert result["eval/length"] == EPISODE
    assert len(policy.calls) == 3 * 2  # steps 0 and 3 of each episode; never a leftover from the last one


def test_robot_actor_runs_chunks_and_resets_them_at_episode_ends():
    from real_robot.actor import Actor, LoopConfig
    from real_robot.robots import RobotEnv, SimRobot

    env = RobotEnv(SimRobot("reach", seed=0), max_episode_steps=EPISODE)
    policy = ChunkPolicy()
    actor = Actor(env, None, policy=policy, cfg=LoopConfig(hz=500, max_steps=10, mode="none"))
    stats = actor.run()
    env.close()
    assert stats["episodes"] == 2
    assert len(policy.calls) == 5  # steps 0, 3 | 4, 7 | 8: a chunk cut by the episode end is dropped


def test_extras_survive_the_bridge_round_trip_and_are_validated():
    rng = np.random.default_rng(0)
    obs = [{"state": rng.normal(size=8).astype(np.float32), "instruction": "reach"} for _ in range(4)]
    batch = [Transition(obs[i], np.zeros(2, np.float32), 0.0, obs[i + 1], False, i == 2, i == 0, 7, i,
                        extras={"log_prob": np.float32(-0.5 * i), "tokens": np.array([i, 2 * i], np.int64)})
             for i in range(3)]
    frames = [bytes(f) for f in schema.pack_transitions(batch, seq=0)]
    back = schema.unpack_transitions(schema.decode(frames))
    for a, b in zip(batch, back):
        assert sorted(b.extras) == ["log_prob", "tokens"]
        assert b.extras["log_prob"] == pytest.approx(a.extras["log_prob"])
        np.testing.assert_array_equal(b.extras["tokens"], a.extras["tokens"])
    msg = schema.decode(frames)
    msg.arrays["extra/tokens"] = msg.arrays["extra/tokens"][:2]  # rows missing
    with pytest.raises(schema.SchemaError, match="extra/tokens"):
        schema.unpack_transitions(msg)
    batch[1].extras = {}
    with pytest.raises(ValueError, match="same extras"):
        schema.pack_transitions(batch, seq=1)
