"""Env wrapper overhead: steps/s through ``make_env`` vs the raw simulator, same run.

Peers, each measured in interleaved rounds (median of ``--rounds``) on this machine:

* built-in ``reach`` vs a raw ``mujoco.mj_step`` loop on the same MJCF (same control
  period: ``frame_skip`` physics steps per action), without and with an 84x84 render;
* ``gym/Reacher-v5`` vs ``gymnasium.make("Reacher-v5")`` (env checker off in both),
  without and with ``render_mode="rgb_array"`` at 84x84.

The raw loops do only the simulator's work (set controls, step, render); the
``make_env`` side also builds the observation dict, reward, success and progress.
Writes ``benchmarks/results/env_overhead.{json,md}``. Target ratio >= 0.95.

    python -m benchmarks.bench_env_overhead [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.95


def _rate(step: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - start)


def _through_make_env(name: str, pixels: bool, actions: np.ndarray) -> Callable[[int], None]:
    from envs import make_env

    env = make_env(name, seed=0, pixels=pixels, image_size=84)
    env.reset()

    def step(i: int) -> None:
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()

    return step


def _raw_builtin(pixels: bool, actions: np.ndarray) -> Callable[[int], None]:
    import mujoco

    from envs.builtin.scene import scene_xml

    model = mujoco.MjModel.from_xml_string(scene_xml(block=False, num_markers=1, marker_shape="disc", buffer_size=256))
    data = mujoco.MjData(model)
    renderer = mujoco.Renderer(model, 84, 84) if pixels else None
    if renderer is not None:
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_FOG):
            renderer.scene.flags[flag] = False

    def step(i: int) -> None:  # the task's control law, so the gripper roams the same way
        data.ctrl[:] = np.clip(data.qpos[:2] + 0.04 * actions[i % len(actions)], -0.3, 0.3)
        mujoco.mj_step(model, data, nstep=10)
        if renderer is not None:
            renderer.update_scene(data, camera="front")
            renderer.render()

    return step


def _bare_task(name: str, actions: np.ndarray) -> Callable[[int], None]:
    """The task class itself, without make_env's wrappers (time limit, seeding)."""
    from envs import make_env

    env = make_env(name, seed=0).unwrapped
    env.reset()
    limit, t = 50, [0]

    def step(i: int) -> None:  # the same episode length as make_env's time limit
        env.step(actions[i % len(actions)])
        t[0] += 1
        if t[0] == limit:
            env.reset()
            t[0] = 0

    return step


def _raw_gym(env_id: str, pixels: bool, actions: np.ndarray) -> Callable[[int], None]:
    import gymnasium as gym

    kwargs = dict(render_mode="rgb_array", width=84, height=84) if pixels else {}
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    env.reset(seed=0)
    low, high = env.action_space.low, env.action_space.high

    def step(i: int) -> None:
        a = low + (actions[i % len(actions)] + 1.0) * 0.5 * (high - low)
        _, _, terminated, truncated, _ = env.step(a)
        if pixels:
            env.render()
        if terminated or truncated:
            env.reset()

    return step


def _render_fps(n: int) -> float:
    from envs import make_env

    env = make_env("reach", seed=0, pixels=True, image_size=84).unwrapped
    env.reset()
    return _rate(lambda i: env._render("front", 84), n)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (about a minute)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per pair (median)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.quick else 10)
    n_state, n_pixels = (2000, 200) if args.quick else (5000, 500)
    actions = np.random.default_rng(0).uniform(-1, 1, (1000, 2)).astype(np.float32)
    actions_reacher = actions  # Reacher-v5 also has 2 actions

    pairs = {
        "reach (state)": (lambda: _through_make_env("reach", False, actions), lambda: _raw_builtin(False, actions),
                          n_state, "mujoco.mj_step x10"),
        "reach (state), wrappers only": (lambda: _through_make_env("reach", False, actions),
                                         lambda: _bare_task("reach", actions), n_state,
                                         "ReachEnv class, no make_env wrappers"),
        "reach (pixels 84x84)": (lambda: _through_make_env("reach", True, actions),
                                 lambda: _raw_builtin(True, actions), n_pixels, "mj_step x10 + Renderer"),
        "gym/Reacher-v5 (state)": (lambda: _through_make_env("gym/Reacher-v5", False, actions_reacher),
                                   lambda: _raw_gym("Reacher-v5", False, actions_reacher), n_state,
                                   "gymnasium.make"),
        "gym/Reacher-v5 (pixels 84x84)": (lambda: _through_make_env("gym/Reacher-v5", True, actions_reacher),
                                          lambda: _raw_gym("Reacher-v5", True, actions_reacher), n_pixels,
                                          "gymnasium.make + render"),
    }
    rows = []
    for label, (ours_factory, raw_factory, n, peer) in pairs.items():
        ours_step, raw_step = ours_factory(), raw_factory()
        ours_step(0), raw_step(0)  # warm up (renderer contexts, caches)
        ours, raw = [], []
        for k in range(rounds):  # alternate who goes first: a shared CPU drifts
            if k % 2:
                raw.append(_rate(raw_step, n))
                ours.append(_rate(ours_step, n))
            else:
                ours.append(_rate(ours_step, n))
                raw.append(_rate(raw_step, n))
        ratios = sorted(o / r for o, r in zip(ours, raw))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows.append({"env": label, "peer": peer, "steps_per_round": n, "rounds": rounds,
                     "make_env_steps_per_s": statistics.median(ours), "raw_steps_per_s": statistics.median(raw),
                     "ratio": statistics.median(ratios), "ratio_q1": quartiles[0], "ratio_q3": quartiles[2],
                     "target": TARGET})
        print(f"{label:32s} make_env {rows[-1]['make_env_steps_per_s']:9.0f}/s  raw {rows[-1]['raw_steps_per_s']:9.0f}/s"
              f"  ratio {rows[-1]['ratio']:.3f} (IQR {quartiles[0]:.2f}-{quartiles[2]:.2f})", flush=True)
    fps = statistics.median(_render_fps(n_pixels) for _ in range(rounds))
    result = {"benchmark": "env_overhead", "quick": args.quick, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "mujoco_gl": os.environ.get("MUJOCO_GL"), "rows": rows,
              "reach_render_fps_84": fps}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "env_overhead.json").write_text(json.dumps(result, indent=2))
    lines = ["## Env wrapper overhead (`bench_env_overhead`)", "",
             f"steps/s through `make_env` vs the raw simulator, median of {rounds} interleaved rounds "
             f"(target ratio >= {TARGET}); MUJOCO_GL={result['mujoco_gl']}.", "",
             "| env | make_env steps/s | raw peer | raw steps/s | ratio (median) | ratio IQR |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['make_env_steps_per_s']:.0f} | {r['peer']} | {r['raw_steps_per_s']:.0f} "
                     f"| {r['ratio']:.3f} | {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f} |")
    lines += ["", f"Built-in reach renders {fps:.0f} frames/s at 84x84 (one camera, CPU)."]
    (RESULTS / "env_overhead.md").write_text("\n".join(lines) + "\n")
    print(f"reach render: {fps:.0f} frames/s at 84x84")
    return result


if __name__ == "__main__":
    main()
