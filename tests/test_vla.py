"""The native VLA: action tokens, log-probabilities at the sampling temperature, PPO's ratio
over a fine-tuned VLA, critic warm-up, instruction conditioning, the language suite
``lang_reach``, the task curriculum, VLM-reward mixing and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from embodied.contracts import Batch
from policies.vla.native import NativeVLA
from policies.vla.tokenizer import ActionTokenizer

CAM = {"top": (32, 32, 3)}
RED, BLUE = "move the gripper to the red target", "move the gripper to the blue target"


def tiny(text: str = "learned", **kw) -> NativeVLA:
    torch.manual_seed(0)
    args = dict(action_dim=2, state_dim=4, cameras=CAM, bins=kw.pop("bins", 11), text=text, feature_dim=16,
                channels=8, hidden=(32,), value_hidden=(16,))
    return NativeVLA(**{**args, **kw})


def obs(n: int, seed: int = 0, texts=(RED,)) -> dict:
    rng = np.random.default_rng(seed)
    return {"state": rng.normal(size=(n, 4)).astype(np.float32),
            "pixels": {"top": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)},
            "instruction": [texts[i % len(texts)] for i in range(n)]}


def tensors(o: dict) -> dict:
    return {"state": torch.as_tensor(o["state"]), "pixels": {"top": torch.as_tensor(o["pixels"]["top"])},
            "instruction": list(o["instruction"])}


# -- tokens ---------------------------------------------------------------------------
@pytest.mark.parametrize("bins", [2, 7, 256])
def test_every_bin_centre_decodes_to_itself_and_out_of_range_actions_clip(bins):
    tok = ActionTokenizer(bins)
    ids = torch.arange(bins)
    centres = tok.decode(ids)
    assert torch.allclose(centres, torch.linspace(-1, 1, bins), atol=1e-6) and len(centres) == bins  # N bins = N centres
    assert torch.equal(tok.encode(centres), ids)
    assert tok.encode(torch.tensor([-3.0, 5.0])).tolist() == [0, bins - 1]
    with pytest.raises(ValueError, match="bins >= 2"):
        ActionTokenizer(1)


def test_policy_tokens_round_trip_through_its_stored_action_range():
    p = tiny(bins=21)
    p.set_normalization(None, np.random.default_rng(0).uniform(-0.5, 0.5, (500, 2)))
    assert (p.action_high < 0.55).all() and (p.action_low > -0.55).all()  # the 1st..99th percentile range
    ids = torch.arange(21)[:, None].expand(21, 2)
    assert torch.equal(p.tokens_of(p.to_action(ids)), ids)
    assert p.tokens_of(torch.tensor([[2.0, -2.0]])).tolist() == [[20, 0]]


# -- log-probabilities -------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_log_probs_of_sampled_tokens_match_a_direct_computation_at_the_sampling_temperature(temperature):
    p = tiny(temperature=temperature)
    o = obs(6)
    step = p.step(o)
    logits = p.logits(p.features(tensors(o))).detach()
    direct = torch.log_softmax(logits / temperature, -1).gather(-1, torch.as_tensor(step.extras["tokens"])[..., None])
    np.testing.assert_allclose(step.log_prob, direct.squeeze(-1).sum(-1).numpy(), rtol=1e-5, atol=1e-5)
    assert step.action.shape == (6, 2) and step.value.shape == (6,)
    assert (step.extras["tokens"] >= 0).all() and (step.extras["tokens"] < p.bins).all()


def ppo_over(policy, **kw):
    from embodied.learners import make_learner

    space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, (4,), np.float32),
                         "pixels": spaces.Dict({"top": spaces.Box(0, 255, CAM["top"], np.uint8)}),
                         "instruction": spaces.Text(256)})
    cfg = {"head": "categorical", "num_steps": 8, "num_minibatches": 2, "update_epochs": 2, **kw}
    return make_learner("ppo", space, spaces.Box(-1, 1, (2,), np.float32), {"policy": policy}, **cfg)


def rollout_batch(learner, n: int = 8, seed: int = 0) -> Batch:
    o = obs(n, seed, texts=(RED, BLUE))
    step = learner.net.step(o)
    ids = learner.net.instruction_ids(o["instruction"])
    rng = np.random.default_rng(seed)
    t = lambda x: torch.as_tensor(np.asarray(x))  # noqa: E731
    return Batch(obs={"state": t(o["state"]), "pixels": {"top": t(o["pixels"]["top"])}, "instruction": ids},
                 action=t(step.action), reward=t(np.zeros(n, np.float32)), discount=None, next_obs={},
                 extras={"tokens": t(step.extras["tokens"]), "log_prob": t(step.log_prob), "value": t(step.value),
                         "advantage": t(rng.normal(size=n).astype(np.float32)),
                         "return": t(rng.normal(size=n).astype(np.float32))})


def test_ppo_ratio_over_a_vla_is_one_before_the_first_update_and_moves_after_it():
    learner = ppo_over(tiny(temperature=0.7))
    batch = rollout_batch(learner)
    rows = learner._rollout_rows(batch)
    logp = learner.net.log_prob(learner.net.dist_params(learner.net.features(rows["obs"])), rows["sample"])
    torch.testing.assert_close(logp.detach(), rows["log_prob"], rtol=1e-5, atol=1e-5)  # ratio exactly 1
    learner.update(batch)
    after = learner.net.log_prob(learner.net.dist_params(learner.net.features(rows["obs"])), rows["sample"])
    assert (after.detach() - rows["log_prob"]).abs().max() > 1e-4


def test_critic_warm_up_trains_the_value_head_and_leaves_the_policy_alone():
    learner = ppo_over(tiny(), critic_warmup=1)
    batch = rollout_batch(learner)
    actor = [p.detach().clone() for p in [*learner.net.actor.parameters(), *learner.net.encoder.parameters()]]
    critic = [p.detach().clone() for p in learner.net.critic.parameters()]
    out = learner.update(batch)
    assert out["critic_warmup"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(actor, [*learner.net.actor.parameters(),
                                                         *learner.net.encoder.parameters()]))
    assert any(not torch.equal(a, b) for a, b in zip(critic, learner.net.critic.parameters()))
    learner.update(batch)  # warm-up over: the policy moves
    assert any(not torch.equal(a, b) for a, b in zip(actor, learner.net.actor.parameters()))


def test_each_ppo_loss_over_a_vla_moves_only_its_own_networks():
    learner = ppo_over(tiny())
    terms = learner.losses(rollout_batch(learner))
    owners = learner.loss_owners()
    named = dict(learner.net.named_parameters())
    for name, loss in terms.items():
        learner.net.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        own = {id(p) for m in owners[name] for p in (m.parameters() if hasattr(m, "parameters") else [m])}
        for pname, p in named.items():
            if id(p) not in own:
                assert p.grad is None or not p.grad.abs().sum(), f"{name} moved {pname}"


def test_a_chunked_vla_or_a_non_token_policy_is_refused_for_ppo_in_one_line():
    with pytest.raises(ValueError, match="predicts chunks of 3"):
        ppo_over(tiny(chunk=3))
    from policies.bc import BCPolicy

    with pytest.raises(ValueError, match="neither a token policy with a value head .* nor a LeRobot flow VLA"):
        ppo_over(BCPolicy(2, 4))


# -- instruction conditioning --------------------------------------------------------------
def test_a_vla_trained_on_two_instructions_acts_differently_for_each():
    """Same images and states, two instructions, opposite demonstrated actions."""
    p = tiny(bins=11)
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    o = obs(32, texts=(RED, BLUE))
    target = torch.tensor([[0.8, -0.8] if t == RED else [-0.8, 0.8] for t in o["instruction"]])[:, None]
    for _ in range(150):
        loss = p.bc_loss(tensors(o), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    probe = obs(8, seed=5)
    red = p.act({**probe, "instruction": [RED] * 8}, deterministic=True)
    blue = p.act({**probe, "instruction": [BLUE] * 8}, deterministic=True)
    assert (red[:, 0] > 0.4).all() and (blue[:, 0] < -0.4).all(), (red, blue)


def test_the_default_instruction_encoder_is_the_packaged_minilm_frozen_and_outside_the_weights():
    p = tiny(text="minilm")
    assert not any(k.startswith("encoder.text.") for k in p.state_dict()) and len(p.state_dict()) < 60
    emb = p.embed([RED, BLUE, RED])
    assert emb.shape == (3, 384) and torch.allclose(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    with pytest.raises(ValueError, match="more than the sentence instruction encoder accepts \\(256\\)"):
        p.step(obs(1, texts=("reach " * 300,)))


def test_a_learned_encoder_refuses_an_instruction_longer_than_its_limit():
    p = tiny(text="learned", max_tokens=4)
    with pytest.raises(ValueError, match="has 7 tokens, more than the learned instruction encoder accepts \\(4\\)"):
        p.step(obs(1, texts=(RED,)))


def test_a_vla_saved_and_loaded_by_spec_acts_identically(tmp_path):
    import policies

    p = tiny(text="minilm", temperature=0.8)
    p.set_normalization(np.ones((10, 4)), np.random.default_rng(0).uniform(-0.3, 0.3, (10, 2)))
    policies.save_policy(p, tmp_path / "vla")
    q = policies.load_policy(tmp_path / "vla")
    o = obs(3)
    np.testing.assert_array_equal(p.act(o, deterministic=True), q.act(o, deterministic=True))
    assert q.temperature == 0.8


# -- the suite, the curriculum, reward mixing ------------------------------------------------
def test_lang_reach_needs_the_instruction_the_expert_succeeds_and_a_language_blind_policy_is_near_chance():
    import envs
    from envs.builtin.scripted import reach_action

    env = envs.make_env("lang_reach", terminate_on_success=False)
    expert, blind = [], []
    for ep in range(24):
        for policy, out in ((lambda o: env.unwrapped.expert_action(), expert),
                            (lambda o: reach_action(o["state"], goal=o["state"][4:6]), blind)):  # always red
            o, info = env.reset(seed=ep)
            hit = False
            for _ in range(50):
                o, _, _, _, info = env.step(policy(o))
                hit |= info["success"]
            out.append(hit)
    assert np.mean(expert) == 1.0
    assert np.mean(blind) < 0.5
    names = {envs.make_env(f"lang_reach/{c}").reset(seed=0)[0]["instruction"] for c in ("red", "blue")}
    assert names == {RED, BLUE}
    with pytest.raises(ValueError, match="task must be one of"):
        envs.make_env("lang_reach/pink")


def test_the_curriculum_favours_tasks_near_half_success():
    from embodied.curriculum import TaskCurriculum

    cur = TaskCurriculum(["a", "b", "c"], window=10)
    for i in range(10):
        cur.observe(0, True)           # always solved
        cur.observe(1, i % 2 == 0)     # half
        cur.observe(2, False)          # never
    p = cur.probs()
    assert p[1] > p[0] and p[1] > p[2] and p.min() > 0 and abs(p.sum() - 1) < 1e-9
    env_probs = np.array([0.0, 1.0, 0.0, 0.0])
    import envs

    env = envs.make_env("lang_reach")
    env.unwrapped.set_task_probs(env_probs)
    assert {env.reset(seed=s)[1]["task_id"] for s in range(8)} == {1}


def test_a_vlm_reward_is_mixed_with_the_env_reward_at_the_configured_weight():
    from embodied.contracts import RewardModel, Transition
    from embodied.labeling import RewardLabeler
    from embodied.replay import Replay

    class Half(RewardModel):  # a frame scorer: 0.5 for every frame
        asynchronous = False

        def score_frames(self, frames, instruction):
            return np.full(len(frames), 0.5, np.float32)

        def label_episode(self, frames, instruction):
            raise NotImplementedError  # the inline path calls score_frames only

    space = spaces.Dict({"pixels": spaces.Dict({"top": spaces.Box(0, 255, (8, 8, 3), np.uint8)})})
    replay = Replay(16, space, spaces.Box(-1, 1, (2,), np.float32))
    labeler = RewardLabeler(replay, Half(), camera="top", chunk=2, env_weight=2.0)
    frame = {"pixels": {"top": np.zeros((8, 8, 3), np.uint8)}}
    for step, r in enumerate([0.0, 1.0]):
        labeler.add(Transition(obs=frame, action=np.zeros(2, np.float32), reward=r, next_obs=frame,
                               terminated=step == 1, truncated=False, is_first=step == 0, episode_id=0, step=step))
    np.testing.assert_allclose(replay.reward[:2], [0.5, 2.5])
    with pytest.raises(ValueError, match="reward=env has no model"):
        RewardLabeler(replay, None, env_weight=1.0)


@pytest.mark.parametrize("kw", [{}, {"pixels": True, "cameras": ["top"], "image_size": 64, "proprio_only": True}])
def test_lang_reach_passes_the_env_contract(kw):
    from envs import check_env, make_env

    check_env(make_env("lang_reach", **kw))


def test_smoothed_token_targets_peak_at_the_demonstrated_value_and_sigma_zero_is_one_hot():
    net = tiny(bins=11)  # centres -1, -0.8, ..., 1: spacing 0.2
    action = torch.tensor([[0.41, -1.0]])
    hard = net.token_targets(action, 0.0)
    assert torch.equal(hard.argmax(-1), torch.tensor([[7, 0]])) and torch.equal(hard.sum(-1), torch.ones(1, 2))
    soft = net.token_targets(action, 1.0)
    assert torch.allclose(soft.sum(-1), torch.ones(1, 2)) and torch.equal(soft.argmax(-1), hard.argmax(-1))
    assert soft[0, 0, 6] > soft[0, 0, 5] > soft[0, 0, 4] > 0  # neighbours share the credit, fading with distance
    assert soft[0, 0, 8] > soft[0, 0, 6]  # 0.41 is nearer 0.6 than 0.2
    o = net.numpy_to_tensors(obs(4))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(20):  # fitting the soft targets puts mass on the neighbours of 0 too
        opt.zero_grad()
        net.bc_loss(o, torch.zeros(4, 1, 2), sigma=1.0).backward()
        opt.step()
    with torch.no_grad():
        p = net.dist_params(net.features(o))[0].exp()[:, 0]
    assert p.argmax(-1).eq(5).all() and (p[:, 4] > 0.1).all() and (p[:, 6] > 0.1).all()


def test_spatial_soft_argmax_features_are_expected_positions_that_follow_the_image():
    from policies.vla.native import FiLMConvTrunk

    torch.manual_seed(0)
    trunk = FiLMConvTrunk((32, 32, 3), text_dim=4, channels=6)
    assert trunk.out_dim == 12 and FiLMConvTrunk((32, 32, 3), 4, 6, pool="flatten").out_dim == 6  # 1 x 1 x 6 map
    frames = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    frames[0, 4:10, 2:8] = 255  # a bright square top-left, then bottom-right
    frames[1, 22:28, 24:30] = 255
    feats = trunk(frames, torch.zeros(2, 4)).view(2, 6, 2)
    assert feats.abs().max() <= 1.0  # expected (x, y) on the last map's [-1, 1] grid
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)  # where the square is changes the features
    with pytest.raises(ValueError, match="pool must be"):
        FiLMConvTrunk((32, 32, 3), 4, 6, pool="mean")
