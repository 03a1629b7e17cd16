"""Replay: n-step targets by hand, episode linking across wrap-around, labels, mixing, checkpoints."""

import numpy as np
import pytest
from gymnasium import spaces

from embodied import checkpoint
from embodied.contracts import Transition
from embodied.replay import MixedReplay, Replay, to_torch

H = W = 4


def obs_space(pixels=True, instruction=True):
    d = {"state": spaces.Box(-np.inf, np.inf, (2,), np.float32)}
    if pixels:
        d["pixels"] = spaces.Dict({"front": spaces.Box(0, 255, (H, W, 3), np.uint8)})
    if instruction:
        d["instruction"] = spaces.Text(64)
    return spaces.Dict(d)


ACT = spaces.Box(-1, 1, (1,), np.float32)


def make_obs(ep, step):
    """An observation that names its episode and step, so pairings can be checked."""
    return {"state": np.array([ep, step], np.float32),
            "pixels": {"front": np.full((H, W, 3), (ep * 16 + step) % 256, np.uint8)},
            "instruction": f"task {ep % 2}"}


def episode(ep, rewards, end="terminated", first_step=0):
    """Transitions of one episode; the last one ends it as ``end`` ('terminated',
    'truncated' or None for an episode still running)."""
    out = []
    for k, r in enumerate(rewards):
        s = first_step + k
        last = k == len(rewards) - 1
        out.append(Transition(obs=make_obs(ep, s), action=np.array([s / 10], np.float32), reward=r,
                              next_obs=make_obs(ep, s + 1), terminated=last and end == "terminated",
                              truncated=last and end == "truncated", is_first=s == 0, episode_id=ep, step=s))
    return out


def by_slot(replay, n=400):
    """Sample many rows and index them by slot: {slot: (reward, discount, next_state, action)}."""
    b = replay.sample(n)
    rows = {}
    for i, s in enumerate(b["slot"]):
        rows[int(s)] = (float(b["reward"][i]), float(b["discount"][i]), tuple(b["next_obs"]["state"][i]),
                        float(b["action"][i, 0]), int(b["next_obs"]["pixels"]["front"][i, 0, 0, 0]))
    return rows


def test_one_step_termination_and_truncation():
    r = Replay(100, obs_space(), ACT, n_step=1, gamma=0.9)
    r.add_batch(episode(0, [1.0, 2.0, 3.0], "terminated"))
    r.add_batch(episode(1, [10.0, 20.0], "truncated"))
    rows = by_slot(r)
    assert set(rows) == {0, 1, 2, 3, 4}
    assert rows[0][:3] == (1.0, pytest.approx(0.9), (0.0, 1.0))
    assert rows[2][:3] == (3.0, 0.0, (0.0, 3.0))  # termination: no bootstrap, final obs kept
    assert rows[3][:3] == (10.0, pytest.approx(0.9), (1.0, 1.0))
    assert rows[4][:3] == (20.0, pytest.approx(0.9), (1.0, 2.0))  # truncation bootstraps from final obs
    assert rows[4][4] == (1 * 16 + 2)  # the final frame, not the next episode's first


def test_three_step_targets_by_hand():
    g = 0.5
    r = Replay(100, obs_space(), ACT, n_step=3, gamma=g)
    r.add_batch(episode(0, [1.0, 2.0, 3.0, 4.0, 5.0], "terminated"))
    r.add_batch(episode(1, [1.0, 2.0, 3.0, 4.0, 5.0], "truncated"))
    rows = by_slot(r)
    # terminated episode (slots 0..4)
    assert rows[0][:3] == (1 + g * 2 + g * g * 3, g ** 3, (0, 3))
    assert rows[1][:3] == (2 + g * 3 + g * g * 4, g ** 3, (0, 4))
    assert rows[2][:3] == (3 + g * 4 + g * g * 5, 0.0, (0, 5))  # window hits the termination
    assert rows[3][:3] == (4 + g * 5, 0.0, (0, 5))
    assert rows[4][:3] == (5.0, 0.0, (0, 5))
    # truncated episode (slots 5..9): the sum stops at the end and still bootstraps
    assert rows[7][:3] == (3 + g * 4 + g * g * 5, g ** 3, (1, 5))
    assert rows[8][:3] == (4 + g * 5, g ** 2, (1, 5))
    assert rows[9][:3] == (5.0, g, (1, 5))


