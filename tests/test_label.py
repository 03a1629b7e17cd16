"""embodied-label on a LeRobotDataset written directly with LeRobot's API (not our recorder):
exact columns, untouched source, no-op rerun, SIGKILL + resume, bad input, training on it."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embodied.datasets.label import label_dataset
from embodied.datasets.read import iter_episodes, load_replay, open_dataset
from embodied.datasets.record import keep_scheduling

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "clip", "model_name": "tiny-clip", "pretrained": None, "batch_size": 32,
        "model_cfg": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                       "head_width": 16},
                      "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
        "baseline_prompts": ["a robot arm on a table"], "alpha": 0.5}
ENV = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "HF_HUB_OFFLINE": "1",
       "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def foreign_dataset(root, episodes=3, T=10, size=32, action=True, nan_at=None, camera="top"):
    """A LeRobotDataset written with LeRobot's own API, as another lab would."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {f"observation.images.{camera}": {"dtype": "video", "shape": (size, size, 3),
                                              "names": ["height", "width", "channels"]},
             "observation.state": {"dtype": "float32", "shape": (4,), "names": None}}
    if action:
        feats["action"] = {"dtype": "float32", "shape": (2,), "names": None}
    ds = LeRobotDataset.create("lab/pick_place", fps=15, features=feats, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        for t in range(T):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, : (t + 1) * size // T] = (40 * e + 60) % 255  # a bar growing with progress
            frame = {f"observation.images.{camera}": img, "observation.state": rng.normal(size=4).astype(np.float32),
                     "task": "put the block in the bowl" if e % 2 == 0 else "pick up the block"}
            if nan_at == (e, t):
                frame["observation.state"][1] = np.nan
            if action:
                frame["action"] = rng.uniform(-1, 1, 2).astype(np.float32)
            ds.add_frame(frame)
        with keep_scheduling():  # SVT-AV1 would leave this thread, and what it starts next, at FIFO 99
            ds.save_episode()
    with keep_scheduling():
        ds.finalize()
    return Path(root)


def tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def tiny_clip():
    from rewards import make_reward

    torch.manual_seed(0)
    kw = dict(TINY)
    kw.pop("name")
    return make_reward("clip", **kw)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return foreign_dataset(tmp_path_factory.mktemp("src") / "ds")


def test_label_writes_exact_columns_and_leaves_source_untouched(source, tmp_path):
    before = tree_hashes(source)
    model = tiny_clip()
    summary = label_dataset(source, tmp_path / "out", model, TINY, camera="top", show_progress=False)
    assert tree_hashes(source) == before  # byte-for-byte
    src, out = open_dataset(source), open_dataset(tmp_path / "out")
    assert set(out.meta.features) - set(src.meta.features) == {"next.reward", "label_ok"}  # CLIP: no progress/success
    assert summary["episodes_labeled"] == 3 and summary["episodes_failed"] == 0
    for ep_src, ep_out in zip(iter_episodes(src), iter_episodes(out)):
        np.testing.assert_array_equal(ep_src.frames["top"], ep_out.frames["top"])  # videos copied, not re-encoded
        np.testing.assert_array_equal(ep_src.action, ep_out.action)
        frames = ep_src.frames["top"]
        want = model.score_frames(np.concatenate([frames[1:], frames[-1:]]), ep_src.task)
        np.testing.assert_allclose(ep_out.columns["next.reward"], want, rtol=1e-5, atol=1e-6)
        assert ep_out.columns["label_ok"].all()
    meta = json.loads((tmp_path / "out" / "meta" / "labeling.json").read_text())
    assert meta["module"] == "clip" and meta["model"] == "tiny-clip" and meta["date"]
    assert meta["prompts"]["baseline_prompts"] == ["a robot arm on a table"]
    assert (tmp_path / "out" / "meta" / "labeling" / "reward_curves.png").stat().st_size > 1000
    assert not (tmp_path / "out.partial").exists()
    # a rerun over the finished output changes nothing and never builds the model
    done = tree_hashes(tmp_path / "out")
    again = label_dataset(source, tmp_path / "out", lambda: pytest.fail("model built on a no-op rerun"), TINY,
                          camera="top", show_progress=False)
    assert again == summary and tree_hashes(tmp_path / "out") == done


def test_failed_episodes_are_listed_not_zero_filled(source, tmp_path):
    from embodied.contracts import EpisodeLabels, RewardModel

    class FailsOnFirstCall(RewardModel):  # a module whose query fails on one episode (episode 0)
        calls = 0

        def label_episode(self, frames, instruction):
            self.calls += 1
            if self.calls == 1:
                return EpisodeLabels.failed(len(frames) - 1, "reply did not parse")
            return EpisodeLabels(np.linspace(0, 1, len(frames) - 1, dtype=np.float32),
                                 progress=np.linspace(0, 1, len(frames), dtype=np.float32))

    summary = label_dataset(source, tmp_path / "out", FailsOnFirstCall(), {"name": "scripted"}, show_progress=False)
    assert summary["episodes_failed"] == 1
    out = open_dataset(tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta" / "labeling.json").read_text())
    assert meta["failed_episodes"] == [{"episode": 0, "error": "reply did not parse"}]
    eps = list(iter_episodes(out, cameras=[]))
    assert np.isnan(eps[0].columns["next.reward"]).all() and not eps[0].columns["label_ok"].any()
    assert np.isfinite(eps[1].columns["next.reward"]).all() and "progress" in eps[1].columns
    replay = load_replay(tmp_path / "out", cameras=[])  # skips the failed episode
    assert len(replay) == 20


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "embodied.cli.label", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _data_hashes(root):
    return {k: v for k, v in tree_hashes(root).items() if k.startswith(("data/", "videos/"))}


def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path):
    src = foreign_dataset(tmp_path / "src", episodes=40, T=12, size=48)
    args = lambda out: [f"input={src}", f"output={out}", "reward=clip_tiny", "camera=top"]  # noqa: E731
    proc = _cli(args(tmp_path / "a"))
    labels = tmp_path / "a.partial" / "labels"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(labels.glob("episode_*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(labels.glob("episode_*.npz")))
    assert 3 <= done_before < 40, "the kill must land mid-labeling"
    assert not (tmp_path / "a").exists()
    resumed = _cli(args(tmp_path / "a"))
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    summary = json.loads((tmp_path / "a" / "meta" / "labeling.json").read_text())["summary"]
    assert summary["frames_labeled_this_run"] == (40 - done_before) * 12  # nothing labeled twice
    whole = _cli(args(tmp_path / "b"))
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-2000:]
    assert _data_hashes(tmp_path / "a") == _data_hashes(tmp_path / "b")


@pytest.mark.parametrize("case", ["camera", "actions", "sizes", "nan", "other_output"])
def test_bad_input_is_one_line_error_and_writes_nothing(tmp_path, case, source):
    src, out, camera = source, tmp_path / "out", "top"
    if case == "camera":
        camera = "wrist"
    elif case == "actions":
        src = foreign_dataset(tmp_path / "noact", episodes=1, T=4, action=False)
    elif case == "sizes":
        src = foreign_dataset(tmp_path / "sizes", episodes=1, T=4)
        info = json.loads((src / "meta" / "info.json").read_text())
        info["features"]["observation.images.top"]["shape"] = [48, 48, 3]
        (src / "meta" / "info.json").write_text(json.dumps(info))
    elif case == "nan":
        src = foreign_dataset(tmp_path / "nan", episodes=2, T=4, nan_at=(1, 2))
    elif case == "other_output":
        foreign_dataset(out, episodes=1, T=3)
    expect = {"camera": "no camera 'wrist'", "actions": "no 'action' column", "sizes": "is 32x32",
              "nan": "NaN", "other_output": "already holds"}[case]
    before = tree_hashes(tmp_path)
    if case == "camera":  # the command line: exit status 2 and one 'error:' line
        proc = _cli([f"input={src}", f"output={out}", "reward=clip_tiny", f"camera={camera}"])
        _, err = proc.communicate(timeout=120)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], err[-2000:]
    else:
        with pytest.raises((ValueError, FileExistsError), match=expect) as info:
            label_dataset(src, out, lambda: pytest.fail("model built despite bad input"), TINY, camera=camera,
                          show_progress=False)
        assert "\n" not in str(info.value)
    assert tree_hashes(tmp_path) == before and not (tmp_path / "out.partial").exists()


def test_train_iql_on_the_labeled_foreign_dataset(source, tmp_path):
    from gymnasium import spaces

    from embodied.learners.iql import IQL, IQLConfig

    label_dataset(source, tmp_path / "out", tiny_clip(), TINY, show_progress=False)
    for cameras in ([], None):  # state only, then state + pixels
        replay = load_replay(tmp_path / "out", cameras=cameras)
        obs_space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (4,), np.float32),
                                 **({"pixels": spaces.Dict({"top": spaces.Box(0, 255, (32, 32, 3), np.uint8)})}
                                    if cameras is None else {})})
        learner = IQL(obs_space, spaces.Box(-1, 1, (2,), np.float32), IQLConfig(hidden=(32, 32), batch_size=16))
        for _ in range(5):
            metrics = learner.update(replay.sample_torch(16))
        assert all(np.isfinite(v) for v in metrics.values())


