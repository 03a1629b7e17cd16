"""Samplers over the one replay storage, on hand-computed cases: extras columns, n-step,
sequence windows, PPO rollouts with GAE, RL-VLM-F preference pairs."""

import numpy as np
import pytest
from gymnasium import spaces

from embodied import checkpoint
from embodied.contracts import Transition
from embodied.replay import (MixedReplay, NStepSampler, Replay, RolloutBuffer, SequenceSampler, episodes_newest_first,
                             gae, recent_episode_pairs, to_torch)

H = W = 4
SPACE = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (2,), np.float32),
                     "pixels": spaces.Dict({"front": spaces.Box(0, 255, (H, W, 3), np.uint8)}),
                     "instruction": spaces.Text(64)})
ACT = spaces.Box(-1, 1, (1,), np.float32)
EXTRAS = {"log_prob": ((), np.float32), "base_action": ((1,), np.float32)}


def make_obs(ep, step):
    return {"state": np.array([ep, step], np.float32),
            "pixels": {"front": np.full((H, W, 3), ep * 16 + step, np.uint8)}, "instruction": f"task {ep}"}


def episode(ep, rewards, end="terminated", extras=True):
    """Transitions of one episode (``end``: 'terminated', 'truncated' or None for running);
    extras name their episode and step: log_prob = -(10 ep + step), base_action = [step]."""
    out = []
    for s, r in enumerate(rewards):
        last = s == len(rewards) - 1
        ex = {"log_prob": np.float32(-(10 * ep + s)), "base_action": np.array([s], np.float32)} if extras else {}
        out.append(Transition(make_obs(ep, s), np.array([s / 10], np.float32), r, make_obs(ep, s + 1),
                              last and end == "terminated", last and end == "truncated", s == 0, ep, s, extras=ex))
    return out


# ---------------------------------------------------------------------- extras columns
def test_extras_are_columns_sampled_with_their_transition():
    r = Replay(100, SPACE, ACT, extras=EXTRAS)
    r.add_batch(episode(0, [1.0, 2.0, 3.0]))
    r.add_batch(episode(1, [1.0, 2.0], "truncated"))
    b = r.sample(64)
    ep, step = b["obs"]["state"][:, 0], b["obs"]["state"][:, 1]
    np.testing.assert_array_equal(b["extras"]["log_prob"], -(10 * ep + step))
    np.testing.assert_array_equal(b["extras"]["base_action"][:, 0], step)
    assert b["extras"]["log_prob"].dtype == np.float32 and b["extras"]["base_action"].shape == (64, 1)
    t = to_torch(b)
    assert t.extras["base_action"].shape == (64, 1) and str(t.extras["log_prob"].dtype) == "torch.float32"


def test_extras_layout_learned_from_first_transition_and_enforced():
    r = Replay(100, SPACE, ACT)
    assert r.extras_spec is None
    first = episode(0, [1.0, 2.0])
    r.add(first[0])
    assert r.extras_spec == {"log_prob": ((), np.dtype(np.float32)), "base_action": ((1,), np.dtype(np.float32))}
    t = first[1]
    with pytest.raises(ValueError, match="'tokens'"):
        r.add(Transition(**{**t.__dict__, "extras": {**t.extras, "tokens": np.zeros(3, np.int64)}}))
    with pytest.raises(ValueError, match="'log_prob'"):
        r.add(Transition(**{**t.__dict__, "extras": {"base_action": t.extras["base_action"]}}))
    with pytest.raises(ValueError, match=r"extras\['base_action'\] must be \(1,\) float32"):
        r.add(Transition(**{**t.__dict__, "extras": {**t.extras, "base_action": np.zeros(2, np.float32)}}))
    with pytest.raises(ValueError, match=r"extras\['log_prob'\]"):
        r.add(Transition(**{**t.__dict__, "extras": {**t.extras, "log_prob": np.float64(0.0)}}))
    assert len(r) == 1  # refused transitions are not stored
    plain = Replay(100, SPACE, ACT)
    plain.add_batch(episode(0, [1.0, 2.0], extras=False))
    assert plain.sample(4)["extras"] == {} and plain.sample_torch(4).extras == {}
    with pytest.raises(ValueError, match="extras key 'base_action'"):
        plain.add(episode(1, [1.0])[0])


