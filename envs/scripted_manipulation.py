"""Scripted pick-and-place experts from privileged simulator state.

    from envs.scripted_manipulation import expert_for
    expert = expert_for(env.unwrapped)      # None when the task has no scripted expert
    obs, info = env.reset(seed=0); expert.reset()
    while not done: obs, r, term, trunc, info = env.step(expert())

An expert reads everything it needs from the simulator at every call (``adapter.env``:
body poses, collision geometry, the gripper's site and finger pads), never from the
adapter's observation layout, so it keeps working when the adapter changes how it builds
observations or resets. It drives robosuite's OSC_POSE controller (delta end-effector
position and axis-angle orientation in the world frame, gripper -1 open / +1 close).

Design: a phase state machine (approach above the grasp -> descend -> close -> [slide] ->
lift -> carry above the target -> lower -> open -> retreat -> hold), each phase a
proportional controller clipped to [-1, 1] with a tolerance and a timeout, and a retry (open,
back off, approach again; at most 3) when the object is not in the hand after lifting.

* Grasps come from the object's collision geometry: the finger axis is the horizontal
  direction in which the object is narrowest at the height of the finger pads (the one
  closest to the current yaw among near-equal ones), the grasp height a little below the
  top (at most 3.5 cm, the fingertips kept off the table).
* Hollow objects (bowls: a downward ray through their centre misses their upper half) are
  pinched at the rim with the fingers across the wall; the rim point is chosen for little
  wrist rotation, a gripper clear of other objects and fixtures, and a wrist within the
  arm's reach both at the grasp and over the target.
* An object under an overhang (a bowl in an open drawer) is first slid out horizontally
  until lifting it straight up is clear.
* Carrying goes at a height where the object's bottom clears whatever lies along the way
  (objects and fixtures near the straight path) and the target; placing aligns the object's
  body origin (what the success predicates test) with the target, then lowers and lets go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCRIPTED_TASKS = (
    "robosuite/Lift: grasp the cube and lift it",
    "robosuite/PickPlaceCan: pick the can from bin 1 and drop it in its quadrant of bin 2",
    "libero, single goal 'in <obj> <container>_contain_region' (libero_object/0-9: put X in the basket)",
    "libero, single goal 'on <obj> <object>' (libero_spatial/0-9: black bowl on the plate, rim grasp; "
    "libero_goal/6 cream cheese in the bowl, libero_goal/8 bowl on the plate)",
)
"""What ``expert_for`` supports; any other task (drawers, stoves, turning knobs, goals over
two objects, 'on <obj> <region>') gets None."""

# geom types (mujoco.mjtGeom)
_SPHERE, _CAPSULE, _ELLIPSOID, _CYLINDER, _BOX, _MESH = 2, 3, 4, 5, 6, 7
RIM_DEPTH = 0.015  # grip-site depth below a hollow object's rim


def expert_for(adapter: Any, noise: float = 0.0, seed: int | None = None) -> "Expert | None":
    """The scripted expert for this adapter's task, or None when the task has none.

    ``noise``: std of Gaussian noise added to the arm part of each action (diverse demos).
    """
    env = getattr(adapter, "env", None)
    task = getattr(adapter, "task", None)
    if env is None or task is None:
        return None
    if task == "Lift":
        return Expert(adapter, _LiftTask(), noise=noise, seed=seed)
    if task == "PickPlaceCan":
        return Expert(adapter, _BinTask(), noise=noise, seed=seed)
    if task == "libero":
        spec = _libero_task(env)
        return None if spec is None else Expert(adapter, spec, noise=noise, seed=seed)
    return None


# ----------------------------------------------------------------------------- geometry

def _raw_model(sim: Any) -> Any:
    return getattr(sim.model, "_model", sim.model)


def _raw_data(sim: Any) -> Any:
    return getattr(sim.data, "_data", sim.data)


def _subtree(model: Any, root: int) -> set[int]:
    bodies = {root}
    for b in range(root + 1, model.nbody):
        if int(model.body_parentid[b]) in bodies:
            bodies.add(b)
    return bodies


def _body_geoms(sim: Any, root: int) -> list[int]:
    """Collision geoms of the body ``root`` and its descendants (all geoms if none collide)."""
    model = _raw_model(sim)
    bodies = _subtree(model, root)
    geoms = [g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in bodies]
    solid = [g for g in geoms if model.geom_contype[g] or model.geom_conaffinity[g]]
    return solid or geoms


_GRID = np.stack(np.meshgrid(*[np.linspace(-1, 1, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
_ANG = np.linspace(0, 2 * np.pi, 16, endpoint=False)
_CIRCLE = np.stack([np.cos(_ANG), np.sin(_ANG)], -1)
_SPHERE_DIRS = _GRID[np.abs(_GRID).max(1) > 0.99]
_SPHERE_DIRS = _SPHERE_DIRS / np.linalg.norm(_SPHERE_DIRS, axis=1, keepdims=True)


def _local_points(model: Any, g: int) -> np.ndarray:
    kind, size = int(model.geom_type[g]), np.asarray(model.geom_size[g], float)
    if kind == _BOX:
        return _GRID * size
    if kind == _CYLINDER or kind == _CAPSULE:
        rings = [np.c_[_CIRCLE * size[0] * s, np.full(16, z * size[1])] for s in (1.0, 0.5) for z in (-1, 0, 1)]
        pts = np.concatenate(rings + [np.array([[0, 0, -size[1]], [0, 0, size[1]]])])
        if kind == _CAPSULE:
            pts = np.concatenate([pts, [[0, 0, size[1] + size[0]], [0, 0, -size[1] - size[0]]]])
        return pts
    if kind == _SPHERE:
        return _SPHERE_DIRS * size[0]
    if kind == _ELLIPSOID:
        return _SPHERE_DIRS * size
    if kind == _MESH:
        mesh = int(model.geom_dataid[g])
        adr, num = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        verts = np.asarray(model.mesh_vert[adr:adr + num], float)
        return verts[:: max(1, num // 1500)]
    return np.zeros((1, 3))


class _Body:
    """A body's collision geometry as a world-frame point cloud, read live from the sim."""

    def __init__(self, sim: Any, body_id: int):
        self.sim, self.body_id = sim, int(body_id)
        model = _raw_model(sim)
        self.geoms = _body_geoms(sim, self.body_id)
        self._local = [(g, _local_points(model, g)) for g in self.geoms]

    def pos(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.body_id], float)

    def points(self) -> np.ndarray:
        data = self.sim.data
        out = [data.geom_xpos[g] + pts @ np.asarray(data.geom_xmat[g]).reshape(3, 3).T for g, pts in self._local]
        return np.concatenate(out) if out else self.pos()[None]

    def top(self) -> float:
        return float(self.points()[:, 2].max())

    def top_near(self, path: np.ndarray, margin: float) -> float | None:
        """Highest point of the geoms whose horizontal footprint comes within ``margin`` of
        the polyline samples ``path`` ((N, 2)); None when none does."""
        data, best = self.sim.data, None
        for g, local in self._local:
            pts = data.geom_xpos[g] + local @ np.asarray(data.geom_xmat[g]).reshape(3, 3).T
            lo, hi = pts.min(0), pts.max(0)
            d = np.linalg.norm(np.maximum(np.maximum(lo[:2] - path, path - hi[:2]), 0.0), axis=1)
            if d.min() < margin:
                best = float(hi[2]) if best is None else max(best, float(hi[2]))
        return best

    def distance(self, pts: np.ndarray) -> float:
        """Smallest distance from ``pts`` (world, (N, 3)) to this body's geoms' bounding boxes."""
        data, best = self.sim.data, np.inf
        for g, local in self._local:
            half = np.abs(local).max(0)
            q = (pts - data.geom_xpos[g]) @ np.asarray(data.geom_xmat[g]).reshape(3, 3)
            d = np.linalg.norm(np.maximum(np.abs(q) - half, 0.0), axis=1)
            best = min(best, float(d.min()))
        return best

    def bottom(self) -> float:
        return float(self.points()[:, 2].min())

    def overhead_distance(self, pts: np.ndarray, z_min: float) -> float:
        """Like ``distance`` but only to geoms lying wholly above ``z_min`` (shelves, panels)."""
        data, best = self.sim.data, np.inf
        for g, local in self._local:
            rot = np.asarray(data.geom_xmat[g]).reshape(3, 3)
            half = np.abs(local).max(0)
            if data.geom_xpos[g][2] - np.abs(rot[2]) @ half < z_min:
                continue
            q = (pts - data.geom_xpos[g]) @ rot
            d = np.linalg.norm(np.maximum(np.abs(q) - half, 0.0), axis=1)
            best = min(best, float(d.min()))
        return best


