"""Pixel SAC vs stable-baselines3 SAC from pixels, same machine, same run.

The robot user's path: SAC from an 84x84 camera plus the proprioceptive state, on the built-in
``reach`` with the top camera and a gripper-only state (``+experiment=reach_pixels`` at 84 px).
Both sides: batch 128 (the project's pixel default), one gradient update per env step,
no frame stack (the project's pixel SAC stacks none), replays of uint8 frames, one torch thread.

* **ours**: ``embodied-train``'s own loop (``Trainer._off_policy_step``: Driver, labeler,
  replay, SAC update) with the ``sac_pixels`` learner: one conv encoder shared by critic and
  actor (the critic trains it, the actor reads its detached features: one conv forward +
  backward and one conv forward per update), random-shift augmentation.
* **SB3**: ``SAC("MultiInputPolicy")`` on the same env (a dict of the camera frame and the
  state: NatureCNN + the state), ``learn`` with ``train_freq=1, gradient_steps=1``; SB3's SAC
  gives actor and critic separate CNNs (``share_features_extractor=False``), no augmentation.

Measured per round, interleaved: env steps/s of training after a random warm-up that filled
both replays (acting, env, rendering, storing and updating), and gradient updates/s alone on
the filled replay. Median of ``--rounds``, with the min-max of the per-round ratio. Writes
``benchmarks/results/pixel_sac.{json,md}``. Target ratio >= 2 (training steps/s).

    python -m benchmarks.bench_pixel_sac [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 2.0
SIZE, BATCH, CAMERA = 84, 128, "top"
ENV_KW = dict(pixels=True, cameras=[CAMERA], image_size=SIZE, proprio_only=True)


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def ours(warmup: int):
    """(train(n), update(n), parameter count) on our loop, its replay filled by ``warmup`` random steps."""
    from hydra import compose, initialize_config_dir

    from embodied.cli import CONFIG_DIR, setup_runtime
    from embodied.loop import Trainer

    setup_runtime()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("config", overrides=["+experiment=reach_pixels", f"env.image_size={SIZE}",
                                           f"env.cameras=[{CAMERA}]", f"train.warmup_steps={warmup}",
                                           f"train.learning_starts={warmup}", "wandb.mode=disabled",
                                           f"learner.batch_size={BATCH}"])
    import tempfile

    trainer = Trainer(cfg, tempfile.mkdtemp())
    trainer.driver.reset(seed=0)
    metrics: dict = {}
    while trainer.counters["env_steps"] < warmup:
        trainer._off_policy_step(metrics)

    def train(n: int) -> None:
        for _ in range(n):
            trainer._off_policy_step(metrics)

    def update(n: int) -> None:
        for _ in range(n):
            trainer._update()

    learner = trainer.learner
    return train, update, _params([learner.actor, learner.critic])


def sb3(warmup: int):
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    import envs

    class Flat(gym.ObservationWrapper):  # {"pixels": {cam: img}, "state"} -> {"pixels": img, "state"}
        def __init__(self, env):
            super().__init__(env)
            space = env.observation_space
            self.observation_space = gym.spaces.Dict({"pixels": space["pixels"][CAMERA], "state": space["state"]})

        def observation(self, obs):
            return {"pixels": obs["pixels"][CAMERA], "state": obs["state"]}

    env = Flat(envs.make_env("reach", seed=0, **ENV_KW))
    model = SAC("MultiInputPolicy", env, batch_size=BATCH, buffer_size=50_000, learning_starts=warmup, train_freq=1,
                gradient_steps=1, device="cpu", seed=0)
    model.set_logger(configure(None, [""]))
    model.learn(total_timesteps=warmup, reset_num_timesteps=False)

    def train(n: int) -> None:
        model.learn(total_timesteps=n, reset_num_timesteps=False)

    def update(n: int) -> None:
        model.train(gradient_steps=n, batch_size=BATCH)

    return train, update, _params([model.actor, model.critic])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 60 steps")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training env steps per timed block")
    args = parser.parse_args(argv)
    rounds = args.rounds or 3
    n = args.steps or (60 if args.quick else 200)
    warmup = 300
    torch.set_num_threads(1)
    peers = {"ours": ours(warmup), "stable-baselines3": sb3(warmup)}
    train = {k: [] for k in peers}
    update = {k: [] for k in peers}
    for _ in range(rounds):
        for name, (tr, up, _) in peers.items():
            start = time.perf_counter()
            tr(n)
            train[name].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            up(n)
            update[name].append(n / (time.perf_counter() - start))
    med = {k: {"train_steps_per_s": statistics.median(train[k]), "updates_per_s": statistics.median(update[k])}
           for k in peers}

    def ratio(kind: dict) -> tuple[float, float, float]:
        per = [a / b for a, b in zip(kind["ours"], kind["stable-baselines3"])]
        return statistics.median(kind["ours"]) / statistics.median(kind["stable-baselines3"]), min(per), max(per)

    tr_ratio, up_ratio = ratio(train), ratio(update)
    result = {"median": med, "train_rounds": train, "update_rounds": update, "ratio_train": tr_ratio,
              "ratio_update": up_ratio, "params": {k: v[2] for k, v in peers.items()}, "target": TARGET,
              "steps_per_round": n, "rounds": rounds, "image": SIZE, "batch": BATCH, "warmup": warmup,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pixel_sac.json").write_text(json.dumps(result, indent=2))
    lines = ["## Pixel SAC vs stable-baselines3 SAC (`bench_pixel_sac`)", "",
             f"reach, {SIZE}x{SIZE} top camera + gripper state, batch {BATCH}, 1 update per env step, no frame "
             f"stack, 1 thread; median of {rounds} interleaved rounds of {n} steps after a {warmup}-step random "
             f"warm-up; ratio (min-max of the per-round ratios); target >= {TARGET:g}x training steps/s.", "",
             "| learner | parameters (actor + critics) | training env steps/s | gradient updates/s alone |",
             "|---|---:|---:|---:|"]
    for k in peers:
        lines.append(f"| {k} | {result['params'][k]:,} | {med[k]['train_steps_per_s']:.1f} | "
                     f"{med[k]['updates_per_s']:.1f} |")
    lines += [f"| **ratio ours / SB3** | | **{tr_ratio[0]:.2f}** ({tr_ratio[1]:.2f}-{tr_ratio[2]:.2f}) | "
              f"**{up_ratio[0]:.2f}** ({up_ratio[1]:.2f}-{up_ratio[2]:.2f}) |"]
    (RESULTS / "pixel_sac.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
