"""Recording episodes into a LeRobotDataset and reading them back."""

import numpy as np
import pytest

from embodied.contracts import Transition
from embodied.datasets.read import episode_transitions, iter_episodes, open_dataset, read_episode
from embodied.datasets.record import DatasetRecorder


def make_episode(ep_id, T=12, size=32, terminated=True, seed=0):
    rng = np.random.default_rng(seed + ep_id)
    out = []
    for t in range(T):
        obs = {"pixels": {"front": np.full((size, size, 3), 20 * t % 255, np.uint8)},
               "state": rng.normal(size=3).astype(np.float32), "instruction": f"task {ep_id % 2}"}
        last = t == T - 1
        out.append(Transition(obs, rng.uniform(-1, 1, 2).astype(np.float32), float(t), obs,
                              terminated=last and terminated, truncated=last and not terminated,
                              is_first=t == 0, episode_id=ep_id, step=t,
                              info={"success": last and terminated, "progress": t / T}))
    return out


def test_record_then_read_roundtrip(tmp_path):
    episodes = [make_episode(0), make_episode(1, T=7, terminated=False)]
    with DatasetRecorder(tmp_path / "ds", fps=10) as rec:
        for t in episodes[0]:
            rec.add(t)  # step by step: saved when done
        rec.add_episode(episodes[1])
    ds = open_dataset(tmp_path / "ds")
    assert ds.meta.total_episodes == 2 and ds.meta.total_frames == 19
    assert set(ds.meta.features) >= {"observation.images.front", "observation.state", "action", "next.done",
                                     "next.terminated", "gt.reward", "gt.success", "gt.progress"}
    assert "next.reward" not in ds.meta.features  # ground truth never poses as a label
    read = list(iter_episodes(ds))
    for ep, src in zip(read, episodes):
        assert ep.task == src[0].obs["instruction"]
        np.testing.assert_allclose(ep.action, np.stack([t.action for t in src]))
        np.testing.assert_allclose(ep.state, np.stack([t.obs["state"] for t in src]))
        np.testing.assert_allclose(ep.columns["gt.reward"], [t.reward for t in src])
        frames = ep.frames["front"]
        assert frames.dtype == np.uint8 and frames.shape == (len(src), 32, 32, 3)
        want = np.stack([t.obs["pixels"]["front"] for t in src]).astype(float)
        assert np.abs(frames.astype(float) - want).mean() < 6  # lossy video, right frames in order
    trans = episode_transitions(read[0], "gt.reward")
    assert trans[-1].terminated and not trans[-1].truncated and trans[-1].info["success"]
    assert not any(t.terminated for t in trans[:-1])
    np.testing.assert_allclose(trans[3].next_obs["state"], trans[4].obs["state"])
    trans = episode_transitions(read[1], "gt.reward")
    assert trans[-1].truncated and not trans[-1].terminated


def test_interleaved_episodes_from_vectorised_envs(tmp_path):
    a, b = make_episode(0, T=4), make_episode(1, T=6)
    with DatasetRecorder(tmp_path / "ds", fps=10) as rec:
        for i in range(6):  # two envs stepping together; episode 0 ends first
            if i < 4:
                rec.add(a[i])
            rec.add(b[i])
    eps = list(iter_episodes(open_dataset(tmp_path / "ds"), cameras=[]))
    assert [len(e) for e in eps] == [4, 6]
    np.testing.assert_allclose(eps[1].state, np.stack([t.obs["state"] for t in b]))


def test_reading_state_only_and_bad_input(tmp_path):
    with DatasetRecorder(tmp_path / "ds", fps=10) as rec:
        rec.add_episode(make_episode(0, T=5))
    ds = open_dataset(tmp_path / "ds")
    ep = read_episode(ds, 0, cameras=[])
    assert ep.frames == {} and ep.state.shape == (5, 3)
    with pytest.raises(ValueError, match="no camera 'wrist'"):
        read_episode(ds, 0, cameras=["wrist"])
    with pytest.raises(ValueError, match="next.reward"):
        episode_transitions(ep, "next.reward")
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        open_dataset(tmp_path)
    with pytest.raises(FileExistsError):
        DatasetRecorder(tmp_path / "ds")


