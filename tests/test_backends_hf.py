"""The local transformers backend, run for real on a tiny randomly initialised Qwen2-VL."""

import numpy as np
import pytest
from vlm_helpers import build_tiny_qwen2vl, synthetic_episode

from rewards.backends import VLMError, VLMRequest, make_backend
from rewards.backends.hf import HFBackend, to_messages
from rewards.gvl import GVLReward
from rewards.vlac import VLACReward

IMG = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"))


@pytest.fixture(scope="module")
def backend(tiny_vlm):
    return HFBackend(tiny_vlm, device="cpu", batch_size=4)


def test_messages_keep_part_order():
    messages = to_messages(VLMRequest(["a", IMG, "", "b"], system="sys"))
    assert messages[0] == {"role": "system", "content": [{"type": "text", "text": "sys"}]}
    assert messages[1]["content"] == [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]


def test_batched_generation_matches_single(backend):
    requests = [VLMRequest(["Frame 1: ", IMG, " how far?"], max_tokens=6),
                VLMRequest([IMG, IMG, "compare these two, with a longer prompt"], max_tokens=6),
                VLMRequest(["text only"], max_tokens=6)]
    batched = backend.generate(requests)
    single = [backend.generate([r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in single]  # left padding does not change greedy output
    for reply in batched:
        assert reply.ok and isinstance(reply.text, str)
        assert reply.logprobs and all(lp <= 0 for _, lp in reply.logprobs) and len(reply.logprobs) <= 6


def test_gibberish_comes_back_as_failed_queries(tiny_vlm, tmp_path):
    frames, _ = synthetic_episode(6, size=40)
    cfg = {"kind": "hf", "model": tiny_vlm, "device": "cpu", "cache_dir": str(tmp_path)}
    gvl = GVLReward(backend=cfg, num_frames=4, max_retries=1, max_tokens=24).label_episode(frames, "slide the square")
    assert not gvl.ok and "GVL query failed 2x" in gvl.error and np.isnan(gvl.rewards).all()
    vlac = VLACReward(backend=make_backend(**cfg), skip=3, max_retries=0).label_episode(frames, "slide the square")
    assert not vlac.ok and "VLAC" in vlac.error and np.isnan(vlac.rewards).all()


def test_load_errors_name_the_setting(tmp_path):
    with pytest.raises(VLMError, match="backend.model"):
        HFBackend(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ValueError, match="backend.dtype"):
        HFBackend("x", dtype="int8")