def plan_escape(body: _Body, obstacles: list[_Body], towards: np.ndarray | None = None) -> np.ndarray | None:
    """Horizontal shift that frees ``body`` from an obstacle above it (e.g. the top panel of a
    cabinet over an open drawer) before lifting; None when lifting straight up is clear."""
    pts = body.points()
    z_bot, z_top = float(pts[:, 2].min()), float(pts[:, 2].max())
    z_min = z_bot + 0.6 * (z_top - z_bot)
    lifts = [np.r_[0.0, 0.0, dz] for dz in (0.01, 0.04, 0.08, 0.12)]

    def clear(shift: np.ndarray) -> bool:
        return all(min((o.overhead_distance(pts + shift + up, z_min) for o in obstacles), default=np.inf) > 0.005
                   for up in lifts)

    if clear(np.zeros(3)):
        return None
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    if towards is not None:  # try directions nearest ``towards`` first
        ref = np.arctan2(towards[1], towards[0])
        angles = sorted(angles, key=lambda a: abs(_wrap(a - ref, 2 * np.pi)))
    for dist in (0.03, 0.06, 0.09, 0.12):
        for a in angles:
            shift = np.r_[dist * np.cos(a), dist * np.sin(a), 0.0]
            if clear(shift):
                return shift[:2] * (1 + 0.01 / dist)  # a centimetre of margin
    return None


