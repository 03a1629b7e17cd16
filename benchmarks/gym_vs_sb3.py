"""Our SAC and PPO against stable-baselines3's on gymnasium MuJoCo tasks, over seeds, reported with
``embodied-report`` (IQM with 95 % stratified-bootstrap CIs, probability of improvement,
performance profiles, IQM against env steps). The tasks (``--task``): SAC on Hopper-v5 and
HalfCheetah-v5 for 100,000 env steps (evaluated every 10,000) and on InvertedPendulum-v5 for
12,000 (every 2,000); PPO on Hopper-v5 and HalfCheetah-v5 for 300,000 (every 50,000).

* **ours** -- what a user runs: ``embodied-train env=gym_hopper train.total_steps=100000
  eval.every=10000`` with the default SAC config (2x256, 2 LayerNorm critics, batch 256, lr 3e-4,
  gamma 0.99, tau 0.005, temperature learned from 1.0 towards -|A|, UTD 1, 1,000 uniformly random
  steps first), or ``embodied-train +experiment=ppo_hopper train.total_steps=300000`` (CleanRL's
  continuous PPO: 2048-step rollouts, 32 minibatches, 10 epochs, lr 3e-4 annealed, 64x64 tanh,
  observation and reward normalisation): the studies of the same names in :mod:`benchmarks.seeds`.
* **SB3** -- ``stable_baselines3.SAC("MlpPolicy")`` with the same budget and hyper-parameters
  (net_arch 256x256, 2 critics without LayerNorm, batch 256, lr 3e-4, gamma 0.99, tau 0.005,
  ``ent_coef="auto"`` from 1.0, one gradient step per env step after 1,000 random steps), or
  ``stable_baselines3.PPO`` with the CleanRL settings and ``VecNormalize`` (``bench_ppo.sb3_model``).

Both evaluate where embodied-train does (SAC every ``eval.every`` steps, PPO after the first update
past each multiple) and at the end, on deterministic episodes (the policy's mean action) of a
separate env reset with seeds 100,000 + seed + k, one thread each; SB3's budget, evaluation and
warm-up are read from the study as Hydra composes it, so the two sides cannot drift apart. The
differences that are SB3's own are kept: SAC -- its critics have no LayerNorm and its actor clamps
log-std to [-20, 2] where ours squashes it into [-5, 2]; PPO -- SB3 clips the value prediction only
(ours takes the larger of the clipped and unclipped errors, as CleanRL) and updates its observation
statistics every env step (ours once per rollout). Each finished run's record is kept: ours in
``benchmarks/results/runs/<task>/s<seed>/`` (by seeds.py), SB3's in
``benchmarks/results/runs/<task>_sb3/s<seed>/`` (``metrics.jsonl``, ``result.json`` and a
``run.json`` naming learner ``sb3_sac`` / ``sb3_ppo``), so a rerun skips finished seeds and a long
study can be split over sessions and over two processes (``--only``, ``--side``). The report goes to
``benchmarks/results/reports/gym_vs_sb3/<task>/`` per task and, with Hopper and HalfCheetah both
complete, to ``.../pooled/`` (SAC) and ``.../ppo_pooled/`` on returns normalised by D4RL's random /
expert reference scores.

    python -m benchmarks.gym_vs_sb3 --task hopper --seeds 5 --side ours --only 0,2,4
    python -m benchmarks.gym_vs_sb3 --task hopper --seeds 5 --side sb3                 # beside it
    python -m benchmarks.gym_vs_sb3 --task ppo_hopper --task ppo_halfcheetah --seeds 5
    python -m benchmarks.gym_vs_sb3 --seeds 5 --report-only
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import seeds
from benchmarks.runner import has_record, partial_record, publish

RESULTS = seeds.RESULTS
TASKS = {  # study name -> (gymnasium id, algorithm): ours is the study of benchmarks.seeds, SB3's the same algorithm
    "hopper": ("Hopper-v5", "sac"), "halfcheetah": ("HalfCheetah-v5", "sac"),
    "invpendulum": ("InvertedPendulum-v5", "sac"),
    "ppo_hopper": ("Hopper-v5", "ppo"), "ppo_halfcheetah": ("HalfCheetah-v5", "ppo"),
}
# D4RL's reference returns (random, expert), for the normalised reports that pool two tasks
REFERENCE = {"Hopper-v5": (-20.272305, 3234.3), "HalfCheetah-v5": (-280.178953, 12135.0)}
POOLS = {"pooled": ("hopper", "halfcheetah"), "ppo_pooled": ("ppo_hopper", "ppo_halfcheetah")}
EVAL_SEED = 100_000  # episode k of run seed s resets with EVAL_SEED + s + k, as embodied-train's evaluation


def settings(task: str) -> dict:
    """Budget, evaluation and warm-up of the study's embodied-train runs as Hydra composes them
    (experiment files included), for SB3 to match: a fresh dict (callers may change it)."""
    return dict(_settings(task))


@functools.cache
def _settings(task: str) -> dict:  # composed once per task: every seed's record check asks
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base=None):
        cfg = compose("config", seeds.STUDIES[task][1])
    t = cfg.train
    conf = {"total_steps": int(t.total_steps), "eval_every": int(cfg.eval.every), "eval_episodes": int(cfg.eval.episodes)}
    if TASKS[task][1] == "sac":
        if t.warmup_steps != t.learning_starts:
            raise SystemExit(f"{task}: SB3's learning_starts is both the random warm-up and the first update; "
                             f"ours has warmup_steps={t.warmup_steps}, learning_starts={t.learning_starts}")
        conf.update(learning_starts=int(t.learning_starts), gamma=float(t.gamma))
    else:  # SB3 runs bench_ppo's CleanRL settings: check ours has them too
        want = {"num_steps": 2048, "num_minibatches": 32, "update_epochs": 10, "gamma": 0.99, "gae_lambda": 0.95}
        got = {k: cfg.learner[k] for k in want}
        if got != want or int(t.num_envs) != 1:
            raise SystemExit(f"{task}: SB3's PPO runs 1 env with {want}; ours has num_envs={t.num_envs}, {got}")
        conf.update(num_steps=2048, gamma=0.99)
    conf["eval_seed"] = EVAL_SEED
    return conf


def evaluate(env, act, episodes: int, seed: int) -> float:
    """Mean return of ``episodes`` episodes of ``act`` (an observation -> an action), episode k reset
    with seed + k."""
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done, ret = False, 0.0
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs))
            ret, done = ret + float(r), term or trunc
        returns.append(ret)
    return float(np.mean(returns))


def sb3_record(task: str, seed: int) -> Path:
    return RESULTS / "runs" / f"{task}_sb3" / f"s{seed}"


def check_sb3(task: str, seed: int) -> bool:
    """True when the seed's SB3 record is there, made with the study's current settings (else an error)."""
    return has_record(sb3_record(task, seed), settings(task))


def sb3_model(task: str, seed: int, conf: dict):
    """SB3's learner with the study's budget, and the deterministic action of an observation."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    env_id, algo = TASKS[task]
    if algo == "ppo":  # CleanRL's continuous PPO with VecNormalize, as bench_ppo's speed and parity runs
        from benchmarks.bench_ppo import sb3_model as ppo_model

        model, venv = ppo_model(env_id, 1, conf["num_steps"], conf["total_steps"], seed)
        return model, lambda o: model.predict(venv.normalize_obs(o[None]), deterministic=True)[0][0]
    model = SAC("MlpPolicy", gym.make(env_id), learning_rate=3e-4, buffer_size=conf["total_steps"],
                learning_starts=conf["learning_starts"], batch_size=256, tau=0.005, gamma=conf["gamma"],
                train_freq=1, gradient_steps=1, ent_coef="auto", policy_kwargs={"net_arch": [256, 256]}, seed=seed,
                device="cpu", verbose=0)
    return model, lambda o: model.predict(o, deterministic=True)[0]


