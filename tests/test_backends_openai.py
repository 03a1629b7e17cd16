"""The OpenAI-compatible HTTP backend against a real local chat-completions server."""

import socket

import numpy as np
import pytest

from rewards.backends import VLMError, VLMRequest, hash_image, make_backend
from rewards.backends.local_server import LocalChatServer, decode_image
from rewards.backends.openai import OpenAIBackend, encode_image
from rewards.backends.scripted import ScriptedBackend
from rewards.gvl import GVLReward
from rewards.vlac import VLACReward
from vlm_helpers import synthetic_episode

A = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
B = 255 - A
ORACLE = ScriptedBackend({hash_image(A): 0.25, hash_image(B): 0.75})
QUESTION = VLMRequest(["Which is closer to the goal? ", A, B], system="be brief", max_tokens=40)
EXPECTED = "Image 1 shows the task 25% done. Image 2 shows the task 75% done. Image 2 is closer to the goal."


def client(server, **kw):
    kw = {"model": "oracle", "base_url": server.base_url, "timeout": 2.0, "backoff": 0.01, "max_retries": 2, **kw}
    return OpenAIBackend(**kw)


def test_image_round_trip_is_lossless():
    np.testing.assert_array_equal(decode_image(encode_image(A)), A)
    assert encode_image(A, "jpeg").startswith("data:image/jpeg;base64,")


def test_success_payload_and_key_header(monkeypatch):
    monkeypatch.setenv("MY_VLM_KEY", "sk-test-123")
    with LocalChatServer(ORACLE, api_key="sk-test-123") as server:
        reply = client(server, api_key_env="MY_VLM_KEY", logprobs=True).generate([QUESTION])[0]
        assert reply.ok and reply.text == EXPECTED and reply.logprobs == [(EXPECTED, 0.0)]
        body = server.received[0]
        assert body["model"] == "oracle" and body["max_tokens"] == 40 and body["temperature"] == 0.0
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        kinds = [c["type"] for c in body["messages"][1]["content"]]
        assert kinds == ["text", "image_url", "image_url"]
        assert server.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_no_key_no_header(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with LocalChatServer(ORACLE) as server:
        assert client(server).generate([QUESTION])[0].text == EXPECTED
        assert "Authorization" not in server.headers[0]


@pytest.mark.parametrize("fault", ["429", "500", "timeout"])
def test_transient_fault_then_success(fault):
    with LocalChatServer(ORACLE, faults=[fault], hang=1.0) as server:
        reply = client(server, timeout=0.3).generate([QUESTION])[0]
        assert reply.ok and reply.text == EXPECTED and reply.meta["attempts"] == 2
        assert len(server.received) == 2


def test_permanent_500_and_timeouts_become_reply_errors():
    with LocalChatServer(ORACLE, faults=["500"] * 3 + ["timeout"] * 3 + ["400"], hang=1.0) as server:
        backend = client(server, timeout=0.3)
        first = backend.generate([QUESTION])[0]
        assert not first.ok and "gave up after 3 tries" in first.error and "HTTP 500" in first.error
        second = backend.generate([QUESTION])[0]
        assert not second.ok and "timed out" in second.error
        third = backend.generate([QUESTION])[0]  # 400: this request alone, not retried
        assert not third.ok and "HTTP 400" in third.error and third.meta["attempts"] == 1
        assert len(server.received) == 7


def test_rejected_key_names_the_env_var_and_hides_the_key(monkeypatch):
    monkeypatch.setenv("MY_VLM_KEY", "sk-secret-999")
    with LocalChatServer(ORACLE, api_key="sk-other") as server:
        with pytest.raises(VLMError, match=r"\$MY_VLM_KEY") as info:
            client(server, api_key_env="MY_VLM_KEY").generate([QUESTION])
        assert "sk-secret-999" not in str(info.value)


def test_server_down_names_base_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    backend = OpenAIBackend(model="m", base_url=f"http://127.0.0.1:{port}/v1", backoff=0.01)
    with pytest.raises(VLMError, match=f"127.0.0.1:{port}.*backend.base_url"):
        backend.generate([QUESTION])


def test_wrong_path_is_a_clear_error():
    with LocalChatServer(ORACLE) as server:
        backend = OpenAIBackend(model="m", base_url=server.base_url.removesuffix("/v1"))  # forgot /v1
        with pytest.raises(VLMError, match="404.*backend.base_url"):
            backend.generate([QUESTION])


def test_concurrency_limit_is_reached_and_respected():
    with LocalChatServer(ORACLE, latency=0.15) as server:
        replies = client(server, concurrency=4).generate([QUESTION] * 12)
        assert all(r.text == EXPECTED for r in replies)
        assert server.max_active == 4


def test_gvl_and_vlac_through_http_with_cache(tmp_path):
    frames, progress = synthetic_episode(12)
    oracle = ScriptedBackend()
    oracle.add_episode(frames, progress)
    with LocalChatServer(oracle) as server:
        cfg = {"kind": "openai", "model": "oracle", "base_url": server.base_url, "cache_dir": str(tmp_path)}
        gvl = GVLReward(backend=cfg, num_frames=8)
        assert gvl.label_episode(frames, "slide").meta["voc"] > 0.99
        vlac = VLACReward(backend=make_backend(**cfg), skip=3)
        assert vlac.label_episode(frames, "slide").ok
        sent = len(server.received)
        again = GVLReward(backend=cfg, num_frames=8).label_episode(frames, "slide")
        assert again.meta["cached"] and len(server.received) == sent  # relabel costs no query


def test_config_errors():
    with pytest.raises(ValueError, match="backend.model"):
        OpenAIBackend(model="")
    with pytest.raises(ValueError, match="image_format"):
        OpenAIBackend(model="m", image_format="gif")


@pytest.mark.parametrize("config", ["gvl", "vlac"])
def test_reward_config_files_label_through_http(config, tmp_path):
    import yaml

    from rewards import make_reward

    frames, progress = synthetic_episode(10)
    oracle = ScriptedBackend()
    oracle.add_episode(frames, progress)
    cfg = yaml.safe_load(open(f"configs/reward/{config}.yaml"))
    with LocalChatServer(oracle) as server:
        cfg["backend"].update(base_url=server.base_url, cache_dir=str(tmp_path))
        model = make_reward(cfg.pop("name"), **cfg)
        labels = model.label_episode(frames, "slide the square")
    assert labels.ok and labels.meta["voc"] > 0.99
