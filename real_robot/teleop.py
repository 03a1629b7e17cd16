"""The human in the loop: teleop devices, keys, and a scripted stand-in for tests.

Every device answers :meth:`poll` with a :class:`HumanInput`: whether the human is
intervening (then ``action`` in [-1, 1] is what the robot executes and the transition
is flagged ``intervention``), and the keys pressed since the last poll: success /
failure (a sparse reward label that ends the episode), e-stop, reset done.

* :class:`LeRobotTeleop` -- LeRobot teleoperators (``keyboard_ee``, ``gamepad``, leader
  arms such as ``so100_leader`` / ``koch_leader``): device values are mapped to [-1, 1]
  through ``ranges``; devices that report events (gamepad, keyboard) give intervention
  and success/failure themselves, others use :class:`KeyEvents`.
* :class:`SpaceMouseTeleop` -- a 3Dconnexion SpaceMouse through ``pyspacemouse`` (the
  device SERL / HIL-SERL operators use; LeRobot has no teleoperator for it): moving the
  puck past the dead zone takes over, its axes are the action, its buttons label
  success / failure.
* :class:`KeyEvents` -- a keyboard listener (pynput): space toggles intervention, ``s``
  success, ``f`` failure, ``Esc`` e-stop, ``Enter`` reset done.
* :class:`ScriptedHuman` -- the test double for a hand: intervenes on a schedule with a
  scripted controller and presses success when it sees the task done.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class HumanInput:
    action: np.ndarray | None = None  # [-1, 1] action of the human, when intervening
    intervening: bool = False
    success: bool = False  # success key: reward 1, episode ends (terminated)
    failure: bool = False  # failure key: reward 0, episode ends (truncated: no absorbing state)
    estop: bool = False  # emergency stop: hold the robot, stop the loop
    reset_done: bool = False  # the human finished resetting the scene


class KeyEvents:
    """Keys from a pynput listener; ``poll`` returns and clears what was pressed."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pressed: set[str] = set()
        self.intervening = False
        self.listener = None
        try:
            from pynput import keyboard
        except Exception as exc:  # no display / no pynput: keys are unavailable, say so once
            log.warning("keyboard keys unavailable (%s); e-stop and labels need another device", exc)
            return
        names = {keyboard.Key.space: "toggle", keyboard.Key.esc: "estop", keyboard.Key.enter: "reset"}

        def on_press(key):
            name = names.get(key) or getattr(key, "char", None)
            with self._lock:
                if name == "toggle":
                    self.intervening = not self.intervening
                elif name:
                    self._pressed.add(name)

        self.listener = keyboard.Listener(on_press=on_press)
        self.listener.start()

    def poll(self) -> HumanInput:
        with self._lock:
            keys, self._pressed = self._pressed, set()
        return HumanInput(intervening=self.intervening, success="s" in keys, failure="f" in keys,
                          estop="estop" in keys, reset_done="reset" in keys)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()


