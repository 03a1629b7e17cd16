"""Simulator rollout workers as Ray actors for ``embodied-train`` (SAC, IQL, world models, PPO).

    embodied-train env=reach learner=sac train.ray.address=local train.ray.workers=2
    embodied-train env=reach learner=ppo learner.num_steps=512 train.num_envs=2 \
        train.ray.address=local train.ray.workers=2

Each worker (a Ray actor, ``train.ray.num_cpus`` CPUs) runs a vector env of
``train.ray.envs_per_worker`` envs and the current policy, rebuilt from its JSON ``spec()``; the
trainer sends the policy's weights through Ray's object store (one ``ray.put`` per new version,
a worker loads a version once) and gets back **finished episodes only**: a worker keeps each
env's running episode until it ends. The trainer gives each episode its id and feeds its
transitions to the same labeler and replay as local envs, so rewards, UTD accounting,
checkpoints and evaluation do not change. A worker that dies (killed, out of memory, its node
lost) is replaced by a fresh one with a new seed; the episodes it was running die with it and
never reach the replay, so nothing is half-written, lost once committed, or duplicated.

Env steps are counted when their episode is committed (``train.total_steps`` counts committed
transitions). Acting is calls of ``train.ray.steps_per_call`` steps per env with the weights the
worker holds; two calls are queued per worker (it steps the next while the trainer unpacks the
last), so the acting policy lags the learner by at most two calls.

On-policy learners (PPO) take **fragments** instead (:meth:`RolloutFleet.fragments`): every
worker steps its envs ``learner.num_steps`` times with the weights of the current update and
returns every step (with the policy's log-prob and value) and its envs' last observation; the
trainer lays the fragments side by side as one rollout of ``train.num_envs`` =
``workers x envs_per_worker`` envs, in the same RolloutCollector, labeler and update as local
envs (synchronous PPO: no step of an older policy reaches an update). A worker that dies
mid-fragment is replaced and the replacement collects that fragment again from fresh episodes:
the dead call's steps never reach the rollout, and each rollout holds exactly T x N steps.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from embodied.schema import num

log = logging.getLogger("embodied")

PIPELINE = 2  # calls queued per worker
MAX_FAILURES = 3  # a worker slot whose replacements die this often in a row ends the run


@dataclass
class RolloutRaySection:
    """``train.ray:`` of ``embodied-train`` (configs/config.yaml); the defaults fill a partial section."""

    address: str | None = None
    workers: int = num(2, ge=1)
    envs_per_worker: int = num(1, ge=1)
    num_cpus: float = num(1.0, gt=0)
    steps_per_call: int = num(16, ge=1)
    local_cpus: int | None = num(None, ge=1)


class RolloutWorker:
    """A Ray actor: a vector env, the policy, and the episodes it finished since the last call."""

    def __init__(self, env_name: str, env_kwargs: dict[str, Any], num_envs: int, seed: int, spec: dict[str, Any],
                 on_policy: bool = False):
        import torch

        import envs
        import policies
        from embodied.driver import Driver
        from policies.chunking import ChunkExecutor

        torch.set_num_threads(1)
        torch.manual_seed(seed)  # the policy's action draws
        self.venv = envs.make_vec_env(env_name, num_envs, seed=seed, **env_kwargs)
        self.policy = policies.from_spec(spec).eval()
        self.executor = ChunkExecutor(self.policy, num_envs)
        self.rng = np.random.default_rng(seed)
        self.version = -1
        self.running: list[list] = [[] for _ in range(num_envs)]
        self.finished: list[tuple[list, dict]] = []
        self.steps: list = []  # on-policy: every transition of the current fragment, step by step
        self.ended: list[dict[str, Any]] = []  # on-policy: the summaries of the episodes that ended in it
        self.driver = Driver(self.venv)
        if on_policy:
            self.driver.on_transition(lambda t, i: self.steps.append(t))
            self.driver.on_episode(lambda summary, i: self.ended.append(summary))
        else:
            self.driver.on_transition(lambda t, i: self.running[i].append(t))
            self.driver.on_episode(self._ended)
        self.driver.reset(seed=seed)

    def _ended(self, summary: dict[str, Any], i: int) -> None:
        self.finished.append((self.running[i], summary))  # the episode's last transition is in already
        self.running[i] = []

    def _random(self, obs) -> np.ndarray:
        shape = (self.venv.num_envs, *self.venv.single_action_space.shape)
        return self.rng.uniform(-1, 1, shape).astype(np.float32)

    def pid(self) -> int:
        import os

        return os.getpid()

    def _load(self, version: int, weights: dict | None) -> None:
        import torch

        if weights is not None and version != self.version:
            self.policy.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
            self.version = version

    def run(self, steps: int, version: int, weights: dict | None, random: bool) -> list[tuple[list, dict]]:
        """``steps`` steps of every env (uniform random actions, or the policy of ``version``,
        loading ``weights`` when this worker holds another version); the episodes finished."""
        self._load(version, weights)
        act = self._random if random else self.executor
        for _ in range(int(steps)):
            self.driver.step(act)
        out, self.finished = self.finished, []
        return out

    def fragment(self, steps: int, version: int, weights: dict | None) -> dict[str, Any]:
        """On-policy: ``steps`` steps of every env with the policy of ``version``; every transition
        (``steps`` lists of one per env, in env order), the summaries of the episodes that ended,
        and the envs' observation after the last step (to bootstrap from)."""
        self._load(version, weights)
        if self.executor.chunk_size > 1:  # each chunk is one decision of this rollout
            self.executor.reset()
        self.steps, self.ended = [], []
        for _ in range(int(steps)):
            self.driver.step(self.executor)
        n = self.venv.num_envs
        return {"steps": [self.steps[s * n:(s + 1) * n] for s in range(int(steps))], "episodes": self.ended,
                "obs": self.driver.obs}


