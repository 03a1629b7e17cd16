"""Learning parity: our SAC vs stable-baselines3 SAC on a gymnasium MuJoCo task.

Same task, step budget, seeds and hyper-parameters on both sides (256x256, 2 critics,
batch 256, lr 3e-4, gamma 0.99, tau 0.005, automatic temperature from 1.0, target
entropy -A, one gradient update per env step after ``learning_starts`` uniformly random
steps). Ours runs with its default config (LayerNorm critics, actor on the critic mean)
driven by the minimal loop below; SB3 runs ``model.learn``. The score of a run is the
mean return of 10 deterministic evaluation episodes at the end. Reported: IQM over
seeds with a 95 % stratified-bootstrap confidence interval (rliable), and the ratio of
IQMs. Writes ``benchmarks/results/sac_parity.{json,md}``.

    python -m benchmarks.bench_sac_parity [--quick] [--env InvertedPendulum-v5] [--steps N] [--seeds K]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.stats import iqm_ci
import torch
from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate(env, act, episodes: int, seed: int) -> float:
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done, ret = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs))
            ret, done = ret + float(r), term or trunc
        returns.append(ret)
    return float(np.mean(returns))


def run_ours(env_id: str, steps: int, starts: int, seed: int, episodes: int, layer_norm: bool = True) -> float:
    """A minimal loop: one env, uniform random actions for ``starts`` steps, then one
    update per step on a batch sampled from the replay."""
    import gymnasium as gym

    from embodied.contracts import Transition
    from embodied.learners.sac import SAC, SACConfig
    from embodied.replay import Replay

    env = gym.make(env_id)
    scale = env.action_space.high  # our actions live in [-1, 1]
    space = gym.spaces.Dict({"state": env.observation_space})
    act_space = gym.spaces.Box(-1, 1, env.action_space.shape, np.float32)
    sac = SAC(space, act_space, SACConfig(seed=seed, layer_norm=layer_norm))
    replay = Replay(steps, space, act_space, seed=seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    episode, t = 0, 0
    for i in tqdm(range(steps), desc=f"ours {env_id} seed {seed}", leave=False):
        if i < starts:
            action = rng.uniform(-1, 1, act_space.shape).astype(np.float32)
        else:
            action = sac.policy().act({"state": obs[None].astype(np.float32)})[0]
        nxt, r, term, trunc, _ = env.step(action * scale)
        replay.add(Transition({"state": obs}, action, float(r), {"state": nxt}, term, trunc, t == 0, episode, t))
        obs, t = nxt, t + 1
        if term or trunc:
            obs, _ = env.reset()
            episode, t = episode + 1, 0
        if i >= starts:
            sac.update(replay.sample_torch(256))
    policy = sac.policy()
    return evaluate(env, lambda o: policy.act({"state": o[None].astype(np.float32)}, deterministic=True)[0] * scale,
                    episodes, 10_000 + seed)


def run_sb3(env_id: str, steps: int, starts: int, seed: int, episodes: int) -> float:
    import gymnasium as gym
    from stable_baselines3 import SAC as SB3SAC

    env = gym.make(env_id)
    model = SB3SAC("MlpPolicy", env, learning_rate=3e-4, buffer_size=steps, learning_starts=starts,
                   batch_size=256, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1,
                   policy_kwargs={"net_arch": [256, 256]}, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=steps, progress_bar=False)
    return evaluate(env, lambda o: model.predict(o, deterministic=True)[0], episodes, 10_000 + seed)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 seeds x 2000 steps")
    parser.add_argument("--env", default="InvertedPendulum-v5")
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default 6000, quick 2000)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per run")
    parser.add_argument("--no-layer-norm", action="store_true", help="our critics without LayerNorm (SB3's architecture)")
    args = parser.parse_args(argv)
    steps = args.steps or (2000 if args.quick else 6000)
    starts = min(1000, steps // 4)
    torch.set_num_threads(1)
    scores: dict[str, list[float]] = {"ours": [], "stable-baselines3": []}
    seconds: dict[str, float] = {"ours": 0.0, "stable-baselines3": 0.0}
    for seed in range(args.seeds):
        for name, run in (("ours", run_ours), ("stable-baselines3", run_sb3)):
            torch.manual_seed(seed)
            start = time.perf_counter()
            kw = {"layer_norm": not args.no_layer_norm} if name == "ours" else {}
            scores[name].append(run(args.env, steps, starts, seed, args.episodes, **kw))
            seconds[name] += time.perf_counter() - start
            print(f"{name} seed {seed}: return {scores[name][-1]:.1f}", flush=True)
    stats = {k: iqm_ci(np.array(v)) for k, v in scores.items()}
    ratio = stats["ours"][0] / stats["stable-baselines3"][0] if stats["stable-baselines3"][0] else float("nan")
    result = {"env": args.env, "steps": steps, "ours_layer_norm": not args.no_layer_norm, "learning_starts": starts, "seeds": args.seeds,
              "scores": scores, "iqm_ci95": stats, "iqm_ratio": ratio, "seconds": seconds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sac_parity.json").write_text(json.dumps(result, indent=2))
    lines = ["## SAC learning parity (`bench_sac_parity`)", "",
             f"{args.env}, {steps} env steps ({starts} random), {args.seeds} seeds, final return of "
             f"{args.episodes} deterministic episodes; IQM with 95 % stratified-bootstrap CI (rliable); "
             f"our critics {'without' if args.no_layer_norm else 'with'} LayerNorm.", "",
             "| learner | IQM return | 95 % CI | per-seed returns | wall s (all seeds) |", "|---|---:|---|---|---:|"]
    for name, (point, lo, hi) in stats.items():
        runs = ", ".join(f"{s:.0f}" for s in scores[name])
        lines.append(f"| {name} | {point:.1f} | [{lo:.1f}, {hi:.1f}] | {runs} | {seconds[name]:.0f} |")
    lines += ["", f"IQM ratio ours / SB3: **{ratio:.2f}**"]
    (RESULTS / "sac_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