class SpaceMouseTeleop:
    """A 3Dconnexion SpaceMouse as the human's hand (``pyspacemouse``, HID).

    axes: the SpaceMouse axes (``x y z roll pitch yaw``, each in [-1, 1]) that form the
    action vector, in the robot's action order; a leading ``-`` flips one (``-y``).
    gain: multiplies the axes before the clip to [-1, 1]. deadzone: below it an axis reads 0,
    and the human intervenes while any action axis is past it (hands off: the policy acts;
    ``hold_steps`` more polls of stillness before the takeover ends, so a brief pause mid-
    correction is not a hand-back). buttons: which button index labels ``success`` and which
    ``failure`` (pressed: the rising edge between two polls). ``device`` (tests): an opened
    ``pyspacemouse.SpaceMouseDevice``; otherwise ``name`` (e.g. ``SpaceMouseCompact``, None:
    the first one found) is opened on :meth:`connect`. ``keys``: e-stop / reset from the keyboard.
    """

    AXES = ("x", "y", "z", "roll", "pitch", "yaw")

    def __init__(self, axes=("x", "y"), gain: float = 1.0, deadzone: float = 0.05, hold_steps: int = 2,
                 buttons: Mapping[str, int] | None = None, name: str | None = None, keys: bool = True,
                 device: Any = None, max_reads: int = 64):
        self.axes = []
        for axis in axes:
            sign, key = (-1.0, axis[1:]) if str(axis).startswith("-") else (1.0, str(axis))
            if key not in self.AXES:
                raise ValueError(f"teleop.axes: unknown SpaceMouse axis {axis!r}; choose from {', '.join(self.AXES)}")
            self.axes.append((key, sign))
        self.gain, self.deadzone, self.hold_steps = float(gain), float(deadzone), int(hold_steps)
        self.buttons = dict(buttons if buttons is not None else {"success": 0, "failure": 1})
        unknown = sorted(set(self.buttons) - {"success", "failure"})
        if unknown:
            raise ValueError(f"teleop.buttons: {unknown[0]!r} is not a label; map success / failure to button indices")
        self.name, self.device, self.max_reads = name, device, int(max_reads)
        self.key_events = KeyEvents() if keys else None
        self._was = [0] * 16
        self._still = self.hold_steps + 1

    def connect(self) -> None:
        if self.device is not None:
            return
        import pyspacemouse

        try:
            self.device = pyspacemouse.open(device=self.name)
        except (RuntimeError, ValueError, OSError) as err:
            raise RuntimeError(f"no SpaceMouse opened ({err}); plug one in, check its udev permissions, "
                               "or set teleop.name to one of pyspacemouse's supported devices") from None

    def _read(self):
        """Drain the pending HID reports (non-blocking) and return the newest state."""
        state = self.device.read()
        for _ in range(self.max_reads - 1):
            before = state.t
            state = self.device.read()
            if state.t == before:  # no new report
                break
        return state

    def poll(self, obs: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> HumanInput:
        state = self._read()
        raw = np.array([sign * float(getattr(state, key)) for key, sign in self.axes])
        raw = np.where(np.abs(raw) < self.deadzone, 0.0, raw)
        moving = bool(np.any(raw != 0.0))
        self._still = 0 if moving else self._still + 1
        out = self.key_events.poll() if self.key_events is not None else HumanInput()
        out.intervening |= self._still <= self.hold_steps
        out.action = np.clip(self.gain * raw, -1.0, 1.0).astype(np.float32)
        pressed = list(state.buttons)
        edges = {i for i, b in enumerate(pressed) if b and not (self._was[i] if i < len(self._was) else 0)}
        self._was = pressed + [0] * max(0, 16 - len(pressed))
        out.success |= self.buttons.get("success") in edges
        out.failure |= self.buttons.get("failure") in edges and not out.success
        return out

    def close(self) -> None:
        if self.key_events is not None:
            self.key_events.close()
        if self.device is not None:
            self.device.close()
            self.device = None


class LeRobotTeleop:
    """A LeRobot teleoperator as the human's hand.

    type: the teleoperator config type; ranges: ``{device action key: [low, high]}`` in
    the order of the robot's action vector; kwargs go to the teleoperator config.
    """

    def __init__(self, type: str, ranges: Mapping[str, Any], keys: bool = True, **kwargs: Any):
        from lerobot.teleoperators import TeleoperatorConfig
        from lerobot.teleoperators.utils import make_teleoperator_from_config

        from real_robot.robots import _register_all

        _register_all("lerobot.teleoperators")
        try:
            cfg_cls = TeleoperatorConfig.get_choice_class(type)
        except Exception:
            raise ValueError(f"unknown LeRobot teleoperator {type!r}; one of "
                             f"{sorted(TeleoperatorConfig.get_known_choices())}") from None
        self.device = make_teleoperator_from_config(cfg_cls(**kwargs))
        self.keys_order = list(ranges)
        rng = np.array([list(map(float, ranges[k])) for k in self.keys_order]).reshape(-1, 2)
        self.low, self.high = rng[:, 0], rng[:, 1]
        self.events = hasattr(self.device, "get_teleop_events")
        self.key_events = KeyEvents() if keys else None

    def connect(self) -> None:
        self.device.connect()

    def poll(self, obs: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> HumanInput:
        from lerobot.teleoperators.utils import TeleopEvents

        raw = self.device.get_action()
        values = np.array([float(raw[k]) for k in self.keys_order])
        action = np.clip(2 * (values - self.low) / (self.high - self.low) - 1, -1, 1).astype(np.float32)
        out = self.key_events.poll() if self.key_events is not None else HumanInput()
        if self.events:
            ev = self.device.get_teleop_events()
            out.intervening |= bool(ev.get(TeleopEvents.IS_INTERVENTION, False))
            out.success |= bool(ev.get(TeleopEvents.SUCCESS, False))
            out.failure |= bool(ev.get(TeleopEvents.TERMINATE_EPISODE, False)) and not out.success
        out.action = action
        return out

    def close(self) -> None:
        if self.key_events is not None:
            self.key_events.close()
        if self.device.is_connected:
            self.device.disconnect()


class ScriptedHuman:
    """Test double for a human hand.

    Intervenes in every ``every``-th episode on steps ``[start, stop)`` with
    ``controller(obs) -> action``; presses success as soon as ``info["success"]`` is
    true (``label_success``); presses e-stop at episode step ``estop_at`` if set.
    """

    def __init__(self, controller: Callable[[Mapping[str, Any]], np.ndarray], every: int = 2,
                 start: int = 0, stop: int = 10, label_success: bool = True, estop_at: int | None = None):
        self.controller, self.every, self.start, self.stop = controller, max(1, int(every)), start, stop
        self.label_success, self.estop_at = label_success, estop_at
        self.episode = -1
        self.step = 0

    def connect(self) -> None:
        pass

    def new_episode(self) -> None:
        self.episode += 1
        self.step = 0

    def poll(self, obs: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None) -> HumanInput:
        out = HumanInput(reset_done=True)
        if self.label_success and info and info.get("success"):
            out.success = True
        if self.estop_at is not None and self.step == self.estop_at:
            out.estop = True
        if obs is not None and self.episode % self.every == 0 and self.start <= self.step < self.stop:
            out.intervening = True
            out.action = np.clip(np.asarray(self.controller(obs), np.float32), -1, 1)
        self.step += 1
        return out

    def close(self) -> None:
        pass


def reach_controller(obs: Mapping[str, Any], gain: float = 8.0) -> np.ndarray:
    """A hand that moves the gripper straight at the target of the builtin ``reach`` task:
    its scripted controller with ``gain`` in action units per metre."""
    from envs.builtin.scripted import reach_action

    return reach_action(obs["state"], gain, max_delta=1.0)
