"""D4RL-style offline datasets generated in our own simulators (no downloads).

For an env, a SAC agent is trained from the state (a minimal loop: collect, replay,
update) and its actor is saved at two stages: ``medium`` (after ``medium_at`` env steps)
and ``expert`` (after ``total_steps``). Datasets, each a LeRobotDataset written by
:class:`DatasetRecorder`:

``random``         uniformly random actions
``medium``         the medium actor, stochastic
``expert``         the expert actor, stochastic
``medium_replay``  every episode the SAC agent collected until the medium stage
``medium_expert``  medium and expert episodes, ``steps`` of each
``scripted``       no SAC: the env's scripted expert. ``reach``: a noisy proportional
                   controller (``scripted_noise``); a ``scripted_distracted`` share of
                   episodes heads for a random wrong spot instead, so cloning the average
                   action fails where offline RL need not. ``push``, robosuite ``Lift`` /
                   ``PickPlaceCan`` and LIBERO pick-and-place tasks: the expert that reads
                   privileged simulator state (``env.expert_action()``,
                   envs/scripted_manipulation.py), plus ``expert_noise`` Gaussian action
                   noise; ``success_only`` keeps only the episodes that succeed
                   (demonstrations for behaviour cloning, residual RL and VLA fine-tuning)

Datasets are written in the project's layout, or another one: ``keys`` names the columns
(``dataset_keys=lerobot_libero``: LeRobot's LIBERO names) and ``ground_truth=False``
leaves out the ``next.*`` / ``gt.*`` columns.

Everything follows from the seed: the same config gives the same datasets. Trained
actors are cached under ``<output>/_policies/<hash of the training config>/``, so
generating more kinds or sizes later reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from embodied import checkpoint
from embodied.contracts import Transition
from embodied.datasets.keys import DEFAULT_KEYS
from embodied.datasets.record import DatasetRecorder
from policies import load_policy, save_policy

log = logging.getLogger("embodied")
KINDS = ("random", "medium", "expert", "medium_replay", "medium_expert")
ALL_KINDS = KINDS + ("scripted",)


@dataclass
class SACStages:
    total_steps: int = 20000
    """Env steps of SAC training; the actor at the end is the expert."""
    medium_at: int = 5000
    """Env steps after which the actor is saved as the medium policy."""
    warmup_steps: int = 1000
    """Uniformly random actions before SAC acts (and before its first update)."""
    hidden: tuple[int, ...] = (256, 256)
    """SAC actor and critic hidden sizes."""
    batch_size: int = 256
    """SAC batch size."""


@dataclass
class GenerateConfig:
    env: str = "reach"
    """Env name for envs.make_env (built-in task or gym/<Name>-v5)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """make_env keyword arguments (pixels, cameras, image_size, max_episode_steps, ...)."""
    kinds: tuple[str, ...] = KINDS
    """Which datasets to write."""
    steps: int = 10000
    """Transitions per dataset (whole episodes; the last one may pass it)."""
    seed: int = 0
    """Seeds the SAC training, the rollouts and the envs."""
    fps: int = 10
    """Frame rate written into the datasets' metadata."""
    scripted_noise: float = 1.5
    """Action noise std of the ``scripted`` reach controller (1.5: about 45 % success)."""
    scripted_distracted: float = 0.0
    """Share of ``scripted`` episodes that head for a random wrong spot (``reach``)."""
    expert_noise: float = 0.0
    """Gaussian action noise std added to the scripted expert of other envs (clipped to [-1, 1])."""
    success_only: bool = False
    """``scripted``: record only the episodes that end in success."""
    keys: Any = None
    """A :class:`~embodied.datasets.keys.DatasetKeys` naming the written columns (None: the project's)."""
    ground_truth: bool = True
    """Write the ``next.*`` / ``gt.*`` columns (False: only cameras, state, action, task)."""
    sac: SACStages = field(default_factory=SACStages)


def _state_space(env):
    from gymnasium import spaces

    return spaces.Dict({"state": env.observation_space["state"]})


def _transition(obs, action, reward, next_obs, term, trunc, info, ep, step) -> Transition:
    return Transition(obs, np.asarray(action, np.float32), float(reward), next_obs, bool(term), bool(trunc),
                      step == 0, ep, step, info={k: info[k] for k in ("success", "progress") if k in info})


def policy_cache(cfg: GenerateConfig, output: Path) -> Path:
    key = {"env": cfg.env, "env_kwargs": {k: v for k, v in cfg.env_kwargs.items() if k not in ("pixels", "cameras", "image_size")},
           "seed": cfg.seed, "sac": asdict(cfg.sac)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:12]
    return output / "_policies" / f"{cfg.env.replace('/', '_')}_{digest}"


