"""Reward labeling between the env loop and the replay.

Three paths, chosen by the reward model's declaration:

* **env reward** (no model): transitions go into the replay labeled.
* **cheap frame models** (CLIP VLM-RM, the RL-VLM-F reward net): transitions enter the
  replay unlabeled and are scored in batches of ``chunk`` frames, inline.
* **asynchronous models** (GVL, VLAC — a VLM query per episode): each finished episode is
  labeled on a worker thread; the env loop never waits. Transitions stay unlabeled, and
  so cannot be sampled, until their labels arrive.

Copies (the learner server's RLPD half): ``add(t, copy_to=offline_replay)`` stores the
transition in a second replay as well; the copy gets the label of the original from the
same single query (an intervention is labeled once, however long the takeover lasts), and
:meth:`relabel` rescores either replay after a trainable model retrained.

Allowed staleness: while more than ``max_pending`` episodes wait for labels the learner
pauses its updates (the env keeps running); the skipped updates are owed and made up
once labels arrive, so the update-to-data ratio still holds over the run. An episode
whose labeling failed stays unlabeled (never sampled) and is counted, never zero-filled.

Mixing with the env's reward (``env_weight`` w, ``reward.env_weight``): a label becomes
``scale * model reward + w * env reward``, the env's reward being the one the transition
arrived with (e.g. the sparse success of ``env.sparse_reward=true``): a dense VLM process
reward shaped around the task's own success signal. Labels of a model that retrains
(RL-VLM-F) are recomputed later and so cannot be mixed: that pairing is refused.

Taps: callables that see every transition before it is stored (``taps=[fn]``). The
composition root (embodied/build.py) uses one for ``reward.oracle=true``: it tells the
scripted stand-in VLM the simulator's true progress of each frame (``rewards/oracle.py``),
so the real prompts and parsers run inside a training run without a VLM server.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from embodied.contracts import EpisodeLabels, RewardModel, TrainableReward, Transition

log = logging.getLogger("embodied")


class RewardLabeler:
    def __init__(self, replay, model: RewardModel | None = None, camera: str | None = None,
                 chunk: int = 256, max_pending: int = 8, workers: int = 2, scale: float = 1.0,
                 feedback_every: int = 0, feedback_queries: int = 0, taps: list | None = None,
                 env_weight: float = 0.0):
        if env_weight and model is None:
            raise ValueError("reward.env_weight mixes a reward model's labels with the env reward; reward=env has no "
                             "model to mix with")
        if env_weight and isinstance(model, TrainableReward):
            raise ValueError("reward.env_weight cannot be used with a reward model that retrains and relabels "
                             f"({type(model).__name__}): its relabels would drop the env reward")
        self.env_weight = float(env_weight)
        self._env_rewards: dict[int, float] = {}  # slot -> the env reward it arrived with (env_weight != 0)
        self.replay = replay
        self.model = model
        self.camera = camera
        self.chunk = chunk
        self.max_pending = max_pending
        self.scale = scale
        self.feedback_every = feedback_every
        self.feedback_queries = feedback_queries
        self._pending_slots: list[int] = []
        self._pending_instr: list[str] = []
        self._pending_frames: list[np.ndarray] = []
        self._episode_slots: dict[int, list[int]] = defaultdict(list)
        self._futures: dict[int, tuple[Future, list[int]]] = {}
        self._copies: dict[int, tuple[Any, int, int]] = {}  # slot -> (other replay, its slot, episode id)
        self._pool = ThreadPoolExecutor(workers) if model is not None and model.asynchronous else None
        self._steps = 0
        self.stats = {"labeled_episodes": 0, "failed_episodes": 0, "feedback_rounds": 0}
        self.failed: list[dict[str, Any]] = []
        self.taps = list(taps or [])

    @property
    def mode(self) -> str:
        if self.model is None:
            return "env"
        return "async" if self.model.asynchronous else "inline"

    # -- per transition -------------------------------------------------------------
    def add(self, t: Transition, env_index: int = 0, copy_to=None) -> int:
        """Store ``t`` (and a copy in ``copy_to``, labeled together with the original); returns
        its replay slot."""
        if self.model is None:
            slot = int(self.replay.add(t, labeled=True))
            if copy_to is not None:
                copy_to.add(t, labeled=True)
            return slot
        slot = int(self.replay.add(t, labeled=False))
        self._copies.pop(slot, None)  # the slot's previous transition is gone
        if self.env_weight:
            self._env_rewards[slot] = float(t.reward)
        if copy_to is not None:
            self._copies[slot] = (copy_to, int(copy_to.add(t, labeled=False)), t.episode_id)
        self._steps += 1
        for tap in self.taps:
            tap(t)
        if self._pool is None:
            self._pending_slots.append(slot)
            self._pending_instr.append(t.obs.get("instruction", ""))
            # the frame reached; the replay only has it once the episode's next step arrives
            self._pending_frames.append(t.next_obs["pixels"][self.camera])
            if len(self._pending_slots) >= self.chunk:
                self.flush()
        else:
            slots = self._episode_slots[t.episode_id]
            slots.append(slot)
            if t.terminated or t.truncated:
                self._submit(t.episode_id, self._episode_slots.pop(t.episode_id), t.obs.get("instruction", ""))
        return slot

    # -- inline frame models ------------------------------------------------------------
    def flush(self) -> None:
        """Score every pending transition now (inline path)."""
        if not self._pending_slots:
            return
        slots = np.asarray(self._pending_slots)
        instr = np.asarray(self._pending_instr)
        rewards = np.empty(len(slots), np.float32)
        for text in np.unique(instr):
            idx = np.flatnonzero(instr == text)
            frames = np.stack([self._pending_frames[j] for j in idx])
            rewards[idx] = self.model.score_frames(frames, str(text))
        rewards = self._mixed(slots, rewards * self.scale)
        self.replay.set_rewards(slots, rewards)
        self._label_copies(slots, rewards)
        self._pending_slots.clear()
        self._pending_instr.clear()
        self._pending_frames.clear()

    def _mixed(self, slots, rewards: np.ndarray) -> np.ndarray:
        """``rewards + env_weight * env reward`` of each slot (unchanged without env_weight)."""
        if not self.env_weight:
            return rewards
        env = np.array([self._env_rewards.pop(int(s), 0.0) for s in np.asarray(slots).tolist()], np.float32)
        return (rewards + self.env_weight * env).astype(np.float32)

    def maybe_feedback(self, env_step: int) -> dict[str, float]:
        """PEBBLE-style schedule for trainable models: a feedback round every N env steps.

        ``env_step`` may jump by more than one (vector envs, the learner server's batches):
        a round is due whenever a multiple of ``feedback_every`` was reached since the last one.
        """
        if not (isinstance(self.model, TrainableReward) and self.feedback_every):
            return {}
        if env_step // self.feedback_every <= self.stats["feedback_rounds"]:
            return {}
        self.flush()
        metrics = self.model.feedback_round(self.replay, self.feedback_queries)
        self.stats["feedback_rounds"] = env_step // self.feedback_every
        return {f"reward/{k}": float(v) for k, v in metrics.items()}

    def _label_copies(self, slots, rewards: np.ndarray, episode_id: int | None = None) -> None:
        for slot, reward in zip(np.asarray(slots).tolist(), np.asarray(rewards).tolist()):
            copy = self._copies.get(slot)
            if copy is None or (episode_id is not None and copy[2] != episode_id):
                continue
            other, other_slot, eid = self._copies.pop(slot)
            other.set_rewards(np.array([other_slot]), np.array([reward], np.float32), episode_id=eid)

    def relabel(self, replay=None) -> None:
        """Rescore every transition of ``replay`` (default: the labeler's own) with the model as
        it is now (after it trained)."""
        if self.mode != "inline":
            return
        self.flush()
        replay = self.replay if replay is None else replay

        def score(batch: dict) -> np.ndarray:
            texts = np.asarray(batch["obs"].get("instruction") or [""] * len(batch["slot"]))
            out = np.empty(len(texts), np.float32)
            for text in np.unique(texts):
                idx = np.flatnonzero(texts == text)
                out[idx] = self.model.score_frames(batch["next_obs"]["pixels"][self.camera][idx], str(text))
            return out * self.scale

        replay.relabel(score)

    # -- asynchronous episode models -----------------------------------------------------
    def _submit(self, episode_id: int, slots: list[int], instruction: str) -> None:
        idx = np.asarray(slots)
        # Read frames now, on the loop's thread: the worker never touches the replay.
        first = self.replay.frames(idx[:1], self.camera, next=False)
        rest = self.replay.frames(idx, self.camera, next=True)
        frames = np.concatenate([first, rest])
        future = self._pool.submit(self.model.label_episode, frames, instruction)
        self._futures[episode_id] = (future, slots)

    def poll(self) -> None:
        """Write labels of finished asynchronous episodes into the replay."""
        for eid in [e for e, (f, _) in self._futures.items() if f.done()]:
            future, slots = self._futures.pop(eid)
            try:
                labels: EpisodeLabels = future.result()
            except Exception as exc:  # a crashed query must not kill the run
                labels = EpisodeLabels.failed(len(slots), f"{type(exc).__name__}: {exc}")
            if labels.ok and len(labels.rewards) == len(slots):
                # episode_id: a slot overwritten by a newer episode meanwhile is skipped
                rewards = self._mixed(slots, np.asarray(labels.rewards, np.float32) * self.scale)
                self.replay.set_rewards(np.asarray(slots), rewards, episode_id=eid)
                self._label_copies(slots, rewards, eid)
                self.stats["labeled_episodes"] += 1
            else:
                self.stats["failed_episodes"] += 1
                error = labels.error or f"{len(labels.rewards)} labels for {len(slots)} transitions"
                self.failed.append({"episode_id": eid, "error": error})
                log.warning("reward labels of episode %d failed (kept unlabeled, never sampled): %s", eid, error)

    @property
    def pending(self) -> int:
        return len(self._futures)

    def unresolved(self) -> set[int]:
        """Episodes whose labels may still arrive: running (not ended), or queried and not answered."""
        return set(self._episode_slots) | set(self._futures)

    def wait_below(self, limit: int) -> float:
        """Block while more than ``limit`` episodes wait for labels (on-policy staleness bound);
        returns the seconds waited."""
        if self.pending <= limit:
            return 0.0
        t0 = time.perf_counter()
        while self.pending > limit:
            futures = [f for f, _ in self._futures.values()]
            wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
            self.poll()
        return time.perf_counter() - t0

    def learner_may_update(self) -> bool:
        return self.pending <= self.max_pending

    def close(self, wait: bool = True) -> None:
        self.flush()
        if self._pool is not None:
            if wait:
                for future, _ in list(self._futures.values()):
                    future.exception()
                self.poll()
            self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict() if self.model is not None else {},
                "stats": {k: int(v) for k, v in self.stats.items()}}

    def load_state_dict(self, state) -> None:
        if self.model is not None and state.get("model"):
            self.model.load_state_dict(state["model"])
        self.stats.update({k: int(v) for k, v in state.get("stats", {}).items()})