class RolloutFleet:
    """The trainer's side: ``workers`` Ray actors kept busy, ``PIPELINE`` calls queued on each;
    replaces a dead worker and drops its running episodes (:meth:`collect`). On-policy
    (``on_policy=True``): one fragment per worker and update (:meth:`fragments`)."""

    def __init__(self, settings: dict[str, Any], env_name: str, env_kwargs: dict[str, Any], seed: int,
                 spec: dict[str, Any], on_policy: bool = False):
        from embodied.scale.cluster import Demand, connect, require

        self.settings = settings
        self.ray = connect(settings["address"], settings.get("local_cpus"))
        n, cpus = int(settings["workers"]), float(settings["num_cpus"])
        require(self.ray, Demand(f"train.ray.workers={n} (train.ray.num_cpus={cpus:g} each)", cpus=n * cpus))
        self.env_name, self.env_kwargs, self.seed, self.spec = env_name, env_kwargs, int(seed), spec
        self.on_policy = bool(on_policy)
        self.restarts = 0
        self.generation = [0] * n  # per slot: the restart count its current worker started at
        self.failures = [0] * n  # per slot: deaths since its last call that returned
        self.workers = [self._start(k) for k in range(n)]
        self.inflight: dict[Any, int] = {}
        self.held = [-1] * n  # the weights version each worker was last sent
        self._weights_ref, self._version = None, -1

    def _start(self, k: int):
        # a replacement draws new episodes: its seed moves past every earlier worker's
        seed = self.seed + 1_000 * k + 1_000_003 * self.restarts
        actor = self.ray.remote(RolloutWorker).options(num_cpus=float(self.settings["num_cpus"]), max_restarts=0)
        return actor.remote(self.env_name, self.env_kwargs, int(self.settings["envs_per_worker"]), seed, self.spec,
                            self.on_policy)

    def _replace(self, k: int, err: Exception) -> None:
        """Worker ``k`` died: a fresh one takes its slot (what it was running is gone)."""
        self.failures[k] += 1
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if self.failures[k] >= MAX_FAILURES:
            raise RuntimeError(f"rollout worker {k} died {self.failures[k]} times in a row (last: {first}); "
                               "check that env and policy build on the cluster's nodes") from None
        self.restarts += 1
        log.warning("rollout worker %d died (%s); starting a replacement, what it was running is dropped",
                    k, first[:120])
        self.workers[k] = self._start(k)
        self.generation[k] = self.restarts
        self.held[k] = -1

    def publish(self, version: int, weights: dict[str, Any]) -> None:
        """New policy weights, into the object store once; each worker loads them on its next call."""
        if version != self._version:
            self._weights_ref = self.ray.put({k: v.detach().cpu().numpy() for k, v in weights.items()})
            self._version = version

    def collect(self, random: bool) -> list[tuple[list, dict]]:
        """Keep ``PIPELINE`` calls queued per worker; wait for at least one; its finished episodes.
        A dead worker is replaced (its running episodes are gone) and yields nothing."""
        from ray.exceptions import RayActorError

        for k, worker in enumerate(self.workers):
            # two calls queued per worker: it steps the next while this process unpacks the last
            while sum(1 for w, _ in self.inflight.values() if w is worker) < PIPELINE:
                send = self._weights_ref if self.held[k] != self._version else None
                fut = worker.run.remote(int(self.settings["steps_per_call"]), self._version, send, random)
                self.held[k] = self._version
                self.inflight[fut] = (worker, k)
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        episodes = []
        for fut in ready:
            worker, k = self.inflight.pop(fut)
            try:
                episodes += self.ray.get(fut)
                self.failures[k] = 0
            except RayActorError as err:
                if self.workers[k] is not worker:  # a call queued on a worker already replaced
                    continue
                self._replace(k, err)
                self.inflight = {f: wk for f, wk in self.inflight.items() if wk[0] is not worker}
        return episodes

    def fragments(self, steps: int) -> list[dict[str, Any]]:
        """On-policy: a fragment of ``steps`` steps from every worker with the published weights,
        in worker order, each tagged ``"worker": (slot, generation)``. A worker that dies is
        replaced and the replacement collects its fragment again (from fresh episodes)."""
        from ray.exceptions import RayActorError

        def call(k: int):
            send = self._weights_ref if self.held[k] != self._version else None
            self.held[k] = self._version
            return self.workers[k].fragment.remote(int(steps), self._version, send)

        pending = {call(k): k for k in range(len(self.workers))}
        out: list[dict[str, Any]] = [{} for _ in self.workers]
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            try:
                out[k] = {**self.ray.get(ready[0]), "worker": (k, self.generation[k])}
                self.failures[k] = 0
            except RayActorError as err:
                self._replace(k, err)
                pending[call(k)] = k
        return out

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers, self.inflight = [], {}


def renumber(transitions: list, episode_id: int) -> list:
    """An episode's transitions under the trainer's episode id."""
    return [dataclasses.replace(t, episode_id=episode_id) for t in transitions]

