"""The OpenVLA-style autoregressive VLA over tiny randomly initialised transformers models
(a LLaVA with a one-layer CLIP vision tower, a text-only Llama), saved to folders and loaded
back through the real auto classes: tokens only from the action vocabulary, sampling-time
log-probabilities equal to one teacher-forced forward, PPO's ratio, bin round trips,
save / load, the one-line errors and acting on a ``lang_reach`` observation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from embodied.contracts import Batch
from policies.vla.autoregressive import AutoregressiveVLA

BINS = 16
RED, BLUE = "move the gripper to the red target", "move the gripper to the blue target"
WORDS = ("in : what action should the robot take to move the gripper to red green blue yellow target ? out "
         "reach").split()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    # the base vocabulary ends with BINS spare tokens: the action ids (OpenVLA: Llama's rarest tokens)
    words = list(dict.fromkeys(WORDS))
    vocab = {w: i for i, w in enumerate(special + words + [f"<spare{k}>" for k in range(BINS)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})  # an added token: past the base vocabulary
    return tok


def llama_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> str:
    """A ~60k-parameter LLaVA: 32x32 frames, 8-pixel patches (16 image tokens), two Llama layers."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    folder = tmp_path_factory.mktemp("tiny_llava")
    tok = tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    config = LlavaConfig(vision_config=vision, text_config=llama_config(len(tok)),
                         image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   image_token="<image>", num_additional_image_tokens=1).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    from transformers import LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tok))).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def vla(folder: str, **kw) -> AutoregressiveVLA:
    torch.manual_seed(1)  # the value head
    return AutoregressiveVLA(folder, **{"action_dim": 3, "camera": "front", "bins": BINS, **kw})


def obs(n: int, seed: int = 0, texts=(RED,)) -> dict:
    rng = np.random.default_rng(seed)
    return {"pixels": {"front": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)},
            "instruction": [texts[i % len(texts)] for i in range(n)]}


# -- tokens ---------------------------------------------------------------------------
def test_sampled_tokens_are_always_action_tokens_even_where_the_model_prefers_others(llava):
    p = vla(llava, temperature=50.0)  # nearly uniform over the action ids
    end = p.tokenizer.vocab_size  # the base vocabulary; <image> is added after it
    assert p.vocab_end == end and p.action_ids.tolist() == list(range(end - 1, end - 1 - BINS, -1))  # the last BINS
    o = obs(64, texts=(RED, "reach the yellow target"))
    feats = p.features({**o, "pixels": {"front": torch.as_tensor(o["pixels"]["front"])}})
    with torch.no_grad():
        free = p.actor(**feats.inputs).logits[:, -1].argmax(-1)
    assert (free < p.vocab_end - BINS).any()  # unrestricted, the model would often write a word here
    tokens = np.concatenate([p.step(o).extras["tokens"] for _ in range(4)])
    assert tokens.shape == (256, 3) and tokens.min() >= 0 and tokens.max() < BINS
    assert len(np.unique(tokens)) == BINS  # a hot temperature reaches every bin
    cold = vla(llava, temperature=1e-3).step(obs(8))  # ~argmax, still an action token
    assert cold.extras["tokens"].max() < BINS and np.abs(cold.action).max() <= 1.0


def test_bin_centres_round_trip_through_the_stored_q01_q99_range(llava):
    p = vla(llava)
    demo = np.random.default_rng(0).uniform([-0.5, -0.2, 0.0], [0.5, 0.2, 0.0], (2000, 3))
    p.set_normalization(demo)
    low, high = p.action_low.numpy(), p.action_high.numpy()
    np.testing.assert_allclose(low[:2], [-0.49, -0.196], atol=0.01)
    np.testing.assert_allclose(high[:2], [0.49, 0.196], atol=0.01)
    assert high[2] - low[2] == pytest.approx(1e-3, rel=1e-3)  # a constant dimension gets a tiny range
    ids = torch.arange(BINS)[:, None].expand(BINS, 3)  # N bins = N centres
    centres = p.to_action(ids)
    torch.testing.assert_close(centres[0], p.action_low) and torch.testing.assert_close(centres[-1], p.action_high)
    assert torch.equal(p.tokens_of(centres), ids)
    assert p.tokens_of(torch.tensor([[3.0, -3.0, 0.0]]))[0, :2].tolist() == [BINS - 1, 0]
    assert set(p.state_dict()) >= {"action_low", "action_high", "action_ids"}


