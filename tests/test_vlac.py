"""VLAC: accumulation rules, prompt snapshots, parsers, done signal, end to end with a scripted VLM."""

import numpy as np
import pytest
from vlm_helpers import reach_episodes, render, synthetic_episode

from rewards import make_reward
from rewards.backends.base import VLMBackend, VLMReply
from rewards.backends.scripted import ScriptedBackend
from rewards.metrics import voc
from rewards.vlac import VLACReward, ParseError, accumulate, done_request, grid, pair_request, parse_delta, parse_done

IMG = np.zeros((4, 4, 3), np.uint8)


def test_accumulation_simple_hand_computed():
    # 0 -> 0 + 100*50/100 = 50 -> 50 + 50*50/100 = 75 -> 75 + 25*(-20)/100 = 70
    np.testing.assert_allclose(accumulate([50, 50, -20], "simple"), [0, 50, 75, 70])


def test_accumulation_mix_hand_computed():
    # 0 -> 80 (positive: simple rule); V=80 > 50, c=-20: max(10, 100 - max(20, 1)/80*100) = 75
    # V=75 > 50, c=-50: max(10, 100 - 25/50*100) = 50; V=50 (not > 50), c=-10: 50 + 50*(-10)/100 = 45
    np.testing.assert_allclose(accumulate([80, -20, -50, -10], "mix"), [0, 80, 75, 50, 45])
    # the floor of 10: V=60, c=-90: 100 - 40/10*100 = -300 -> 10
    np.testing.assert_allclose(accumulate([60, -90], "mix"), [0, 60, 10])
    # max(100 - V, 1): at V=100, c=-50: 100 - 1/50*100 = 98
    np.testing.assert_allclose(accumulate([100, -50], "mix"), [0, 100, 98])


def test_grid_keeps_last_frame():
    np.testing.assert_array_equal(grid(10, 3), [0, 3, 6, 9, 10])
    np.testing.assert_array_equal(grid(4, 1), [0, 1, 2, 3, 4])


PINNED_PAIR = (
    "Image-1: <image>\nImage-2: <image>\nCompare two images and evaluate whether the second image is "
    "closer to achieving task objectives compared to the first image. + score means the second image is "
    "closer, - score means the first image is closer\nResponse the relative progressing of target task "
    "follow <score>. The target task is: <task> pick the cup </task> <score>"
)
PINNED_REFERENCE = (
    "<trajectory> <task> pick the cup </task>: 0% <image>\n 50% <image>\n 100% <image>\n</trajectory>"
    "0% <image>\nThis image is the trajectory beginning of the following two images\n" + PINNED_PAIR
)
PINNED_DONE = "<image>\nThe 1 means yes, the 0 means no. Check if the robot has completed its task: <task> pick the cup </task> <done>"


def test_prompt_snapshots():
    assert render(pair_request("pick the cup", IMG, IMG)) == PINNED_PAIR
    with_ref = pair_request("pick the cup", IMG, IMG, start=IMG, reference=[IMG] * 3)
    assert render(with_ref) == PINNED_REFERENCE and len(with_ref.images) == 6
    assert render(done_request("pick the cup", IMG)) == PINNED_DONE
    assert pair_request("x", IMG, IMG).system.startswith("You are a visual-language assistant")


@pytest.mark.parametrize("text, value", [("12", 12), ("+7.5", 7.5), ("-30", -30), (" 0 ", 0), ("45%", 45), ("-100", -100)])
def test_parse_delta_valid(text, value):
    assert parse_delta(text) == value


@pytest.mark.parametrize("text", ["", "about 10", "10, 20", "150", "-101", "The second image is closer.", "1e3"])
def test_parse_delta_rejects(text):
    with pytest.raises(ParseError):
        parse_delta(text)


def test_parse_done():
    assert parse_done(VLMReply("1")) == 1.0 and parse_done(VLMReply("No.")) == 0.0
    # with the answer token's log-prob: P(yes) = exp(lp) for "1", 1 - exp(lp) for "0"
    assert parse_done(VLMReply("1", logprobs=[("1", np.log(0.8))])) == pytest.approx(0.8)
    assert parse_done(VLMReply("0", logprobs=[("0", np.log(0.7))])) == pytest.approx(0.3)
    for bad in ("maybe", "", "10"):
        with pytest.raises(ParseError):
            parse_done(VLMReply(bad))


class _Queue(VLMBackend):
    model_id = "queue"

    def __init__(self, texts):
        self.texts, self.requests = list(texts), []

    def generate(self, requests):
        self.requests += list(requests)
        return [VLMReply(self.texts.pop(0)) for _ in requests]


