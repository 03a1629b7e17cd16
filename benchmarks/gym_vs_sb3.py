"""Our SAC against stable-baselines3's SAC on gymnasium Hopper-v5 and HalfCheetah-v5, over seeds,
reported with ``embodied-report`` (IQM with 95 % stratified-bootstrap CIs, probability of
improvement, performance profiles, IQM against env steps).

* **ours** -- what a user runs: ``embodied-train env=gym_hopper train.total_steps=100000
  eval.every=10000`` with the default SAC config (2x256, 2 LayerNorm critics, batch 256, lr 3e-4,
  gamma 0.99, tau 0.005, temperature learned from 1.0 towards -|A|, UTD 1, 1,000 uniformly random
  steps first): the ``hopper`` / ``halfcheetah`` studies of :mod:`benchmarks.seeds`.
* **SB3** -- ``stable_baselines3.SAC("MlpPolicy")`` with the same budget and hyper-parameters
  (net_arch 256x256, 2 critics without LayerNorm, batch 256, lr 3e-4, gamma 0.99, tau 0.005,
  ``ent_coef="auto"`` from 1.0, one gradient step per env step after 1,000 random steps).

Both evaluate every 10,000 env steps and at the end on 10 deterministic episodes (the policy's
mean action) of a separate env reset with seeds 100,000 + seed + k, one thread each; SB3's
budget, evaluation and warm-up are read from the study and ``configs/config.yaml``, so the two
sides cannot drift apart. Two differences are SB3's own and kept: its critics have no LayerNorm,
and its actor clamps log-std to [-20, 2] where ours squashes it into [-5, 2]. Each finished run's record is kept: ours in
``benchmarks/results/runs/<task>/s<seed>/`` (by seeds.py), SB3's in
``benchmarks/results/runs/<task>_sb3/s<seed>/`` (``metrics.jsonl``, ``result.json`` and a
``run.json`` naming learner ``sb3_sac``), so a rerun skips finished seeds and a long study can be
split over sessions and over two processes (``--only``, ``--side``). The report goes to
``benchmarks/results/reports/gym_vs_sb3/<task>/`` per task and, with both tasks complete, to
``.../pooled/`` on returns normalised by D4RL's random / expert reference scores.

    python -m benchmarks.gym_vs_sb3 --task hopper --seeds 5 --side ours --only 0,2,4
    python -m benchmarks.gym_vs_sb3 --task hopper --seeds 5 --side sb3                 # beside it
    python -m benchmarks.gym_vs_sb3 --seeds 5 --report-only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import seeds
from benchmarks.bench_sac_parity import evaluate
from benchmarks.runner import has_record, partial_record, publish

RESULTS = seeds.RESULTS
TASKS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5"}  # study name -> gymnasium id
# D4RL's reference returns (random, expert) for the normalised pooled report
REFERENCE = {"hopper": (-20.272305, 3234.3), "halfcheetah": (-280.178953, 12135.0)}
EVAL_SEED = 100_000  # episode k of run seed s resets with EVAL_SEED + s + k, as embodied-train's evaluation


def settings(task: str) -> dict:
    """Budget, evaluation and warm-up of the study's embodied-train runs, for SB3 to match."""
    import yaml
    from omegaconf import OmegaConf

    from embodied.cli import CONFIG_DIR

    cfg = OmegaConf.load(Path(CONFIG_DIR) / "config.yaml")
    for override in seeds.STUDIES[task][1]:
        key, value = override.split("=", 1)
        if "." in key:  # group choices (env=...) do not touch these keys
            OmegaConf.update(cfg, key, yaml.safe_load(value))
    t = cfg.train
    if t.warmup_steps != t.learning_starts:
        raise SystemExit(f"{task}: SB3's learning_starts is both the random warm-up and the first update; "
                         f"ours has warmup_steps={t.warmup_steps}, learning_starts={t.learning_starts}")
    return {"total_steps": int(t.total_steps), "eval_every": int(cfg.eval.every), "eval_episodes": int(cfg.eval.episodes),
            "learning_starts": int(t.learning_starts), "gamma": float(t.gamma), "eval_seed": EVAL_SEED}


def sb3_record(task: str, seed: int) -> Path:
    return RESULTS / "runs" / f"{task}_sb3" / f"s{seed}"


def check_sb3(task: str, seed: int) -> bool:
    """True when the seed's SB3 record is there, made with the study's current settings (else an error)."""
    return has_record(sb3_record(task, seed), settings(task))


def run_sb3(task: str, seed: int) -> Path:
    """One SB3 run; its record (evaluations as the study's) under runs/<task>_sb3/s<seed>/."""
    import gymnasium as gym
    import stable_baselines3
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    torch.set_num_threads(1)
    conf = settings(task)
    steps, every, episodes, env_id = conf["total_steps"], conf["eval_every"], conf["eval_episodes"], TASKS[task]
    record = sb3_record(task, seed)
    scratch = partial_record(record)  # this process's; renamed once finished
    (scratch / "metrics.jsonl").write_text("")
    eval_env = gym.make(env_id)
    bar = tqdm(total=steps, desc=f"sb3 {task} s{seed}", unit="step", mininterval=5)

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            if self.num_timesteps % every == 0 or self.num_timesteps == steps:  # embodied-train: also at the end
                score = evaluate(eval_env, lambda o: self.model.predict(o, deterministic=True)[0], episodes,
                                 EVAL_SEED + seed)
                row = {"step": self.num_timesteps, "eval/return": score, "eval/episodes": episodes}
                with open(scratch / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(eval_return=f"{score:.0f}")
            return True

    t0 = time.time()
    model = SAC("MlpPolicy", gym.make(env_id), learning_rate=3e-4, buffer_size=steps,
                learning_starts=conf["learning_starts"], batch_size=256, tau=0.005, gamma=conf["gamma"],
                train_freq=1, gradient_steps=1, ent_coef="auto", policy_kwargs={"net_arch": [256, 256]}, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=steps, callback=Evaluate(), progress_bar=False)
    bar.close()
    rows = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
    (scratch / "run.json").write_text(json.dumps({"learner": "sb3_sac", "env": f"gym/{env_id}", "reward": "env",
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

    text = []
    for task in tasks:
        runs = [str(RESULTS / "runs" / name / f"s{s}") for name in (task, f"{task}_sb3") for s in range(n)]
        out = RESULTS / "reports" / "gym_vs_sb3" / task
        make_report(runs, out, metric="eval/return", group_by=["learner"], compare=["sac:sb3_sac"],
                    title=f"SAC vs stable-baselines3 SAC, {TASKS[task]}, {settings(task)['total_steps']:,} env steps: eval/return")
        text.append((out / "report.md").read_text())
    if len(tasks) == len(TASKS):
        runs = [str(RESULTS / "runs" / name / f"s{s}") for t in tasks for name in (t, f"{t}_sb3") for s in range(n)]
        norm = [f"gym/{TASKS[t]}={lo}:{hi}" for t, (lo, hi) in REFERENCE.items()]
        out = RESULTS / "reports" / "gym_vs_sb3" / "pooled"
        make_report(runs, out, metric="eval/return", group_by=["learner"], compare=["sac:sb3_sac"], normalize=norm,
                    title="SAC vs stable-baselines3 SAC, Hopper-v5 + HalfCheetah-v5, D4RL-normalised return")
        text.append((out / "report.md").read_text())
    return "\n".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), action="append", help="default: both")
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
