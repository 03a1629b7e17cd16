"""RL-VLM-F: label parsing, pinned prompts, the two-stage query through the scripted VLM,
filtering, the Bradley-Terry ensemble on synthetic images, a feedback round on a replay."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from scipy import stats

from embodied import checkpoint
from embodied.contracts import Transition
from embodied.replay import Replay
from rewards.backends.scripted import ScriptedBackend
from rewards.rlvlmf import (
    BTEnsemble,
    RLVLMFReward,
    ScriptedPreference,
    analysis_request,
    label_request,
    noisy_labels,
    parse_label,
)

S = 32  # synthetic image size


def square_image(pos: float, size: int = S, bg: int = 30) -> np.ndarray:
    """A white 6x6 square whose horizontal position encodes the true reward ``pos`` in [0, 1]."""
    img = np.full((size, size, 3), bg, np.uint8)
    x = int(round(pos * (size - 6)))
    img[size // 2 - 3 : size // 2 + 3, x : x + 6] = 255
    return img


def squares(positions) -> np.ndarray:
    return np.stack([square_image(p) for p in positions])


# ------------------------------------------------------------------ parsing and prompts
@pytest.mark.parametrize("reply, label", [
    ("0", 0), ("1", 1), ("-1", -1), ("  1\n", 1), ("Answer: 0.", 0), ("**1**", 1), ("1.", 1),
    ("The goal is better achieved in image two.\n1", 1),
])
def test_parse_label_valid(reply, label):
    assert parse_label(reply) == label


@pytest.mark.parametrize("reply", [
    "", None, "maybe", "2", "10", "0.5", "50%", "0 or 1", "Image 1 is better, so 0", "-1 or 1",
    "I'm sorry, but I can't determine the task progress from these images.",
])
def test_parse_label_malformed_is_minus_one(reply):
    assert parse_label(reply) == -1


def test_prompts_are_pinned():
    a, b = square_image(0.1), square_image(0.9)
    req = analysis_request(a, b, "push the block right")
    assert [type(p).__name__ for p in req.parts] == ["str", "ndarray", "str", "ndarray", "str"]
    assert req.parts[1] is a and req.parts[3] is b
    assert req.parts[0] == ("You are shown two images of a robot attempting a task. "
                            "The goal is: push the block right.\nImage 1:\n")
    assert req.parts[2] == "\nImage 2:\n"
    assert req.parts[4] == (
        "\n1. Describe what Image 1 shows.\n2. Describe what Image 2 shows.\n"
        "3. The goal is: push the block right. How do Image 1 and Image 2 differ with respect to achieving this goal?")
    lab = label_request("  Image 1 is empty. Image 2 shows a block.  ", "push the block right")
    assert lab.images == [] and lab.max_tokens == 16
    assert lab.text == (
        "Here is an analysis of two images of a robot attempting the goal: push the block right.\n"
        "--- analysis ---\nImage 1 is empty. Image 2 shows a block.\n--- end of analysis ---\n"
        "Based on this analysis, in which image is the goal better achieved? Reply with a single line: "
        "0 if the goal is better achieved in Image 1, 1 if it is better achieved in Image 2, "
        "-1 if there is no difference or the analysis is unsure.")


# ------------------------------------------------------------------ two-stage labels
def test_two_stage_labels_through_scripted_vlm():
    positions = [0.1, 0.5, 0.9, 0.3]
    frames = squares(positions)
    backend = ScriptedBackend()
    backend.add_episode(frames, positions)
    reward = RLVLMFReward(backend=backend, image_size=S)
    a = frames[[0, 2, 1, 3]]
    b = frames[[1, 0, 1, 2]]
    unknown = square_image(0.7, bg=90)  # no ground truth: the VLM refuses -> -1
    labels = reward.label_pairs(np.concatenate([a, unknown[None]]), np.concatenate([b, frames[:1]]), "push right")
    # 0.1 vs 0.5 -> second better (1); 0.9 vs 0.1 -> first (0); same frame -> equal (-1); 0.3 vs 0.9 -> 1
    np.testing.assert_array_equal(labels, [1, 0, -1, 1, -1])
    assert backend.calls == 5 + 5  # every pair: analysis + label query


def test_failed_replies_become_unsure():
    frames = squares([0.2, 0.8])
    backend = ScriptedBackend(error_rate=1.0)
    backend.add_episode(frames, [0.2, 0.8])
    reward = RLVLMFReward(backend=backend, image_size=S)
    labels = reward.label_pairs(frames[[0, 1, 0]], frames[[1, 0, 1]], "push right")
    np.testing.assert_array_equal(labels, [-1, -1, -1])


def test_minus_one_and_identical_pairs_are_dropped():
    reward = RLVLMFReward(labeler="scripted", image_size=S)
    a = squares([0.1, 0.2, 0.3, 0.4])
    b = squares([0.5, 0.6, 0.3, 0.1])  # pair 2 is identical
    counts = reward.add_preferences(a, b, np.array([1, -1, 0, 0]))
    assert counts == {"kept": 2, "dropped_unsure": 1, "dropped_identical": 1}
    np.testing.assert_array_equal(reward.labels, [1, 0])
    np.testing.assert_array_equal(reward.pairs_a, a[[0, 3]])


def test_scripted_oracle_noise_rate():
    rng = np.random.default_rng(0)
    pa, pb = rng.random(4000), rng.random(4000)
    pa[:10] = pb[:10]
    labels = noisy_labels(pa, pb, 0.2, rng)
    truth = np.where(pa > pb, 0, 1)
    assert np.all(labels[:10] == -1)
    wrong = np.mean(labels[10:] != truth[10:])
    assert 0.17 < wrong < 0.23
    oracle = ScriptedPreference(error_rate=0.0)
    frames = squares([0.2, 0.6])
    oracle.add_episode(frames, [0.2, 0.6])
    np.testing.assert_array_equal(oracle.label_pairs(frames, frames[::-1].copy()), [1, 0])


# ------------------------------------------------------------------ Bradley-Terry ensemble
def test_bt_ensemble_recovers_ranking_from_noisy_preferences():
    rng = np.random.default_rng(0)
    n = 600
    pa, pb = rng.random(n), rng.random(n)
    labels = noisy_labels(pa, pb, error_rate=0.2, rng=rng)
    keep = labels >= 0
    ens = BTEnsemble(ensemble_size=3, image_size=S, max_epochs=30, batch_size=64, seed=0)
    metrics = ens.fit(squares(pa[keep]), squares(pb[keep]), labels[keep])
    assert metrics["pairs"] == keep.sum() and 1 <= metrics["epochs"] <= 30
    assert metrics["train_acc"] > 0.7  # 20 % of the labels are wrong: ~0.8 is the ceiling
    test = np.linspace(0, 1, 40)
    rho = stats.spearmanr(ens.predict(squares(test)), test)[0]
    assert rho > 0.9, rho


def test_bt_training_stops_at_target_accuracy():
    rng = np.random.default_rng(1)
    pa, pb = rng.random(200), rng.random(200)
    labels = noisy_labels(pa, pb, 0.0, rng)
    ens = BTEnsemble(image_size=S, max_epochs=200, target_accuracy=0.9, patience=200, seed=1)
    metrics = ens.fit(squares(pa), squares(pb), labels)
    assert metrics["train_acc"] > 0.9 and metrics["epochs"] < 200


# ------------------------------------------------------------------ feedback round on a replay
def make_replay(num_episodes=6, steps=12, seed=0):
    obs_space = spaces.Dict({"pixels": spaces.Dict({"front": spaces.Box(0, 255, (S, S, 3), np.uint8)}),
                             "instruction": spaces.Text(64)})
    replay = Replay(500, obs_space, spaces.Box(-1, 1, (2,), np.float32))
    rng = np.random.default_rng(seed)
    truth = {}
    for ep in range(num_episodes):
        speed = rng.uniform(0.2, 1.0)
        pos = np.clip(speed * np.arange(steps + 1) / steps + rng.normal(0, 0.02, steps + 1), 0, 1)
        frames = squares(pos)
        for t in range(steps):
            obs = {"pixels": {"front": frames[t]}, "instruction": "move the square right"}
            nxt = {"pixels": {"front": frames[t + 1]}, "instruction": "move the square right"}
            replay.add(Transition(obs, np.zeros(2, np.float32), 0.0, nxt, False, t == steps - 1, t == 0, ep, t),
                       labeled=False)
        truth[ep] = (frames, pos)
    return replay, truth


def test_pairs_come_from_two_recent_episodes():
    replay, _ = make_replay(num_episodes=5)
    reward = RLVLMFReward(labeler="scripted", recent_episodes=2, image_size=S)
    a, b = reward.sample_pairs(replay, 50)
    ep_a, ep_b = replay.episode_id[a], replay.episode_id[b]
    assert set(ep_a) | set(ep_b) == {3, 4}
    assert np.all(ep_a != ep_b)


def test_feedback_round_trains_and_relabels_the_replay():
    replay, truth = make_replay()
    backend = ScriptedBackend()
    for frames, pos in truth.values():
        backend.add_episode(frames, pos)
    reward = RLVLMFReward(backend=backend, recent_episodes=6, image_size=S, seed=0)
    assert reward.score_frames(truth[0][0], "x").tolist() == [0.0] * 13  # untrained: no signal
    assert replay.num_labeled() == 0
    metrics = reward.feedback_round(replay, 150)
    assert metrics["queries"] == 150
    assert metrics["kept"] + metrics["dropped_unsure"] + metrics["dropped_identical"] == 150
    assert metrics["kept"] > 100 and metrics["dataset"] == metrics["kept"]
    assert metrics["relabeled"] == len(replay) == replay.num_labeled()
    # every stored reward is the ensemble mean of the frame the transition reaches
    slots = np.arange(len(replay))
    np.testing.assert_allclose(replay.reward[slots], reward.score_frames(replay.frames(slots, "front")), atol=1e-5)
    true_next = np.concatenate([pos[1:] for _, pos in truth.values()])
    assert stats.spearmanr(replay.reward[slots], true_next)[0] > 0.8
    # a second round adds to the same preference dataset
    again = reward.feedback_round(replay, 20)
    assert again["dataset"] == metrics["dataset"] + again["kept"]


def test_state_dict_round_trip_through_checkpoint(tmp_path):
    reward = RLVLMFReward(labeler="scripted", image_size=S, max_epochs=3, normalize=True)
    rng = np.random.default_rng(2)
    pa, pb = rng.random(40), rng.random(40)
    reward.add_preferences(squares(pa), squares(pb), noisy_labels(pa, pb, 0.0, rng))
    reward.train_reward()
    checkpoint.save(tmp_path, 1, {"reward": reward.state_dict()})
    loaded = RLVLMFReward(labeler="scripted", image_size=S, normalize=True, seed=5)
    loaded.load_state_dict(checkpoint.load(tmp_path)["reward"])
    test = squares(np.linspace(0, 1, 7))
    np.testing.assert_allclose(loaded.score_frames(test), reward.score_frames(test), atol=1e-6)
    np.testing.assert_array_equal(loaded.labels, reward.labels)
    np.testing.assert_array_equal(loaded.pairs_b, reward.pairs_b)
    assert abs(float(np.mean(reward.score_frames(np.concatenate([reward.pairs_a, reward.pairs_b]))))) < 1e-4


def test_bad_input():
    with pytest.raises(ValueError, match="reward.backend"):
        RLVLMFReward(image_size=S).label_pairs(squares([0.1]), squares([0.2]), "push")
    with pytest.raises(ValueError, match="labeler"):
        RLVLMFReward(labeler="human")
    with pytest.raises(ValueError, match="pair up"):
        RLVLMFReward(labeler="scripted").label_pairs(squares([0.1, 0.2]), squares([0.2]), "push")
    with pytest.raises(ValueError, match="instruction"):
        RLVLMFReward(backend=ScriptedBackend()).label_pairs(squares([0.1]), squares([0.2]), "")
    with pytest.raises(ValueError, match="uint8"):
        RLVLMFReward(labeler="scripted").score_frames(squares([0.1]).astype(np.float32), "push")
    with pytest.raises(ValueError, match="no preference pairs"):
        RLVLMFReward(labeler="scripted").train_reward()


def test_registry_builds_it():
    from rewards import make_reward

    torch.manual_seed(0)
    r = make_reward("rlvlmf", labeler="scripted", image_size=S)
    assert isinstance(r, RLVLMFReward) and r.trainable and r.granularity == "frame"


def test_hydra_config_builds_without_contacting_the_backend():
    import pathlib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rewards import make_reward

    with initialize_config_dir(str(pathlib.Path(__file__).resolve().parents[1] / "configs"), version_base=None):
        cfg = compose("eval_reward", overrides=["reward=rlvlmf", "reward.image_size=32"])
    kw = OmegaConf.to_container(cfg.reward, resolve=True)
    assert kw.pop("feedback_every") > 0 and kw.pop("feedback_queries") > 0  # the training loop's keys
    r = make_reward(kw.pop("name"), **kw)
    assert r._backend is None and r._backend_cfg["kind"] == "openai"  # built lazily, on the first query
    assert r.ensemble.image_size == 32 and len(r.ensemble.members) == 3
