"""A task curriculum for multi-task RL: sample the tasks whose success rate is near 50 %.

VLA-RL's curriculum (in its paper, not wired into its released training): a task the policy
always solves or never solves teaches little; one it solves about half the time gives the
largest advantage signal. Per task ``k`` the curriculum keeps the success of its last
``window`` episodes, ``s_k`` (0.5 before the first one), and samples it with probability

    p_k  proportional to  s_k (1 - s_k) + floor

(``floor`` keeps every task in play). ``train.curriculum=true`` turns it on for an env with
several tasks (``set_task_probs``, ``info["task_id"]``, e.g. ``lang_reach``); the loop feeds
it every finished episode and pushes the new probabilities into the envs.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

import numpy as np


class TaskCurriculum:
    def __init__(self, tasks: Sequence[str], window: int = 20, floor: float = 0.05):
        if len(tasks) < 2:
            raise ValueError(f"a task curriculum needs an env with several tasks, got {list(tasks)}")
        self.tasks, self.window, self.floor = list(tasks), int(window), float(floor)
        self.history = [deque(maxlen=self.window) for _ in self.tasks]

    def observe(self, task_id: int, success: bool) -> None:
        self.history[int(task_id)].append(float(success))

    def rates(self) -> np.ndarray:
        return np.array([np.mean(h) if h else 0.5 for h in self.history])

    def probs(self) -> np.ndarray:
        s = self.rates()
        w = s * (1.0 - s) + self.floor
        return w / w.sum()

    def metrics(self) -> dict[str, float]:
        out = {}
        for name, p, s in zip(self.tasks, self.probs(), self.rates()):
            out[f"curriculum/p_{name}"], out[f"curriculum/success_{name}"] = float(p), float(s)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state) -> None:
        for h, saved in zip(self.history, state["history"]):
            h.clear()
            h.extend(float(x) for x in saved)