def train_stages(cfg: GenerateConfig, cache: Path, on_transition: Callable[[Transition, int], None] | None = None,
                 env_kwargs: dict | None = None) -> dict[str, Path]:
    """Train SAC, save the medium and expert actors under ``cache``; return their folders.

    ``on_transition(t, env_step)`` sees every collected transition (medium-replay
    recording). Cached actors are reused without training unless a callback needs the
    collected data.
    """
    from tqdm import tqdm

    import envs
    from embodied.learners.sac import SAC, SACConfig
    from embodied.replay import Replay

    stages = {"medium": cache / "medium", "expert": cache / "expert"}
    if on_transition is None and all(checkpoint.latest(p) for p in stages.values()):
        return stages
    s = cfg.sac
    if not 0 < s.medium_at <= s.total_steps:
        raise ValueError(f"sac.medium_at must be in (0, sac.total_steps], got {s.medium_at} / {s.total_steps}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    env = envs.make_env(cfg.env, seed=cfg.seed, **(env_kwargs if env_kwargs is not None else cfg.env_kwargs))
    space = _state_space(env)
    sac = SAC(space, env.action_space, SACConfig(hidden=tuple(s.hidden), batch_size=s.batch_size, seed=cfg.seed))
    replay = Replay(s.total_steps, space, env.action_space, seed=cfg.seed)
    obs, _ = env.reset(seed=cfg.seed)
    ep = k = 0
    for step in tqdm(range(s.total_steps), desc=f"SAC {cfg.env}", unit="step"):
        if step < s.warmup_steps:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        else:
            action = sac.policy().act({"state": obs["state"][None]})[0]
        nobs, r, term, trunc, info = env.step(action)
        t = _transition(obs, action, r, nobs, term, trunc, info, ep, k)
        replay.add(t)
        if on_transition is not None:
            on_transition(t, step)
        if step >= s.warmup_steps:
            sac.update(replay.sample_torch(s.batch_size))
        for name, at in (("medium", s.medium_at), ("expert", s.total_steps)):
            if step + 1 == at:
                save_policy(sac.policy(), stages[name], step + 1)
        obs, k = nobs, k + 1
        if term or trunc:
            obs, _ = env.reset()
            ep, k = ep + 1, 0
    env.close()
    return stages


def rollout(env, act: Callable[[dict], np.ndarray], steps: int, recorder: DatasetRecorder, seed: int,
            first_episode: int = 0, desc: str = "rollout", success_only: bool = False,
            give_up_after: int = 20) -> dict[str, float]:
    """Whole episodes until ``steps`` transitions are recorded; returns return/success stats.

    ``success_only``: episodes that do not end in success are run but not recorded (the
    stats still count them: ``success_rate`` is the policy's, over every episode run);
    after ``give_up_after`` episodes in a row without a success it stops with an error.
    """
    from tqdm import tqdm

    returns, successes, n, ep, kept, streak = [], [], 0, first_episode, 0, 0
    bar = tqdm(total=steps, desc=desc, unit="step")
    while n < steps:
        obs, _ = env.reset(seed=seed + ep)
        if hasattr(act, "reset"):
            act.reset()
        ret, k, done, info, episode = 0.0, 0, False, {}, []
        while not done:
            action = act(obs)
            nobs, r, term, trunc, info = env.step(action)
            episode.append(_transition(obs, action, r, nobs, term, trunc, info, first_episode + kept, k))
            ret, obs, k, done = ret + float(r), nobs, k + 1, term or trunc
        success = bool(info.get("success", False))
        returns.append(ret)
        successes.append(float(success))
        ep += 1
        if success_only and not success:
            streak += 1
            if streak >= give_up_after:
                raise RuntimeError(f"{desc}: no success in {streak} episodes in a row; the scripted policy does "
                                   "not solve this task (or expert_noise is too high); nothing more recorded")
            continue
        streak = 0
        for t in episode:
            recorder.add(t)
        kept += 1
        n += k
        bar.update(k)
    bar.close()
    return {"episodes": kept, "episodes_run": len(returns), "transitions": n,
            "return_mean": float(np.mean(returns)), "success_rate": float(np.mean(successes))}


class scripted_expert:  # noqa: N801 - used like a function that builds a policy
    """The env's scripted expert (``env.unwrapped.expert_action()``: privileged simulator
    state) with Gaussian action ``noise``, clipped to [-1, 1]."""

    def __init__(self, env, noise: float, rng: np.random.Generator):
        self.env, self.noise, self.rng = env.unwrapped, noise, rng

    def __call__(self, obs: dict) -> np.ndarray:
        action = np.asarray(self.env.expert_action(), np.float32)
        if self.noise > 0:
            action = action + self.noise * self.rng.normal(size=action.shape).astype(np.float32)
        return np.clip(action, -1, 1).astype(np.float32)


def check_scripted(env, name: str) -> None:
    """One-line error, before anything is written, when ``name`` has no scripted expert."""
    if not hasattr(env.unwrapped, "expert_action"):
        raise ValueError(f"kind 'scripted': env {name!r} has no scripted expert (expert_action); scripted envs: "
                         "reach, push, robosuite/Lift, robosuite/PickPlaceCan and LIBERO pick-and-place tasks")
    env.reset(seed=0)
    env.unwrapped.expert_action()  # raises with the list of scripted tasks when this one has none


def generate(cfg: GenerateConfig, output: str | Path) -> dict[str, Any]:
    """Write the requested datasets under ``output/<kind>``; returns per-dataset stats."""
    import envs

    output = Path(output)
    unknown = sorted(set(cfg.kinds) - set(ALL_KINDS))
    if unknown:
        raise ValueError(f"unknown dataset kind {unknown[0]!r}; choose from {list(ALL_KINDS)}")
    if "scripted" in cfg.kinds and cfg.env == "reach" and cfg.env_kwargs.get("proprio_only"):
        raise ValueError("kind 'scripted' steers by the target in the state, which proprio_only=true hides; "
                         "set env.proprio_only=false")
    existing = [k for k in cfg.kinds if (output / k).exists()]
    if existing:
        raise FileExistsError(f"{output / existing[0]} already exists; choose another output= or delete it")
    recorder_kw = dict(keys=cfg.keys or DEFAULT_KEYS, ground_truth=cfg.ground_truth)
    env = envs.make_env(cfg.env, seed=cfg.seed, **cfg.env_kwargs)
    if "scripted" in cfg.kinds and cfg.env != "reach":
        check_scripted(env, cfg.env)
    cache = policy_cache(cfg, output)
    stats: dict[str, Any] = {}
    if "medium_replay" in cfg.kinds:
        rec = DatasetRecorder(output / "medium_replay", fps=cfg.fps, **recorder_kw)
        medium_at = cfg.sac.medium_at

        def record(t: Transition, step: int) -> None:
            if step < medium_at or t.episode_id in rec._open:  # finish the episode running at the medium stage
                rec.add(t)

        stages = train_stages(cfg, cache, on_transition=record)
        rec.close()
        stats["medium_replay"] = {"episodes": rec.num_episodes}
    elif {"medium", "expert", "medium_expert"} & set(cfg.kinds):
        stages = train_stages(cfg, cache, env_kwargs={k: v for k, v in cfg.env_kwargs.items()
                                                      if k not in ("pixels", "cameras", "image_size")})
    rng = np.random.default_rng(cfg.seed + 1)
    actors = {}

    def policy_fn(name: str) -> Callable[[dict], np.ndarray]:
        if name == "random":
            return lambda obs: rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        if name == "scripted" and cfg.env == "reach":
            return scripted_reach(cfg.scripted_noise, rng, distracted=cfg.scripted_distracted)
        if name == "scripted":
            return scripted_expert(env, cfg.expert_noise, rng)
        if name not in actors:
            actors[name] = load_policy(stages[name])
        return lambda obs: actors[name].act({"state": obs["state"][None]})[0]

    torch.manual_seed(cfg.seed + 2)
    for kind in cfg.kinds:
        if kind == "medium_replay":
            continue
        seed = cfg.seed * 1_000_003 + ALL_KINDS.index(kind) * 100_000
        with DatasetRecorder(output / kind, fps=cfg.fps, **recorder_kw) as rec:
            parts = ["medium", "expert"] if kind == "medium_expert" else [kind]
            stats[kind] = {}
            first = 0
            for part in parts:
                s = rollout(env, policy_fn(part), cfg.steps, rec, seed + first, first, desc=f"{kind}:{part}",
                            success_only=cfg.success_only and part == "scripted")
                stats[kind][part] = s
                first += s["episodes"]
    env.close()
    (output / "generation.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=2, default=list))
    return stats


def normalized_score(ret: float, random_ret: float, expert_ret: float) -> float:
    """D4RL normalisation: 0 = random policy, 100 = expert policy."""
    return 100.0 * (ret - random_ret) / max(expert_ret - random_ret, 1e-8)



class scripted_reach:  # noqa: N801 - used like a function that builds a policy
    """A suboptimal behaviour policy for the built-in ``reach`` task: its proportional
    controller (envs/builtin/scripted.py, ``gain`` in action units per metre) plus
    Gaussian noise. noise 0: near-perfect; 1.0: about 40 % success; large: close to
    random. With ``distracted > 0`` that share of episodes (drawn at :meth:`reset`) steers
    to a random wrong spot instead, which the state does not reveal."""

    def __init__(self, noise: float, rng: np.random.Generator, gain: float = 10.0, distracted: float = 0.0):
        self.noise, self.rng, self.gain, self.distracted = noise, rng, gain, distracted
        self.wrong: np.ndarray | None = None

    def reset(self) -> None:
        self.wrong = self.rng.uniform(-0.25, 0.25, 2) if self.rng.random() < self.distracted else None

    def __call__(self, obs: dict) -> np.ndarray:
        from envs.builtin.scripted import reach_action

        noise = self.noise * self.rng.normal(size=2)
        return reach_action(obs["state"], self.gain, max_delta=1.0, noise=noise, goal=self.wrong)