def _ray_hits_body(sim: Any, body: _Body, start: np.ndarray) -> float | None:
    """z of the first hit of a downward ray from ``start`` if it hits ``body``, else None."""
    import mujoco

    model, data = _raw_model(sim), _raw_data(sim)
    geomid = np.array([-1], np.int32)
    group = np.array([1, 0, 0, 0, 0, 0], np.uint8)  # collision geoms (group 0)
    dist = mujoco.mj_ray(model, data, np.asarray(start, float), np.array([0.0, 0.0, -1.0]), group, 1, -1, geomid)
    if dist < 0 or int(geomid[0]) not in body.geoms:
        return None
    return float(start[2] - dist)


def _wrap(angle: float, period: float) -> float:
    return (angle + period / 2) % period - period / 2


def _axis_angle(rot: np.ndarray) -> np.ndarray:
    cos = np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    n = np.linalg.norm(axis)
    if n < 1e-6:  # angle ~ pi: axis from the symmetric part
        w, v = np.linalg.eigh((rot + rot.T) / 2)
        axis = v[:, np.argmax(w)]
        n = 1.0
    return axis / n * angle


@dataclass
class Grasp:
    point: np.ndarray      # world position of the grip site at the grasp
    yaw: float             # world yaw of the finger (closing) axis
    hollow: bool = False
    direction: np.ndarray | None = None  # rim grasps: unit xy vector from the centre to the rim point


def is_hollow(sim: Any, body: _Body) -> bool:
    """Whether a downward ray through the centre of ``body``'s footprint misses its upper half."""
    pts = body.points()
    z_top, z_bot = float(pts[:, 2].max()), float(pts[:, 2].min())
    if z_top - z_bot < 0.03:
        return False
    centre = (pts[:, :2].min(0) + pts[:, :2].max(0)) / 2
    hit = _ray_hits_body(sim, body, np.r_[centre, z_top + 0.002])
    return hit is None or hit < z_bot + 0.5 * (z_top - z_bot)


def plan_grasp(sim: Any, body: _Body, current_yaw: float, finger_drop: float,
               others: list[_Body] = (), hollow: bool | None = None,
               shoulder: np.ndarray | None = None, rim_direction: np.ndarray | None = None,
               place_xy: np.ndarray | None = None) -> Grasp:
    """Where and how to grasp ``body`` from above (see the module doc)."""
    pts = body.points()
    z_top, z_bot = float(pts[:, 2].max()), float(pts[:, 2].min())
    height = z_top - z_bot
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    centre = (lo + hi) / 2
    if hollow is None:
        hollow = is_hollow(sim, body)
    if hollow:
        return _rim_grasp(pts, centre, z_top, current_yaw, others, shoulder, rim_direction,
                          None if place_xy is None else np.asarray(place_xy) - (body.pos()[:2] - centre))
    depth = min(0.5 * height, 0.035)
    z = max(z_top - depth, z_bot + finger_drop + 0.006)
    band = pts[np.abs(pts[:, 2] - z) < 0.02]
    band = band if len(band) >= 4 else pts
    xy = band[:, :2]
    angles = np.linspace(0, np.pi, 90, endpoint=False)
    dirs = np.stack([np.cos(angles), np.sin(angles)], -1)
    proj = xy @ dirs.T
    widths = proj.max(0) - proj.min(0)
    ok = widths <= widths.min() + 0.004
    dyaw = np.abs([_wrap(a - current_yaw, np.pi) for a in angles])
    k = int(np.argmin(np.where(ok, dyaw, np.inf)))
    u, v = dirs[k], np.array([-dirs[k][1], dirs[k][0]])
    pu, pv = xy @ u, xy @ v
    c = u * (pu.max() + pu.min()) / 2 + v * (pv.max() + pv.min()) / 2
    yaw = current_yaw + _wrap(angles[k] - current_yaw, np.pi)
    return Grasp(np.r_[c, z], float(yaw))


