"""The learner server in-process: RLPD halves, async reward labels, enforced UTD, restart from
checkpoint + durable log (the socket is real, plaintext on loopback)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from embodied.cli import CONFIG_DIR
from embodied.contracts import EpisodeLabels, RewardModel, Transition
from embodied.labeling import RewardLabeler
from real_robot.bridge import schema, transport
from real_robot.learner import LearnerServer


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("learner_server", overrides=[
            f"run_dir={tmp_path}", f"bridge.bind=tcp://127.0.0.1:{transport.free_port()}",
            "bridge.insecure_loopback=true", "learner.batch_size=8", "learner.hidden=[16,16]",
            "train.learning_starts=20", "train.publish_every=5", *overrides])


def episode(eid: int, n: int = 10, intervene=range(0, 4), pixels: bool = False) -> list[Transition]:
    rng = np.random.default_rng(eid)

    def obs(i):
        o = {"state": rng.normal(size=8).astype(np.float32), "instruction": "reach"}
        if pixels:
            o["pixels"] = {"image": np.full((64, 64, 3), i, np.uint8)}
        return o

    frames = [obs(i) for i in range(n + 1)]
    return [Transition(frames[i], rng.uniform(-1, 1, 2).astype(np.float32), 0.5, frames[i + 1], False, i == n - 1,
                       i == 0, eid, i, intervention=i in intervene) for i in range(n)]


def message(batch, seq):
    return schema.decode([bytes(f) for f in schema.pack_transitions(batch, seq)])


def test_interventions_feed_both_rlpd_halves_and_utd_is_enforced(tmp_path):
    server = LearnerServer(config(tmp_path), tmp_path)
    try:
        for e in range(4):
            server._ingest("a", message(episode(e), e))
        assert len(server.online) == 40 and len(server.offline) == 16  # 4 interventions per episode
        batch = server.replay.sample(16)
        assert batch["intervention"][8:].all() and batch["is_offline"][8:].all()  # the RLPD half
        assert not batch["intervention"][:8].all()  # the online half samples everything
        assert server.owed_updates() == 40 - 0 - server.counters["updates"]
        server.train(max_calls=1000)
        assert server.counters["updates"] == 40  # one update per received transition, no more
        assert server.counters["weights_version"] == 8  # published every 5 updates
        server.train(max_calls=1000)
        assert server.counters["updates"] == 40
    finally:
        server.sock.close()


class SlowVLM(RewardModel):
    """An asynchronous episode reward that takes a while (stands in for a VLM query)."""

    asynchronous = True
    granularity = "episode"

    def __init__(self):
        self.queries = 0

    def label_episode(self, frames, instruction):
        self.queries += 1
        time.sleep(0.2)
        return EpisodeLabels(np.linspace(0, 1, len(frames) - 1, dtype=np.float32))


def wait_labels(server, replay, count):
    for _ in range(100):
        server.labeler.poll()
        if replay.num_labeled() >= count:
            return
        time.sleep(0.05)


def test_async_reward_labels_arrive_before_transitions_become_sampleable(tmp_path):
    cfg = config(tmp_path, "spaces.cameras=[image]", "train.learning_starts=5")
    server = LearnerServer(cfg, tmp_path)
    try:
        server.labeler = RewardLabeler(server.online, SlowVLM(), camera="image")
        server._ingest("a", message(episode(0, pixels=True, intervene=()), 0))
        assert server.online.num_labeled() == 0
        assert server.train(max_calls=10) == {}  # nothing sampleable yet: no update
        wait_labels(server, server.online, 10)
        assert server.online.num_labeled() == 10
        np.testing.assert_allclose(server.online.reward[:10], np.linspace(0, 1, 10), atol=1e-6)
        server.train(max_calls=100)
        assert server.counters["updates"] == 10  # the debt of the wait is paid: one per transition
    finally:
        server.sock.close()


@pytest.mark.parametrize("takeover", [range(0, 4), range(6, 10)], ids=["ends-early", "lasts-to-the-end"])
def test_an_intervention_under_an_async_reward_is_labeled_exactly_once(tmp_path, takeover):
    """The copy in the RLPD half gets the original's label from the one episode query."""
    server = LearnerServer(config(tmp_path, "spaces.cameras=[image]"), tmp_path)
    try:
        vlm = SlowVLM()
        server.labeler = RewardLabeler(server.online, vlm, camera="image")
        server._ingest("a", message(episode(0, pixels=True, intervene=takeover), 0))
        assert len(server.offline) == 4 and server.offline.num_labeled() == 0
        wait_labels(server, server.offline, 4)
        assert vlm.queries == 1  # one query for the episode, none for the copies
        assert server.online.num_labeled() == 10 and server.offline.num_labeled() == 4
        copies = server.offline.reward[:4]
        np.testing.assert_allclose(copies, server.online.reward[list(takeover)], atol=1e-6)
    finally:
        server.sock.close()


