"""The actor: a fixed-rate control loop next to the robot.

Each tick: act (the human's action while intervening, else a remote policy server's
chunk when one is set, else the newest policy the link holds, else uniform random until
the first weights), pass the action through the
safety limits, feed the watchdog, step the robot, poll the human for keys about the
step just taken (success / failure end the episode with a sparse label, e-stop holds
the robot and stops), and hand finished batches of transitions to the link. The loop
never waits on the network: with the learner gone it keeps acting with the last
weights and the link spools; only a learner that rejects this actor's key stops the
loop (the robot is held, the last batch spooled). Tick jitter (actual start -
scheduled start) and policy latency are measured every tick and reported (p50 / p99, ms).

Remote policy (``remote=``, :class:`real_robot.remote_policy.RemotePolicy`): asked every
tick for the action of the current episode step, never waited on. A tick it has no action
for sends nothing and takes no step (counted as ``policy_stalls``; the human is still
polled, e-stop included): the watchdog, not fed, holds the robot after its deadline.

Human-in-the-loop modes (the graded protocol of the VLAC paper; demo replay is on the
learner side, ``demos=<dataset>``):
    ``none``            interventions ignored (keys still work);
    ``human_guided``    the human may take over at any time;
    ``return_explore``  as ``human_guided``, and an episode starts with probability
                        ``return_prob`` from a state saved in an earlier successful
                        episode (robots with ``set_state``, i.e. the sim robot; on
                        others the human guides the robot back instead).
Episode resets: ``reset=scripted`` (the robot's own reset) or ``reset=human`` (hold
still until the human presses reset-done).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embodied.contracts import Transition
from policies.chunking import ChunkExecutor
from real_robot.safety import ActionLimits, Watchdog
from real_robot.teleop import HumanInput

log = logging.getLogger(__name__)
MODES = ("none", "human_guided", "return_explore")


@dataclass
class LoopConfig:
    hz: float = 10.0  # control rate
    batch: int = 16  # transitions per message (an episode end also flushes)
    max_steps: int = 0  # stop after this many control steps (0: run until stopped)
    mode: str = "human_guided"  # none | human_guided | return_explore
    return_prob: float = 0.5  # return_explore: chance to start from a saved success state
    reset: str = "scripted"  # scripted | human
    reward: str = "env"  # env: the robot's reward (sim); keys: 1 on the success key, else 0
    deterministic: bool = False  # act with the policy mean
    eval_every: int = 0  # every N-th episode acts with the policy mean, no human (0: never)
    seed: int = 0
    stats_file: str = ""  # JSON stats written every second (empty: none)


class Actor:
    def __init__(self, env, link=None, human=None, limits: ActionLimits | None = None,
                 watchdog: Watchdog | None = None, cfg: LoopConfig | None = None, policy: Any = None,
                 base: Any = None, remote: Any = None):
        self.cfg = cfg or LoopConfig()
        if self.cfg.mode not in MODES:
            raise ValueError(f"actor mode {self.cfg.mode!r} unknown; one of {MODES}")
        if self.cfg.reset not in ("scripted", "human") or self.cfg.reward not in ("env", "keys"):
            raise ValueError("actor reset must be scripted|human and reward env|keys")
        if self.cfg.hz <= 0:
            raise ValueError(f"control rate hz must be > 0, got {self.cfg.hz}")
        self.env, self.link, self.human = env, link, human
        self.limits = limits or ActionLimits()
        self.watchdog = watchdog
        self.fixed_policy = policy
        self.remote = remote  # a policy server's chunks, played step-aligned (real_robot.remote_policy)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.stop_event = threading.Event()
        self.archive: list[dict] = []  # return_explore: states from successful episodes
        self.outcomes: list[tuple[bool, bool]] = []  # (success, human intervened) per finished episode
        self.eval_outcomes: list[bool] = []  # success of each evaluation episode
        self.jitter_ms: list[float] = []
        self.latency_ms: list[float] = []
        self.counts = {"steps": 0, "episodes": 0, "successes": 0, "interventions": 0, "overruns": 0,
                       "estops": 0, "returns": 0, "transitions_submitted": 0, "policy_stalls": 0,
                       "ticks_skipped": 0}
        self._last_stats = 0.0
        self.episode_offset = 0
        self.executor: ChunkExecutor | None = None  # plays the policy's action chunks
        # residual RL: the frozen base installed here; acts alone until the first residual
        # weights arrive, and every transition records extras["base_action"]
        self.base = base
        self.base_executor: ChunkExecutor | None = ChunkExecutor(base, 1, deterministic=True) if base is not None else None

    # -- acting ---------------------------------------------------------------------------
    def _policy(self):
        return self.fixed_policy if self.fixed_policy is not None else getattr(self.link, "policy", None)

    def _act(self, obs: dict, deterministic: bool, step: int = 0) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(action, extras of the transition). Residual mode: extras hold ``base_action``.
        A remote policy without an action for episode step ``step`` yet: ``(None, {})``."""
        if self.remote is not None:
            t0 = time.perf_counter()
            action = self.remote.next_action(obs, step, deterministic)
            self.latency_ms.append(1e3 * (time.perf_counter() - t0))
            return action, {}
        policy = self._policy()
        batch: dict[str, Any] = {"instruction": [obs.get("instruction", "")]}
        if "state" in obs:
            batch["state"] = obs["state"][None]
        if "pixels" in obs:
            batch["pixels"] = {c: v[None] for c, v in obs["pixels"].items()}
        t0 = time.perf_counter()
        if policy is None and self.base_executor is not None:  # residual RL before the first weights: the base
            action = np.asarray(self.base_executor.act(batch)[0], np.float32)
            extras = {"base_action": action.copy()}
        elif policy is None:
            return self.rng.uniform(-1, 1, self.env.action_space.shape).astype(np.float32), {}
        else:
            if self.executor is None or self.executor.policy is not policy:  # new weights: a fresh queue
                self.executor = ChunkExecutor(policy, 1)
                if self.base_executor is not None:
                    execute = (getattr(policy, "config", None) or {}).get("base_execute")
                    if execute is not None and execute != self.base_executor.execute:  # as the learner plays it
                        self.base_executor = ChunkExecutor(self.base, 1, execute=execute, deterministic=True)
                    self.executor.state = self.base_executor_state()
            step = self.executor(batch, deterministic=deterministic)
            action = np.asarray(step.action, np.float32)[0]
            extras = {"base_action": np.asarray(step.extras["base_action"][0], np.float32)} \
                if self.base is not None else {}
        self.latency_ms.append(1e3 * (time.perf_counter() - t0))
        return action, extras

    def base_executor_state(self):
        """The residual policy's per-env state continuing the base's current queue (new weights
        mid-episode do not restart the base's chunk)."""
        from policies.residual import BaseQueues

        return BaseQueues(self.base, 1, executor=self.base_executor)

    # -- episodes -------------------------------------------------------------------------
    def _reset(self, episode: int) -> tuple[dict, dict]:
        if self.watchdog is not None:
            self.watchdog.disarm()
        if self.cfg.reset == "human" and self.human is not None:
            self.env.hold()
            while not self.stop_event.is_set() and not self.human.poll().reset_done:
                time.sleep(1.0 / self.cfg.hz)
        options = None
        can_restore = hasattr(self.env.robot, "set_state")
        if self.cfg.mode == "return_explore" and self.archive and can_restore and self.rng.random() < self.cfg.return_prob:
            options = {"state": self.archive[self.rng.integers(len(self.archive))]}
            self.counts["returns"] += 1
        obs, info = self.env.reset(seed=int(self.rng.integers(2**31)), options=options)
        if self.executor is not None:
            self.executor.reset()  # queued chunk actions never cross an episode boundary
        if self.remote is not None:
            self.remote.reset()
        if self.base_executor is not None:
            self.base_executor.reset()
        self.limits.reset()
        if self.human is not None and hasattr(self.human, "new_episode"):
            self.human.new_episode()
        return obs, info

    def run(self) -> dict[str, Any]:
        """Run until ``max_steps`` or :meth:`stop`; returns the stats."""
        cfg, period = self.cfg, 1.0 / self.cfg.hz
        episode = self.episode_offset
        obs, info = self._reset(episode)
        human = self._poll(obs, info)
        step, batch, saved, intervened_episode = 0, [], [], False
        next_tick = time.perf_counter()
        while not self.stop_event.is_set() and not (cfg.max_steps and self.counts["steps"] >= cfg.max_steps):
            if getattr(self.link, "rejected", False):
                log.error("the learner rejected this actor's key: holding the robot and stopping the control loop")
                self.env.hold()
                break
            next_tick += period
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif -delay > period:  # overran a whole period: do not try to catch up
                self.counts["overruns"] += 1
                self.counts["ticks_skipped"] += int(-delay // period)  # control periods with no tick at all
                next_tick = time.perf_counter()
            self.jitter_ms.append(1e3 * abs(time.perf_counter() - next_tick))

            evaluating = bool(cfg.eval_every) and episode % cfg.eval_every == cfg.eval_every - 1
            intervening = cfg.mode != "none" and not evaluating and human.intervening and human.action is not None
            if intervening and self.base is None and self.remote is None:
                action, extras = human.action, {}
            else:  # under a takeover a residual's base runs on (action recorded), a remote policy stays aligned
                action, extras = self._act(obs, cfg.deterministic or evaluating, step)
                if intervening:
                    action = human.action
            if action is None:  # a remote policy with no chunk for this step yet: nothing is sent, no step taken
                self.counts["policy_stalls"] += 1
                human = self._poll(obs, info)
                if human.estop:
                    self._estop()
                    break
                self._maybe_write_stats()
                continue
            action = self.limits(action)
            if self.watchdog is not None:
                self.watchdog.feed()
            if cfg.mode == "return_explore" and hasattr(self.env.robot, "get_state"):
                saved.append(self.env.robot.get_state())
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            self.counts["steps"] += 1
            human = self._poll(next_obs, info)
            if human.estop:
                self._estop()
                break
            if cfg.reward == "keys":
                reward = 1.0 if human.success else 0.0
            terminated = bool(terminated or human.success)
            truncated = bool(truncated or human.failure) and not terminated
            success = bool(human.success or info.get("success", False))
            t = Transition(obs=obs, action=action, reward=float(reward), next_obs=next_obs, terminated=terminated,
                           truncated=truncated, is_first=step == 0, episode_id=episode, step=step,
                           intervention=intervening, info=_scalars(info), extras=extras)
            batch.append(t)
            self.counts["interventions"] += int(intervening)
            intervened_episode |= intervening
            step += 1
            obs = next_obs
            if len(batch) >= cfg.batch or t.done:
                self._submit(batch)
                batch = []
            if t.done:
                self.counts["episodes"] += 1
                self.counts["successes"] += int(success)
                self.outcomes.append((success, intervened_episode))
                if evaluating:
                    self.eval_outcomes.append(success)
                intervened_episode = False
                if success and saved:
                    self.archive = (self.archive + saved[: max(1, len(saved) // 2)])[-200:]
                episode, step, saved = episode + 1, 0, []
                obs, info = self._reset(episode)
                human = self._poll(obs, info)
            self._maybe_write_stats()
        self._submit(batch)
        self._maybe_write_stats(force=True)
        return self.stats()

    def _poll(self, obs: dict, info: dict) -> HumanInput:
        return self.human.poll(obs, info) if self.human is not None else HumanInput()

    def _submit(self, batch: list) -> None:
        if batch and self.link is not None:
            self.link.submit(batch)
            self.counts["transitions_submitted"] += len(batch)

    def _estop(self) -> None:
        self.counts["estops"] += 1
        log.error("E-STOP pressed: holding the robot and stopping the control loop")
        self.env.hold()

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    # -- stats ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counts)
        for name, values in (("jitter_ms", self.jitter_ms[-2000:]), ("policy_latency_ms", self.latency_ms[-2000:])):
            if values:
                out[f"{name}_p50"] = float(np.percentile(values, 50))
                out[f"{name}_p99"] = float(np.percentile(values, 99))
        autonomous = [ok for ok, helped in self.outcomes if not helped][-20:]
        if autonomous:  # the policy's own success, episodes without any intervention
            out["success_rate_last20"] = float(np.mean(autonomous))
        if self.eval_outcomes:
            out["eval_success_last10"] = float(np.mean(self.eval_outcomes[-10:]))
            out["eval_episodes"] = len(self.eval_outcomes)
        out.update(self.limits.stats())
        if self.watchdog is not None:
            out.update(self.watchdog.stats())
        if self.remote is not None:
            out.update(self.remote.stats())
        if self.link is not None:
            out.update({f"link_{k}": v for k, v in self.link.stats.items()})
            out["weights_version"] = self.link.weights_version
            out["link_pending"] = len(self.link.pending)
        return out

    def _maybe_write_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.cfg.stats_file or (not force and now - self._last_stats < 1.0):
            return
        self._last_stats = now
        path = Path(self.cfg.stats_file)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.stats()))
        os.replace(tmp, path)


def _scalars(info: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in info.items()
            if isinstance(v, (bool, int, float, str, np.generic))}


def build_policy(spec: dict, arrays: dict, base: Any = None):
    """Weights message -> a policy: rebuilt from its JSON spec, tensors copied in (no pickle).
    ``base``: the base policy installed on this computer (``base_policy=``), used by a residual
    spec instead of loading the learner's path (the residual's weights are all that stream)."""
    import policies
    import torch

    if spec.get("kind") == "residual":
        if base is None:
            raise ValueError("the learner streams a residual policy: start embodied-actor with "
                             "base_policy=<the base checkpoint on this computer>")
        policy = policies.from_spec(spec, base=base)
    else:
        policy = policies.from_spec(spec)
    policy.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    if hasattr(policy, "eval"):
        policy.train(False)
    return policy


def install_sigterm(actor: Actor) -> None:
    signal.signal(signal.SIGTERM, actor.stop)
    signal.signal(signal.SIGINT, actor.stop)
