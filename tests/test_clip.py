"""CLIP VLM-RM: the formula on hand-computed embeddings, and a tiny random open_clip model
run for real (preprocessing vs open_clip's PIL transform, batching, caching, errors)."""

import math

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed")

from rewards.clip import CLIPReward, goal_baseline, projection, vlm_rm_reward  # noqa: E402

TINY = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
)
GOALS = ["a red block on the green target", "{instruction}"]
BASELINES = ["a robot arm", "a table"]


def tiny(**kw) -> CLIPReward:
    torch.manual_seed(0)
    args = dict(model_name="tiny-test", pretrained=None, model_cfg=TINY, goal_prompts=GOALS,
                baseline_prompts=BASELINES, alpha=0.5, batch_size=4)
    args.update(kw)
    return CLIPReward(**args)


@pytest.fixture(scope="module")
def reward() -> CLIPReward:
    return tiny()


def frames(n=7, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    # smooth images (as rendered scenes are) plus a little noise
    base = rng.integers(0, 256, (n, h // 8, w // 8, 3)).astype(np.uint8)
    up = base.repeat(8, axis=1).repeat(8, axis=2)
    return np.clip(up.astype(int) + rng.integers(-10, 11, up.shape), 0, 255).astype(np.uint8)


def pil_transform(reward):
    """open_clip's own evaluation transform (PIL based) for the model's preprocess config."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**reward.model.visual.preprocess_cfg), is_train=False)


# ---------------------------------------------------------------- the formula by hand
def test_alpha_zero_is_cosine_similarity_with_unit_goal():
    g = torch.tensor([0.6, 0.8, 0.0])
    b = torch.tensor([0.0, 0.0, 1.0])
    P = projection(g, b, alpha=0.0)
    assert torch.equal(P, torch.eye(3))
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 2.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]), dim=-1)
    assert torch.allclose(vlm_rm_reward(x, g, P), x @ g, atol=1e-6)
    # the goal itself gets the maximum 1
    assert vlm_rm_reward(x, g, P)[2].item() == pytest.approx(1.0)


def test_alpha_one_hand_computed():
    g, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    P = projection(g, b, alpha=1.0)
    # d = (1, -1): P = d d^T / 2
    assert torch.allclose(P, torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))
    s = 1 / math.sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]])
    # x = b: (x - g) P = (-1, 1), |.|^2 = 2 -> 0;  x = (s, s): component along d is (-.5, .5) -> 0.75
    assert torch.allclose(vlm_rm_reward(x, g, P), torch.tensor([1.0, 0.0, 0.75]), atol=1e-6)
    # with alpha = 1 moving x orthogonally to d changes nothing
    x2 = torch.tensor([[1.0, 0.0], [1.0 + 0.3, 0.3]])
    r = vlm_rm_reward(x2, g, P)
    assert r[0] == pytest.approx(r[1].item())


def test_means_are_not_renormalised_and_projection_matches_numpy():
    goal = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])  # normalised: e1, e2
    base = torch.tensor([[0.0, 0.0, 5.0]])
    g, b = goal_baseline(goal, base)
    assert torch.allclose(g, torch.tensor([0.5, 0.5, 0.0]))  # norm 1/sqrt(2), kept
    assert torch.allclose(b, torch.tensor([0.0, 0.0, 1.0]))
    alpha = 0.3
    P = projection(g, b, alpha).numpy()
    d = (g - b).numpy()
    expected = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(3)
    np.testing.assert_allclose(P, expected, atol=1e-6)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    direct = 1 - 0.5 * np.sum(((x - g.numpy()) @ expected) ** 2, axis=1)
    ours = vlm_rm_reward(torch.tensor(x, dtype=torch.float32), g, torch.tensor(P)).numpy()
    np.testing.assert_allclose(ours, direct, atol=1e-5)


def test_identical_goal_and_baseline_is_an_error():
    g = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="baseline_prompts"):
        projection(g, g.clone(), alpha=0.5)


# ---------------------------------------------------------------- tiny open_clip model
def test_score_frames_matches_open_clip_pil_pipeline(reward):
    from PIL import Image

    f = frames()
    ours = reward.score_frames(f, "push the red block")
    # reference: open_clip's own PIL transform, encode_image/encode_text, formula in numpy
    transform = pil_transform(reward)
    with torch.no_grad():
        pix = torch.stack([transform(Image.fromarray(im)) for im in f])
        x = torch.nn.functional.normalize(reward.model.encode_image(pix), dim=-1).numpy()
        tok = reward.tokenizer
        ge = reward.model.encode_text(tok(["a red block on the green target", "push the red block"])).numpy()
        be = reward.model.encode_text(tok(BASELINES)).numpy()
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    g, b = unit(ge).mean(0), unit(be).mean(0)
    d = g - b
    P = 0.5 * np.outer(d, d) / (d @ d) + 0.5 * np.eye(len(d))
    expected = 1 - 0.5 * np.sum(((x - g) @ P) ** 2, axis=1)
    assert ours.dtype == np.float32 and ours.shape == (len(f),)
    np.testing.assert_allclose(ours, expected, atol=2e-3)
    assert np.ptp(ours) > 1e-3  # different frames get different rewards


def test_batched_preprocess_close_to_pil_transform(reward):
    from PIL import Image

    transform = pil_transform(reward)
    for h, w in [(48, 64), (64, 48), (120, 120), (20, 28)]:
        f = frames(3, h, w, seed=h)
        ref = torch.stack([transform(Image.fromarray(im)) for im in f])
        ours = reward.preprocess(f)
        assert ours.shape == ref.shape
        # 2 grey levels / smallest std
        assert (ours - ref).abs().max().item() < 2.5 / 255 / 0.26


def test_batch_invariance():
    f = frames(9)
    a = tiny(batch_size=2).score_frames(f, "push")
    b = tiny(batch_size=64).score_frames(f, "push")
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = tiny(batch_size=2).score_frames(f[3:5], "push")
    np.testing.assert_allclose(a[3:5], c, atol=1e-5)


def test_text_embeddings_computed_once_per_instruction(reward, monkeypatch):
    calls = []
    original = reward.embed_text
    monkeypatch.setattr(reward, "embed_text", lambda p: calls.append(p) or original(p))
    reward._text_cache.clear()
    f = frames(3)
    reward.score_frames(f, "open the drawer")
    reward.score_frames(f, "open the drawer")
    assert len(calls) == 2  # goal + baseline prompts, once
    reward.score_frames(f, "close the drawer")
    assert len(calls) == 4
    assert calls[0] == ["a red block on the green target", "open the drawer"]


def test_alpha_zero_single_goal_is_cosine_with_goal_text():
    r = tiny(alpha=0.0, goal_prompts=["{instruction}"], baseline_prompts=[])
    f = frames(4)
    with torch.no_grad():
        x = r.embed_images(f)
        t = torch.nn.functional.normalize(r.embed_text(["lift the cube"]), dim=-1)[0]
    np.testing.assert_allclose(r.score_frames(f, "lift the cube"), (x @ t).numpy(), atol=1e-5)


def test_contrast_mode_formula():
    r = tiny(mode="contrast", goal_prompts=["{instruction} done"], negative_prompts=["{instruction} not done"],
             contrast_weights=(0.7, 0.3))
    f = frames(5)
    with torch.no_grad():
        x = r.embed_images(f)
        p = torch.nn.functional.normalize(r.embed_text(["lift done"]), dim=-1)[0]
        n = torch.nn.functional.normalize(r.embed_text(["lift not done"]), dim=-1)[0]
    expected = 0.7 * (x @ p) - 0.3 * (x @ n)
    np.testing.assert_allclose(r.score_frames(f, "lift"), expected.numpy(), atol=1e-5)


def test_label_episode_rewards_the_reached_frames(reward):
    f = frames(6)
    labels = reward.label_episode(f, "push")
    assert labels.ok and labels.rewards.shape == (5,)
    np.testing.assert_allclose(labels.rewards, reward.score_frames(f[1:], "push"), atol=1e-6)


def test_local_checkpoint_file_loads_the_same_weights(tmp_path, reward):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reward.model.state_dict().items()}, str(path))
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = CLIPReward(model_name="tiny-test", pretrained=str(path), model_cfg=TINY, goal_prompts=GOALS,
                        baseline_prompts=BASELINES, alpha=0.5)
    f = frames(3)
    np.testing.assert_allclose(loaded.score_frames(f, "push"), reward.score_frames(f, "push"), atol=1e-6)
    with pytest.raises(ValueError, match="reward.pretrained"):  # an unknown tag, nothing downloaded
        CLIPReward(model_name="tiny-test", pretrained="no_such_tag", model_cfg=TINY)
    with pytest.raises(FileNotFoundError, match="reward.pretrained"):
        CLIPReward(model_name="tiny-test", pretrained=str(tmp_path / "missing.safetensors"))


def test_bad_input_errors(reward):
    with pytest.raises(ValueError, match="uint8"):
        reward.score_frames(frames(2).astype(np.float32), "push")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        reward.score_frames(frames(2)[..., 0], "push")
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        reward.score_frames(np.zeros((2, 8, 8, 4), np.uint8), "push")
    with pytest.raises(ValueError, match="instruction"):
        reward.score_frames(frames(2), "")
    assert reward.score_frames(np.zeros((0, 8, 8, 3), np.uint8), "push").shape == (0,)
    with pytest.raises(ValueError, match="alpha"):
        tiny(alpha=1.5)
    with pytest.raises(ValueError, match="negative_prompts"):
        tiny(mode="contrast")
    with pytest.raises(ValueError, match="model_cfg is missing"):
        tiny(model_cfg={"embed_dim": 32})


def test_registry_and_hydra_configs_build_the_tiny_model():
    import pathlib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rewards import make_reward

    cfg_dir = str(pathlib.Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(cfg_dir, version_base=None):
        cfg = compose("eval_reward", overrides=["reward=clip_tiny"])
        real = compose("eval_reward", overrides=["reward=clip"])
    kw = OmegaConf.to_container(cfg.reward, resolve=True)
    assert real.reward.model_name == "ViT-B-32" and real.reward.pretrained == "laion2b_s34b_b79k"
    assert kw["alpha"] == real.reward.alpha and kw["pretrained"] is None
    model = make_reward(kw.pop("name"), **kw)
    assert isinstance(model, CLIPReward) and model.granularity == "frame" and not model.asynchronous
    assert model.score_frames(frames(2), "push the block").shape == (2,)