def _hand_points(p: np.ndarray, z: float, u: np.ndarray) -> np.ndarray:
    """Sample points of an open Panda gripper at grip-site ``(p, z)`` with finger axis ``u``."""
    v = np.array([-u[1], u[0]])
    fingers = [np.r_[p + s * 0.045 * u, z + dz] for s in (-1, 1) for dz in (-0.01, 0.02, 0.05)]
    hand = [np.r_[p + a * u + b * v, z + dz] for a in (-0.1, 0.0, 0.1) for b in (-0.03, 0.03)
            for dz in (0.07, 0.12)]
    return np.array(fingers + hand)


def _rim_grasp(pts: np.ndarray, centre: np.ndarray, z_top: float, current_yaw: float,
               others: list[_Body], shoulder: np.ndarray | None,
               direction: np.ndarray | None = None, place: np.ndarray | None = None) -> Grasp:
    """Pinch the wall of a hollow object: fingers radial, across the rim.

    Among rim points, prefer little wrist rotation, fingers clear of other objects and a
    wrist comfortably within the arm's reach (the far side of a bowl at the edge of the
    workspace cannot be reached from above).
    """
    top = pts[pts[:, 2] > z_top - 0.015]
    radial = np.linalg.norm(top[:, :2] - centre, axis=1)
    r_out = float(radial.max())
    inner = radial[radial > 0.5 * r_out]
    r_in = float(inner.min()) if len(inner) else r_out - 0.01
    r_mid = (r_out + r_in) / 2
    z = z_top - RIM_DEPTH
    if direction is not None:  # keep a direction chosen earlier, follow the object
        yaw = float(np.arctan2(direction[1], direction[0]))
        yaw = current_yaw + _wrap(yaw - current_yaw, np.pi)
        return Grasp(np.r_[centre + direction * r_mid, z], yaw, True, direction)
    best, best_cost = None, np.inf
    for off in np.linspace(-np.pi / 2, np.pi / 2, 25):
        for sign in (1.0, -1.0):
            yaw = current_yaw + off
            u = sign * np.array([np.cos(yaw), np.sin(yaw)])
            p = centre + u * r_mid
            cost = 0.5 * abs(off) + 0.02 * (sign < 0)
            if others:  # the gripper's fingers and hand keep clear of other objects
                clear = min(o.distance(_hand_points(p, z, u)) for o in others)
                cost += (3.0 if clear < 0.01 else 0.0) + 40.0 * max(0.0, 0.03 - clear)
            if shoulder is not None:  # wrist reach at the grasp and where the object goes
                for xy in [p] + ([place + u * r_mid] if place is not None else []):
                    wrist = np.r_[xy, z + 0.2]
                    cost += 20.0 * max(0.0, float(np.linalg.norm(wrist - shoulder)) - 0.72)
            if cost < best_cost:
                best, best_cost = Grasp(np.r_[p, z], float(yaw), True, u), cost
    return best


# ----------------------------------------------------------------------------- tasks

class _TaskSpec:
    """What to pick and where it goes; subclasses bind to one env at ``bind``."""

    lift_only = False

    def bind(self, env: Any) -> None:
        raise NotImplementedError

    def target_xy(self) -> np.ndarray:      # where the object's body origin should end up
        raise NotImplementedError

    def release_bottom(self) -> float:      # object bottom height at which to let go
        raise NotImplementedError

    def clearance(self) -> float:           # object bottom height that clears everything
        raise NotImplementedError


class _LiftTask(_TaskSpec):
    lift_only = True

    def bind(self, env):
        self.env = env
        self.obj = _Body(env.sim, env.cube_body_id)
        self.others: list[_Body] = []
        self.table_z = float(env.model.mujoco_arena.table_offset[2])

    def clearance(self):
        return self.table_z + 0.12


