"""Policy evaluation: success rates with confidence intervals, returns, lengths, videos.

``evaluate``        one env, ``episodes`` seeded episodes: the trainer's periodic check.
``evaluate_suite``  the number a paper reports (``embodied-eval``): for every task of a list
                    (a LIBERO suite, or one env) exactly ``episodes`` episodes in a
                    SAME_STEP vector env of ``num_envs`` copies, acting through the shared
                    :class:`~policies.chunking.ChunkExecutor` (reset per ended env by the
                    Driver). Sub-env ``j`` of ``E`` runs episodes ``j, j + E, j + 2E, ...``;
                    an episode whose index reaches the quota is discarded, so the counted
                    set never depends on which episodes end first (success ends a LIBERO
                    episode early: counting the first ``N`` to finish would favour success).
                    LIBERO sub-envs start at ``init_state_id=j`` and step by ``E``: episode
                    ``i`` of a task starts from the task's fixed initial state ``i mod 50``, as
                    LIBERO's own evaluation does. Seeds: sub-env ``j`` gets ``seed + j``.
                    Rates carry a 95 % Wilson interval; the overall rate pools all episodes.
``POLICY_SOURCES``  what ``policy=`` may name besides a folder: ``scripted`` (the env's
                    privileged ``expert_action()``), ``random``; a family ``"<name>:"``
                    receives the rest of the value (the hook for hub policies).

What ``embodied-eval`` writes from the results (json, markdown table, bar chart) is in
:mod:`embodied.eval_report`.

Videos hold the first ``video_episodes`` episodes of each task (episode order, whatever
sub-env ran them). Frames are the observation's camera images, cameras side by side,
when the env has pixels: exactly what the policy saw, the final observation included,
at no extra render cost (a LIBERO render is as slow as a step on a CPU). State-only envs
are drawn with ``env.render()`` (``venv.call("render")``) before each step.
"""

from __future__ import annotations