def test_restart_resumes_from_checkpoint_and_the_durable_log(tmp_path):
    server = LearnerServer(config(tmp_path), tmp_path)
    acks: dict = {}
    try:
        for seq in range(2):
            frames = [bytes(f) for f in schema.pack_transitions(episode(seq), seq)]
            server._handle(b"peer", "a", frames, acks)
        server.save()  # checkpoint holds episodes 0, 1
        for seq in range(2, 4):  # logged (acked) but never checkpointed: then a SIGKILL
            frames = [bytes(f) for f in schema.pack_transitions(episode(seq), seq)]
            server._handle(b"peer", "a", frames, acks)
        server._handle(b"peer", "a", [bytes(f) for f in schema.pack_transitions(episode(1), 1)], acks)  # resend
        server.log.sync()
    finally:
        server.sock.close()
    assert acks[b"peer"] == [0, 1, 2, 3, 1] and server.counters["duplicates"] == 1
    again = LearnerServer(config(tmp_path), tmp_path)
    try:
        assert len(again.online) == 40 and again.counters["transitions"] == 40
        assert again.dedup.seen("a", 3) and not again.dedup.seen("a", 4)
        steps = again.online.state_dict()["slots"]
        assert len(set(zip(steps["episode_id"].tolist(), steps["step"].tolist()))) == 40
    finally:
        again.sock.close()


def test_a_crash_before_the_full_checkpoint_keeps_the_learner_from_its_own_checkpoint(tmp_path):
    server = LearnerServer(config(tmp_path), tmp_path)
    acks: dict = {}
    try:
        for seq in range(4):
            server._handle(b"peer", "a", [bytes(f) for f in schema.pack_transitions(episode(seq), seq)], acks)
        server.log.sync()
        server.train(max_calls=1000)
        server.save_learner()  # no full checkpoint ever: then a SIGKILL
        trained = {k: v.clone() for k, v in server.learner.policy_weights().items()}
    finally:
        server.sock.close()
    again = LearnerServer(config(tmp_path), tmp_path)
    try:
        assert again.counters["transitions"] == 40  # the data, from the durable log
        assert again.counters["updates"] == 40 and again.counters["weights_version"] == 8  # the training
        assert again.owed_updates() == 0  # UTD books balance: nothing is trained twice
        for name, value in again.learner.policy_weights().items():
            assert torch.equal(value, trained[name]), name
        again._handle(b"peer", "a", [bytes(f) for f in schema.pack_transitions(episode(4), 4)], acks)
        again.train(max_calls=1000)
        again.save()  # 50 updates: this full checkpoint is newer than the learner-only one (40)
    finally:
        again.sock.close()
    third = LearnerServer(config(tmp_path), tmp_path)
    try:
        assert third.counters["updates"] == 50 and third.counters["transitions"] == 50
    finally:
        third.sock.close()


def test_a_batch_that_does_not_match_the_robot_spaces_is_refused(tmp_path):
    server = LearnerServer(config(tmp_path, "spaces.state_dim=5"), tmp_path)
    acks: dict = {}
    try:
        with pytest.raises(schema.SchemaError, match="learner expects"):
            server._handle(b"peer", "a", [bytes(f) for f in schema.pack_transitions(episode(0), 0)], acks)
        assert len(server.online) == 0 and not acks and not list(server.log.records())
    finally:
        server.sock.close()