def test_running_episode_newest_step_waits_for_its_next_obs():
    r = Replay(100, obs_space(), ACT, n_step=3, gamma=0.5)
    r.add_batch(episode(0, [1.0, 2.0, 3.0], end=None))
    rows = by_slot(r)
    assert set(rows) == {0, 1}  # slot 2's next observation is not known yet
    assert rows[0][:3] == (1 + 0.5 * 2, 0.25, (0, 2))  # window truncated at the newest step
    r.add(episode(0, [4.0], end="terminated", first_step=3)[0])
    rows = by_slot(r)
    assert rows[0][:3] == (1 + 0.5 * 2 + 0.25 * 3, 0.125, (0, 3))
    assert rows[3][:3] == (4.0, 0.0, (0, 4))


def test_wrap_around_never_pairs_across_episodes():
    r = Replay(4, obs_space(), ACT, n_step=3, gamma=0.5)
    r.add_batch(episode(0, [1.0, 1.0, 1.0], end=None))  # abandoned: never ends
    r.add_batch(episode(1, [1.0, 2.0, 4.0], "truncated"))  # slots 3, 0, 1 (wraps)
    assert list(r.episode_slots(1)) == [3, 0, 1]
    assert list(r.episode_slots(0)) == [2]
    rows = by_slot(r)
    assert set(rows) == {3, 0, 1}  # slot 2 (episode 0) has no next obs of its own episode
    assert rows[3][:3] == (1 + 0.5 * 2 + 0.25 * 4, 0.125, (1, 3))
    assert rows[0][:3] == (2 + 0.5 * 4, 0.25, (1, 3))
    for slot, row in rows.items():
        assert row[2][0] == 1.0  # every next obs belongs to episode 1


def test_next_obs_after_wrap_in_long_episode():
    r = Replay(4, obs_space(), ACT, n_step=1)
    r.add_batch(episode(7, [0.0] * 6, end=None))  # steps 0..5 in slots 0,1,2,3,0,1
    rows = by_slot(r)
    assert set(rows) == {2, 3, 0}  # slot 1 holds step 5, the newest
    assert rows[3][2] == (7, 4) and rows[3][3] == pytest.approx(0.3)  # step 3 -> step 4 across the wrap
    assert rows[0][2] == (7, 5)
    frames = r.frames(np.array([3]), "front")
    assert frames.shape == (1, H, W, 3) and frames[0, 0, 0, 0] == 7 * 16 + 4
    assert r.frames(np.array([3]), "front", next=False)[0, 0, 0, 0] == 7 * 16 + 3
    with pytest.raises(ValueError, match="no next observation"):
        r.frames(np.array([1]), "front")
    with pytest.raises(ValueError, match="unknown camera"):
        r.frames(np.array([3]), "wrist")


def test_interleaved_episodes_from_vector_envs():
    r = Replay(100, obs_space(), ACT, n_step=2, gamma=0.5)
    a, b = episode(0, [1.0, 2.0, 3.0], "terminated"), episode(1, [10.0, 20.0, 30.0], "truncated")
    for ta, tb in zip(a, b):
        r.add(ta)
        r.add(tb)
    assert list(r.episode_slots(0)) == [0, 2, 4] and list(r.episode_slots(1)) == [1, 3, 5]
    rows = by_slot(r)
    assert rows[0][:3] == (1 + 0.5 * 2, 0.25, (0, 2))
    assert rows[1][:3] == (10 + 0.5 * 20, 0.25, (1, 2))
    assert rows[3][:3] == (20 + 0.5 * 30, 0.25, (1, 3))