def test_load_replay_from_dataset(tmp_path):
    with DatasetRecorder(tmp_path / "ds", fps=10) as rec:
        rec.add_episode(make_episode(0, T=6))
        rec.add_episode(make_episode(1, T=5, terminated=False))
    from embodied.datasets import load_replay

    replay = load_replay(tmp_path / "ds", reward_key="gt.reward", cameras=[])
    assert len(replay) == 11 and replay.offline
    batch = replay.sample(64)
    assert batch["obs"]["state"].shape == (64, 3) and "pixels" not in batch["obs"]
    assert set(np.unique(batch["reward"])) <= set(range(6))
    # rewards 5 end a terminated episode (discount 0), reward 4 of the truncated one bootstraps
    assert np.all(batch["discount"][batch["reward"] == 5] == 0)
    with_pixels = load_replay(tmp_path / "ds", reward_key="gt.reward")
    assert with_pixels.sample(4)["obs"]["pixels"]["front"].shape == (4, 32, 32, 3)


def _data_hashes(root):
    import hashlib
    from pathlib import Path

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*.parquet")) if "/data/" in f"/{p.relative_to(root)}"}


def test_generated_datasets_are_reproducible_from_the_seed(tmp_path):
    from embodied.datasets.generate import GenerateConfig, generate

    cfg = GenerateConfig(env="reach", kinds=("random", "scripted"), steps=100, seed=3)
    stats = generate(cfg, tmp_path / "a")
    generate(cfg, tmp_path / "b")
    assert _data_hashes(tmp_path / "a") == _data_hashes(tmp_path / "b") != {}
    assert stats["scripted"]["scripted"]["return_mean"] > stats["random"]["random"]["return_mean"]
    ep = read_episode(open_dataset(tmp_path / "a" / "random"), 0)
    assert len(ep) == 50 and ep.state.shape == (50, 8) and ep.frames == {}
    with pytest.raises(FileExistsError):
        generate(cfg, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown dataset kind 'expertt'"):
        generate(GenerateConfig(kinds=("expertt",)), tmp_path / "c")


def test_sac_stages_medium_replay_and_policy_cache(tmp_path):
    from embodied.datasets.generate import GenerateConfig, SACStages, generate, policy_cache

    sac = SACStages(total_steps=200, medium_at=100, warmup_steps=50, hidden=(32, 32), batch_size=32)
    cfg = GenerateConfig(env="reach", kinds=("medium_replay", "medium_expert"), steps=50, seed=0, sac=sac)
    stats = generate(cfg, tmp_path)
    assert stats["medium_replay"]["episodes"] == 2  # the 100 steps before the medium stage
    ds = open_dataset(tmp_path / "medium_expert")
    assert ds.meta.total_episodes == 2 and ds.meta.total_frames == 100
    cache = policy_cache(cfg, tmp_path)
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("state.pt")}
    assert len(stamp) == 2
    generate(GenerateConfig(env="reach", kinds=("expert",), steps=50, seed=0, sac=sac), tmp_path)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("state.pt")} == stamp  # reused, not retrained


def test_writing_videos_leaves_the_cpu_scheduling_as_it_was(tmp_path):
    """SVT-AV1 makes the encoding thread SCHED_FIFO 99 when run as root; the recorder restores it."""
    import os

    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    with DatasetRecorder(tmp_path / "ds", fps=10) as rec:
        rec.add_episode(make_episode(0, T=4))
        assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


def test_make_dataset_cli_state_only_from_a_camera_config(tmp_path, capsys):
    """``env=reach_pixels env.pixels=false`` (a config that lists cameras) records state only,
    as embodied-train reads the same section, instead of refusing the config's camera list."""
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR
    from embodied.cli.make_dataset import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("dataset/make", overrides=["env=reach_pixels", "env.pixels=false", "env.proprio_only=false",
                                                 "kinds=[scripted]",
                                                 "steps=50", f"output={tmp_path / 'ds'}"])
    stats = run(cfg)
    assert stats["scripted"]["scripted"]["episodes"] == 1
    ep = read_episode(open_dataset(tmp_path / "ds" / "scripted"), 0)
    assert ep.frames == {} and ep.state.shape == (50, 8)