# -- log-probabilities -------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampling_log_probs_equal_one_teacher_forced_forward_in_any_batch(llava, temperature):
    p = vla(llava, temperature=temperature)
    o = obs(6, texts=(RED, "reach the blue target", "move"))  # three prompt lengths: left padding
    step = p.step(o)
    t = {"pixels": {"front": torch.as_tensor(o["pixels"]["front"])}, "instruction": o["instruction"]}
    tokens = torch.as_tensor(step.extras["tokens"])
    scored = p.log_prob(p.dist_params(p.features(t)), tokens)
    np.testing.assert_allclose(scored.detach().numpy(), step.log_prob, atol=1e-5, rtol=0)
    for i in (0, 2):  # each row alone (no padding) scores as in the batch
        alone = {"pixels": {"front": t["pixels"]["front"][i:i + 1]}, "instruction": o["instruction"][i:i + 1]}
        with torch.no_grad():
            assert abs(float(p.log_prob(p.dist_params(p.features(alone)), tokens[i:i + 1])) - step.log_prob[i]) < 1e-5
    # by hand for row 0: full-vocabulary logits, everything but the action ids at -inf
    f = p.features({"pixels": {"front": t["pixels"]["front"][:1]}, "instruction": o["instruction"][:1]})
    ids = p.action_ids[tokens[0]]
    with torch.no_grad():
        logits = p.actor(input_ids=torch.cat([f.inputs["input_ids"], ids[None, :-1]], 1),
                         pixel_values=f.inputs["pixel_values"]).logits[0, -3:]
    masked = torch.full_like(logits, -torch.inf)
    masked[:, p.action_ids] = logits[:, p.action_ids]
    direct = (masked / temperature).log_softmax(-1).gather(-1, ids[:, None]).sum()
    assert abs(float(direct) - step.log_prob[0]) < 1e-5
    # the gradient reaches the model, not the value head
    p.zero_grad()
    params = p.dist_params(p.features(t))
    p.log_prob(params, tokens).sum().backward()
    assert p.actor.lm_head.weight.grad.abs().sum() > 0
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.actor.model.vision_tower.parameters())
    assert all(q.grad is None for q in p.critic.parameters())
    assert p.entropy(params).shape == (6,) and (p.entropy(params) <= 3 * np.log(BINS) + 1e-4).all()


def test_the_value_head_reads_the_prompt_end_detached(llava):
    p = vla(llava)
    o = obs(4, texts=(RED, BLUE))
    t = {"pixels": {"front": torch.as_tensor(o["pixels"]["front"])}, "instruction": o["instruction"]}
    step = p.step(o)
    feats = p.features(t)
    p.log_prob(p.dist_params(feats), torch.as_tensor(step.extras["tokens"]))  # the hidden state of this forward
    v = p.value_of(feats)
    np.testing.assert_allclose(v.detach().numpy(), step.value, atol=1e-5)
    np.testing.assert_allclose(p.value(o), step.value, atol=1e-5)  # a prompt-only forward agrees
    v.sum().backward()
    assert all(q.grad is None for q in p.actor.parameters())
    assert p.critic[-1].weight.grad.abs().sum() > 0
    assert vla(llava, value_head=False).step(obs(2)).value is None


def ppo_over(policy, **kw):
    from embodied.learners import make_learner

    space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (12,), np.float32),
                         "pixels": spaces.Dict({"front": spaces.Box(0, 255, (32, 32, 3), np.uint8)}),
                         "instruction": spaces.Text(256)})
    cfg = {"head": "categorical", "num_steps": 8, "num_minibatches": 2, "update_epochs": 1, "lr": 1e-3, **kw}
    return make_learner("ppo", space, spaces.Box(-1, 1, (3,), np.float32), {"policy": policy}, **cfg)


def test_ppo_ratio_is_one_before_an_update_and_moves_after_it(llava):
    learner = ppo_over(vla(llava, temperature=0.8))
    n = 8
    o = obs(n, texts=(RED, BLUE, "reach the green target"))
    step = learner.net.step(o)
    rng = np.random.default_rng(0)
    t = lambda x: torch.as_tensor(np.asarray(x))  # noqa: E731
    batch = Batch(obs={"state": t(np.zeros((n, 12), np.float32)), "pixels": {"front": t(o["pixels"]["front"])},
                       "instruction": learner.net.instruction_ids(o["instruction"])},
                  action=t(step.action), reward=t(np.zeros(n, np.float32)), discount=None, next_obs={},
                  extras={"tokens": t(step.extras["tokens"]), "log_prob": t(step.log_prob), "value": t(step.value),
                          "advantage": t(rng.normal(size=n).astype(np.float32)),
                          "return": t(rng.normal(size=n).astype(np.float32))})
    rows = learner._rollout_rows(batch)
    net = learner.net
    before = net.log_prob(net.dist_params(net.features(rows["obs"])), rows["sample"]).detach()
    torch.testing.assert_close(before, rows["log_prob"], atol=1e-5, rtol=0)  # ratio exactly 1
    out = learner.update(batch)
    assert np.isfinite(out["loss/policy"]) and np.isfinite(out["loss/value"])
    after = net.log_prob(net.dist_params(net.features(rows["obs"])), rows["sample"]).detach()
    assert (after - rows["log_prob"]).abs().max() > 1e-4
    assert not net.actor.training  # dropout stays off under PPO's train()