def test_unlabeled_never_sampled_until_labeled():
    r = Replay(100, obs_space(), ACT, n_step=2, gamma=0.5)
    labeled = r.add_batch(episode(0, [1.0, 1.0, 1.0], "terminated"))
    unlabeled = r.add_batch(episode(1, [5.0, 5.0, 5.0], "terminated"), labeled=False)
    assert r.num_labeled() == 3 and len(r) == 6
    for _ in range(5):
        assert set(r.sample(64)["slot"]) <= set(labeled)
    r.set_rewards(unlabeled[1:], np.array([7.0, 8.0]))
    rows = by_slot(r)
    assert unlabeled[0] not in rows  # its 2-step window still holds an unlabeled reward
    assert rows[unlabeled[1]][0] == 7 + 0.5 * 8
    with pytest.raises(ValueError, match="one reward per slot"):
        r.set_rewards(unlabeled, np.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        r.set_rewards(unlabeled[:1], np.array([np.nan]))


def test_set_rewards_skips_slots_taken_by_another_episode():
    r = Replay(4, obs_space(), ACT)
    slots = r.add_batch(episode(0, [0.0] * 3, "terminated"), labeled=False)
    r.add_batch(episode(1, [0.0] * 2, "terminated"), labeled=False)  # overwrites slot 0 before labels arrive
    assert r.set_rewards(slots, np.array([1.0, 2.0, 3.0]), episode_id=0) == 2
    assert not r.labeled[0] and list(r.reward[1:3]) == [2.0, 3.0]
    assert r.set_rewards(np.array([0]), np.array([5.0]), episode_id=np.array([1])) == 1 and r.reward[0] == 5.0


def test_relabel_sees_next_obs_and_labels_everything():
    r = Replay(100, obs_space(), ACT, n_step=1)
    r.add_batch(episode(0, [0.0] * 3, "terminated"), labeled=False)
    r.add_batch(episode(1, [0.0] * 2, end="truncated"), labeled=False)
    seen = []

    def fn(batch):
        seen.append(batch)
        assert batch["next_obs"]["pixels"]["front"].dtype == np.uint8
        return batch["next_obs"]["state"][:, 1] * 10 + batch["next_obs"]["state"][:, 0]

    r.relabel(fn, batch_size=2)
    assert len(seen) == 3 and r.num_labeled() == 5
    rows = by_slot(r)
    assert [rows[s][0] for s in range(5)] == [10.0, 20.0, 30.0, 11.0, 21.0]
    assert seen[0]["obs"]["instruction"] == ["task 0", "task 0"]


def test_mixed_replay_ratio_and_empty_side():
    online, offline = Replay(100, obs_space(), ACT), Replay(100, obs_space(), ACT, offline=True)
    mixed = MixedReplay(online, offline, offline_ratio=0.25)
    online.add_batch(episode(0, [1.0] * 10, "truncated"))
    b = mixed.sample(40)
    assert b["is_offline"].sum() == 0 and len(b["slot"]) == 40  # offline side empty
    offline.add_batch(episode(1, [2.0] * 10, "truncated"))
    b = mixed.sample(40)
    assert b["is_offline"].sum() == 10 and b["reward"].shape == (40,)
    assert np.all(b["reward"][b["is_offline"]] == 2.0) and np.all(b["reward"][~b["is_offline"]] == 1.0)
    assert len(b["obs"]["instruction"]) == 40 and b["obs"]["pixels"]["front"].shape == (40, H, W, 3)
    online2 = Replay(100, obs_space(), ACT)
    assert MixedReplay(online2, offline, 0.25).sample(8)["is_offline"].all()  # online side empty
    with pytest.raises(ValueError, match="offline_ratio"):
        MixedReplay(online, offline, 1.5)


def test_to_torch_types():
    r = Replay(100, obs_space(), ACT)
    r.add_batch(episode(0, [1.0] * 4, "terminated"))
    b = r.sample_torch(8)
    assert b.obs["pixels"]["front"].dtype.is_floating_point is False
    assert str(b.obs["state"].dtype) == "torch.float32" and b.action.shape == (8, 1)
    assert b.reward.shape == (8,) and b.discount.shape == (8,) and b.is_offline.shape == (8,)
    assert to_torch(r.sample(3)).next_obs["state"].shape == (3, 2)


def filled(capacity=16, seed=3):
    r = Replay(capacity, obs_space(), ACT, n_step=3, gamma=0.9, seed=seed, final_capacity=4)
    ep = 0
    for length in (5, 7, 3, 6, 4):
        r.add_batch(episode(ep, list(np.arange(length) * 0.5 + ep), "terminated" if ep % 2 else "truncated"))
        ep += 1
    r.add_batch(episode(ep, [1.0, 2.0], end=None), labeled=False)
    return r


def test_state_dict_round_trip_through_checkpoint(tmp_path):
    r = filled()
    r.sample(5)  # advance the rng
    checkpoint.save(tmp_path, 1, {"replay": r.state_dict()})
    r2 = Replay(16, obs_space(), ACT, n_step=3, gamma=0.9, seed=99, final_capacity=4)
    r2.load_state_dict(checkpoint.load(tmp_path)["replay"])
    for _ in range(3):
        a, b = r.sample(32), r2.sample(32)
        for key in ("slot", "reward", "discount", "action", "is_offline"):
            np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a["next_obs"]["pixels"]["front"], b["next_obs"]["pixels"]["front"])
        assert a["next_obs"]["instruction"] == b["next_obs"]["instruction"]
    # both continue identically after new data (links of the running episode restored)
    more = episode(5, [3.0], end="terminated", first_step=2)
    r.add(more[0]), r2.add(more[0])
    np.testing.assert_array_equal(r.sample(64)["reward"], r2.sample(64)["reward"])
    with pytest.raises(ValueError, match="same sizes"):
        Replay(32, obs_space(), ACT, n_step=3).load_state_dict(r.state_dict())


