"""One checkpoint for everything stateful, written atomically.

A checkpoint is a folder ``<root>/step_<n>/`` holding ``state.pt`` (tensors and plain
values, loaded with ``torch.load(weights_only=True)``) and ``arrays.npz`` (numpy
arrays such as the replay, loaded with ``allow_pickle=False``). It is written under a
temporary name and renamed into place; ``<root>/latest`` names the newest complete one.
A crash mid-write leaves the previous checkpoint intact. Nothing is unpickled.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

SEP = "/"


def _split(tree: Mapping[str, Any], prefix: str = "") -> tuple[dict, dict]:
    """Nested dict -> (torch-side flat dict, numpy-side flat dict)."""
    torch_side: dict[str, Any] = {}
    numpy_side: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if SEP in str(key):
            raise ValueError(f"checkpoint key {key!r} must not contain {SEP!r}")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            t, n = _split(value, name + SEP)
            torch_side.update(t)
            numpy_side.update(n)
            if not value:
                torch_side[name + SEP] = {}
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"checkpoint entry {name!r} is an object array; store plain dtypes")
            numpy_side[name] = value
        else:
            torch_side[name] = value
    return torch_side, numpy_side


def _join(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        parts = name.split(SEP)
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts[-1]:
            node[parts[-1]] = value
    return tree


def save(root: str | os.PathLike, step: int, state: Mapping[str, Any], keep: int = 2) -> Path:
    """Write ``state`` (a nested dict of state_dicts) as checkpoint ``step`` atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:010d}"
    tmp = root / f".tmp_{final.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch_side, numpy_side = _split(state)
    torch.save(torch_side, tmp / "state.pt")
    with open(tmp / "arrays.npz", "wb") as f:
        np.savez(f, **{k.replace(SEP, "|"): v for k, v in numpy_side.items()})
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def latest(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``root``, or None."""
    root = Path(root)
    marker = root / "latest"
    if not marker.exists():
        return None
    path = root / marker.read_text().strip()
    return path if (path / "state.pt").exists() else None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint folder (or a root holding ``latest``) back into a nested dict."""
    path = Path(path)
    if not (path / "state.pt").exists():
        found = latest(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}: expected state.pt or a 'latest' marker")
        path = found
    flat = dict(torch.load(path / "state.pt", map_location=map_location, weights_only=True))
    with np.load(path / "arrays.npz", allow_pickle=False) as arrays:
        flat.update({k.replace("|", SEP): arrays[k] for k in arrays.files})
    return _join(flat)


def optimizer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A torch optimizer's state after a checkpoint round trip: its per-parameter keys are
    stored as strings, torch matches parameters by int."""
    return {**state, "state": {int(k): v for k, v in dict(state.get("state", {})).items()}}
