"""The SpaceMouse teleoperator on pyspacemouse's own HID report parsing, fed a recorded
stream of SpaceMouse Compact reports (report 1: x y z translation, 2: rotation, 3: buttons;
little-endian int16, full scale 350) through a stand-in for the HID handle."""

from __future__ import annotations

from collections import deque

import numpy as np
import pyspacemouse
import pytest

from real_robot.teleop import SpaceMouseTeleop


def translation(x: int, y: int, z: int = 0) -> bytes:
    return bytes([1]) + b"".join(int(v).to_bytes(2, "little", signed=True) for v in (x, y, z))


def buttons(left: bool, right: bool) -> bytes:
    return bytes([3, int(left) | (int(right) << 1)])


class RecordedHID:
    """An HID handle that replays one frame of reports per control tick, then reads empty."""

    product_string, manufacturer_string, release_number, serial_number = "SpaceMouse Compact", "3Dconnexion", 1, ""

    def __init__(self, frames):
        self.frames, self.current = deque(frames), deque()

    def tick(self) -> None:
        self.current = deque(self.frames.popleft() if self.frames else [])

    def read(self, n: int) -> bytes:
        return self.current.popleft() if self.current else b""

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


# Ten control ticks: hands off, a push right-and-forward (several reports in one tick: the
# newest counts), a pause shorter than hold_steps, release, then the success and failure buttons.
STREAM = [
    [],
    [translation(3, -2)],                        # within the dead zone (|v| / 350 < 0.05)
    [translation(100, 0), translation(175, -350)],
    [translation(175, -350)],
    [translation(0, 0)],                         # still: hold_steps=2 keeps the takeover
    [],
    [],                                          # third still tick: hands back
    [buttons(True, False)],
    [buttons(False, False)],
    [buttons(False, True)],
]


def test_spacemouse_reports_become_actions_takeovers_and_labels():
    hid = RecordedHID(STREAM)
    spec = pyspacemouse.get_device_specs()["SpaceMouseCompact"]
    device = pyspacemouse.SpaceMouseDevice(spec, hid)
    human = SpaceMouseTeleop(axes=("x", "y"), gain=1.0, deadzone=0.05, hold_steps=2, keys=False, device=device)
    human.connect()
    polls = []
    for _ in STREAM:
        hid.tick()
        polls.append(human.poll())
    taking_over = [p.intervening for p in polls]
    assert taking_over == [False, False, True, True, True, True, False, False, False, False]
    np.testing.assert_allclose(polls[1].action, [0.0, 0.0])  # dead zone
    # pyspacemouse's Compact mapping flips y (scale -1): raw -350 reads +1.0
    np.testing.assert_allclose(polls[2].action, [0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(polls[4].action, [0.0, 0.0])
    assert [p.success for p in polls] == [False] * 7 + [True, False, False]  # the rising edge only
    assert [p.failure for p in polls] == [False] * 9 + [True]
    human.close()


def test_spacemouse_axis_signs_gain_and_bad_settings():
    hid = RecordedHID([[translation(70, 70, 140)]])
    device = pyspacemouse.SpaceMouseDevice(pyspacemouse.get_device_specs()["SpaceMouseCompact"], hid)
    human = SpaceMouseTeleop(axes=("-x", "z"), gain=2.0, keys=False, device=device)
    hid.tick()
    out = human.poll()
    np.testing.assert_allclose(out.action, [-0.4, -0.8], atol=1e-6)  # z flipped by the Compact mapping
    with pytest.raises(ValueError, match="unknown SpaceMouse axis 'w'"):
        SpaceMouseTeleop(axes=("x", "w"), keys=False)
    with pytest.raises(ValueError, match="'grip' is not a label"):
        SpaceMouseTeleop(buttons={"grip": 0}, keys=False)