import importlib
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from embodied.contracts import PolicyBase

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def _batch(obs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if isinstance(value, dict):
            out[key] = _batch(value)
        elif key == "instruction":
            out[key] = [value]
        else:
            out[key] = np.asarray(value)[None]
    return out


def evaluate(policy, env, episodes: int, seed: int, video_path: str | Path | None = None,
             video_episodes: int = 2, fps: int = 20, deterministic: bool = True,
             policy_fn: Callable | None = None) -> dict[str, float]:
    """Run ``episodes`` episodes of ``policy`` in ``env`` (one env, seeded per episode).

    Chunked policies play their chunks open loop through the shared executor, cleared at
    the start of every episode.
    """
    from envs.wrappers import VideoRecorder
    from policies.chunking import ChunkExecutor

    executor = ChunkExecutor(policy, 1) if policy_fn is None else None
    act = policy_fn or (lambda o: executor.act(o, deterministic=deterministic))

    returns, successes, progress, lengths = [], [], [], []
    has_success = False  # a task without a success signal reports success as undefined (null)
    video = VideoRecorder(video_path, fps=fps) if video_path is not None else None
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        if executor is not None:
            executor.reset()
        done, ret, success, length = False, 0.0, False, 0
        record = video_path is not None and ep < video_episodes
        while not done:
            if record:
                video.add(env.render())
            action = np.asarray(act(_batch(obs)), np.float32)
            obs, reward, terminated, truncated, info = env.step(action[0])
            ret += float(reward)
            success |= bool(info.get("success", False))
            has_success |= "success" in info
            length += 1
            done = terminated or truncated
        if record:
            video.add(env.render())
        returns.append(ret)
        successes.append(success)
        progress.append(float(info.get("progress", np.nan)))
        lengths.append(length)
    if video is not None:
        video.close()
    return {"eval/return": float(np.mean(returns)),
            "eval/success": float(np.mean(successes)) if has_success else float("nan"),
            "eval/final_progress": float(np.nanmean(progress)) if not np.all(np.isnan(progress)) else float("nan"),
            "eval/length": float(np.mean(lengths)), "eval/episodes": episodes}


# -- statistics ---------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a success rate (95 % by default); (0, 1) for ``n = 0``."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends: no rounding past the rate
    return low, 1.0 if successes >= n else min(1.0, centre + half)


def _rate(successes: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(successes, n)
    return {"episodes": n, "successes": successes, "success_rate": successes / n if n else float("nan"),
            "ci95": [low, high]}


def summarize_task(name: str, records: Sequence[Mapping[str, Any]], has_success: bool = True) -> dict[str, Any]:
    """Per-task figures from its episode records (``success``, ``return``, ``length``,
    ``instruction``), in episode order."""
    instructions = Counter(r["instruction"] for r in records)
    out = {"task": name, "instruction": records[0]["instruction"] if records else "",
           "instructions": sorted(instructions), **_rate(sum(bool(r["success"]) for r in records), len(records)),
           "mean_return": float(np.mean([r["return"] for r in records])),
           "mean_length": float(np.mean([r["length"] for r in records]))}
    if not has_success:  # a task without a success signal: the rate is undefined, not 0
        out.update(successes=None, success_rate=float("nan"), ci95=None)
    return out


def summarize_overall(tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pooled over every episode of every task, plus the mean of the per-task rates."""
    scored = [t for t in tasks if t["successes"] is not None]
    n = sum(t["episodes"] for t in scored)
    weights = [t["episodes"] for t in tasks]
    out = {**_rate(sum(t["successes"] for t in scored), n), "tasks": len(tasks),
           "mean_task_success_rate": float(np.mean([t["success_rate"] for t in scored])) if scored else float("nan"),
           "mean_return": float(np.average([t["mean_return"] for t in tasks], weights=weights)),
           "mean_length": float(np.average([t["mean_length"] for t in tasks], weights=weights))}
    if not scored:
        out.update(successes=None, ci95=None)
    return out


# -- suite evaluation ---------------------------------------------------------------------
def _is_libero(name: str) -> bool:
    return name.startswith("libero/")


def resolve_tasks(env_name: str, tasks: Any = None) -> list[str]:
    """The env names to evaluate: ``tasks=None`` -> ``[env_name]``; ``"all"``, one id or a
    list of ids -> the tasks of ``env_name``'s LIBERO suite (``libero/<suite>/<id>``) or of
    the built-in ``lang_reach`` suite (``lang_reach/<colour>``, ids or colour names)."""
    if tasks is None:
        return [env_name]
    if env_name.split("/")[0] == "lang_reach":  # the built-in language suite: one task per instructed colour
        from envs.builtin.tasks import LangReachEnv

        names = list(LangReachEnv.TASKS)
        picked = names if tasks == "all" else [tasks] if isinstance(tasks, (int, str)) else list(tasks)
        bad = [t for t in picked if not ((isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(names))
                                         or t in names)]
        if bad or not picked:
            raise ValueError(f"tasks: {bad[0] if bad else tasks!r} is not a lang_reach task (all, 0..{len(names) - 1} "
                             f"or {', '.join(names)})")
        return [f"lang_reach/{names[t] if isinstance(t, int) else t}" for t in picked]
    parts = env_name.split("/")
    if len(parts) != 3 or not _is_libero(env_name):
        raise ValueError(f"tasks={tasks} needs a suite env (env=libero_spatial, libero_object, libero_goal, "
                         f"libero_10 or libero_90); env.name={env_name!r} is a single task: drop tasks=")
    from envs.libero_adapter import resolve_task

    suite = parts[1]
    n_tasks = resolve_task(suite, 0)[0].n_tasks
    if tasks == "all":
        ids = list(range(n_tasks))
    else:
        ids = [tasks] if isinstance(tasks, int) and not isinstance(tasks, bool) else tasks
        if isinstance(ids, str) or not isinstance(ids, Sequence) or not ids:
            raise ValueError(f"tasks must be null, all, or a list of task ids of {suite}, got {tasks!r}")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_tasks:
                raise ValueError(f"tasks: {i!r} is not a task id of {suite} (0..{n_tasks - 1})")
        if len(set(ids)) != len(ids):
            raise ValueError(f"tasks lists a task twice: {list(ids)}")
    return [f"libero/{suite}/{i}" for i in ids]


def check_policy_fits(policy: Any, venv, task: str) -> None:
    """One-line errors when a network's spec (action / state sizes, cameras) does not match
    the env's spaces: an evaluation must fail before it steps, not deep inside torch."""
    spec = policy.spec() if hasattr(policy, "spec") else None
    if not isinstance(spec, Mapping):
        return
    obs, act = venv.single_observation_space, venv.single_action_space
    if "action_dim" in spec and int(spec["action_dim"]) != int(np.prod(act.shape)):
        raise ValueError(f"the policy outputs {spec['action_dim']}-dim actions but {task} takes {act.shape[0]}-dim ones")
    state_dim = int(spec.get("state_dim") or 0)
    have = obs["state"].shape[0] if "state" in obs.spaces else 0
    if state_dim and state_dim != have:
        raise ValueError(f"the policy reads a {state_dim}-dim state but {task} gives {have}: evaluate with the env "
                         "settings it was trained with (env.proprio_only, env.object_state, ...)")
    pixels = obs.spaces.get("pixels")
    for cam, shape in (spec.get("cameras") or {}).items():
        if pixels is None or cam not in pixels.spaces:
            raise ValueError(f"the policy reads camera {cam!r} but {task} gives "
                             f"{sorted(pixels.spaces) if pixels else 'no pixels'}: set env.pixels=true env.cameras=[...]")
        if tuple(pixels[cam].shape) != tuple(shape):
            raise ValueError(f"the policy reads {cam} frames of {tuple(shape)} but {task} gives "
                             f"{tuple(pixels[cam].shape)}: set env.image_size={shape[0]}")


def _frame(obs: Mapping[str, Any]) -> np.ndarray:
    frames = list(obs["pixels"].values())
    if len({f.shape[0] for f in frames}) == 1:
        return np.concatenate(frames, axis=1)  # cameras side by side (copied)
    return np.array(frames[0])


class _Episodes:
    """Which episode each sub-env runs (env ``j``'s ``k``-th is episode ``j + k E``), the
    records of the counted ones (index < quota) and the frames of the recorded ones."""

    def __init__(self, num_envs: int, quota: int, video_episodes: int, pixels: bool, bar: Any = None):
        self.num_envs, self.quota, self.video_episodes, self.pixels, self.bar = num_envs, quota, video_episodes, pixels, bar
        self.finished = [0] * num_envs
        self.instruction = [""] * num_envs
        self.records: dict[int, dict[str, Any]] = {}
        self.frames: dict[int, list[np.ndarray]] = {}
        self.has_success = False

    def index(self, env: int) -> int:
        return env + self.finished[env] * self.num_envs

    @property
    def complete(self) -> bool:
        return len(self.records) == self.quota

    def recording(self) -> list[int]:
        return [j for j in range(self.num_envs) if self.index(j) < self.video_episodes]

    def on_transition(self, t, env: int) -> None:
        if t.is_first:
            self.instruction[env] = str(t.obs.get("instruction", ""))
        self.has_success |= "success" in t.info
        k = self.index(env)
        if self.pixels and k < self.video_episodes:
            self.frames.setdefault(k, []).append(_frame(t.obs))
            if t.terminated or t.truncated:
                self.frames[k].append(_frame(t.next_obs))

    def on_render(self, frames: Sequence[np.ndarray]) -> None:
        for j in self.recording():
            self.frames.setdefault(self.index(j), []).append(np.asarray(frames[j]))

    def on_episode(self, summary: Mapping[str, Any], env: int) -> None:
        k = self.index(env)
        self.finished[env] += 1
        if k < self.quota:
            self.records[k] = {"success": bool(summary["success"]), "return": float(summary["return"]),
                               "length": int(summary["length"]), "instruction": self.instruction[env]}
            if self.bar is not None:
                self.bar.update(1)


def _write_video(path: Path, episodes: list[list[np.ndarray]], fps: int) -> str | None:
    from envs.wrappers import VideoRecorder

    with VideoRecorder(path, fps=fps) as video:
        for frames in episodes:
            for frame in frames:
                video.add(frame)
    return str(path) if video.num_frames else None


def evaluate_task(make_policy: Callable[[Any], Any], name: str, episodes: int, *, num_envs: int = 1, seed: int = 0,
                  env_kwargs: Mapping[str, Any] | None = None, video_path: str | Path | None = None,
                  video_episodes: int = 0, deterministic: bool = True, bar: Any = None,
                  asynchronous: bool = False) -> dict[str, Any]:
    """Exactly ``episodes`` episodes of one env name (see the module doc); per-task figures."""
    import envs
    from embodied.driver import Driver
    from policies.chunking import ChunkExecutor

    n_envs = max(1, min(int(num_envs), int(episodes)))
    per_env = ([{"init_state_id": j, "init_state_stride": n_envs} for j in range(n_envs)]
               if _is_libero(name) else None)
    start = time.time()
    venv = envs.make_vec_env(name, n_envs, seed=seed, per_env_kwargs=per_env, asynchronous=asynchronous and n_envs > 1,
                             **dict(env_kwargs or {}))
    try:
        policy = make_policy(venv)
        check_policy_fits(policy, venv, name)
        executor = ChunkExecutor(policy, n_envs, deterministic=deterministic)
        pixels = "pixels" in venv.single_observation_space.spaces
        video_episodes = min(int(video_episodes), int(episodes)) if video_path is not None else 0
        runs = _Episodes(n_envs, int(episodes), video_episodes, pixels, bar)
        driver = Driver(venv).on_transition(runs.on_transition).on_episode(runs.on_episode)
        driver.reset(seed=seed)
        executor.reset()
        steps = 0
        while not runs.complete:
            if not pixels and runs.recording():
                runs.on_render(venv.call("render"))
            steps += driver.step(executor)
        fps = int(venv.metadata.get("render_fps", 20) or 20)
    finally:
        venv.close()
    records = [runs.records[k] for k in range(int(episodes))]
    out = summarize_task(name, records, runs.has_success)
    out["video"] = _write_video(Path(video_path), [runs.frames.get(k, []) for k in range(video_episodes)], fps) \
        if video_episodes else None
    seconds = time.time() - start
    out.update(seconds=seconds, env_steps_per_s=steps / max(seconds, 1e-9),
               per_episode=[{k: r[k] for k in ("success", "return", "length")} for r in records])
    return out


def evaluate_suite(policy: Any, tasks: Sequence[str], episodes: int, *, num_envs: int = 1, seed: int = 0,
                   env_kwargs: Mapping[str, Any] | None = None, video_dir: str | Path | None = None,
                   video_episodes: int = 0, deterministic: bool = True, progress: bool = True,
                   asynchronous: bool = False) -> dict[str, Any]:
    """Evaluate ``policy`` on every env name of ``tasks``: ``{"tasks": [per task], "overall": ...}``.

    policy: a Policy, or a function of the vector env returning one (a policy source such
    as ``scripted`` reads that env). Per task: ``episodes``, ``successes``,
    ``success_rate``, ``ci95`` (Wilson), ``mean_return``, ``mean_length``, ``instruction``,
    ``video`` (``<video_dir>/<task>.mp4``) and the per-episode records; overall: the same
    pooled over all episodes and ``mean_task_success_rate``. ``asynchronous``: each sub-env
    in its own process (LIBERO and robosuite step on the CPU: E processes use E cores).
    """
    from tqdm.auto import tqdm

    if int(episodes) < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not tasks:
        raise ValueError("no tasks to evaluate")
    make_policy = policy if not (hasattr(policy, "act") or hasattr(policy, "step")) else (lambda venv: policy)
    bar = tqdm(total=len(tasks) * int(episodes), unit="ep", desc="eval", disable=not progress)
    results = []
    try:
        for name in tasks:
            bar.set_description(name)
            video = Path(video_dir) / f"{name.replace('/', '_')}.mp4" if video_dir is not None and video_episodes else None
            results.append(evaluate_task(make_policy, name, episodes, num_envs=num_envs, seed=seed,
                                         env_kwargs=env_kwargs, video_path=video, video_episodes=video_episodes,
                                         deterministic=deterministic, bar=bar, asynchronous=asynchronous))
            done = summarize_overall(results)
            bar.set_postfix(success=f"{done['success_rate']:.2f}")
    finally:
        bar.close()
    return {"tasks": results, "overall": summarize_overall(results)}


# -- policy sources -------------------------------------------------------------------------
class RandomPolicy(PolicyBase):
    """Uniform random actions in [-1, 1]: the chance level of a task."""

    def __init__(self, action_dim: int, seed: int = 0):
        self.action_dim, self.rng = int(action_dim), np.random.default_rng(seed)

    def act(self, obs: Mapping[str, Any], deterministic: bool = False) -> np.ndarray:
        return self.rng.uniform(-1, 1, (_batch_size(obs), self.action_dim)).astype(np.float32)


class ScriptedPolicy(PolicyBase):
    """Each sub-env's scripted expert (``expert_action()``, reading privileged simulator
    state; the observation is not used), called through the vector env."""

    def __init__(self, venv):
        first = getattr(venv, "envs", [None])[0]
        if first is not None and not first.has_wrapper_attr("expert_action"):
            raise ValueError(f"policy=scripted: {first.unwrapped.__class__.__name__} has no scripted expert "
                             "(expert_action); choose another policy=")
        self.venv = venv

    def act(self, obs: Mapping[str, Any], deterministic: bool = False) -> np.ndarray:
        return np.stack([np.asarray(a, np.float32) for a in self.venv.call("expert_action")])


def _batch_size(obs: Mapping[str, Any]) -> int:
    for value in obs.values():
        return _batch_size(value) if isinstance(value, Mapping) else len(value)
    raise ValueError("an empty observation")


def random_source(arg: str | None, *, seed: int = 0, device: str = "cpu") -> Callable[[Any], Any]:
    return lambda venv: RandomPolicy(int(np.prod(venv.single_action_space.shape)), seed)


def scripted_source(arg: str | None, *, seed: int = 0, device: str = "cpu") -> Callable[[Any], Any]:
    return lambda venv: ScriptedPolicy(venv)


def folder_source(arg: str, *, seed: int = 0, device: str = "cpu") -> Callable[[Any], Any]:
    """A project policy or run folder, or a LeRobot checkpoint folder (``config.json`` +
    ``model.safetensors``: ACT, Diffusion Policy, SmolVLA), loaded frozen as
    :func:`policies.base.load_base` loads a residual learner's base."""
    from policies.base import base_kind, load_base

    policy = load_base(arg, device=device, **({} if base_kind(arg) == "project" else {"seed": seed}))
    return lambda venv: policy


def lerobot_source(arg: str, *, seed: int = 0, device: str = "cpu") -> Callable[[Any], Any]:
    """``policy=lerobot:<hub id or folder>``: a LeRobot policy."""
    from policies.lerobot_policy import LeRobotPolicy

    if not arg:
        raise ValueError("policy=lerobot: needs a hub id or a checkpoint folder after the colon")
    policy = LeRobotPolicy(arg, device=device, seed=seed)
    return lambda venv: policy


# name -> "module:function"; a name ending in ":" is a family that receives the rest of the
# value (e.g. a later "lerobot:" source for policy=lerobot:<hub id>). A source is called once as
# source(arg, seed=, device=) and returns a function of each task's vector env -> Policy.
POLICY_SOURCES: dict[str, str] = {
    "scripted": "embodied.evaluation:scripted_source",
    "random": "embodied.evaluation:random_source",
    "lerobot:": "embodied.evaluation:lerobot_source",
}


def register_policy_source(name: str, target: str) -> None:
    """Add a policy source ``"module:function"`` under ``name`` (``"family:"`` for a family)."""
    POLICY_SOURCES[name] = target


def resolve_policy(value: str, *, seed: int = 0, device: str = "cpu") -> Callable[[Any], Any]:
    """``policy=`` -> a function of the vector env returning the policy: a registered source,
    ``<family>:<arg>``, or a folder (a run folder or one written by ``save_policy``)."""
    value = str(value)
    target, arg = POLICY_SOURCES.get(value), None
    if target is None and ":" in value:
        family, arg = value.split(":", 1)
        target = POLICY_SOURCES.get(family + ":")
    if target is None:
        if not Path(value).expanduser().exists():
            choices = ", ".join(n + "<arg>" if n.endswith(":") else n for n in POLICY_SOURCES)
            raise ValueError(f"policy={value!r} is neither a policy source ({choices}) nor an existing folder "
                             "(an embodied-train run folder or a saved policy)")
        target, arg = "embodied.evaluation:folder_source", value
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(arg, seed=seed, device=device)