class _BinTask(_TaskSpec):
    def bind(self, env):
        self.env = env
        name = env.objects[env.object_id].name
        self.obj = _Body(env.sim, env.obj_body_id[name])
        self.others = []
        self.bins = [_Body(env.sim, env.sim.model.body_name2id(b)) for b in ("bin1", "bin2")]
        # the success region is the quadrant of bin 2 centred on target_bin_placements (half
        # size bin_size / 4); aim at its corner nearest the robot base (the far corner is at
        # the edge of the Panda's reach), keeping the object clear of the quadrant's edges
        centre = np.array(env.target_bin_placements[env.object_id][:2], float)
        half = np.asarray(env.bin_size[:2], float) / 4
        robot = env.robots[0]
        base = env.sim.data.body_xpos[env.sim.model.body_name2id(robot.robot_model.root_body)][:2]
        margin = np.minimum(0.045, 0.8 * half)
        self._target = np.clip(base, centre - half + margin, centre + half - margin)

    def target_xy(self):
        return self._target

    def release_bottom(self):
        return float(self.env.bin2_pos[2]) + 0.02 + 0.03

    def clearance(self):
        return max(b.top() for b in self.bins) + 0.04


class _LiberoTask(_TaskSpec):
    def __init__(self, obj: str, target: str, kind: str):
        self.obj_name, self.target_name, self.kind = obj, target, kind

    def bind(self, env):
        self.env = env
        sim = env.sim
        self.obj = _Body(sim, env.obj_body_id[self.obj_name])
        self.others = [_Body(sim, env.obj_body_id[n]) for n in env.objects_dict if n != self.obj_name]
        self.fixtures = [_Body(sim, env.obj_body_id[n]) for n in getattr(env, "fixtures_dict", {})
                         if n in env.obj_body_id]
        if self.kind == "on":
            self.target = _Body(sim, env.obj_body_id[self.target_name])
        else:
            self.site = env.object_sites_dict[self.target_name]
            self.container = None
            for n in sorted(env.objects_dict, key=len, reverse=True):
                if self.target_name.startswith(n + "_"):
                    self.container = _Body(sim, env.obj_body_id[n])
                    break

    def target_xy(self):
        if self.kind == "on":
            return self.target.pos()[:2]
        return np.array(self.env.sim.data.get_site_xpos(self.target_name)[:2], float)

    def release_bottom(self):
        if self.kind == "on":
            return self.target.top() + 0.01
        pos = self.env.sim.data.get_site_xpos(self.target_name)
        mat = np.asarray(self.env.sim.data.get_site_xmat(self.target_name)).reshape(3, 3)
        half = np.abs(mat @ np.asarray(self.site.size, float))
        return float(pos[2] - half[2]) + 0.03

    def clearance(self):
        """Bottom height that clears the target and whatever lies along the way to it."""
        obj = self.obj.points()
        lo, hi = obj[:, :2].min(0), obj[:, :2].max(0)
        start, end = (lo + hi) / 2, self.target_xy()
        n = max(2, int(np.linalg.norm(end - start) / 0.02) + 1)
        path = start + np.linspace(0, 1, n)[:, None] * (end - start)
        margin = float(np.max(hi - lo)) / 2 + 0.03
        tops = [t for o in self.others + self.fixtures if (t := o.top_near(path, margin)) is not None]
        tops.append(self.target.top() if self.kind == "on" else
                    self.container.top() if self.container is not None else float(obj[:, 2].min()))
        return max(tops) + 0.05


def _libero_task(env: Any) -> _LiberoTask | None:
    goal = getattr(env, "parsed_problem", {}).get("goal_state") or []
    if len(goal) != 1 or len(goal[0]) != 3:
        return None
    pred, obj, target = str(goal[0][0]).lower(), goal[0][1], goal[0][2]
    objects = getattr(env, "objects_dict", {})
    sites = getattr(env, "object_sites_dict", {})
    if obj not in objects or obj not in getattr(env, "obj_body_id", {}):
        return None
    if pred == "in" and target in sites and target.endswith("_contain_region") and hasattr(sites[target], "size"):
        return _LiberoTask(obj, target, "in")
    if pred == "on" and target in objects and target in env.obj_body_id:
        return _LiberoTask(obj, target, "on")
    return None


# ----------------------------------------------------------------------------- expert

@dataclass
class _Gains:
    kp: float = 1.2         # position: action = kp * error / (full-scale step)
    vmax: float = 1.0       # largest position action (norm)
    speed: dict = field(default_factory=lambda: {"descend": 0.5, "lift": 0.8, "slide": 0.5})
    kr: float = 1.0         # orientation: action = kr * error / (full-scale step)
    rmax: float = 0.6
    tol: float = 0.005
    timeouts: dict = field(default_factory=lambda: {
        "approach": 80, "descend": 50, "close": 12, "lift": 50, "carry": 100,
        "lower": 60, "open": 8, "retreat": 25, "reopen": 12, "slide": 40})