def test_preference_reward_is_fit_on_the_dataset_then_labels_it(tmp_path):
    """RL-VLM-F offline: scripted oracle answers from gt.progress, BT ensemble, labeled copy."""
    from embodied.datasets.generate import GenerateConfig, generate
    from rewards import make_reward

    generate(GenerateConfig(env="reach", env_kwargs={"pixels": True, "cameras": ["front"], "image_size": 32},
                            kinds=("scripted",), steps=300, seed=0), tmp_path / "data")
    cfg = {"name": "rlvlmf", "labeler": "scripted", "oracle_error_rate": 0.0, "ensemble_size": 1, "image_size": 32,
           "max_epochs": 15, "seed": 0}
    build = lambda: make_reward("rlvlmf", **{k: v for k, v in cfg.items() if k != "name"})  # noqa: E731
    with pytest.raises(ValueError, match="preference_pairs"):
        label_dataset(tmp_path / "data" / "scripted", tmp_path / "out", build, cfg, show_progress=False)
    assert not (tmp_path / "out.partial").exists()  # refused before anything was written
    summary = label_dataset(tmp_path / "data" / "scripted", tmp_path / "out", build, cfg, show_progress=False,
                            preference_pairs=300)
    assert summary["preferences"]["kept"] > 200
    from scipy.stats import spearmanr

    eps = list(iter_episodes(open_dataset(tmp_path / "out"), cameras=[]))
    learned = np.concatenate([e.columns["next.reward"] for e in eps])
    true = np.concatenate([e.columns["gt.progress"] for e in eps])
    assert spearmanr(learned, true).statistic > 0.5  # the learned reward tracks true progress
