"""GVL: prompt snapshot, strict parser, un-shuffle, retries, end to end with a scripted VLM."""

import numpy as np
import pytest
from vlm_helpers import reach_episodes, render, synthetic_episode

from rewards import make_reward
from rewards.backends.base import VLMBackend, VLMReply
from rewards.backends.scripted import ScriptedBackend
from rewards.gvl import GVLReward, ParseError, build_request, parse_reply, subsample, unshuffle
from rewards.metrics import voc

IMG = np.zeros((4, 4, 3), np.uint8)

PINNED_PROMPT = (
    "Predict the task completion percentage of frames from a robot performing the task: open the drawer. "
    "A percentage is a number between 0 and 100, where 0 means nothing of the task is done and "
    "100 means the task is fully completed. The frames are shown in random order, so judge each "
    "frame on its own when estimating its completion percentage.\n"
    "Example trajectory of the task: stack the cups. Its frames (in random order) with their completion percentages:\n"
    "Frame 1: <image> Task completion: 50%\n"
    "Frame 2: <image> Task completion: 0%\n"
    "Initial robot scene: <image>\n"
    "In the initial robot scene the task completion percentage is 0.\n"
    "Now, for the task: open the drawer, output the task completion percentage of each of the following "
    "2 frames, which are in random order. Answer with exactly one line per frame in the format "
    "'Frame <number>: <percentage>%' and nothing else.\n"
    "Frame 1: <image>\n"
    "Frame 2: <image>\n"
)


def test_prompt_snapshot():
    request = build_request("open the drawer", IMG, [IMG, IMG], context=[("stack the cups", [IMG, IMG], [50, 0])])
    assert render(request) == PINNED_PROMPT
    assert len(request.images) == 5
    assert request.system.startswith("You are an expert roboticist")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Frame 1: 10%\nFrame 2: 55.5%\nFrame 3: 100%", [10, 55.5, 100]),
        ("Here are my estimates:\nFrame 2: 20%\nFrame 1: 0%\n**Frame 3: 30%**", [0, 20, 30]),
        ("```\nFrame 1 : 5 %\nFrame 2: 6%\nFrame 3: 7%\n```", [5, 6, 7]),
    ],
)
def test_parser_valid(text, expected):
    np.testing.assert_allclose(parse_reply(text, 3), expected)


@pytest.mark.parametrize(
    "text, why",
    [
        ("Frame 1: 10%\nFrame 2: 20%", "missing"),  # partial: wrong frame count
        ("Frame 1: 10%\nFrame 2: 20%\nFrame 3: 30%\nFrame 4: 40%", "outside 1..3"),
        ("Frame 1: 10%\nFrame 1: 20%\nFrame 3: 30%", "twice"),
        ("Frame 1: 10%\nFrame 2: 120%\nFrame 3: 30%", "outside 0-100"),
        ("Frame 1: 10%\nFrame 2: -5%\nFrame 3: 30%", "outside 0-100"),
        ("Frame 1: 10%\nFrame 2: about half\nFrame 3: 30%", "malformed"),
        ("Frame 1: 0.1\nFrame 2: 0.2\nFrame 3: 0.3", "malformed"),  # fractions, not percentages
        ("I'm sorry, I can't help with that.", "refusal"),
        ("", "refusal"),
    ],
)
def test_parser_rejects(text, why):
    with pytest.raises(ParseError, match=why):
        parse_reply(text, 3)


def test_unshuffle_and_subsample_hand_computed():
    # shown order: chronological frames 2, 0, 1 -> answers 30, 10, 20 -> chronological 10, 20, 30
    np.testing.assert_array_equal(unshuffle(np.array([30.0, 10.0, 20.0]), np.array([2, 0, 1])), [10, 20, 30])
    np.testing.assert_array_equal(subsample(10, 3), [0, 5, 10])
    np.testing.assert_array_equal(subsample(3, 30), [0, 1, 2, 3])  # short episode: every frame


class _Fixed(VLMBackend):
    """Replies with queued texts (to pin exact parser / retry behaviour)."""

    model_id = "fixed"

    def __init__(self, texts):
        self.texts, self.requests = list(texts), []

    def generate(self, requests):
        self.requests += list(requests)
        return [VLMReply(self.texts.pop(0)) for _ in requests]


class _ByPixel(VLMBackend):
    """Answers each query frame (filled with one value i) with ``percent[i]``."""

    model_id = "by-pixel"

    def __init__(self, percent):
        self.percent = percent

    def generate(self, requests):
        replies = []
        for r in requests:
            start = next(i for i, p in enumerate(r.parts) if isinstance(p, str) and "Now, for the task" in p)
            shown = [int(p[0, 0, 0]) for p in r.parts[start:] if isinstance(p, np.ndarray)]
            replies.append(VLMReply("\n".join(f"Frame {k}: {self.percent[i]}%" for k, i in enumerate(shown, 1))))
        return replies


