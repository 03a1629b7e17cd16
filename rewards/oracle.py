"""Ground-truth oracles for tests and demonstrations: a reward module whose VLM is the
scripted stand-in (:class:`rewards.backends.scripted.ScriptedBackend`), or RL-VLM-F with its
scripted preference labeler, answers from the simulator's true progress of each frame.

:func:`find_oracle` finds that oracle inside a module; :class:`OracleFeed` is the labeler tap
(``reward.oracle=true``) that tells it the progress of every frame a run stores
(``info["progress"]``; a first frame counts as 0 %, true for the built-in tasks, whose
progress is measured from the initial state).
"""

from __future__ import annotations

from embodied.contracts import Transition


def find_oracle(model):
    """The ground-truth oracle inside a reward model, or None: RL-VLM-F's scripted
    preference labeler, or the scripted VLM (possibly behind the cache). Both keep a
    ``progress`` table (image hash -> true progress) that tests and demonstrations fill."""
    from rewards.backends.scripted import ScriptedBackend

    if isinstance(getattr(getattr(model, "oracle", None), "progress", None), dict):
        return model.oracle
    backend = getattr(model, "backend", None)
    while backend is not None and not isinstance(backend, ScriptedBackend):
        backend = getattr(backend, "backend", None)
    return backend


class OracleFeed:
    """Labeler tap: records the true progress of the frames of ``camera`` in ``oracle``."""

    def __init__(self, oracle, camera: str):
        self.oracle, self.camera = oracle, camera

    def __call__(self, t: Transition) -> None:
        from rewards.backends.base import hash_image

        if t.is_first:
            self.oracle.progress[hash_image(t.obs["pixels"][self.camera])] = 0.0
        self.oracle.progress[hash_image(t.next_obs["pixels"][self.camera])] = float(t.info.get("progress", 0.0))