def run_sb3(task: str, seed: int) -> Path:
    """One SB3 run; its record (evaluations as the study's) under runs/<task>_sb3/s<seed>/. It
    evaluates where embodied-train does: SAC at every multiple of eval.every, PPO after the first
    update past one (a whole rollout), and both at the end."""
    import gymnasium as gym
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    torch.set_num_threads(1)
    conf = settings(task)
    steps, every, episodes = conf["total_steps"], conf["eval_every"], conf["eval_episodes"]
    env_id, algo = TASKS[task]
    record = sb3_record(task, seed)
    scratch = partial_record(record)  # this process's; renamed once finished
    (scratch / "metrics.jsonl").write_text("")
    eval_env = gym.make(env_id)
    bar = tqdm(total=steps, desc=f"sb3 {task} s{seed}", unit="step", mininterval=5)
    model, act = sb3_model(task, seed, conf)
    logged = [0]

    def evaluate_now() -> None:
        score = evaluate(eval_env, act, episodes, EVAL_SEED + seed)
        with open(scratch / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": model.num_timesteps, "eval/return": score, "eval/episodes": episodes}) + "\n")
        logged[0] = model.num_timesteps
        bar.set_postfix(eval_return=f"{score:.0f}")

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            if algo == "sac" and self.num_timesteps % every == 0:
                evaluate_now()
            return True

        def _on_rollout_start(self) -> None:  # PPO: after the update of the rollout that crossed a multiple
            if algo == "ppo" and self.num_timesteps // every > logged[0] // every:
                evaluate_now()

    t0 = time.time()
    model.learn(total_timesteps=steps, callback=Evaluate(), progress_bar=False)
    if logged[0] != model.num_timesteps:  # embodied-train: also at the end
        evaluate_now()
    bar.close()
    rows = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    (scratch / "run.json").write_text(json.dumps({"learner": f"sb3_{algo}", "env": f"gym/{env_id}", "reward": "env",
                                                  "seed": seed, "library": f"stable-baselines3 {stable_baselines3.__version__}",
                                                  "settings": conf}) + "\n")
    (scratch / "result.json").write_text(json.dumps({"eval/return": rows[-1]["eval/return"],
                                                     "step": rows[-1]["step"]}) + "\n")
    (scratch / "seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    publish(scratch, record)
    print(f"sb3 {task} seed {seed}: return {rows[-1]['eval/return']:.1f} in {time.time() - t0:.0f} s", flush=True)
    return record


def report(tasks: list[str], n: int) -> str:
    from embodied.report import make_report

    def runs(names):
        return [str(RESULTS / "runs" / name / f"s{s}") for t in names for name in (t, f"{t}_sb3") for s in range(n)]

    text = []
    for task in tasks:
        (env_id, algo), budget = TASKS[task], settings(task)["total_steps"]
        out = RESULTS / "reports" / "gym_vs_sb3" / task
        make_report(runs([task]), out, metric="eval/return", group_by=["learner"], compare=[f"{algo}:sb3_{algo}"],
                    title=f"{algo.upper()} vs stable-baselines3 {algo.upper()}, {env_id}, {budget:,} env steps: eval/return")
        text.append((out / "report.md").read_text())
    for pool, members in POOLS.items():
        if set(members) <= set(tasks):
            algo = TASKS[members[0]][1]
            norm = [f"gym/{TASKS[t][0]}={lo}:{hi}" for t in members for lo, hi in [REFERENCE[TASKS[t][0]]]]
            out = RESULTS / "reports" / "gym_vs_sb3" / pool
            make_report(runs(members), out, metric="eval/return", group_by=["learner"], compare=[f"{algo}:sb3_{algo}"],
                        normalize=norm, title=f"{algo.upper()} vs stable-baselines3 {algo.upper()}, "
                        f"{' + '.join(TASKS[t][0] for t in members)}, D4RL-normalised return")
            text.append((out / "report.md").read_text())
    return "\n".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), action="append", help="default: all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="run just these seeds (two calls side by side); the report waits for all")
    parser.add_argument("--side", choices=("ours", "sb3", "both"), default="both")
    parser.add_argument("--scratch", default="runs/seeds", help="where our full run folders go")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    tasks = args.task or sorted(TASKS)
    todo = args.only if args.only is not None else range(args.seeds)
    if not args.report_only:
        for task in tasks:
            for seed in todo:
                if args.side in ("ours", "both") and not seeds.check_record(task, seed):
                    seeds.run_seed(task, seed, Path(args.scratch))
                if args.side in ("sb3", "both") and not check_sb3(task, seed):
                    run_sb3(task, seed)
    missing = [f"{t} s{s}" for t in tasks for s in range(args.seeds) if not seeds.check_record(t, s)]
    missing += [f"{t}_sb3 s{s}" for t in tasks for s in range(args.seeds) if not check_sb3(t, s)]
    if missing:
        print(f"no record yet for {', '.join(missing)}: the report waits for all {args.seeds} seeds of both sides")
        return
    print(report(tasks, args.seeds))


if __name__ == "__main__":
    main()
