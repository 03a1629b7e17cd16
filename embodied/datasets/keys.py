"""How a LeRobotDataset names the env's cameras, state and actions.

The project writes ``observation.images.<camera>``, ``observation.state`` and ``action``.
Other datasets name them differently: LeRobot's LIBERO datasets store the ``agentview``
camera as ``observation.images.image`` and the wrist camera as
``observation.images.wrist_image`` (``configs/dataset_keys/lerobot_libero.yaml``). A
:class:`DatasetKeys` map is the one place that knows the dataset's names; the readers,
the recorder, the labeler and the trainer speak the env's names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"


@dataclass(frozen=True)
class DatasetKeys:
    """Dataset column names of the env's cameras, state and actions.

    cameras: env camera -> dataset column (``{"agentview": "observation.images.image"}``);
    a camera not named here is ``observation.images.<camera>``.
    """

    cameras: dict[str, str] = field(default_factory=dict)
    state: str = STATE_KEY
    action: str = "action"

    @classmethod
    def from_config(cls, cfg: Any) -> "DatasetKeys":
        """From a ``dataset_keys:`` config (a mapping; None: the project's own names)."""
        if cfg is None:
            return cls()
        raw = dict(cfg.items()) if hasattr(cfg, "items") else None
        if raw is None:
            raise ValueError(f"dataset_keys must be a mapping with cameras / state / action, got {cfg!r}")
        unknown = sorted(set(raw) - {"cameras", "state", "action"})
        if unknown:
            raise ValueError(f"dataset_keys: unknown key {unknown[0]!r}; known: cameras, state, action")
        cameras = dict(raw.get("cameras") or {})
        for cam, column in cameras.items():
            if not isinstance(column, str) or not column.startswith(IMAGE_PREFIX):
                raise ValueError(f"dataset_keys.cameras.{cam}: {column!r} must name an {IMAGE_PREFIX}* column")
        return cls(cameras, str(raw.get("state") or STATE_KEY), str(raw.get("action") or "action"))

    def column(self, camera: str) -> str:
        return self.cameras.get(camera, IMAGE_PREFIX + camera)

    def env_camera(self, column: str) -> str:
        for cam, col in self.cameras.items():
            if col == column:
                return cam
        return column[len(IMAGE_PREFIX):]

    def check(self, ds) -> None:
        """One-line error when a mapped column is missing from the dataset."""
        feats = ds.meta.features
        mapped = [*((f"cameras.{c}", k) for c, k in self.cameras.items()),
                  *([("action", self.action)] if self.action != "action" else [])]
        for name, column in mapped:  # the default names get their own messages where they are read
            if column not in feats:
                raise ValueError(f"dataset_keys.{name}: the dataset has no column {column!r}; its columns: "
                                 f"{sorted(k for k in feats if not k.startswith(('timestamp', 'frame_index', 'index')))}")


DEFAULT_KEYS = DatasetKeys()
