"""How a :class:`~embodied.replay.Replay` is saved: plain numpy arrays, nothing pickled.

``meta`` holds the sizes and pointers, ``rng`` the PCG64 state as 64-bit words, ``vocab``
the instruction strings, ``open`` the running episodes' newest slots; the per-slot,
observation, final-observation and extras columns are cut to the stored size. The extras
arrays carry their layout (``shape[1:]``, dtype) even when empty; a state without them
(older checkpoints) keeps the replay's own layout.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

PER_SLOT = ("action", "reward", "labeled", "terminated", "truncated", "intervention", "episode_id",
            "step", "next_slot", "prev_slot", "final_idx")


def state_dict(replay) -> dict:
    n, nf = replay.size, replay.final_capacity
    rng = replay._rng.bit_generator.state
    words = [rng["state"]["state"], rng["state"]["inc"]]
    state = {
        "meta": np.array([replay.capacity, replay.final_capacity, replay.n_step, replay.ptr, replay.size,
                          replay.final_ptr, rng["has_uint32"], rng["uinteger"]], np.int64),
        "gamma": np.array(replay.gamma, np.float64),
        "rng": np.array([(w >> s) & 0xFFFFFFFFFFFFFFFF for w in words for s in (64, 0)], np.uint64),
        "vocab": np.array(replay.vocab, dtype=np.str_) if replay.vocab else np.zeros(0, "<U1"),
        "open": np.array(sorted(replay._open.items()), np.int64).reshape(-1, 2),
        "slots": {k: getattr(replay, k)[:n] for k in PER_SLOT},
        "obs": {k: v[:n] for k, v in replay.obs.items()},
        "final": {k: v[:nf] for k, v in replay.final.items()},
        "final_owner": replay.final_owner,
    }
    if replay.extras_spec is not None:  # None: no transition yet fixed the layout
        state["extras"] = {k: v[:n] for k, v in replay.extras.items()}
    return state


def load_state_dict(replay, state: Mapping[str, Any]) -> None:
    meta = [int(x) for x in np.asarray(state["meta"])]
    if meta[0] != replay.capacity or meta[1] != replay.final_capacity or meta[2] != replay.n_step:
        raise ValueError(f"replay state has capacity/final_capacity/n_step {meta[:3]}, this replay "
                         f"{[replay.capacity, replay.final_capacity, replay.n_step]}: build it with the same sizes")
    if "extras" in state:
        spec = {k: (tuple(np.shape(v)[1:]), np.asarray(v).dtype) for k, v in state["extras"].items()}
        if replay._extras_arg is not None and spec != replay._extras_arg:
            raise ValueError(f"replay state has extras {spec}, this replay {replay._extras_arg}")
        replay.extras_spec = spec
    replay._alloc()
    replay.ptr, replay.size, replay.final_ptr = meta[3:6]
    replay.gamma = float(state["gamma"])
    n = replay.size
    for key in PER_SLOT:
        getattr(replay, key)[:n] = state["slots"][key]
    for key, arr in replay.obs.items():
        if key not in state["obs"]:
            raise ValueError(f"replay state lacks observation array {key!r}: observation spaces differ")
        arr[:n] = state["obs"][key]
    for key, arr in replay.final.items():
        arr[:] = state["final"][key]
    for key, arr in replay.extras.items():
        arr[:n] = state["extras"][key] if "extras" in state else 0
    replay.final_owner[:] = state["final_owner"]
    replay.vocab = [str(s) for s in state["vocab"]]
    replay._vocab_ids = {s: i for i, s in enumerate(replay.vocab)}
    replay._open = {int(e): int(s) for e, s in np.asarray(state["open"])}
    w = [int(x) for x in np.asarray(state["rng"], np.uint64)]
    replay._rng.bit_generator.state = {
        "bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": meta[6], "uinteger": meta[7]}
