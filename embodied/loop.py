"""The training loop shared by every learner, reward and environment.

Off-policy (SAC, IQL), per env step:
env --> Driver --> RewardLabeler --> replay (+ offline data) --> learner.update --> policy
On-policy (PPO, ``learner.on_policy``), per rollout of T steps from the N envs:
env --> Driver --> RewardLabeler --> replay storage (labels)
           |--> RolloutCollector (obs, sample, log-prob, V, V(final obs) of truncations)
    --> labels of the rollout read from the storage --> learner.update_rollout --> policy
The policy acts from the first step (no random warm-up) and an update only ever sees
steps of the current policy, each labeled: the env reward, or a frame reward model whose
pending frames are scored in one batch at the end of the rollout. Episode reward models
(GVL, VLAC) label a whole episode asynchronously once it ended: an update trains on the
steps whose labels have arrived and carries the rest into the next rollout
(:meth:`Trainer._on_policy_rollout`). Evaluation, checkpoints, logging are shared.

Every ``checkpoint.every`` env steps the learner, the replay, the labeler and the
counters are saved together atomically; ``resume=true`` continues from there. Each save,
and the end of a run, also writes the current policy alone (spec + weights) to
``<run_dir>/policy/``: what ``embodied-eval policy=<run_dir>`` and an actor load.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from embodied import checkpoint, heap
from embodied.contracts import Batch
from embodied.driver import Driver
from embodied.evaluation import evaluate
from embodied.build import build_learner, build_replays, build_reward, learner_kwargs, make_labeler, reward_camera
from embodied.logging import Logger
from embodied.replay import RolloutCollector
from policies.chunking import ChunkExecutor

log = logging.getLogger("embodied")


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        import envs

        self.cfg = cfg
        self.dir = Path(run_dir)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        from embodied.datasets.keys import DatasetKeys

        self.keys = DatasetKeys.from_config(cfg.get("dataset_keys"))  # the dataset's column names
        self.reward = build_reward(cfg.reward)
        self.reward_model = self.reward.model
        inputs = learner_kwargs(cfg.learner)[1]
        self.env_free = cfg.env.name == "none"  # dataset-only offline training
        self.action_bounds = None  # env=none: the dataset's action range, mapped onto [-1, 1]
        self.remote, self.fleet, self._next_episode = None, None, 0
        self._episode_ids: dict[tuple, int] = {}  # on-policy Ray rollouts: (worker, generation, its id) -> this run's
        self._generations: list[int] | None = None  # on-policy Ray rollouts: each worker slot's generation last seen
        if self.env_free:
            obs_space, act_space = self._dataset_spaces(inputs)
            self.venv = self.eval_env = None
        else:
            # reward models read frames, whatever the learner reads
            kw = envs.kwargs_from_config(OmegaConf.to_container(cfg.env, resolve=True),
                                         pixels=True if self.reward_model is not None else None)
            self.remote = self._ray_rollouts()  # train.ray.address: the envs run in Ray workers
            self._env_kwargs = kw
            self.venv = envs.make_vec_env(cfg.env.name, 1 if self.remote else cfg.train.num_envs, seed=cfg.seed,
                                          asynchronous=bool(cfg.train.get("async_envs", False)) and not self.remote,
                                          **kw)  # with workers: one local env, for the spaces
            self.eval_env = envs.make_env(cfg.env.name, seed=cfg.seed + 10_000, **kw)
            obs_space = self.venv.single_observation_space
            act_space = self.venv.single_action_space
        camera = None
        if self.reward_model is not None:
            camera = reward_camera(self.reward_model, list(obs_space["pixels"].spaces), f"env {cfg.env.name}")
        replays = build_replays(cfg.train, obs_space, act_space, cfg.seed, dataset=cfg.train.get("dataset"),
                                capacity=2 if self.env_free else cfg.train.replay_capacity,  # env=none: no online data
                                bounds=self.action_bounds, keys=self.keys,
                                rewards=cfg.learner.name not in ("bc", "vla"))  # BC reads actions only
        self.online, self.offline, self.replay = replays.online, replays.offline, replays.sampled
        self.learner = build_learner(cfg.learner, obs_space, act_space, device=cfg.device, offline=self.offline,
                                     base_policy=cfg.get("base_policy"), policy=cfg.get("policy"))
        self.sample_rows = self.learner.rows_per_update
        if hasattr(self.learner, "attach_replay"):  # model-based: the model trains on the whole replay
            # (the dataset during an offline phase: RAVL / MOPO-style offline model-based RL)
            offline_phase = self.offline is not None and cfg.train.offline_updates > 0
            self.learner.attach_replay(self.offline if offline_phase else self.online)
        if cfg.train.get("adapt_from"):  # RePo's test-time adaptation of a trained run to this env
            self._start_adaptation(str(cfg.train.adapt_from), obs_space, act_space)
        self._windows_online = None  # sequence windows for a learner that trains on them (world models)
        if hasattr(self.learner, "sequence_length") and self.eval_env is not None:
            self._check_sequence_length()
        self.collector = None  # on-policy learners: the rollout being collected
        if self.learner.on_policy and self.venv is not None:
            self.collector = RolloutCollector(self.learner.cfg.num_steps, cfg.train.num_envs, inputs,
                                              self.learner.policy().value)
        self.labeler = make_labeler(self.online, self.reward, camera)
        if self.collector is not None and self.labeler.mode == "async":
            self._check_episodic_room()
        self.recorder = None
        if cfg.train.get("record_dataset"):
            from embodied.datasets import DatasetRecorder

            self.recorder = DatasetRecorder(cfg.train.record_dataset, fps=int(cfg.train.get("record_fps", 10)))
        self.curriculum = self._make_curriculum()
        if self.remote:
            self._check_ray_rollouts()
        self.driver = self._make_driver(0)
        self.counters = {"env_steps": 0, "updates": 0, "offline_updates": 0, "episodes": 0, "debt": 0.0}
        self._recent: list[dict[str, Any]] = []
        self._offline_metrics: dict[str, float] = {}
        self.executor: ChunkExecutor | None = None
        self._warmup: ChunkExecutor | None = None  # a learner's own warm-up policy (residual: base + noise)
        self._windows = None  # offline windows for learners that train on action chunks (BC)

    def _ray_rollouts(self) -> dict[str, Any] | None:
        """The ``train.ray`` settings when they ask for Ray rollout workers, else None."""
        from embodied.scale.cluster import ray_section
        from embodied.scale.rollout import RolloutRaySection

        section = self.cfg.train.get("ray")
        return ray_section(None if section is None else OmegaConf.to_container(section, resolve=True),
                           RolloutRaySection)

    def _check_ray_rollouts(self) -> None:
        """What Ray rollout workers do not cover yet: a one-line error before any work."""
        cfg = self.cfg
        if self.learner.on_policy:
            envs_total = int(self.remote["workers"]) * int(self.remote["envs_per_worker"])
            if int(cfg.train.num_envs) != envs_total:
                raise ValueError(f"learner={cfg.learner.name} with Ray workers trains on rollouts of train.num_envs envs, "
                                 f"the workers' envs side by side: train.ray.workers x train.ray.envs_per_worker = "
                                 f"{envs_total}, set train.num_envs={envs_total}")
            if self.labeler.mode == "async":
                raise ValueError(f"reward={cfg.reward.name} labels whole episodes after they end; on-policy Ray "
                                 "rollouts take the env reward or a frame reward so far: drop train.ray.address")
        unsupported = {"a warm-up policy of the learner (residual's base)": hasattr(self.learner, "warmup_policy"),
                       "train.curriculum": bool(cfg.train.get("curriculum")),
                       "train.adapt_from": bool(cfg.train.get("adapt_from"))}
        for what, used in unsupported.items():
            if used:
                raise ValueError(f"train.ray.address: Ray rollout workers do not run {what} yet; drop one of the two")

    def _make_curriculum(self):
        """``train.curriculum=true``: tasks near 50 % success are sampled most (embodied/curriculum.py)."""
        if not self.cfg.train.get("curriculum"):
            return None
        from embodied.curriculum import TaskCurriculum

        try:
            tasks = self.venv.get_attr("TASKS")[0] if self.venv is not None else None
        except AttributeError:
            tasks = None
        if not tasks:
            raise ValueError(f"train.curriculum=true needs a multi-task env that samples its task per episode "
                             f"(env=lang_reach); env {self.cfg.env.name} has one task")
        return TaskCurriculum(tasks)

    def _start_adaptation(self, source: str, obs_space, act_space) -> None:
        """Load the source run's learner and its saved replay; the learner then adapts its encoder
        (``start_adaptation``) and acts with the source policy from the first step."""
        from embodied.replay import Replay

        if not hasattr(self.learner, "start_adaptation"):
            raise ValueError("train.adapt_from adapts a latent world model's encoder to a new visual domain: use "
                             "learner=world_model objective=repo (the source run's settings)")
        found = checkpoint.latest(Path(source).expanduser() / "checkpoints")
        state = checkpoint.load(found) if found is not None else {}
        if "online" not in state or "learner" not in state:
            raise ValueError(f"train.adapt_from={source} holds no saved source replay: pass the embodied-train run "
                             "folder of the source run (its checkpoints/ keep the learner and the replay)")
        meta = [int(x) for x in np.asarray(state["online"]["meta"])]
        replay = Replay(meta[0], obs_space, act_space, n_step=meta[2], final_capacity=meta[1], seed=self.cfg.seed)
        try:
            replay.load_state_dict(state["online"])
            self.learner.load_state_dict(state["learner"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"train.adapt_from={source} was trained with other settings than this run "
                             f"({str(err).splitlines()[0]}): adapt with the source run's learner and env settings, "
                             "changing only what the new domain changes") from None
        self.learner.start_adaptation(replay)
        log.info("adapting %s (%d source steps) to env %s", source, len(replay), self.cfg.env.name)

    def _check_sequence_length(self) -> None:
        limit = getattr(getattr(self.eval_env, "spec", None), "max_episode_steps", None)
        inner = self.eval_env
        while limit is None and hasattr(inner, "env"):  # a TimeLimit somewhere inside the wrappers
            limit = getattr(inner, "_max_episode_steps", None)
            inner = inner.env
        length = int(self.learner.sequence_length)
        if limit is not None and length > int(limit):
            raise ValueError(f"learner.sequence_length={length} is longer than env {self.cfg.env.name}'s episodes "
                             f"({limit} steps): windows never cross episodes, so set learner.sequence_length <= {limit}")

    def _check_episodic_room(self) -> None:
        """On-policy + episode rewards: the replay holds each step until its episode's labels
        arrive, so it must hold a rollout plus the steps carried while labels are out."""
        from envs.checker import time_limit

        cfg, name = self.cfg, self.cfg.reward.name
        limit = time_limit(self.eval_env)
        if limit is None:
            raise ValueError(f"reward={name} labels an episode after it ends, but env {cfg.env.name} has no time "
                             "limit: set env.max_episode_steps")
        n = cfg.train.num_envs
        need = self.collector.buffer.num_steps * n + (n + self.labeler.max_pending + 1) * limit
        if cfg.train.replay_capacity < need:
            raise ValueError(f"train.replay_capacity={cfg.train.replay_capacity} cannot hold a rollout plus the steps "
                             f"of up to {n} running and {self.labeler.max_pending + 1} unlabeled {limit}-step episodes "
                             f"that reward={name} carries: set train.replay_capacity>={need}")

    def _dataset_spaces(self, inputs: list[str]):
        """Spaces read from ``train.dataset`` when there is no env (``env=none``).

        Actions outside [-1, 1] (a robot's own units) are mapped onto it; the bounds are
        written to ``action_bounds.json`` in the run folder: the robot adapter maps the
        policy's [-1, 1] back onto them (e.g. ``configs/robot/so100.yaml``'s ranges).
        """
        from embodied.datasets.read import action_bounds, dataset_spaces, open_dataset

        ds = open_dataset(self.cfg.train.dataset)
        self.keys.check(ds)
        self.action_bounds = action_bounds(ds, self.keys)
        cameras = None if "pixels" in inputs else []  # a state-only learner loads no video
        return dataset_spaces(ds, cameras, self.keys)

    def _write_action_bounds(self) -> None:
        import json

        low, high = self.action_bounds
        (self.dir / "action_bounds.json").write_text(json.dumps({"low": low.tolist(), "high": high.tolist()}))
        log.info("dataset actions span [%s, %s]: mapped onto [-1, 1] (action_bounds.json)",
                 np.round(low, 3).tolist(), np.round(high, 3).tolist())

    def _make_driver(self, episode_offset: int) -> Driver | None:
        if self.venv is None:
            return None
        driver = Driver(self.venv, episode_offset=episode_offset)
        driver.on_transition(self.labeler.add if self.collector is None else self._collect)
        driver.on_episode(self._on_episode)
        if self.recorder is not None:
            driver.on_transition(lambda t, i: self.recorder.add(t))
        return driver

    # -- callbacks ------------------------------------------------------------------------
    def _collect(self, t, env_index: int) -> None:
        """On-policy: the labeler stores (and labels) the transition, the rollout keeps its slot."""
        self.collector.add(t, env_index, self.labeler.add(t, env_index))

    def _on_episode(self, summary: dict[str, Any], env_index: int) -> None:
        self.counters["episodes"] += 1
        self._recent.append(summary)
        if self.curriculum is not None and "task_id" in summary:
            self.curriculum.observe(summary["task_id"], summary["success"])
            self.venv.call("set_task_probs", self.curriculum.probs())  # from the next episode of each env on

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"learner": self.learner.state_dict(), "online": self.online.state_dict(),
                 "labeler": self.labeler.state_dict(), "counters": dict(self.counters),
                 "next_episode": self._next_episode if self.remote else (self.driver.episodes_started
                                                                          if self.driver else 0),
                 "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        if self.curriculum is not None:
            state["curriculum"] = self.curriculum.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.online.load_state_dict(state["online"])
        self.labeler.load_state_dict(state["labeler"])
        self.counters.update(state["counters"])
        if self.curriculum is not None and "curriculum" in state:
            self.curriculum.load_state_dict(state["curriculum"])
            self.venv.call("set_task_probs", self.curriculum.probs())
        self.driver = self._make_driver(int(state["next_episode"]))
        self._next_episode = int(state["next_episode"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])

    def save(self) -> Path:
        self.labeler.flush()
        path = checkpoint.save(self.dir / "checkpoints", self.counters["env_steps"], self.state_dict(),
                               keep=self.cfg.checkpoint.keep)
        self.save_policy()
        return path

    def save_policy(self) -> Path:
        """The current policy to ``<run_dir>/policy/``, versioned by the learner updates made."""
        from policies import save_policy

        version = self.counters["updates"] + self.counters["offline_updates"]
        found = checkpoint.latest(self.dir / "policy")
        if found is not None and found.name == f"step_{version:010d}":
            return found  # this version is on disk already
        return save_policy(self.learner.policy(), self.dir / "policy", version)

    # -- acting ---------------------------------------------------------------------------
    def _acting(self):
        """What acts now: during warm-up uniform random actions (or the learner's own warm-up
        policy: a residual's base plus noise), then the learner's policy through the chunk
        executor (one action queue per env, reset by the Driver)."""
        adapting = getattr(self.learner, "adapting", False)  # a trained policy acts from the first step
        if self.counters["env_steps"] < self.cfg.train.warmup_steps and not adapting:
            if not hasattr(self.learner, "warmup_policy"):
                return self._random
            if self._warmup is None:
                self._warmup = ChunkExecutor(self.learner.warmup_policy(), self.venv.num_envs)
            return self._warmup
        if self.executor is None:
            self.executor = ChunkExecutor(self.learner.policy(), self.venv.num_envs)
            if self._warmup is not None:  # a residual's base queues carry on mid-episode
                self.executor.state = self._warmup.state
        return self.executor

    def _random(self, obs: dict[str, Any]) -> np.ndarray:
        shape = (self.venv.num_envs, *self.venv.single_action_space.shape)
        return self.rng.uniform(-1, 1, shape).astype(np.float32)

    def _update(self) -> dict[str, float]:
        if hasattr(self.learner, "sequence_length"):  # windows of consecutive steps (world models)
            if self._windows_online is None:
                from embodied.replay import SequenceSampler

                self._windows_online = SequenceSampler(self.online, self.learner.sequence_length)
            batch = self._windows_online.sample_torch(self.sample_rows, device=self.learner.device)
        else:
            batch = self.replay.sample_torch(self.sample_rows, device=self.learner.device)
        self.counters["updates"] += 1
        return self.learner.update(batch)

    def _offline_batch(self) -> Batch:
        """A batch of the offline data: transitions, or for a learner with a ``window`` (BC with
        action chunks) windows of that many steps: the first step's observation and the
        window's actions as ``extras["action_chunk"]`` / ``["chunk_mask"]`` (False past the
        episode's end)."""
        window = getattr(self.learner, "window", None)
        if not window:
            return self.offline.sample_torch(self.sample_rows, device=self.learner.device)
        if self._windows is None:
            from embodied.replay import SequenceSampler

            self._windows = SequenceSampler(self.offline, window)
        w = self._windows.sample_torch(self.sample_rows, device=self.learner.device)
        first = {k: ({c: x[:, 0] for c, x in v.items()} if isinstance(v, dict) else v[:, 0])
                 for k, v in w["obs"].items() if k in ("state", "pixels")}
        if "instruction" in w["obs"]:  # one string per window
            first["instruction"] = w["obs"]["instruction"]
        return Batch(obs=first, action=w["action"][:, 0], reward=w["reward"][:, 0], discount=None, next_obs={},
                     extras={"action_chunk": w["action"], "chunk_mask": w["mask"]})

    def _off_policy_step(self, metrics: dict[str, float]) -> None:
        """One step of every env, then the updates owed (update-to-data ratio, label staleness)."""
        n = self.driver.step(self._acting())
        self.counters["env_steps"] += n
        self._pay_updates(n, metrics)

    def _start_fleet(self):
        """The Ray rollout workers (started on first use; after a resume they draw new episodes:
        the seed moves with the steps)."""
        from embodied.scale.rollout import RolloutFleet

        if self.fleet is None:
            self.fleet = RolloutFleet(self.remote, self.cfg.env.name, self._env_kwargs,
                                      self.cfg.seed + self.counters["env_steps"], self.learner.policy().spec(),
                                      on_policy=self.learner.on_policy)
        return self.fleet

    def _remote_step(self, metrics: dict[str, float]) -> None:
        """Ray rollout workers (embodied/scale/rollout.py): the episodes they finished go to the
        labeler and replay as local envs' do, under this run's episode ids; then the updates owed."""
        from embodied.scale.rollout import renumber

        cfg = self.cfg
        self._start_fleet()
        random = self.counters["env_steps"] < cfg.train.warmup_steps  # adaptation runs are refused with workers
        if not random:
            self.fleet.publish(self.counters["updates"], self.learner.policy_weights())
        n = 0
        for transitions, summary in self.fleet.collect(random):
            episode = self._next_episode
            self._next_episode += 1
            for t in renumber(transitions, episode):
                self.labeler.add(t)
                if self.recorder is not None:
                    self.recorder.add(t)
                n += 1
            self._on_episode({**summary, "episode_id": episode}, 0)
        self.counters["env_steps"] += n
        self._pay_updates(n, metrics)

    def _pay_updates(self, n: int, metrics: dict[str, float]) -> None:
        """The updates owed for ``n`` new env steps (update-to-data ratio, label staleness)."""
        cfg = self.cfg
        step = self.counters["env_steps"]
        self.labeler.poll()
        metrics.update(self.labeler.maybe_feedback(step))
        if step >= cfg.train.learning_starts and len(self.replay) > 0:
            owed = n * float(getattr(self.learner, "updates_per_step", 1.0))  # world models: 1 per train_every steps
            # the cap bounds what label staleness may pile up, never the updates a batch of steps itself owes
            self.counters["debt"] = min(self.counters["debt"] + owed, max(cfg.train.max_update_debt, owed))
            while self.counters["debt"] >= 1 and self.labeler.learner_may_update() and self.replay.num_labeled() >= self.sample_rows:
                metrics.update(self._update())
                self.counters["debt"] -= 1

    def _on_policy_rollout(self, metrics: dict[str, float]) -> None:
        """T steps of every env with the current policy, then one update on that rollout.

        Episode reward models (GVL, VLAC) label each episode on a worker thread once it
        ended, while the envs keep stepping. The update trains, per env, on the steps up to
        its first episode still waiting for labels; those steps are carried into the next
        rollout (RolloutCollector.begin) and trained on there. While more than
        ``reward.max_pending`` episodes wait, the loop waits for labels before acting on.
        """
        if self.executor is None:
            self.executor = ChunkExecutor(self.learner.policy(), self.venv.num_envs)
        elif self.executor.chunk_size > 1:  # a chunked policy's rollout starts with fresh chunks: each
            self.executor.reset()          # chunk is one decision of this rollout (embodied.replay.chunk_decisions)
        episodic = self.labeler.mode == "async"
        self.collector.begin()
        waited = 0.0
        while not self.collector.buffer.full:
            self.counters["env_steps"] += self.driver.step(self.executor)
            metrics.update(self.labeler.maybe_feedback(self.counters["env_steps"]))
            if episodic:
                self.labeler.poll()
                waited += self.labeler.wait_below(self.labeler.max_pending)
        self._train_rollout(metrics, self.driver.obs, episodic, waited)

    def _remote_rollout(self, metrics: dict[str, float]) -> None:
        """On-policy with Ray workers: one fragment of T steps from each worker, with the weights
        of this update, laid side by side as the rollout of ``train.num_envs`` envs (worker k's
        envs after worker k-1's), its transitions through the labeler and collector in step order
        as local envs' are, under this run's episode ids; then one update on it."""
        from embodied.replay.nstep import concat

        fleet = self._start_fleet()
        num_steps = self.collector.buffer.num_steps
        fleet.publish(self.counters["updates"], self.learner.policy_weights())
        fragments = fleet.fragments(num_steps)
        ids, per = self._episode_ids, int(self.remote["envs_per_worker"])
        for k, (was, now) in enumerate(zip(self._generations or fleet.generation, fleet.generation)):
            if was != now:  # slot k's worker was replaced: its envs start new episodes without a done
                for key in [key for key in ids if key[:2] == (k, was)]:  # the dead worker's running episodes end
                    del ids[key]
                if hasattr(self.learner, "episodes_restarted"):
                    self.learner.episodes_restarted(range(k * per, (k + 1) * per))
        self._generations = list(fleet.generation)
        self.collector.begin()

        def global_id(worker, local: int) -> int:
            key = (*worker, local)
            if key not in ids:
                ids[key] = self._next_episode
                self._next_episode += 1
            return ids[key]

        for s in range(num_steps):
            env = 0
            for frag in fragments:
                for t in frag["steps"][s]:
                    t = dataclasses.replace(t, episode_id=global_id(frag["worker"], t.episode_id))
                    self._collect(t, env)
                    if self.recorder is not None:
                        self.recorder.add(t)
                    env += 1
        for frag in fragments:
            for summary in frag["episodes"]:
                episode = ids.pop((*frag["worker"], summary["episode_id"]))
                self._on_episode({**summary, "episode_id": episode}, 0)
        self.counters["env_steps"] += num_steps * self.collector.buffer.num_envs
        metrics.update(self.labeler.maybe_feedback(self.counters["env_steps"]))
        self._train_rollout(metrics, concat([frag["obs"] for frag in fragments]), False, 0.0)

    def _train_rollout(self, metrics: dict[str, float], last_obs: dict[str, Any], episodic: bool,
                       waited: float) -> None:
        """One update on the collected rollout (``last_obs``: the envs' observation after it)."""
        self.labeler.flush()  # a frame model scores the rollout's pending frames in one batch
        if episodic:
            self.labeler.poll()
            rollout = self.collector.finish(self.online, unresolved=self.labeler.unresolved())
            # carried steps: the critic moved since they were valued (their bootstraps too)
            rollout.refresh_values(self.learner.policy().value, self.online.next_obs_at)
            if rollout.mask.sum() < self.learner.cfg.num_minibatches:  # too few labeled steps yet
                self.collector.carry_all()
                metrics.update({"rollout/trained_steps": 0.0, "rollout/carried_in": float(rollout.carried.sum()),
                                "rollout/carried_out": float(self.collector.carrying), "rollout/label_wait_s": waited})
                return  # no update: every step waits for the next rollout
        else:
            rollout = self.collector.finish(self.online)
        last_value = self.learner.policy().value(last_obs)
        metrics.update(self.learner.update_rollout(rollout, last_value))
        if episodic:
            metrics.update({"rollout/carried_out": float(self.collector.carrying), "rollout/label_wait_s": waited})
        self.counters["updates"] += 1

    # -- the run --------------------------------------------------------------------------
    def run(self, logger: Logger) -> dict[str, float]:
        result = self._run(logger)
        self.save_policy()  # a run folder always holds its final policy
        return result

    def _run(self, logger: Logger) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        final: dict[str, float] = {}
        if self.action_bounds is not None:
            self._write_action_bounds()
        # Offline phase (IQL on a dataset, or RLPD pre-training): updates on offline data only.
        todo = cfg.train.offline_updates - self.counters["offline_updates"]
        if todo > 0:
            if self.offline is None:
                raise ValueError("train.offline_updates > 0 needs train.dataset=<LeRobotDataset path>")
            bar = tqdm(total=cfg.train.offline_updates, initial=self.counters["offline_updates"], desc="offline", unit="upd")
            while self.counters["offline_updates"] < cfg.train.offline_updates:
                metrics = self.learner.update(self._offline_batch())
                self.counters["offline_updates"] += 1
                bar.update(1)
                n = self.counters["offline_updates"]
                if n % heap.EVERY == 0:
                    heap.trim()
                if n % cfg.log.every == 0:
                    logger.log(n, {f"offline/{k}": v for k, v in metrics.items()})
                if n % cfg.checkpoint.every == 0 or n == cfg.train.offline_updates:
                    self.save()
            bar.close()
            self._offline_metrics = {f"offline/{k}": v for k, v in metrics.items()}
            if cfg.train.total_steps == 0:
                final = self.evaluate(logger, tag="offline")
        total = cfg.train.total_steps
        if self.counters["env_steps"] >= total:
            return final or self.evaluate(logger)
        if hasattr(self.learner, "attach_replay") and self.offline is not None and cfg.train.offline_updates > 0:
            self.learner.attach_replay(self.online)  # after the dataset, the model trains on what the policy collects
        self.driver.reset(seed=cfg.seed + self.counters["env_steps"])
        advance = self._remote_step if self.remote else self._off_policy_step
        if self.collector is not None:
            advance = self._remote_rollout if self.remote else self._on_policy_rollout
            rows = self.collector.buffer.num_steps * self.collector.buffer.num_envs
            if total % rows:
                log.info("on-policy: train.total_steps=%d rounded up to whole rollouts of %d steps", total, rows)
        bar = tqdm(total=total, initial=self.counters["env_steps"], desc="train", unit="step")
        metrics: dict[str, float] = {}
        t0, s0 = time.time(), self.counters["env_steps"]
        while self.counters["env_steps"] < total:
            prev = self.counters["env_steps"]
            advance(metrics)
            step = self.counters["env_steps"]
            bar.update(step - prev)
            if _crossed(prev, step, heap.EVERY):
                heap.trim()  # freed update buffers back to the OS: glibc keeps them otherwise (embodied/heap.py)
            if _crossed(prev, step, cfg.log.every):
                row = self._train_row(metrics, step, (step - s0) / max(time.time() - t0, 1e-9))
                logger.log(step, row)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in row.items()
                                 if k in ("train/return", "train/success", "loss/critic", "loss/policy", "alpha")})
            if _crossed(prev, step, cfg.eval.every) or step >= total:
                final = self.evaluate(logger)
                bar.set_postfix({"eval_success": f"{final['eval/success']:.2f}"})
            if _crossed(prev, step, cfg.checkpoint.every) or step >= total:
                self.save()
        bar.close()
        self.labeler.close()
        if self.fleet is not None:
            self.fleet.close()
        return final

    def _train_row(self, metrics: dict[str, float], step: int, sps: float) -> dict[str, float]:
        row = dict(metrics)
        if self._recent:
            row["train/return"] = float(np.mean([e["return"] for e in self._recent]))
            row["train/success"] = float(np.mean([e["success"] for e in self._recent]))
            progress = [e["progress"] for e in self._recent if np.isfinite(e["progress"])]
            row["train/progress"] = float(np.mean(progress)) if progress else float("nan")
            self._recent.clear()
        if self.curriculum is not None:
            row.update(self.curriculum.metrics())
        row.update({"perf/env_steps_per_s": sps, "perf/updates": self.counters["updates"],
                    "reward/pending_episodes": self.labeler.pending,
                    "reward/failed_episodes": self.labeler.stats["failed_episodes"]})
        return row

    def evaluate(self, logger: Logger, tag: str = "") -> dict[str, float]:
        if self.eval_env is None:  # env=none: nothing to roll out; report the training losses
            return {"offline/updates": self.counters["offline_updates"], **self._offline_metrics}
        step = self.counters["env_steps"]
        name = f"eval_{tag + '_' if tag else ''}{step:08d}.mp4"
        video = self.dir / "videos" / name if self.cfg.eval.video_episodes > 0 else None
        result = evaluate(self.learner.policy(), self.eval_env, self.cfg.eval.episodes,
                          seed=self.cfg.seed + 100_000, video_path=video, video_episodes=self.cfg.eval.video_episodes)
        if hasattr(self.learner, "imagined_frames") and len(self.online) and self.cfg.eval.video_episodes > 0:
            self._imagined_video(step)
        logger.log(step, result)
        logger.plot()
        log.info("eval at %d steps: success %.2f return %.2f", step, result["eval/success"], result["eval/return"])
        return result

    def _imagined_video(self, step: int) -> None:
        """``videos/imagined_<step>.mp4``: a replay window, real frames beside the world model's
        (filtered for 5 steps, then predicted open loop from the real actions)."""
        from embodied.replay import SequenceSampler
        from envs.wrappers import VideoRecorder

        try:
            window = SequenceSampler(self.online, self.learner.sequence_length).sample_torch(1, self.learner.device)
        except ValueError:  # nothing sampleable yet
            return
        frames = self.learner.imagined_frames(window)
        if frames is not None:
            with VideoRecorder(self.dir / "videos" / f"imagined_{step:08d}.mp4", fps=10) as rec:
                for frame in frames:
                    rec.add(frame)

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        for env in (self.venv, self.eval_env):
            if env is not None:
                env.close()


def _crossed(prev: int, now: int, every: int) -> bool:
    return every > 0 and prev // every != now // every