def test_extras_go_through_state_dict(tmp_path):
    r = Replay(8, SPACE, ACT, seed=1)
    r.add_batch(episode(0, [1.0, 2.0, 3.0]))
    r.add_batch(episode(1, [1.0] * 7, "truncated"))  # wraps
    checkpoint.save(tmp_path, 1, {"replay": r.state_dict()})
    r2 = Replay(8, SPACE, ACT, seed=5)  # no layout yet: it comes with the state
    r2.load_state_dict(checkpoint.load(tmp_path)["replay"])
    assert r2.extras_spec == r.extras_spec
    a, b = r.sample(32), r2.sample(32)
    for key in ("log_prob", "base_action"):
        np.testing.assert_array_equal(a["extras"][key], b["extras"][key])
    with pytest.raises(ValueError, match="extras"):
        Replay(8, SPACE, ACT, extras={"value": ((), np.float32)}).load_state_dict(r.state_dict())
    empty = Replay(8, SPACE, ACT, extras=EXTRAS)  # a given layout survives an empty round trip
    fresh = Replay(8, SPACE, ACT)
    fresh.load_state_dict(empty.state_dict())
    assert fresh.extras_spec == empty.extras_spec


def test_mixed_batches_keep_the_extras_both_sides_store():
    online, offline = Replay(100, SPACE, ACT), Replay(100, SPACE, ACT, offline=True)
    online.add_batch(episode(0, [1.0] * 5, "truncated"))
    offline.add_batch(episode(1, [1.0] * 5, "truncated", extras=False))
    assert MixedReplay(online, offline, 0.5).sample(10)["extras"] == {}
    both = Replay(100, SPACE, ACT, offline=True)
    both.add_batch(episode(2, [1.0] * 5, "truncated"))
    assert MixedReplay(online, both, 0.5).sample(10)["extras"]["log_prob"].shape == (10,)


# ---------------------------------------------------------------------- n-step
def test_nstep_sampler_over_the_same_storage_with_its_own_horizon():
    r = Replay(100, SPACE, ACT, n_step=1, gamma=0.9, seed=3)
    r.add_batch(episode(0, [1.0, 2.0, 4.0]))
    r.add_batch(episode(1, [1.0, 2.0, 4.0], "truncated"))
    two = NStepSampler(r, n_step=2, gamma=0.5, rng=np.random.default_rng(0))
    ok, ret, disc, last = two.windows(np.arange(6))
    assert ok.all()
    np.testing.assert_allclose(ret, [1 + 0.5 * 2, 2 + 0.5 * 4, 4, 1 + 0.5 * 2, 2 + 0.5 * 4, 4])
    np.testing.assert_allclose(disc, [0.25, 0.0, 0.0, 0.25, 0.25, 0.5])  # termination: 0; truncation bootstraps
    np.testing.assert_array_equal(last, [1, 2, 2, 4, 5, 5])
    b = two.sample(16)
    np.testing.assert_allclose(b["reward"], ret[b["slot"]])
    # with the replay's defaults it is exactly Replay.sample (same rng, same rows)
    again = Replay(100, SPACE, ACT, n_step=1, gamma=0.9, seed=3)
    again.add_batch(episode(0, [1.0, 2.0, 4.0]))
    again.add_batch(episode(1, [1.0, 2.0, 4.0], "truncated"))
    np.testing.assert_array_equal(NStepSampler(again).sample(32)["slot"], r.sample(32)["slot"])
    with pytest.raises(ValueError, match="n_step"):
        NStepSampler(r, n_step=0)


# ---------------------------------------------------------------------- sequence windows
def interleaved_replay():
    """Episodes 0 (3 steps, terminated) and 1 (5 steps, still running) added as two vector
    envs would: slots 0,2,4 hold episode 0, slots 1,3,5,6,7 episode 1."""
    r = Replay(100, SPACE, ACT, extras=EXTRAS)
    a, b = episode(0, [1.0, 2.0, 3.0]), episode(1, [10.0, 20.0, 30.0, 40.0, 50.0], end=None)
    for ta, tb in zip(a, b):
        r.add(ta), r.add(tb)
    r.add_batch(b[3:])
    return r