# -- save / load, errors, env ---------------------------------------------------------------
def test_save_and_load_round_trip_gives_the_same_actions(llava, tmp_path):
    import policies
    from policies.vla.autoregressive import AutoregressiveVLA as Cls

    p = vla(llava, temperature=0.7)
    p.set_normalization(np.random.default_rng(0).uniform(-0.3, 0.3, (100, 3)))
    with torch.no_grad():  # fine-tuned weights: the saved ones, not the folder's, must come back
        p.actor.lm_head.weight.add_(torch.randn_like(p.actor.lm_head.weight))
    policies.save_policy(p, tmp_path / "arvla")
    q = policies.load_policy(tmp_path / "arvla")
    assert isinstance(q, Cls) and q.spec() == p.spec() and q.temperature == 0.7
    o = obs(4, seed=3, texts=(RED, BLUE))
    a, b = p.step(o, deterministic=True), q.step(o, deterministic=True)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_allclose(a.log_prob, b.log_prob, atol=1e-6)
    np.testing.assert_allclose(a.value, b.value, atol=1e-6)
    assert not torch.equal(q.actor.lm_head.weight, vla(llava).actor.lm_head.weight)


def test_one_line_errors(llava, llama, tmp_path):
    p = vla(llava)
    with pytest.raises(ValueError, match=r"exceeds the model's limit of 64 positions \(max_position_embeddings\)"):
        p.step(obs(1, texts=("reach " * 40,)))
    with pytest.raises(ValueError, match="text-only language model and cannot read camera 'front'"):
        vla(llama)
    with pytest.raises(ValueError, match="vision-language model: name the camera"):
        vla(llava, camera=None)
    image_id = p.tokenizer.convert_tokens_to_ids("<image>")
    with pytest.raises(ValueError, match=f"special token id {image_id} \\('<image>'\\)"):
        vla(llava, vocab_end=image_id + 1)
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        vla(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="lacks camera 'front'"):
        p.step({"instruction": [RED], "pixels": {"wrist": np.zeros((1, 32, 32, 3), np.uint8)}})


def test_a_text_only_lm_acts_from_the_instruction_alone(llama):
    p = vla(llama, camera=None, action_dim=2)
    assert p.io() == {"action_dim": 2, "state_dim": 0, "cameras": {}}
    step = p.step({"instruction": [RED, BLUE, RED]})
    assert step.action.shape == (3, 2) and step.extras["tokens"].max() < BINS
    t = torch.as_tensor(step.extras["tokens"])
    scored = p.log_prob(p.dist_params(p.features({"instruction": [RED, BLUE, RED]})), t)
    np.testing.assert_allclose(scored.detach().numpy(), step.log_prob, atol=1e-5, rtol=0)
    rescored = vla(llama, camera=None, action_dim=2, rescore=True).step({"instruction": [RED]})  # teacher-forced
    assert rescored.log_prob.shape == (1,) and rescored.extras["tokens"].shape == (1, 2)


def test_acts_on_a_lang_reach_observation_through_the_processor(llava):
    import envs
    from policies.base import check_base

    env = envs.make_env("lang_reach", pixels=True, image_size=32)
    p = vla(llava, action_dim=2)
    check_base(p, env.observation_space, env.action_space, "autoregressive")
    o, _ = env.reset(seed=0)
    batch = {"pixels": {c: f[None] for c, f in o["pixels"].items()}, "state": o["state"][None],
             "instruction": o["instruction"]}
    step = p.step(batch)
    assert step.action.shape == (1, 2) and step.action.dtype == np.float32 and np.abs(step.action).max() <= 1
    env.step(step.action[0])
    # the frame reaches the model: another frame, the same tokens, another log-probability
    other = {**batch, "pixels": {"front": 255 - batch["pixels"]["front"]}}
    t = torch.as_tensor(step.extras["tokens"])
    with torch.no_grad():
        lp = [float(p.log_prob(p.dist_params(p.features(p.numpy_to_tensors(b))), t)) for b in (batch, other)]
    assert abs(lp[0] - float(step.log_prob[0])) < 1e-5 and abs(lp[0] - lp[1]) > 1e-6
    env.close()
