"""Backend interface, content-addressed disk cache and the scripted oracle."""

import json

import numpy as np
import pytest

from rewards.backends import VLMBackend, VLMReply, VLMRequest, hash_image, make_backend
from rewards.backends.cache import CachedBackend, request_key
from rewards.backends.scripted import REFUSAL, ScriptedBackend


def _img(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


class Counting(VLMBackend):
    """Echoes the prompt text; fails requests whose text contains 'fail'."""

    model_id = "counting"

    def __init__(self):
        self.sent = 0

    def generate(self, requests):
        self.sent += len(requests)
        return [VLMReply("", error="boom") if "fail" in r.text else VLMReply(f"echo {r.text}", [("echo", -0.1)])
                for r in requests]


def test_request_validation():
    with pytest.raises(ValueError, match=r"parts\[1\]"):
        VLMRequest(["look", np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        VLMRequest([np.zeros((4, 4, 3), np.float32)])
    r = VLMRequest(["a ", _img(1), "b"])
    assert r.text == "a b" and len(r.images) == 1


def test_key_depends_on_every_input():
    base = VLMRequest(["q", _img(1)], system="s")
    key = request_key("m", base)
    assert key == request_key("m", VLMRequest(["q", _img(1)], system="s"))
    variants = [
        request_key("other-model", base),
        request_key("m", VLMRequest(["q", _img(2)], system="s")),  # image bytes
        request_key("m", VLMRequest(["q", np.full((2, 8, 3), 1, np.uint8)], system="s")),  # same bytes, other shape
        request_key("m", VLMRequest(["Q", _img(1)], system="s")),  # text
        request_key("m", VLMRequest([_img(1), "q"], system="s")),  # order
        request_key("m", VLMRequest(["q", _img(1)], system=None)),  # system
        request_key("m", VLMRequest(["q", _img(1)], system="s", temperature=0.5)),  # settings
        request_key("m", VLMRequest(["q", _img(1)], system="s", max_tokens=9)),
    ]
    assert len(set(variants + [key])) == len(variants) + 1


def test_cache_hits_misses_and_files(tmp_path):
    inner = Counting()
    cached = CachedBackend(inner, tmp_path)
    requests = [VLMRequest([f"q{i}", _img(i)]) for i in range(3)]
    first = cached.generate(requests)
    assert [r.text for r in first] == ["echo q0", "echo q1", "echo q2"] and not any(r.cached for r in first)
    again = cached.generate(requests + [VLMRequest(["q9"])])
    assert inner.sent == 4 and [r.cached for r in again] == [True, True, True, False]
    assert again[0].text == "echo q0" and again[0].logprobs == [("echo", -0.1)]
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 4 and not list(tmp_path.rglob("*.tmp"))
    assert json.loads(files[0].read_text())["model"] == "counting"
    assert (cached.hits, cached.misses) == (3, 4)


def test_failed_replies_are_not_cached_and_duplicates_asked_once(tmp_path):
    inner = Counting()
    cached = CachedBackend(inner, tmp_path)
    out = cached.generate([VLMRequest(["fail"]), VLMRequest(["same"]), VLMRequest(["same"])])
    assert not out[0].ok and out[1].text == out[2].text == "echo same" and inner.sent == 2
    cached.generate([VLMRequest(["fail"])])
    assert inner.sent == 3  # asked again
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_damaged_entry_is_asked_again(tmp_path):
    inner = Counting()
    cached = CachedBackend(inner, tmp_path)
    request = VLMRequest(["q"])
    cached.generate([request])
    path = next(tmp_path.rglob("*.json"))
    path.write_text("{not json")
    assert cached.generate([request])[0].text == "echo q" and inner.sent == 2


class CrashAfter(VLMBackend):
    """Streams replies, then dies like a killed job after ``n`` of them."""

    model_id = "crash"

    def __init__(self, n):
        self.n = n

    def generate(self, requests):
        return [r for _, r in sorted(self.iter_generate(requests))]

    def iter_generate(self, requests):
        for i, request in enumerate(requests):
            if i == self.n:
                raise KeyboardInterrupt("killed")
            yield i, VLMReply(f"answer {request.text}")


def test_crash_mid_batch_keeps_finished_replies(tmp_path):
    requests = [VLMRequest([f"q{i}"]) for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        CachedBackend(CrashAfter(3), tmp_path).generate(requests)
    assert len(list(tmp_path.rglob("*.json"))) == 3
    resumed = CachedBackend(CrashAfter(99), tmp_path)
    out = resumed.generate(requests)
    assert [r.cached for r in out] == [True, True, True, False, False] and resumed.misses == 2


def test_make_backend_wraps_cache(tmp_path):
    backend = make_backend("scripted", cache_dir=str(tmp_path / "c"), progress={})
    assert isinstance(backend, CachedBackend) and isinstance(backend.backend, ScriptedBackend)
    with pytest.raises(ValueError, match="backend.kind"):
        make_backend("gemini")


def test_scripted_preference_two_stage_and_refusal():
    a, b = _img(10), _img(20)
    oracle = ScriptedBackend({hash_image(a): 0.2, hash_image(b): 0.7})
    stage1 = oracle.generate([VLMRequest(["Which image is closer to the goal?", a, b])])[0].text
    assert "Image 1 shows the task 20% done. Image 2 shows the task 70% done." in stage1
    labels = oracle.generate([VLMRequest([f"Analysis: {stage1}\nAnswer 0, 1 or -1."]),
                              VLMRequest([f"Analysis: {oracle.generate([VLMRequest(['?', b, a])])[0].text}"]),
                              VLMRequest([f"Analysis: {oracle.generate([VLMRequest(['?', a, a])])[0].text}"])])
    assert [r.text for r in labels] == ["1", "0", "-1"]
    assert oracle.generate([VLMRequest(["?", a, _img(99)])])[0].text == REFUSAL  # unknown frame


def test_scripted_error_draw_is_deterministic_per_request():
    a, b = _img(10), _img(20)
    oracle = ScriptedBackend({hash_image(a): 0.2, hash_image(b): 0.7}, error_rate=0.5, seed=0)
    requests = [VLMRequest([f"compare {i}", a, b]) for i in range(40)]
    first = [r.text for r in oracle.generate(requests)]
    assert first == [r.text for r in oracle.generate(requests)]
    wrong = sum("Image 1 shows the task 20% done." not in t for t in first)
    assert 8 <= wrong <= 32  # about half, drawn per request
    with pytest.raises(ValueError, match="error_rate"):
        ScriptedBackend(error_rate=2)


def test_scripted_answers_rlvlmf_two_stage_prompts():
    """The oracle goes through RL-VLM-F's own prompt builders and label parser."""
    from rewards.rlvlmf import analysis_request, label_request, parse_label

    a, b = _img(10), _img(20)
    oracle = ScriptedBackend({hash_image(a): 0.2, hash_image(b): 0.7})
    for first, second, expected in ((a, b, 1), (b, a, 0), (a, a, -1)):
        analysis = oracle.generate([analysis_request(first, second, "reach the target")])[0].text
        label = oracle.generate([label_request(analysis, "reach the target")])[0].text
        assert parse_label(label) == expected
