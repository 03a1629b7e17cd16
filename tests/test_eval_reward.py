"""embodied-eval-reward: metrics on episodes with known answers, a smoke run with the tiny
CLIP model on a built-in env, recorded-dataset input, and bad input."""

import json
import pathlib

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from embodied.contracts import EpisodeLabels, RewardModel, Transition
from rewards.evaluate import collect_episodes, evaluate, run

CONFIGS = str(pathlib.Path(__file__).resolve().parents[1] / "configs")


class BrightnessReward(RewardModel):
    """A real (if simple) frame reward: the mean brightness of the frame in [0, 1]."""

    name = "brightness"

    def score_frames(self, frames, instruction):
        return frames.reshape(len(frames), -1).mean(1).astype(np.float32) / 255.0


class EveryOtherFails(RewardModel):
    """An episode model whose label fails on odd episodes (as a VLM that broke format)."""

    name = "flaky"
    granularity = "episode"

    def __init__(self):
        self.calls = 0

    def label_episode(self, frames, instruction):
        self.calls += 1
        if self.calls % 2 == 0:
            return EpisodeLabels.failed(len(frames) - 1, "reply broke the answer format")
        return EpisodeLabels(BrightnessReward().score_frames(frames[1:], instruction))


def episode(progress, policy="scripted", success_at=0.9):
    progress = np.asarray(progress, float)
    frames = np.stack([np.full((8, 8, 3), round(255 * p), np.uint8) for p in progress])
    return {"frames": frames, "progress": progress, "success": progress >= success_at,
            "instruction": "brighten", "policy": policy}