def test_final_store_overflow_warns_and_stays_consistent():
    r = Replay(64, obs_space(), ACT, final_capacity=2)
    with pytest.warns(UserWarning, match="final_capacity"):
        for ep in range(4):
            r.add_batch(episode(ep, [1.0, 1.0], "terminated"))
    rows = by_slot(r)
    assert 1 not in rows and 3 not in rows  # evicted final obs: those last steps are no longer sampled
    assert 5 in rows and 7 in rows and rows[7][2] == (3, 2)


def test_pixel_memory_is_one_uint8_frame_per_transition():
    cams = {c: spaces.Box(0, 255, (64, 64, 3), np.uint8) for c in ("front", "wrist")}
    space = spaces.Dict({"pixels": spaces.Dict(cams), "state": spaces.Box(-1, 1, (8,), np.float32)})
    r = Replay(10_000, space, ACT)
    pixel_bytes = sum(a.nbytes for d in (r.obs, r.final) for k, a in d.items() if k.startswith("pixels"))
    frame = 64 * 64 * 3
    per_transition = pixel_bytes / r.capacity
    assert all(a.dtype == np.uint8 for k, a in r.obs.items() if k.startswith("pixels"))
    assert 2 * frame <= per_transition <= 2 * frame * 1.07  # one frame per camera, plus the final-obs store


def test_bad_input_errors():
    r = Replay(10, obs_space(), ACT)
    t = episode(0, [1.0])[0]
    with pytest.raises(ValueError, match="action must have 1"):
        r.add(Transition(**{**t.__dict__, "action": np.zeros(3)}))
    bad = make_obs(0, 0)
    bad["pixels"]["front"] = bad["pixels"]["front"].astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        r.add(Transition(**{**t.__dict__, "obs": bad}))
    with pytest.raises(ValueError, match="empty replay"):
        r.sample(4)
    with pytest.raises(ValueError, match="gymnasium.spaces.Dict"):
        Replay(10, spaces.Box(0, 1, (2,)), ACT)
