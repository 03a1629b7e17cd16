"""PPO vs stable-baselines3 PPO: training speed on the same machine, and the cost of episode
rewards on-policy. (Learning parity over seeds, through ``embodied-train`` and
``embodied-report``, is ``python -m benchmarks.gym_vs_sb3 --task ppo_hopper --task
ppo_halfcheetah``; it builds SB3's side with :func:`sb3_model` below.)

Equal settings on both sides: CleanRL's continuous PPO (rollouts of 2048 steps, 32
minibatches, 10 epochs, lr 3e-4 annealed linearly to 0, gamma 0.99, GAE lambda 0.95, clip
0.2 with value clipping 0.2, ent_coef 0, vf_coef 0.5, max grad norm 0.5, Adam eps 1e-5,
64x64 tanh MLPs with orthogonal init, state-independent log-std from 0), observation and
reward normalisation on both (ours: in the learner and the policy; SB3: ``VecNormalize``,
clip 10 / 10). Known differences that remain: SB3's value clipping regresses the clipped
prediction only (ours, as CleanRL, takes the max of clipped and unclipped squared errors,
times 0.5); SB3 updates its normalisation statistics at every env step, ours once per
rollout (constant during a rollout and its update).

``speed``   env steps/s of training (acting, env steps and updates) on Hopper-v5 with 1 env
            (2048-step rollouts) and with 8 envs (8 x 256): ours through the training loop's
            on-policy iteration (gymnasium SyncVectorEnv, SAME_STEP autoreset), SB3's
            ``learn`` on a DummyVecEnv (its sequential vector env) + VecNormalize; one torch
            thread each, the same total steps, interleaved rounds, the median rate and the
            ratio with its spread over rounds (target >= 1.3).
``episodic`` the cost of an episode reward (GVL) in on-policy rollouts on the built-in
            reach task, at a simulated VLM inference time per query (see :func:`episodic`).

Writes ``benchmarks/results/ppo.{json,md}``.

    python -m benchmarks.bench_ppo --quick                       # smoke: both parts, tiny sizes
    python -m benchmarks.bench_ppo speed --speed-steps 16384 --rounds 3
    python -m benchmarks.bench_ppo episodic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.3
PEERS = ("ours", "stable-baselines3")


# ---------------------------------------------------------------------- stable-baselines3
def sb3_model(env_id: str, num_envs: int, num_steps: int, total: int, seed: int):
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch import nn

    def make(i):
        return lambda: gym.make(env_id)

    venv = VecNormalize(DummyVecEnv([make(i) for i in range(num_envs)]), norm_obs=True, norm_reward=True,
                        clip_obs=10.0, clip_reward=10.0, gamma=0.99)
    venv.seed(seed)
    rows = num_steps * num_envs
    model = PPO("MlpPolicy", venv, learning_rate=lambda remaining: 3e-4 * remaining, n_steps=num_steps,
                batch_size=rows // 32, n_epochs=10, gamma=0.99, gae_lambda=0.95, clip_range=0.2, clip_range_vf=0.2,
                ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, normalize_advantage=True, seed=seed, device="cpu",
                policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "activation_fn": nn.Tanh,
                               "ortho_init": True, "log_std_init": 0.0}, verbose=0)
    return model, venv


# ---------------------------------------------------------------------- speed
def ours_trainer(env_id: str, num_envs: int, num_steps: int, total: int, seed: int, run_dir: str):
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR, setup_runtime
    from embodied.loop import Trainer

    setup_runtime()
    overrides = ["env=gym", f"env.name=gym/{env_id}", "learner=ppo", f"learner.num_steps={num_steps}",
                 f"train.num_envs={num_envs}", f"train.total_steps={total}", f"seed={seed}",
                 "train.replay_capacity=4096", f"run_dir={run_dir}"]
    with initialize_config_dir(CONFIG_DIR, version_base=None):
        trainer = Trainer(compose("config", overrides), run_dir)
    trainer.driver.reset(seed=seed)
    return trainer


def speed(env_id: str, total: int, rounds: int) -> dict:
    import torch

    torch.set_num_threads(1)
    settings = {"1 env x 2048": (1, 2048), "8 envs x 256": (8, 256)}
    rates: dict[str, dict[str, list[float]]] = {s: {p: [] for p in PEERS} for s in settings}
    with tempfile.TemporaryDirectory(prefix="bench_ppo_speed_") as tmp:
        for r in range(rounds):
            for name, (n, t) in settings.items():
                trainer = ours_trainer(env_id, n, t, total, r, f"{tmp}/{r}_{n}")
                metrics: dict = {}
                start = time.perf_counter()
                while trainer.counters["env_steps"] < total:
                    trainer._on_policy_rollout(metrics)
                rates[name]["ours"].append(trainer.counters["env_steps"] / (time.perf_counter() - start))
                trainer.close()
                model, venv = sb3_model(env_id, n, t, total, r)
                start = time.perf_counter()
                model.learn(total_timesteps=total, progress_bar=False)
                rates[name]["stable-baselines3"].append(model.num_timesteps / (time.perf_counter() - start))
                venv.close()
                print(f"  round {r} {name}: ours {rates[name]['ours'][-1]:.0f} steps/s, "
                      f"SB3 {rates[name]['stable-baselines3'][-1]:.0f} steps/s", flush=True)
    out = {"env": env_id, "total_steps": total, "rounds": rounds, "target": TARGET, "settings": {}}
    for name, peer_rates in rates.items():
        ratios = [o / s for o, s in zip(peer_rates["ours"], peer_rates["stable-baselines3"])]
        out["settings"][name] = {"steps_per_s": {p: statistics.median(v) for p, v in peer_rates.items()},
                                 "rounds": peer_rates, "ratio": statistics.median(ratios),
                                 "ratio_range": [min(ratios), max(ratios)]}
    return out


# ---------------------------------------------------------------------- episode rewards
EPISODIC = {  # name -> overrides of embodied-train on top of the shared ones
    "env reward, state only": [],
    "env reward, frames rendered": ["env.pixels=true", "env.cameras=[top]"],
    "GVL oracle, 0 s per query": ["reward=gvl_oracle", "reward.num_frames=10"],
    "GVL oracle, 0.25 s per query": ["reward=gvl_oracle", "reward.num_frames=10", "reward.backend.latency=0.25"],
    "GVL oracle, 1 s per query": ["reward=gvl_oracle", "reward.num_frames=10", "reward.backend.latency=1.0"],
}


def episodic(total: int, seeds: int) -> dict:
    """The cost of episode rewards in on-policy rollouts: PPO on the built-in reach task with
    the env reward and with GVL (real prompt and parser, the scripted VLM told the sim's
    progress) at a simulated inference time per query. Reported per setting: wall time,
    env steps/s, the share of the run's steps an update trained on (the rest were still
    carried when the run ended), steps carried into an update (mean), seconds the loop
    waited for labels (``reward.max_pending`` bound), final eval success."""
    env = dict(os.environ, MUJOCO_GL="osmesa", PYOPENGL_PLATFORM="osmesa", OMP_NUM_THREADS="1")
    base = ["learner=ppo", "env=reach", "env.image_size=32", "learner.num_steps=512", "learner.num_minibatches=16",
            "train.num_envs=2", f"train.total_steps={total}", "train.replay_capacity=8192", f"eval.every={total}",
            "eval.episodes=10", "eval.video_episodes=0", f"checkpoint.every={total}", "log.every=1024",
            "wandb.mode=disabled", "train.threads=1", "log.level=WARNING"]
    out: dict = {"total_steps": total, "seeds": seeds, "rollout": "2 envs x 512 steps, 16 minibatches",
                 "settings": {}}
    for name, extra in EPISODIC.items():
        runs = []
        for seed in range(seeds):
            with tempfile.TemporaryDirectory(prefix="bench_ppo_epi_") as tmp:
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "embodied.cli.train", *base, *extra, f"seed={seed}",
                                       f"run_dir={tmp}/run"], cwd=ROOT, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                rows = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
            upd = [r for r in rows if "rollout/trained_steps" in r]
            trained = sum(r["rollout/trained_steps"] for r in upd)
            runs.append({"seconds": seconds, "steps_per_s": [r["perf/env_steps_per_s"] for r in rows if "perf/env_steps_per_s" in r][-1],
                         "trained_share": trained / total, "updates": len(upd),
                         "carried_in_mean": float(np.mean([r["rollout/carried_in"] for r in upd])),
                         "label_wait_s": float(sum(r.get("rollout/label_wait_s", 0.0) for r in upd)),
                         "eval_success": result["eval/success"]})
            print(f"  {name} seed {seed}: {seconds:.0f} s, trained {trained / total:.2f} of the steps, "
                  f"waited {runs[-1]['label_wait_s']:.1f} s, eval success {result['eval/success']:.2f}", flush=True)
        out["settings"][name] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]} | {"runs": runs}
    return out


# ---------------------------------------------------------------------- report
def write(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    old = json.loads((RESULTS / "ppo.json").read_text()) if (RESULTS / "ppo.json").exists() else {}
    result = {**{k: v for k, v in old.items() if k != "parity"}, **result,  # parity: gym_vs_sb3's now
              "machine": platform.processor() or platform.machine()}
    (RESULTS / "ppo.json").write_text(json.dumps(result, indent=2))
    lines = ["## PPO vs stable-baselines3 PPO (`bench_ppo`)", "",
             "CleanRL continuous settings on both sides (2048-step rollouts, 32 minibatches, 10 epochs, 64x64 tanh, "
             "obs + reward normalisation; SB3 via VecNormalize)."]
    s = result.get("speed")
    if s:
        lines += ["", f"**Speed**: env steps/s of training (acting + env + updates), {s['env']}, {s['total_steps']} "
                  f"steps per run, 1 torch thread, median of {s['rounds']} interleaved rounds (target ratio >= "
                  f"{s['target']}).", "", "| setting | ours steps/s | SB3 steps/s | ratio (min-max) |", "|---|---:|---:|---|"]
        for name, row in s["settings"].items():
            sps = row["steps_per_s"]
            lo, hi = row["ratio_range"]
            lines.append(f"| {name} | {sps['ours']:.0f} | {sps['stable-baselines3']:.0f} | "
                         f"**{row['ratio']:.2f}** ({lo:.2f}-{hi:.2f}) |")
    e = result.get("episodic")
    if e:
        lines += ["", f"**Episode rewards on-policy**: PPO on the built-in reach task, {e['rollout']}, "
                  f"{e['total_steps']} env steps, mean of {e['seeds']} seed(s). GVL labels each episode after it "
                  "ended on a worker thread; an update trains each env's steps up to its first episode still "
                  "waiting for labels and carries the rest into the next rollout.", "",
                  "| setting | wall s | env steps/s | steps trained | steps carried into an update | "
                  "waited for labels, s | eval success |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, row in e["settings"].items():
            lines.append(f"| {name} | {row['seconds']:.0f} | {row['steps_per_s']:.0f} | {row['trained_share']:.1%} | "
                         f"{row['carried_in_mean']:.0f} | {row['label_wait_s']:.1f} | {row['eval_success']:.2f} |")
    (RESULTS / "ppo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["all", "speed", "episodic"], default="all")
    parser.add_argument("--quick", action="store_true", help="speed: 4096 steps, 1 round; episodic: 2048 steps, 1 seed")
    parser.add_argument("--speed-steps", type=int, default=None, help="speed: env steps per timed run (default 16384)")
    parser.add_argument("--rounds", type=int, default=None, help="speed: interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    result: dict = {}
    if args.what in ("all", "speed"):
        result["speed"] = speed("Hopper-v5", args.speed_steps or (4096 if args.quick else 16384),
                                args.rounds or (1 if args.quick else 3))
    if args.what in ("all", "episodic"):
        result["episodic"] = episodic(2048 if args.quick else 16384, 1 if args.quick else 2)
    write(result)
    return result


if __name__ == "__main__":
    main()