def test_metrics_on_episodes_with_known_answers():
    eps = [episode(np.linspace(0, 1, 11)), episode(np.linspace(1, 0, 11) * 0.5, policy="random")]
    metrics, records = evaluate(BrightnessReward(), eps, success_threshold=0.85)
    assert metrics["episodes"] == 2 and metrics["frames"] == 22 and metrics["failed_episodes"] == 0
    # episode 1 rises (VOC 1), episode 2 falls (VOC -1)
    assert metrics["voc"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["voc_true_progress"] == pytest.approx(0.0, abs=1e-9)
    # prediction equals progress up to uint8 rounding: correlation 1 and perfect detection
    assert metrics["progress_corr"]["pearson"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["progress_corr"]["spearman"] == pytest.approx(1.0, abs=1e-3)
    s = metrics["success"]
    assert s["auroc"] == 1.0 and s["precision"] == 1.0 and s["recall"] == 1.0
    assert metrics["score_range"] == pytest.approx([0.0, 1.0])
    assert metrics["by_policy"]["scripted"]["mean_score"] > metrics["by_policy"]["random"]["mean_score"]
    np.testing.assert_allclose(records[0]["score"], np.linspace(0, 1, 11), atol=3e-3)


def test_minmax_normalisation_is_pooled_over_all_frames():
    eps = [episode([0.2, 0.4]), episode([0.4, 0.6])]
    metrics, records = evaluate(BrightnessReward(), eps, success_threshold=0.5)
    np.testing.assert_allclose(records[0]["score"], [0.0, 0.5], atol=0.02)
    np.testing.assert_allclose(records[1]["score"], [0.5, 1.0], atol=0.02)
    raw, _ = evaluate(BrightnessReward(), eps, normalize="none")
    assert raw["score_range"] == [0.0, 1.0]


def test_failed_episode_labels_are_counted_not_scored():
    eps = [episode(np.linspace(0, 1, 6)) for _ in range(4)]
    metrics, records = evaluate(EveryOtherFails(), eps)
    assert metrics["episodes"] == 2 and metrics["failed_episodes"] == 2
    assert metrics["failures"][0] == {"episode": 1, "error": "reply broke the answer format"}
    # episode models label transitions: the rewards stand for frames 1..T
    assert len(records[0]["pred"]) == 5 and len(records[0]["progress"]) == 5
    with pytest.raises(RuntimeError, match="every episode failed"):
        model = EveryOtherFails()
        model.calls = 1
        evaluate(model, eps[:1])


def test_collected_episodes_spread_from_failure_to_success():
    eps = collect_episodes("reach", 4, 30, 32, None, ["scripted", "partial", "noisy", "random"], seed=0)
    assert [e["policy"] for e in eps] == ["scripted", "partial", "noisy", "random"]
    for e in eps:
        assert e["frames"].shape == (31, 32, 32, 3) and e["frames"].dtype == np.uint8
        assert len(e["progress"]) == len(e["success"]) == 31 and e["progress"][0] == 0.0
        assert "target" in e["instruction"]
    assert eps[0]["success"][-1] and eps[0]["progress"][-1] > 0.9
    assert eps[3]["progress"][-1] < eps[0]["progress"][-1]


def test_push_scripted_policy_solves_push():
    eps = collect_episodes("push", 2, 60, 32, None, ["scripted"], seed=0)
    assert all(e["success"][-1] for e in eps)


def compose_cfg(tmp_path, *overrides):
    with initialize_config_dir(CONFIGS, version_base=None):
        return compose("eval_reward", overrides=[f"out_dir={tmp_path}", *overrides])


def test_smoke_run_with_tiny_clip(tmp_path, capsys):
    cfg = compose_cfg(tmp_path, "reward=clip_tiny", "episodes=4", "max_steps=20", "image_size=32", "plots=2")
    metrics = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["episodes"] == 4 and saved["frames"] == 84 and saved["reward"] == "clip"
    for key in ("voc", "progress_corr", "success", "by_policy"):
        assert key in saved
    assert -1.0 <= saved["voc"] <= 1.0 and 0.0 <= saved["success"]["auroc"] <= 1.0
    assert saved["success"]["precision"] == metrics["success"]["precision"]
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 2 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    assert "VOC" in capsys.readouterr().out


def test_recorded_dataset_input(tmp_path):
    from embodied.datasets import DatasetRecorder

    root = tmp_path / "ds"
    with DatasetRecorder(root, fps=10) as rec:
        for ep in range(2):
            prog = np.linspace(0, 1, 9)
            frames = [np.full((64, 64, 3), int(40 + 200 * p), np.uint8) for p in prog]
            for t in range(8):
                obs = {"pixels": {"front": frames[t]}, "instruction": "brighten"}
                nxt = {"pixels": {"front": frames[t + 1]}, "instruction": "brighten"}
                rec.add(Transition(obs, np.zeros(2, np.float32), 0.0, nxt, False, t == 7, t == 0, ep, t,
                                   info={"progress": prog[t + 1], "success": prog[t + 1] > 0.9}))
    from rewards import evaluate as ev

    eps = ev.load_episodes(str(root), None, None)
    assert len(eps) == 2 and eps[0]["frames"].shape == (7, 64, 64, 3)
    # frame t+1 of the dataset is paired with the ground truth after step t
    np.testing.assert_allclose(eps[0]["progress"], np.linspace(0, 1, 9)[1:8], atol=1e-6)
    metrics, _ = evaluate(BrightnessReward(), eps)
    assert metrics["voc"] > 0.95 and metrics["progress_corr"]["pearson"] > 0.95


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="policy_mix"):
        collect_episodes("reach", 1, 5, 32, None, ["expert"], seed=0)
    with pytest.raises(ValueError, match="normalize"):
        evaluate(BrightnessReward(), [episode([0.1, 0.2])], normalize="zscore")
    with pytest.raises(ValueError, match="reward=env"):
        run(compose_cfg(tmp_path, "reward=env"))
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        run(compose_cfg(tmp_path, "reward=clip_tiny", f"dataset_path={tmp_path}"))


@pytest.mark.parametrize("reward, min_pearson", [("gvl_oracle", 0.95), ("vlac_oracle", 0.9), ("rlvlmf_oracle", 0.0)])
def test_every_vlm_module_is_evaluated_on_a_builtin_task(tmp_path, reward, min_pearson):
    """The scripted VLM answers from the simulator's truth through each module's real prompt
    and parser, so GVL and VLAC must track true progress; RL-VLM-F is first fitted on
    episodes of another seed and must at least rank progress positively."""
    extra = ["preference_pairs=200", "reward.max_epochs=10"] if reward.startswith("rlvlmf") else []
    cfg = compose_cfg(tmp_path, f"reward={reward}", "episodes=8", "max_steps=30", "image_size=32", *extra)
    metrics = run(cfg)
    assert metrics["oracle"] is True and metrics["failed_episodes"] == 0
    assert metrics["progress_corr"]["pearson"] > min_pearson
    assert list((tmp_path / "plots").glob("*.png"))
    if reward.startswith("rlvlmf"):
        assert metrics["reward_fit"]["pairs"] == 200