def test_sequence_windows_follow_the_episode_and_pad_after_its_end():
    r = interleaved_replay()
    seq = SequenceSampler(r, length=4)
    w = seq.windows_at(np.array([2, 1]))  # episode 0 from step 1; episode 1 from step 0
    np.testing.assert_array_equal(w["slot"], [[2, 4, 4, 4], [1, 3, 5, 6]])
    np.testing.assert_array_equal(w["mask"], [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(w["reward"], [[2, 3, 0, 0], [10, 20, 30, 40]])
    np.testing.assert_array_equal(w["terminated"], [[0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(w["is_first"], [[0, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(w["action"][..., 0], [[0.1, 0.2, 0, 0], [0, 0.1, 0.2, 0.3]])
    # obs[:, t] --action[:, t]--> obs[:, t + 1]; after the end it repeats the final observation
    np.testing.assert_array_equal(w["obs"]["state"][0], [[0, 1], [0, 2], [0, 3], [0, 3], [0, 3]])
    np.testing.assert_array_equal(w["obs"]["state"][1], [[1, 0], [1, 1], [1, 2], [1, 3], [1, 4]])
    assert w["obs"]["pixels"]["front"].shape == (2, 5, H, W, 3) and w["obs"]["pixels"]["front"][0, 2, 0, 0, 0] == 3
    assert w["obs"]["instruction"] == ["task 0", "task 1"]
    np.testing.assert_array_equal(w["extras"]["log_prob"], [[-1, -2, -2, -2], [-10, -11, -12, -13]])


def test_sequence_windows_stop_at_the_newest_step_and_unlabeled_ones():
    r = interleaved_replay()
    seq = SequenceSampler(r, length=4, rng=np.random.default_rng(0))
    w = seq.windows_at(np.array([5]))  # episode 1 from step 2: step 4 (slot 7) is the newest, no next obs
    np.testing.assert_array_equal(w["mask"], [[1, 1, 0, 0]])
    np.testing.assert_array_equal(w["obs"]["state"][0, :, 1], [2, 3, 4, 4, 4])
    b = seq.sample(200)
    assert set(b["slot"][:, 0]) == {0, 1, 2, 3, 4, 5, 6}  # every start with a known next obs, not slot 7
    assert b["mask"][:, 0].all() and b["reward"].shape == (200, 4)
    r.labeled[3] = False  # step 1 of episode 1 waits for its label
    b = seq.sample(200)
    assert 3 not in b["slot"][:, 0]
    np.testing.assert_array_equal(b["mask"][b["slot"][:, 0] == 1], [[1, 0, 0, 0]] * int((b["slot"][:, 0] == 1).sum()))
    assert seq.sample_torch(3)["obs"]["pixels"]["front"].shape == (3, 5, H, W, 3)


def test_sequence_windows_across_wrap_around():
    r = Replay(4, SPACE, ACT)
    r.add_batch(episode(7, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "truncated"))  # steps 2..5 in slots 2,3,0,1
    w = SequenceSampler(r, length=3).windows_at(np.array([3]))
    np.testing.assert_array_equal(w["slot"], [[3, 0, 1]])
    np.testing.assert_array_equal(w["reward"], [[4, 5, 6]])
    np.testing.assert_array_equal(w["truncated"], [[0, 0, 1]])
    np.testing.assert_array_equal(w["obs"]["state"][0, :, 1], [3, 4, 5, 6])
    with pytest.raises(ValueError, match="length"):
        SequenceSampler(r, length=0)


# ---------------------------------------------------------------------- PPO rollouts
# Env 0: values [1, 2, 3, 4], rewards 1, a truncation at t=1 (V(true final obs) = 10) and a
# termination at t=3. Env 1: values 0, reward 1 at t=3 only, no episode end, last value 8.
# gamma = lam = 0.5, so gamma * lam = 0.25:
#   env 0: t=3 delta = 1 - 4 = -3                     A = -3
#          t=2 delta = 1 + 0.5*4 - 3 = 0              A = 0 + 0.25*(-3) = -0.75
#          t=1 delta = 1 + 0.5*10 - 2 = 4             A = 4 (the episode ended: no carry)
#          t=0 delta = 1 + 0.5*2 - 1 = 1              A = 1 + 0.25*4 = 2
#   env 1: t=3 delta = 1 + 0.5*8 = 5, then A = 1.25, 0.3125, 0.078125
ADV = np.array([[2.0, 0.078125], [4.0, 0.3125], [-0.75, 1.25], [-3.0, 5.0]], np.float32)
VALUE = np.array([[1, 0], [2, 0], [3, 0], [4, 0]], np.float32)
REWARD = np.array([[1, 0], [1, 0], [1, 0], [1, 1]], np.float32)
TERM = np.array([[0, 0], [0, 0], [0, 0], [1, 0]], bool)
TRUNC = np.array([[0, 0], [1, 0], [0, 0], [0, 0]], bool)
FINAL = np.array([[0, 0], [10, 0], [0, 0], [0, 0]], np.float32)


def filled_rollout():
    buf = RolloutBuffer(num_steps=4, num_envs=2)
    for t in range(4):
        obs = {"state": np.array([[t, 0], [t, 1]], np.float32), "instruction": ["a", "b"]}
        buf.add(obs, action=np.full((2, 1), t / 10), log_prob=-VALUE[t], value=VALUE[t], reward=REWARD[t],
                terminated=TERM[t], truncated=TRUNC[t], final_value=FINAL[t] if TRUNC[t].any() else None,
                extras={"tokens": np.array([[t, 0], [t, 1]], np.int64)})
    return buf


def test_gae_bootstraps_truncation_from_the_true_final_value_not_termination():
    adv, ret = gae(REWARD, VALUE, TERM, TRUNC, FINAL, np.array([100.0, 8.0], np.float32), 0.5, 0.5)
    np.testing.assert_allclose(adv, ADV)
    np.testing.assert_allclose(ret, ADV + VALUE)  # env 0: [3, 6, 2.25, 1]; last_value 100 unused after the termination
    both = gae(REWARD[:1], VALUE[:1], np.ones((1, 2), bool), np.ones((1, 2), bool), np.full((1, 2), 50.0),
               np.zeros(2), 0.5, 0.5)[0]
    np.testing.assert_allclose(both, [[0.0, 0.0]])  # terminated and truncated: the termination wins
    buf = filled_rollout()
    adv2, ret2 = buf.compute_gae(np.array([100.0, 8.0]), gamma=0.5, lam=0.5)
    np.testing.assert_allclose(adv2, ADV)
    np.testing.assert_allclose(ret2, ADV + VALUE)


def test_rollout_minibatches_cover_every_row_once():
    buf = filled_rollout()
    buf.compute_gae(np.array([100.0, 8.0]), gamma=0.5, lam=0.5)
    parts = list(buf.minibatches(3, np.random.default_rng(0)))
    assert [len(p["advantage"]) for p in parts] == [3, 3, 2]
    rows = {(int(t), int(n)) for p in parts for t, n in p["obs"]["state"]}
    assert rows == {(t, n) for t in range(4) for n in range(2)}
    for p in parts:
        t, n = p["obs"]["state"][:, 0].astype(int), p["obs"]["state"][:, 1].astype(int)
        np.testing.assert_allclose(p["advantage"], ADV[t, n])
        np.testing.assert_allclose(p["return"], ADV[t, n] + VALUE[t, n])
        np.testing.assert_allclose(p["log_prob"], -VALUE[t, n])
        np.testing.assert_array_equal(p["extras"]["tokens"], np.stack([t, n], 1))
        assert p["obs"]["instruction"] == ["ab"[i] for i in n] and p["action"].shape == (len(t), 1)
    same = [p["advantage"] for p in buf.minibatches(3, np.random.default_rng(0))]
    np.testing.assert_array_equal(np.concatenate(same), np.concatenate([p["advantage"] for p in parts]))
    tensors = next(buf.minibatches(2, np.random.default_rng(1), device="cpu"))
    assert tensors["advantage"].shape == (4,) and tensors["obs"]["state"].shape == (4, 2)


def test_rollout_buffer_errors_and_reuse():
    buf = RolloutBuffer(2, 2)
    step = dict(obs={"state": np.zeros((2, 2), np.float32)}, action=np.zeros((2, 1)), log_prob=np.zeros(2),
                value=np.zeros(2), reward=np.zeros(2), terminated=np.zeros(2, bool))
    with pytest.raises(ValueError, match="final_value"):
        buf.add(**step, truncated=np.array([True, False]))
    with pytest.raises(ValueError, match=r"value must have shape \(2,\)"):
        buf.add(**{**step, "value": np.zeros(3)}, truncated=np.zeros(2, bool))
    buf.add(**step, truncated=np.zeros(2, bool))
    with pytest.raises(ValueError, match="full rollout"):
        buf.compute_gae(np.zeros(2))
    with pytest.raises(ValueError, match=r"state'\] must have shape \(2, 2\)"):
        buf.add(**{**step, "obs": {"state": np.zeros((2, 3))}}, truncated=np.zeros(2, bool))
    buf.add(**step, truncated=np.zeros(2, bool))
    with pytest.raises(ValueError, match="compute_gae before"):
        next(buf.minibatches(1, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="full"):
        buf.add(**step, truncated=np.zeros(2, bool))
    buf.compute_gae(np.zeros(2))
    buf.reset()
    assert buf.t == 0 and not buf.full


# ---------------------------------------------------------------------- preference pairs
def test_recent_episode_pairs_draw_two_different_recent_episodes():
    r = Replay(10, SPACE, ACT)
    with pytest.raises(ValueError, match="no episodes"):
        recent_episode_pairs(r, 4, 2, np.random.default_rng(0))
    r.add_batch(episode(9, [0.0] * 3))
    a, b = recent_episode_pairs(r, 20, 2, np.random.default_rng(0))
    assert set(r.episode_id[a]) == set(r.episode_id[b]) == {9}  # one episode: pairs within it
    r.add_batch(episode(5, [0.0] * 3))
    r.add_batch(episode(7, [0.0] * 3))
    r.add_batch(episode(2, [0.0] * 3))  # slots 9, 0, 1: episode 9 keeps only slot 2
    assert list(episodes_newest_first(r)) == [2, 7, 5, 9]  # by newest stored step, not by id
    a, b = recent_episode_pairs(r, 200, 2, np.random.default_rng(1))
    ea, eb = r.episode_id[a], r.episode_id[b]
    assert set(ea) | set(eb) == {2, 7} and np.all(ea != eb)
    assert set(a) | set(b) == set(r.episode_slots(2)) | set(r.episode_slots(7))
