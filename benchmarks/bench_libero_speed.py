"""LIBERO env steps/s through ``make_env`` vs LIBERO's own ``OffScreenRenderEnv``, same run.

Both sides build the same task (``libero/libero_object/0`` by default) with the same
cameras and image size, and step the same random actions for ``--steps`` steps per round,
in interleaved rounds (who goes first alternates; median of ``--rounds``). The peer is
LIBERO's env as its own evaluation scripts use it (``OffScreenRenderEnv``, raw
observation dict). The ``make_env`` side also builds the contract's observation (8-D
state with an axis-angle, rotated images), success and the time limit. Episodes are not
reset inside a round (both run with ``ignore_done``). Writes
``benchmarks/results/libero_speed.{json,md}``. Target ratio >= 0.95.

    python -m benchmarks.bench_libero_speed [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
TASK = "libero/libero_object/0"


def _rate(step: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - start)


def _ours(cameras: list[str], size: int, actions: np.ndarray, horizon: int) -> Callable[[int], None]:
    from envs import make_env

    env = make_env(TASK, seed=0, pixels=bool(cameras), cameras=cameras or None, image_size=size,
                   max_episode_steps=horizon)
    env.reset()
    return lambda i: env.step(actions[i % len(actions)])


def _libero(cameras: list[str], size: int, actions: np.ndarray, horizon: int) -> Callable[[int], None]:
    from envs.libero_adapter import check_assets, default_assets_dir, parse_spec, resolve_task

    assets = check_assets(default_assets_dir())
    bench, _ = resolve_task(*parse_spec(TASK.removeprefix("libero/")))
    import libero.libero as libero_root
    from libero.libero.envs import OffScreenRenderEnv

    libero_root._assets_path_cache = str(assets)
    with contextlib.redirect_stdout(io.StringIO()):
        env = OffScreenRenderEnv(bddl_file_name=bench.get_task_bddl_file_path(0), camera_heights=size,
                                 camera_widths=size, camera_names=cameras or ["agentview"],
                                 use_camera_obs=bool(cameras), horizon=horizon + 1, ignore_done=True)
    env.seed(0)
    env.reset()
    return lambda i: env.step(actions[i % len(actions)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (about two minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per pair (median)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per round and side")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    n = args.steps or (20 if args.quick else 60)
    horizon = rounds * n + 10
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 7)).astype(np.float32)
    configs = {
        "2 cameras 128x128 (the libero configs)": (["agentview", "robot0_eye_in_hand"], 128),
        "1 camera 84x84": (["agentview"], 84),
        "state only": ([], 128),
    }
    rows = []
    for label, (cameras, size) in configs.items():
        ours_step, peer_step = _ours(cameras, size, actions, horizon), _libero(cameras, size, actions, horizon)
        ours_step(0), peer_step(0)  # warm up (renderer contexts)
        ours, peer = [], []
        for k in range(rounds):  # alternate who goes first: a shared CPU drifts
            first, second = (peer, ours) if k % 2 else (ours, peer)
            fns = (peer_step, ours_step) if k % 2 else (ours_step, peer_step)
            first.append(_rate(fns[0], n))
            second.append(_rate(fns[1], n))
        ratios = sorted(o / p for o, p in zip(ours, peer))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        rows.append({"config": label, "cameras": cameras, "image_size": size, "steps_per_round": n,
                     "rounds": rounds, "make_env_steps_per_s": statistics.median(ours),
                     "libero_steps_per_s": statistics.median(peer), "ratio": statistics.median(ratios),
                     "ratio_q1": quartiles[0], "ratio_q3": quartiles[2], "ratio_min": ratios[0],
                     "ratio_max": ratios[-1], "target": TARGET})
        r = rows[-1]
        print(f"{label:40s} make_env {r['make_env_steps_per_s']:6.1f}/s  LIBERO {r['libero_steps_per_s']:6.1f}/s  "
              f"ratio {r['ratio']:.3f} (IQR {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f})", flush=True)
    result = {"benchmark": "libero_speed", "task": TASK, "quick": args.quick,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "mujoco_gl": os.environ.get("MUJOCO_GL"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "libero_speed.json").write_text(json.dumps(result, indent=2))
    lines = ["## LIBERO env speed (`bench_libero_speed`)", "",
             f"`{TASK}` steps/s through `make_env` vs LIBERO's own `OffScreenRenderEnv` (same cameras, image size "
             f"and actions), median of {rounds} interleaved rounds of {n} steps (target ratio >= {TARGET}); "
             f"{result['cpu_count']} CPU cores, MUJOCO_GL={result['mujoco_gl']}.", "",
             "| observation | make_env steps/s | LIBERO steps/s | ratio (median) | ratio IQR | ratio min-max |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['make_env_steps_per_s']:.1f} | {r['libero_steps_per_s']:.1f} "
                     f"| {r['ratio']:.3f} | {r['ratio_q1']:.2f}-{r['ratio_q3']:.2f} "
                     f"| {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |")
    (RESULTS / "libero_speed.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