def test_labels_hand_computed():
    frames = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(5)])  # T = 4
    model = GVLReward(backend=_ByPixel({2: 40, 4: 100}), num_frames=3)  # queries frames 2 and 4
    labels = model.label_episode(frames, "t")
    assert labels.ok
    np.testing.assert_allclose(labels.progress, [0, 0.2, 0.4, 0.7, 1.0], atol=1e-6)
    np.testing.assert_allclose(labels.rewards, [0.2, 0.2, 0.3, 0.3], atol=1e-6)
    np.testing.assert_array_equal(labels.meta["frame_indices"], [0, 2, 4])
    assert labels.meta["voc"] == pytest.approx(1.0) and labels.meta["queries"] == 1


def test_failed_query_is_retried_with_fresh_shuffle_then_reported():
    frames, _ = synthetic_episode(20)
    backend = _Fixed(["I cannot help with that."] * 3)
    labels = GVLReward(backend=backend, num_frames=8, max_retries=2).label_episode(frames, "slide the square")
    assert not labels.ok and "failed 3x" in labels.error
    assert np.isnan(labels.rewards).all() and labels.rewards.shape == (20,) and labels.progress is None
    orders = {tuple(id(p) for p in r.images) for r in backend.requests}
    assert len(backend.requests) == 3 and len(orders) == 3  # each retry shows a fresh shuffle


def test_scripted_synthetic_recovers_progress():
    frames, progress = synthetic_episode(40)
    oracle = ScriptedBackend()
    oracle.add_episode(frames, progress)
    labels = GVLReward(backend=oracle, num_frames=30).label_episode(frames, "slide the square")
    assert labels.ok and labels.meta["voc"] > 0.99
    assert np.abs(labels.progress - progress).max() < 0.03
    assert labels.rewards.sum() == pytest.approx(labels.progress[-1], abs=1e-5)


def test_scripted_errors_are_retried_and_never_numbers():
    frames, progress = synthetic_episode(30)
    oracle = ScriptedBackend(error_rate=0.5, seed=3)
    oracle.add_episode(frames, progress)
    episodes = [(frames, f"task {i}") for i in range(12)]
    results = GVLReward(backend=oracle, num_frames=10, max_retries=1).label_episodes(episodes)
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    assert ok and failed  # with p=0.5 per query and two tries, both outcomes occur in 12 episodes
    for r in ok:
        assert voc(r.progress) > 0.99
    for r in failed:
        assert np.isnan(r.rewards).all() and r.error


def test_reach_episodes_end_to_end_voc():
    """Driven by a scripted VLM answering from the simulator's true progress."""
    episodes = reach_episodes(num=2, steps=40)
    oracle = ScriptedBackend()
    for frames, _, progress in episodes:
        oracle.add_episode(frames, progress)
    model = make_reward("gvl", backend=oracle, num_frames=30)
    results = model.label_episodes([(f, i) for f, i, _ in episodes])
    for (frames, _, progress), labels in zip(episodes, results):
        assert labels.ok
        assert voc(labels.progress) > 0.9
        assert np.corrcoef(labels.progress, progress)[0, 1] > 0.99


def test_few_shot_context_is_shown_with_true_percentages():
    frames, progress = synthetic_episode(20)
    ctx_frames, _ = synthetic_episode(9, seed=5)  # 10 frames: 0, 3, 6, 9 shown
    oracle = ScriptedBackend()
    oracle.add_episode(frames, progress)
    backend = _Recorder(oracle)
    model = GVLReward(backend=backend, num_frames=6, context=[(ctx_frames, "another task")], context_frames=4)
    assert model.label_episode(frames, "slide").ok
    text = render(backend.requests[0])
    assert "Example trajectory of the task: another task." in text
    for pct in (0, 33, 67, 100):  # 4 evenly spaced frames of a complete demonstration
        assert f"Task completion: {pct}%" in text


class _Recorder(VLMBackend):
    model_id = "recorder"

    def __init__(self, inner):
        self.inner, self.requests = inner, []

    def generate(self, requests):
        self.requests += list(requests)
        return self.inner.generate(requests)


def test_bad_input_errors():
    oracle = ScriptedBackend()
    with pytest.raises(ValueError, match="backend"):
        GVLReward()
    model = GVLReward(backend=oracle)
    with pytest.raises(ValueError, match="instruction"):
        model.label_episode(np.zeros((3, 4, 4, 3), np.uint8), "")
    with pytest.raises(ValueError, match="uint8"):
        model.label_episode(np.zeros((3, 4, 4, 3), np.float32), "x")
    with pytest.raises(ValueError, match="backend.kind"):
        GVLReward(backend={"kind": "nope"})