def test_labels_hand_computed_with_skip_and_done():
    frames = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(5)])  # T = 4, skip 2: pairs (0,2), (2,4)
    backend = _Queue(["50", "50", "1"])
    labels = VLACReward(backend=backend, skip=2, done_frames="last").label_episode(frames, "t")
    assert labels.ok
    np.testing.assert_allclose(labels.progress, [0, 0.25, 0.5, 0.625, 0.75])
    np.testing.assert_allclose(labels.rewards, [0.25, 0.25, 0.125, 0.125])
    np.testing.assert_array_equal(labels.success, [False, False, False, False, True])
    first, second = backend.requests[0].images, backend.requests[1].images
    assert first[0][0, 0, 0] == 0 and first[1][0, 0, 0] == 2 and second[1][0, 0, 0] == 4
    assert labels.meta["queries"] == 3


def test_failed_pair_is_retried_then_episode_reported_unlabeled():
    frames = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(3)])
    backend = _Queue(["10", "the second one", "oops", "nope"])
    labels = VLACReward(backend=backend, max_retries=2, done_frames="none").label_episode(frames, "t")
    assert not labels.ok and "failed 3x" in labels.error
    assert np.isnan(labels.rewards).all() and labels.progress is None
    temps = [r.temperature for r in backend.requests]
    assert temps == [0.0, 0.0, 0.5, 1.0]  # retries sample, so they are new questions


def test_scripted_synthetic_recovers_progress_and_done():
    frames, progress = synthetic_episode(30)
    oracle = ScriptedBackend(done_at=0.95)
    oracle.add_episode(frames, progress)
    for rule in ("simple", "mix"):
        labels = VLACReward(backend=oracle, rule=rule, done_frames="grid").label_episode(frames, "slide")
        assert labels.ok and labels.meta["voc"] > 0.99
        assert np.abs(labels.progress - progress).max() < 0.02
        np.testing.assert_array_equal(labels.success, progress >= 0.95)


def test_reference_trajectory_in_prompt():
    frames, progress = synthetic_episode(12)
    demo, _ = synthetic_episode(20, seed=4)
    oracle = ScriptedBackend()
    oracle.add_episode(frames, progress)
    labels = VLACReward(backend=oracle, reference_frames=demo, reference_num=5, skip=3, done_frames="none").label_episode(frames, "slide")
    assert labels.ok and labels.meta["images"] == 4 * (5 + 3)  # 4 pairs, each with 5 demo frames + start + pair
    assert labels.meta["voc"] > 0.99


def test_reach_episodes_end_to_end_voc():
    """Driven by a scripted VLM answering from the simulator's true progress."""
    episodes = reach_episodes(num=2, steps=40)
    oracle = ScriptedBackend()
    for frames, _, progress in episodes:
        oracle.add_episode(frames, progress)
    model = make_reward("vlac", backend=oracle, skip=2)
    results = model.label_episodes([(f, i) for f, i, _ in episodes])
    for (frames, _, progress), labels in zip(episodes, results):
        assert labels.ok
        assert voc(labels.progress) > 0.9
        assert np.corrcoef(labels.progress, progress)[0, 1] > 0.99
        assert labels.success[-1] == (progress[-1] >= 0.95)


def test_scripted_errors_never_become_numbers():
    frames, progress = synthetic_episode(10)
    oracle = ScriptedBackend(error_rate=0.05, seed=1)  # 11 queries per episode: ~57 % all right
    oracle.add_episode(frames, progress)
    results = VLACReward(backend=oracle, max_retries=0).label_episodes([(frames, f"task {i}") for i in range(10)])
    assert any(r.ok for r in results) and any(not r.ok for r in results)
    for r in results:
        assert (r.ok and np.isfinite(r.rewards).all()) or (not r.ok and np.isnan(r.rewards).all())


def test_bad_input_errors():
    with pytest.raises(ValueError, match="rule"):
        VLACReward(backend=ScriptedBackend(), rule="fancy")
    with pytest.raises(ValueError, match="skip"):
        VLACReward(backend=ScriptedBackend(), skip=0)
    with pytest.raises(ValueError, match="instruction"):
        VLACReward(backend=ScriptedBackend()).label_episode(np.zeros((3, 4, 4, 3), np.uint8), " ")
    with pytest.raises(ValueError, match="reference_frames"):
        VLACReward(backend=ScriptedBackend(), reference_frames=np.zeros((3, 4, 4), np.uint8))
