"""Keyboard teleoperation in a plain terminal: works over SSH and without a display.

The terminal (stdin, or the tty named in the config) is put in cbreak mode (no line buffering, no
echo; Ctrl-C still interrupts), and a background thread reads key bytes with ``select`` and turns
them into motion commands and events. No pynput, no X server.

A terminal reports key presses only (no releases; a held key auto-repeats after a delay), so a
motion key moves the robot for ``key_hold_s`` seconds after its last press or repeat. The gripper
command is latched (close/open). The action is float32[4]: end-effector (dx, dy, dz) in action units
scaled by ``speed``, and the gripper effort (+1 close, -1 open), as for MetaWorld's Sawyer.

**Joint mode.** A robot whose action is not MetaWorld's 4-D end-effector delta (an SO-101 or Koch arm:
six joint goals, no kinematics here) is driven joint by joint: ``1``..``9`` or ``a``/``d`` select a
joint, ``w``/``s`` move it up/down by ``joint_speed`` action units per tick while held, ``c``/``o`` close
and open the gripper joint. The action is absolute: it starts, at takeover, from the last goal sent
(``sync``) and integrates the key motion, within the robot's bounds.

If the terminal closes (EOF, hang-up) the device reports itself lost (DeviceMissingError).
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from tandem.core.errors import DeviceMissingError, DeviceNotConnectedError
from tandem.core.validate import in_range, positive
from tandem.hardware.features import ACTION_KEY, Feature
from tandem.teleop.teleoperator import DeviceContext, Event, TakeoverSettings, Teleoperator, TeleopEvents

# key bytes -> (axis, sign) for motion keys
MOTION_KEYS: dict[bytes, tuple[int, float]] = {
    b"w": (1, 1.0), b"s": (1, -1.0), b"a": (0, -1.0), b"d": (0, 1.0), b"r": (2, 1.0), b"f": (2, -1.0),
    b"\x1b[A": (1, 1.0), b"\x1b[B": (1, -1.0), b"\x1b[D": (0, -1.0), b"\x1b[C": (0, 1.0),
}
GRIPPER_KEYS: dict[bytes, float] = {b"c": 1.0, b"o": -1.0}
EVENT_KEYS: dict[bytes, str] = {
    b" ": Event.TAKEOVER.value, b"y": Event.SUCCESS.value, b"n": Event.FAILURE.value,
    b"e": Event.RERECORD.value, b"q": Event.STOP.value,
}

KEY_HELP = """\
keyboard teleop (this terminal):
  space      take over / hand back to the policy
  w / s      move +y / -y        (or arrow up / down)
  a / d      move -x / +x        (or arrow left / right)
  r / f      move up / down (z)
  c / o      close / open the gripper
  y          mark success (ends the episode)
  n          mark failure (ends the episode)
  e          re-record this episode
  q          stop the session     (Ctrl-C also stops)"""

JOINT_HELP = """\
keyboard teleop (this terminal), joint by joint:
  space      take over / hand back to the policy
  1..{n}       select a joint: {joints}
  a / d      previous / next joint  (or arrow left / right)
  w / s      move the selected joint up / down  (or arrow up / down)
  c / o      close / open the gripper{gripper}
  y          mark success (ends the episode)
  n          mark failure (ends the episode)
  e          re-record this episode
  q          stop the session     (Ctrl-C also stops)"""


@dataclass
class KeyboardConfig(TakeoverSettings):
    """Keyboard teleop settings.

    Attributes:
        type: registry key, always "keyboard".
        tty: terminal to read ("": this process's stdin; e.g. "/dev/pts/3" for another terminal).
        speed: size of a motion command, in action units (MetaWorld: 1 = 1 cm per tick).
        key_hold_s: a motion key keeps moving this long after its last press or auto-repeat (s).
        joint_speed: joint mode (arms without end-effector actions): how far a held key moves the
            selected joint per tick, in action units (SO-101: degrees; 0.5 at 30 Hz is 15 deg/s).
    """

    type: str = "keyboard"
    tty: str = ""
    speed: float = 0.5
    key_hold_s: float = 0.6
    joint_speed: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        in_range("teleop.speed", self.speed, 0.0, 1.0)
        positive("teleop.key_hold_s", self.key_hold_s)
        in_range("teleop.joint_speed", self.joint_speed, 0.0, 45.0)


EE_NAMES = ("dx", "dy", "dz", "gripper")


def uses_joints(action_feature: Feature) -> bool:
    """True if the robot's action is not a 4-D end-effector delta (joint goals: SO-101, Koch ...)."""
    shape = tuple(action_feature.shape)
    if shape != (4,):
        return bool(shape) and shape[0] > 0
    return bool(action_feature.names) and any(str(n).endswith(".pos") for n in action_feature.names)


def split_keys(data: bytes) -> list[bytes]:
    """Split raw terminal bytes into keys: arrow escape sequences stay whole, other bytes are single keys."""
    keys, i = [], 0
    while i < len(data):
        if data[i:i + 2] == b"\x1b[" and i + 2 < len(data):
            keys.append(data[i:i + 3])
            i += 3
        else:
            keys.append(data[i:i + 1])
            i += 1
    return keys


class KeyboardTeleop(Teleoperator):
    """Terminal keyboard: takeover toggle, motion keys, gripper latch, episode events."""

    name = "keyboard"

    def __init__(self, config: KeyboardConfig, context: DeviceContext | None = None) -> None:
        self.config = config
        self.context = context or DeviceContext()
        self._fd: int | None = None
        self._own_fd = False
        self._saved_attrs: list | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._events: list[str] = []
        self._motion_until = np.zeros((3, 2), np.float64)  # axis x sign(-, +): monotonic expiry time
        self._gripper = 0.0
        self._lost: str | None = None
        feature = self.context.action_feature
        self.joint_mode = uses_joints(feature)
        self._n = int(feature.shape[0]) if self.joint_mode else 4
        self._joint = 0
        self._joint_until = np.zeros((self._n, 2), np.float64)  # joint x sign(-, +): monotonic expiry
        self._target: np.ndarray | None = None
        names = [str(n) for n in (feature.names or [])]
        self._gripper_joint = next((i for i, n in enumerate(names) if "gripper" in n), None)

    # -- schema -------------------------------------------------------------------------------
    @property
    def action_features(self) -> dict[str, Feature]:
        """float32[4]: dx, dy, dz, gripper, each in [-1, 1]; in joint mode the robot's own joint goals."""
        if self.joint_mode:
            return {ACTION_KEY: self.context.action_feature}
        return {ACTION_KEY: Feature("float32", (4,), names=("dx", "dy", "dz", "gripper"),
                                    low=(-1.0,) * 4, high=(1.0,) * 4)}

    @property
    def is_connected(self) -> bool:
        """Reading the terminal and not lost."""
        return self._thread is not None and self._lost is None

    def help_text(self) -> str:
        """The key map."""
        if not self.joint_mode:
            return KEY_HELP
        names = [str(n).removesuffix(".pos") for n in (self.context.action_feature.names or range(self._n))]
        joints = ", ".join(f"{i + 1} {n}" for i, n in enumerate(names[:9]))
        gripper = "" if self._gripper_joint is not None else " (this robot has no gripper joint)"
        return JOINT_HELP.format(n=min(self._n, 9), joints=joints, gripper=gripper)

    # -- lifecycle ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Put the terminal in cbreak mode and start the reader thread."""
        import termios
        import tty

        if self._thread is not None:
            self.disconnect()
        if self.config.tty:
            try:
                fd = os.open(self.config.tty, os.O_RDONLY | os.O_NOCTTY)
            except OSError as exc:
                raise DeviceMissingError(f"teleop.tty={self.config.tty!r} cannot be opened: {exc}") from exc
            own = True
        else:
            try:
                fd, own = sys.stdin.fileno(), False
            except (AttributeError, OSError, ValueError):  # stdin replaced or closed
                fd, own = -1, False
        if fd < 0 or not os.isatty(fd):
            if own:
                os.close(fd)
            raise DeviceMissingError(
                "teleop=keyboard needs a terminal on stdin (run tandem in a terminal or over ssh -t, "
                "or set teleop.tty=/dev/pts/N)"
            )
        self._saved_attrs = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._fd, self._own_fd = fd, own
        self._lost = None
        self._events.clear()
        self._motion_until[:] = 0
        self._halt.clear()
        self._thread = threading.Thread(target=self._read_loop, name="keyboard-teleop", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        """Stop the reader and restore the terminal. Safe to call twice."""
        import termios

        thread, self._thread = self._thread, None
        self._halt.set()
        if thread is not None:
            thread.join(timeout=1.0)
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self._saved_attrs is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, self._saved_attrs)
        except (OSError, termios.error):
            pass  # the terminal is gone: nothing to restore
        finally:
            self._saved_attrs = None
            if self._own_fd:
                os.close(fd)

    # -- per tick -----------------------------------------------------------------------------
    def get_events(self) -> TeleopEvents:
        """Key events since the last poll (takeover toggles, success, failure, rerecord, stop)."""
        self._check()
        with self._lock:
            events, self._events = tuple(self._events), []
        return TeleopEvents(events=events)

    def get_action(self) -> np.ndarray:
        """Current motion (keys pressed in the last ``key_hold_s``) and the latched gripper."""
        self._check()
        now = time.monotonic()
        if self.joint_mode:
            return self._joint_action(now)
        with self._lock:
            active = self._motion_until > now
            gripper = self._gripper
        xyz = (active[:, 1].astype(np.float32) - active[:, 0].astype(np.float32)) * self.config.speed
        return np.array([xyz[0], xyz[1], xyz[2], gripper], np.float32)

    def sync(self, last_action: np.ndarray) -> None:
        """Start the gripper latch from the robot's current gripper command (a held object stays held);
        in joint mode, start the joint goals from the last goal sent."""
        if self.joint_mode:
            with self._lock:
                self._target = np.asarray(last_action, np.float32).reshape(-1).copy()
                self._joint_until[:] = 0
            return
        if last_action.shape[0] >= 4:
            with self._lock:
                self._gripper = float(np.clip(last_action[3], -1.0, 1.0))

    def reset(self) -> None:
        """New episode: no motion, gripper neutral, drop stale events."""
        with self._lock:
            self._motion_until[:] = 0
            self._joint_until[:] = 0
            self._target = None
            self._gripper = 0.0
            self._events.clear()

    # -- internals ----------------------------------------------------------------------------
    def _check(self) -> None:
        if self._lost is not None:
            raise DeviceMissingError(f"keyboard terminal lost: {self._lost}")
        if self._thread is None:
            raise DeviceNotConnectedError("keyboard teleop is not connected. Run .connect() first.")

    def _read_loop(self) -> None:
        fd = self._fd
        while not self._halt.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(fd, 64)
            except (OSError, ValueError) as exc:
                self._lost = str(exc) or type(exc).__name__
                return
            if not data:
                self._lost = "end of input"
                return
            self._handle(data)

    def _joint_action(self, now: float) -> np.ndarray:
        """The joint goals: the synced start plus every tick's held-key motion, within the bounds."""
        feature = self.context.action_feature
        with self._lock:
            if self._target is None:  # get_action before any takeover: start from the bounds' middle
                self._target = np.zeros(self._n, np.float32)
            active = self._joint_until > now
            step = (active[:, 1].astype(np.float32) - active[:, 0].astype(np.float32)) * self.config.joint_speed
            low, high = feature.bounds()
            self._target = np.clip(self._target + step, low, high).astype(np.float32)
            return self._target.copy()

    def _handle_joint_key(self, key: bytes, now: float) -> bool:
        """Joint mode's keys; False if ``key`` is not one of them."""
        hold = now + self.config.key_hold_s
        if len(key) == 1 and key.isdigit() and 1 <= int(key) <= min(self._n, 9):
            self._joint = int(key) - 1
        elif key in (b"a", b"\x1b[D"):
            self._joint = (self._joint - 1) % self._n
        elif key in (b"d", b"\x1b[C"):
            self._joint = (self._joint + 1) % self._n
        elif key in (b"w", b"\x1b[A", b"s", b"\x1b[B"):
            up = key in (b"w", b"\x1b[A")
            self._joint_until[self._joint, int(up)] = hold
            self._joint_until[self._joint, int(not up)] = 0.0
        elif key in GRIPPER_KEYS and self._gripper_joint is not None:
            opening = key == b"o"  # lerobot grippers: 0 = closed end of the range, 100 = open
            self._joint_until[self._gripper_joint, int(opening)] = hold
            self._joint_until[self._gripper_joint, int(not opening)] = 0.0
        else:
            return False
        return True

    def _handle(self, data: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            for key in split_keys(data):
                key = key.lower() if len(key) == 1 else key
                if self.joint_mode and self._handle_joint_key(key, now):
                    continue
                if key in MOTION_KEYS:
                    axis, sign = MOTION_KEYS[key]
                    self._motion_until[axis, int(sign > 0)] = now + self.config.key_hold_s
                    self._motion_until[axis, int(sign < 0)] = 0.0  # the opposite direction stops
                elif key in GRIPPER_KEYS:
                    self._gripper = GRIPPER_KEYS[key]
                elif key in EVENT_KEYS:
                    self._events.append(EVENT_KEYS[key])
