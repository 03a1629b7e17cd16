"""Scale-out on a real local Ray cluster (one per module: it costs ~10 s and ~1.3 GB to start):
labeling as a Ray Data pipeline gives the local path's labels byte for byte, a run killed on
Ray resumes on the local path, and bad cluster input is a one-line error before any work."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from embodied.contracts import EpisodeLabels, RewardModel
from embodied.datasets.label import label_dataset
from test_label import ENV, ROOT, TINY, foreign_dataset, tree_hashes

ray = pytest.importorskip("ray")  # the [ray] extra; CI installs it (requirements.lock)
pytestmark = pytest.mark.xdist_group("ray")  # one cluster for the module, in one xdist worker

EPISODES, T = 16, 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return foreign_dataset(tmp_path_factory.mktemp("raysrc") / "ds", episodes=EPISODES, T=T, size=32)


@pytest.fixture(scope="module")
def local_labels(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "labeled"
    proc = _cli([f"input={source}", f"output={out}", "reward=clip_tiny", "camera=top"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return out


def _cli(args):
    # a client joins a cluster with token authentication (Ray's default for a local ray.init since
    # 2.59) in the same mode, with the token of ~/.ray/auth_token, as on any node (README: Ray)
    env = {**ENV, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    return subprocess.Popen([sys.executable, "-m", "embodied.cli.label", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _data(root):
    return {k: v for k, v in tree_hashes(root).items() if k.startswith(("data/", "videos/"))}


def test_labels_through_ray_equal_the_local_labels_byte_for_byte(cluster, source, local_labels, tmp_path):
    out = tmp_path / "ray"
    proc = _cli([f"input={source}", f"output={out}", "reward=clip_tiny", "camera=top", f"ray.address={cluster}",
                 "ray.actors=2", "ray.num_cpus=0.5", "ray.batch_size=3"])
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["episodes_labeled"] == EPISODES
    assert _data(out) == _data(local_labels)  # parquet (with next.reward) and videos, byte for byte
    meta = json.loads((out / "meta" / "labeling.json").read_text())
    assert meta["summary"]["frames_labeled_this_run"] == EPISODES * T
    assert meta["job_id"] == json.loads((local_labels / "meta" / "labeling.json").read_text())["job_id"]


def test_a_labeling_run_killed_on_ray_resumes_on_the_local_path(cluster, source, local_labels, tmp_path):
    out = tmp_path / "killed"
    proc = _cli([f"input={source}", f"output={out}", "reward=clip_tiny", "camera=top", f"ray.address={cluster}"])
    labels = tmp_path / "killed.partial" / "labels"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(labels.glob("episode_*.npz"))) < 2 and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # the driver: its actors end with its job
    proc.wait()
    done = len(list(labels.glob("episode_*.npz")))
    assert 2 <= done < EPISODES, "the kill must land mid-labeling"
    resumed = _cli([f"input={source}", f"output={out}", "reward=clip_tiny", "camera=top"])  # no ray.address
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    summary = json.loads((out / "meta" / "labeling.json").read_text())["summary"]
    assert summary["frames_labeled_this_run"] == (EPISODES - done) * T  # nothing labeled twice
    assert _data(out) == _data(local_labels)


class LockedReward(RewardModel):
    """A module holding a lock (as one holding a socket or a CUDA stream): it cannot travel."""

    name, granularity = "locked", "episode"

    def __init__(self):
        self.lock = threading.Lock()

    def label_episode(self, frames, instruction):
        return EpisodeLabels(np.zeros(len(frames) - 1, np.float32))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["unreachable", "gpus", "cpus", "unshippable"])
def test_bad_cluster_input_is_a_one_line_error_before_any_work(cluster, source, tmp_path, case):
    out = tmp_path / "out"
    before = tree_hashes(tmp_path)
    if case == "unreachable":  # the command line: exit status 2, one 'error:' line, in seconds
        t0 = time.time()
        proc = _cli([f"input={source}", f"output={out}", "reward=clip_tiny", "camera=top",
                     f"ray.address=127.0.0.1:{_free_port()}"])
        _, err = proc.communicate(timeout=120)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1 and "no Ray head answers" in lines[0], err[-2000:]
        assert time.time() - t0 < 60
    else:
        settings = {"address": cluster, "actors": 1, "num_gpus": 0, "num_cpus": 1, "batch_size": 1, "readers": 1}
        model, expect = (lambda: pytest.fail("model built despite bad input")), ""
        if case == "gpus":
            settings["num_gpus"], expect = 1, "asks for 1 GPU"
        elif case == "cpus":
            settings["actors"], expect = 4, "asks for 4.5 CPU"
        else:
            model, expect = LockedReward(), "cannot be shipped to Ray workers"
        with pytest.raises(ValueError, match=expect) as info:
            label_dataset(source, out, model, TINY, camera="top", show_progress=False, ray=settings)
        assert "\n" not in str(info.value)
    assert tree_hashes(tmp_path) == before and not (tmp_path / "out.partial").exists()


# ----------------------------------------------------------------------------- rollout workers
SAC_TINY = ("learner=sac", "learner.hidden=[16,16]", "learner.batch_size=16")


def _trainer(cluster, tmp_path, learner=SAC_TINY):
    from hydra import compose, initialize_config_dir

    from embodied.cli import setup_runtime
    from embodied.loop import Trainer

    setup_runtime()
    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        cfg = compose("config", overrides=["env=reach", *learner, "train.warmup_steps=100", "train.learning_starts=100",
                                           "env.max_episode_steps=30", f"train.ray.address={cluster}",
                                           "train.ray.workers=2", "train.ray.num_cpus=0.5", "train.ray.steps_per_call=10",
                                           "wandb.mode=disabled"])
    return Trainer(cfg, tmp_path / "run")


def test_sac_with_ray_rollout_workers_commits_whole_episodes_and_replaces_a_killed_worker(cluster, tmp_path):
    trainer = _trainer(cluster, tmp_path)
    metrics: dict = {}
    killed = None
    while trainer.counters["env_steps"] < 600:
        trainer._remote_step(metrics)
        if killed is None and trainer.counters["env_steps"] >= 150:  # mid-run, its envs mid-episode
            killed = ray.get(trainer.fleet.workers[0].pid.remote())
            os.kill(killed, signal.SIGKILL)
    fleet = trainer.fleet
    assert fleet.restarts == 1 and ray.get(fleet.workers[0].pid.remote()) != killed  # replaced, and the run went on
    replay = trainer.online
    n = len(replay)
    assert n == trainer.counters["env_steps"]  # every committed step is in the replay, once
    ids, steps = replay.episode_id[:n], replay.step[:n]
    assert sorted(set(ids.tolist())) == list(range(trainer._next_episode))  # ids unique, none skipped
    for episode in set(ids.tolist()):  # each episode whole: steps 0..L-1, ending in its termination / time limit
        rows = np.flatnonzero(ids == episode)
        assert sorted(steps[rows].tolist()) == list(range(len(rows)))
        last = rows[np.argmax(steps[rows])]
        assert replay.terminated[last] or replay.truncated[last]
    assert trainer.counters["updates"] >= 400 and fleet._version > 0  # SAC trained; workers got its weights
    fleet.close()


def test_ray_rollout_workers_refuse_what_they_do_not_run_yet(cluster, tmp_path):
    with pytest.raises(ValueError, match="set train.num_envs=2") as info:  # PPO's rollout is the workers' envs
        _trainer(cluster, tmp_path, learner=("learner=ppo",))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="labels whole episodes") as info:
        _trainer(cluster, tmp_path, learner=(*PPO_TINY, "reward=gvl_oracle"))
    assert "\n" not in str(info.value)


PPO_TINY = ("learner=ppo", "learner.num_steps=32", "learner.num_minibatches=4", "learner.update_epochs=2",
            "train.num_envs=2")


def test_ppo_with_ray_rollout_workers_trains_on_whole_fragments_and_replaces_a_killed_worker(cluster, tmp_path):
    trainer = _trainer(cluster, tmp_path, learner=PPO_TINY)
    metrics: dict = {}
    killed, rows, seen = None, 32 * 2, []
    restarted: list = []  # env columns whose running returns (reward scaling) restarted
    trainer.learner.episodes_restarted = lambda envs: restarted.append(list(envs))
    while trainer.counters["updates"] < 6:
        if trainer.counters["updates"] == 2 and killed is None:  # its next fragment call meets a dead worker
            trainer._start_fleet()
            killed = ray.get(trainer.fleet.workers[1].pid.remote())
            os.kill(killed, signal.SIGKILL)
        before = trainer.counters["env_steps"]
        trainer._remote_rollout(metrics)
        assert trainer.counters["env_steps"] - before == rows and metrics["rollout/trained_steps"] == rows
        seen.append(trainer.collector.buffer.data["meta"]["episode"].copy())  # (T, N) episode ids of the rollout
    fleet = trainer.fleet
    assert fleet.restarts == 1 and ray.get(fleet.workers[1].pid.remote()) != killed
    assert restarted == [[1]]  # the replacement's env column only, once
    replay = trainer.online
    n = len(replay)
    assert n == trainer.counters["env_steps"] == 6 * rows  # every step of every rollout stored once, no more
    ids, steps = replay.episode_id[:n], replay.step[:n]
    assert sorted(set(ids.tolist())) == list(range(trainer._next_episode))
    for episode in set(ids.tolist()):  # each episode's steps consecutive from 0, never two of one step
        got = sorted(steps[ids == episode].tolist())
        assert got == list(range(len(got)))
    columns: dict = {}  # an episode runs in one env column of the rollouts, never two
    for rollout in seen:
        for col in range(2):
            for episode in set(rollout[:, col].tolist()):
                columns.setdefault(episode, set()).add(col)
    assert all(len(c) == 1 for c in columns.values())
    # the replacement's env column starts a fresh episode in the rollout after the kill
    assert seen[2][0, 1] not in set(seen[1][:, 1])
    assert fleet._version == 5  # each fragment came from the weights of the update before it
    fleet.close()