class Expert:
    """Phase state machine for one pick-and-place (or lift) task; see the module doc."""

    def __init__(self, adapter: Any, task: _TaskSpec, noise: float = 0.0, seed: int | None = None,
                 gains: _Gains | None = None):
        self.adapter, self.task, self.noise = adapter, task, float(noise)
        self.gains = gains or _Gains()
        self.rng = np.random.default_rng(seed)
        self._bound = None
        self.reset()

    # -- sim access
    @property
    def env(self) -> Any:
        return self.adapter.env

    def _bind(self) -> None:
        env = self.env
        if self._bound is env and self._bound_sim is env.sim:
            return
        self._bound, self._bound_sim = env, env.sim
        self.task.bind(env)
        robot = env.robots[0]
        self.site = int(robot.eef_site_id)
        geoms = robot.gripper.important_geoms
        model = env.sim.model
        self.pads = [[model.geom_name2id(n) for n in geoms[k]] for k in ("left_fingerpad", "right_fingerpad")]
        self.fingers = [model.geom_name2id(n) for k in ("left_finger", "right_finger") for n in geoms[k]]
        prefix = getattr(robot.robot_model, "naming_prefix", "robot0_")
        names = [model.body_id2name(b) for b in range(model.nbody)]
        self.shoulder_id = names.index(prefix + "link2") if prefix + "link2" in names else None
        ctrl = robot.controller
        out = np.ravel(getattr(ctrl, "output_max", [0.05] * 3 + [0.5] * 3))
        inp = np.ravel(getattr(ctrl, "input_max", [1.0] * 6))
        self.pos_scale = float(out[0] / inp[0]) if len(out) >= 6 else 0.05
        self.rot_scale = float(out[3] / inp[3]) if len(out) >= 6 else 0.5

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        data = self.env.sim.data
        return np.array(data.site_xpos[self.site], float), np.asarray(data.site_xmat[self.site]).reshape(3, 3)

    def _finger_axis_local(self, rot: np.ndarray) -> np.ndarray:
        data = self.env.sim.data
        left = np.mean([data.geom_xpos[g] for g in self.pads[0]], 0)
        right = np.mean([data.geom_xpos[g] for g in self.pads[1]], 0)
        axis = rot.T @ (left - right)
        axis[2] = 0.0
        n = np.linalg.norm(axis)
        return axis / n if n > 1e-6 else np.array([1.0, 0.0, 0.0])

    def _finger_drop(self, pos: np.ndarray) -> float:
        """How far the fingertips reach below the grip site (gripper pointing down)."""
        model, data = _raw_model(self.env.sim), self.env.sim.data
        def lowest(g: int) -> float:
            rot = np.asarray(data.geom_xmat[g]).reshape(3, 3)
            return float((data.geom_xpos[g] + _local_points(model, g) @ rot.T)[:, 2].min())

        low = min(lowest(g) for g in self.fingers)
        return max(0.0, float(pos[2] - low))

    def _opening(self) -> float:
        data = self.env.sim.data
        left = np.mean([data.geom_xpos[g] for g in self.pads[0]], 0)
        right = np.mean([data.geom_xpos[g] for g in self.pads[1]], 0)
        return float(np.linalg.norm(left - right))

    def _yaw(self, rot: np.ndarray) -> float:
        f = rot @ self.f_local
        return float(np.arctan2(f[1], f[0]))

    def _target_rot(self, yaw: float) -> np.ndarray:
        f_l = self.f_local
        a_l = np.array([0.0, 0.0, 1.0])
        f_w = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        a_w = np.array([0.0, 0.0, -1.0])
        local = np.stack([f_l, a_l, np.cross(f_l, a_l)], 1)
        world = np.stack([f_w, a_w, np.cross(f_w, a_w)], 1)
        return world @ local.T

    # -- episode
    def reset(self) -> None:
        self.phase, self.t, self.steps, self.retries = "approach", 0, 0, 0
        self.grasp: Grasp | None = None
        self.f_local = None
        self.hold = None
        self.grip = -1.0
        self.last_z = None
        self.last_pos = None
        self.hollow = None
        self.rim_direction = None

    def _go(self, phase: str) -> None:
        self.phase, self.t, self.last_pos = phase, 0, None

    def __call__(self) -> np.ndarray:
        self._bind()
        pos, rot = self._eef()
        if self.f_local is None:
            self.f_local = self._finger_axis_local(rot)
            self.drop = self._finger_drop(pos)
        phase = self.phase
        target, yaw = self._step(pos, rot)
        vmax = self.gains.speed.get(phase, self.gains.vmax)
        if self.hollow and phase == "carry":  # held by the rim: gentler, it swings
            vmax = min(vmax, 0.7)
        self.t += 1
        self.steps += 1
        g = self.gains
        act = np.zeros(7)
        d = g.kp * (target - pos) / self.pos_scale
        n = np.linalg.norm(d)
        act[:3] = d * (vmax / n) if n > vmax else d
        err = _axis_angle(self._target_rot(yaw) @ rot.T)
        r = g.kr * err / self.rot_scale
        n = np.linalg.norm(r)
        act[3:6] = r * (g.rmax / n) if n > g.rmax else r
        act[6] = self.grip
        if self.noise > 0:
            act[:6] += self.rng.normal(0.0, self.noise, 6)
        return np.clip(act, -1.0, 1.0).astype(np.float32)

    def _plan(self, yaw: float) -> Grasp:
        if self.hollow is None:
            self.hollow = is_hollow(self.env.sim, self.task.obj)
        obstacles = self.task.others + getattr(self.task, "fixtures", [])
        grasp = plan_grasp(self.env.sim, self.task.obj, yaw, self.drop, obstacles, self.hollow,
                           self._shoulder(), self.rim_direction,
                           None if self.task.lift_only else self.task.target_xy())
        self.rim_direction = grasp.direction
        return grasp

    def _shoulder(self) -> np.ndarray | None:
        """The arm's shoulder (Panda link2) in the world, for reachability."""
        if self.shoulder_id is None:
            return None
        return np.array(self.env.sim.data.body_xpos[self.shoulder_id], float)

    def _step(self, pos: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, float]:
        task, g, obj = self.task, self.gains, self.task.obj
        timeout = self.t >= g.timeouts.get(self.phase, 50)
        yaw_now = self._yaw(rot)

        if self.phase == "approach":
            self.grip = -1.0
            self.grasp = self._plan(self.grasp.yaw if self.grasp else yaw_now)
            hover = self.grasp.point + np.array([0, 0, 0.08])
            # rise first if we are below the hover height and far away horizontally
            far = np.linalg.norm(pos[:2] - hover[:2]) > 0.03
            goal = hover
            if far and pos[2] < hover[2] - 0.01:
                goal = np.r_[pos[:2] + 0.3 * (hover[:2] - pos[:2]), hover[2]]
            yaw_err = abs(_wrap(self.grasp.yaw - yaw_now, 2 * np.pi))
            if (np.linalg.norm(hover[:2] - pos[:2]) < 0.005 and abs(hover[2] - pos[2]) < 0.015
                    and yaw_err < 0.05 and self._opening() > 0.07) or timeout:
                self._go("descend")
            return goal, self.grasp.yaw

        if self.phase == "descend":
            self.grip = -1.0
            self.grasp = self._plan(self.grasp.yaw)
            goal = self.grasp.point.copy()
            lateral = float(np.linalg.norm(goal[:2] - pos[:2]))
            if pos[2] - self.drop > obj.top():  # fingertips above the object: fix xy before going down
                goal[2] += float(np.clip((lateral - 0.003) * 4.0, 0.0, 0.04))
            speed = np.linalg.norm(pos - self.last_pos) if self.last_pos is not None else 1.0
            self.last_pos = pos.copy()
            arrived = np.linalg.norm(goal - pos) < g.tol and speed < 0.002
            stalled = self.t > 10 and speed < 5e-4  # blocked on the way down
            if arrived or stalled or timeout:
                self.hold = goal.copy() if arrived else np.r_[goal[:2], pos[2]]
                self._go("close")
            return goal, self.grasp.yaw

        if self.phase == "close":
            self.grip = 1.0
            if self.t == 0:
                self.open_prev = self._opening()
            opening = self._opening()
            settled = self.t >= 5 and abs(opening - self.open_prev) < 5e-4
            self.open_prev = opening
            if settled or timeout:
                self.obj_z0, self.eef_z0, self.obj_bot0 = obj.pos()[2], pos[2], obj.bottom()
                obstacles = task.others + getattr(task, "fixtures", [])
                towards = None if self.shoulder_id is None else self._shoulder()[:2] - pos[:2]
                shift = plan_escape(obj, obstacles, towards) if obstacles else None
                if shift is None:
                    self._go("lift")
                else:
                    self.slide_to = np.r_[self.hold[:2] + shift, self.hold[2] + 0.006]
                    self._go("slide")
            return self.hold, self.grasp.yaw

        if self.phase == "slide":  # drag the object out from under an overhang, then lift
            self.grip = 1.0
            if np.linalg.norm(self.slide_to[:2] - pos[:2]) < 0.008 or timeout:
                self.hold = np.r_[pos[:2], self.hold[2]]
                self.obj_z0, self.eef_z0, self.obj_bot0 = obj.pos()[2], pos[2], obj.bottom()
                self._go("lift")
            return self.slide_to, self.grasp.yaw

        if self.phase == "lift":
            self.grip = 1.0
            rise = pos[2] - self.eef_z0
            if rise > 0.03 and obj.pos()[2] - self.obj_z0 < 0.5 * rise:
                return self._retry(pos)
            if task.lift_only:
                goal = np.r_[self.hold[:2], self.eef_z0 + (task.clearance() - self.obj_bot0)]
                if timeout or abs(goal[2] - pos[2]) < g.tol:
                    self._go("hold_up")
                return goal, self.grasp.yaw
            z = pos[2] + (task.clearance() - obj.bottom())
            goal = np.r_[self.hold[:2], max(z, self.eef_z0 + 0.03)]
            if (obj.bottom() > task.clearance() - 0.01) or timeout:
                self.carry_z = max(z, pos[2])
                self._go("carry")
            return goal, self.grasp.yaw

        if self.phase == "hold_up":
            self.grip = 1.0
            if not self._in_hand(pos):
                return self._retry(pos)
            return np.r_[self.hold[:2], self.eef_z0 + (task.clearance() - self.obj_bot0)], self.grasp.yaw

        if self.phase == "carry":
            self.grip = 1.0
            if not self._in_hand(pos):
                return self._retry(pos)
            delta = task.target_xy() - obj.pos()[:2]
            z = pos[2] + (task.clearance() - obj.bottom())
            self.carry_z = max(self.carry_z, z)
            goal = np.r_[pos[:2] + delta, self.carry_z]
            speed = np.linalg.norm(pos - self.last_pos) if self.last_pos is not None else 1.0
            self.last_pos = pos.copy()
            stuck = self.t > 10 and speed < 5e-4 and np.linalg.norm(delta) < 0.03
            if np.linalg.norm(delta) < 0.01 or stuck or timeout:
                self._go("lower")
            return goal, self.grasp.yaw

        if self.phase == "lower":
            self.grip = 1.0
            delta = task.target_xy() - obj.pos()[:2]
            z = pos[2] + (task.release_bottom() - obj.bottom())
            goal = np.r_[pos[:2] + delta, z]
            err = np.r_[delta, z - pos[2]]
            stalled = self.t > 8 and abs(pos[2] - self.last_z) < 4e-4
            self.last_z = pos[2]
            if np.linalg.norm(err) < 0.008 or timeout or stalled:
                self.hold = pos.copy()
                self._go("open")
            return goal, self.grasp.yaw

        if self.phase == "open":
            self.grip = -1.0
            if self.t >= g.timeouts["open"]:
                self._go("retreat")
            return self.hold, self.grasp.yaw

        if self.phase == "retreat":
            self.grip = -1.0
            goal = self.hold + np.array([0, 0, 0.10])
            if np.linalg.norm(goal - pos) < 0.02 or timeout:
                self.hold = goal
                self._go("done")
            return goal, self.grasp.yaw

        if self.phase == "reopen":
            self.grip = -1.0
            goal = self.hold + np.array([0, 0, 0.06])
            if timeout:
                self.grasp, self.rim_direction = None, None
                self._go("approach")
            return goal, yaw_now

        # done: stay put, gripper open
        self.grip = -1.0
        return self.hold, self.grasp.yaw if self.grasp else yaw_now

    def _in_hand(self, pos: np.ndarray) -> bool:
        pts = self.task.obj.points()
        return float(np.min(np.linalg.norm(pts - pos, axis=1))) < 0.05 and self._opening() > 0.004

    def _retry(self, pos: np.ndarray) -> tuple[np.ndarray, float]:
        self.retries += 1
        self.hold = pos.copy()
        self._go("reopen" if self.retries <= 3 else "done")
        if self.phase == "done":
            self.grip = -1.0
        return pos, self._yaw(self._eef()[1])
