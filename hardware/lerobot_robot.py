"""A real arm supported by lerobot (SO-100/101, Koch, ...) through the ``Robot`` contract.

lerobot's own robot class does the work: the config is decoded into lerobot's ``RobotConfig`` subclass
for ``robot_type`` and the robot is built by ``lerobot.robots.make_robot_from_config``. This adapter
maps lerobot's flat dicts to tandem's arrays:

- ``observation.state``: float32[S], the values of lerobot's scalar observation features in the order
  of ``observation_features`` (SO-101: ``shoulder_pan.pos, shoulder_lift.pos, elbow_flex.pos,
  wrist_flex.pos, wrist_roll.pos, gripper.pos``);
- ``observation.images.<camera>``: uint8[H, W, 3] for each configured lerobot camera;
- action: float32[A] in the order of lerobot's ``action_features`` (the same joint goal positions).
  ``send_action`` returns the goal lerobot actually wrote, after its ``max_relative_target`` clipping.

Units (lerobot's motor normalisation, from the calibration file): joints whose motor uses
``MotorNormMode.DEGREES`` are in degrees around the calibrated range's middle (SO-100/101 with
``use_degrees=True``, lerobot's default for them); ``RANGE_M100_100`` joints are in -100..100 % of the
calibrated range (Koch by default, SO-10x with ``options: {use_degrees: false}``); grippers use
``RANGE_0_100`` (0 = closed end of the range, 100 = open end). The action bounds are these ranges
(degrees: the calibrated range converted to degrees, or +-180 without a calibration file).

Calibration: lerobot's calibration file ``<calibration_dir>/<id>.json`` (default
``~/.cache/huggingface/lerobot/calibration/robots/<robot>/<id>.json``, written by
``lerobot-calibrate``) is used without prompting: if the motors disagree with it, the file is written
to the motors (what lerobot does when you press ENTER at its prompt). Without a file, ``connect()``
fails with the ``lerobot-calibrate`` command to run, unless ``calibrate: true`` allows lerobot's
interactive calibration.

Building lerobot's robot (first schema read or ``connect()``) imports lerobot (and torch) and creates
the calibration folder; no device is opened before ``connect()``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError, DeviceAlreadyConnectedError, DeviceMissingError, TandemError
from tandem.core.validate import in_range, non_negative, one_of
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.hardware.robot import EpisodeStatus, Robot

log = logging.getLogger(__name__)

# lerobot robot type -> module under lerobot.robots that registers its config class.
ROBOT_MODULES: dict[str, str] = {
    "so100_follower": "so_follower",
    "so101_follower": "so_follower",
    "koch_follower": "koch_follower",
    "omx_follower": "omx_follower",
    "lekiwi": "lekiwi",
    "hope_jr_arm": "hope_jr",
    "hope_jr_hand": "hope_jr",
    "bi_so_follower": "bi_so_follower",
    "reachy2": "reachy2",
    "openarm_follower": "openarm_follower",
    "bi_openarm_follower": "bi_openarm_follower",
}

# lerobot camera type -> module that registers its config class.
CAMERA_MODULES: dict[str, str] = {
    "opencv": "lerobot.cameras.opencv.configuration_opencv",
    "intelrealsense": "lerobot.cameras.realsense.configuration_realsense",
    "zmq": "lerobot.cameras.zmq.configuration_zmq",
    "reachy2_camera": "lerobot.cameras.reachy2_camera.configuration_reachy2_camera",
}


class CalibrationError(TandemError, RuntimeError):
    """The arm has no calibration file and interactive calibration is not allowed."""


@dataclass
class LeRobotRobotConfig:
    """A lerobot-supported robot.

    Attributes:
        type: registry key, always "lerobot".
        robot_type: lerobot robot type ("so101_follower", "so100_follower", "koch_follower", ...).
        port: serial port of the motor bus ("" for robots without one). Find it with
            ``lerobot-find-port``.
        id: the robot's id; names its calibration file (use the id given to ``lerobot-calibrate``).
        cameras: camera name -> lerobot camera config as a plain dict, e.g.
            ``{"front": {"type": "opencv", "index_or_path": 0, "width": 640, "height": 480, "fps": 30}}``.
        max_relative_target: lerobot's per-tick cap on |goal - present| in action units, one number
            or motor name -> number (None: no cap).
        calibration_dir: folder of calibration files ("" for lerobot's default).
        calibrate: allow lerobot's interactive calibration (prompts on the terminal) when no file exists.
        options: other fields of lerobot's robot config, e.g. ``{"use_degrees": false}``,
            ``{"disable_torque_on_disconnect": false}``.
        home_pose: joint goal float32[A] that ``reset()`` moves to (empty: stay where the arm is).
        reset_s: seconds the move to ``home_pose`` takes (linear interpolation at ``fps``).
        instruction: the language instruction of the task.
        fps: control rate in Hz.
        max_episode_steps: episode time limit in ticks.
        read_retries: a failed bus read (lerobot's ``ConnectionError``: no or a corrupt status packet)
            is retried up to this many times while the tick's read budget lasts (half a tick,
            ``0.5 / fps`` s); only then does the read fail (0: no retry).
    """

    type: str = "lerobot"
    robot_type: str = "so101_follower"
    port: str = "/dev/ttyACM0"
    id: str = "follower_arm"
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_relative_target: Any = None
    calibration_dir: str = ""
    calibrate: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    home_pose: list[float] = field(default_factory=list)
    reset_s: float = 2.0
    instruction: str = "pick up the cube and put it in the box"
    fps: float = 30.0
    max_episode_steps: int = 900
    read_retries: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.robot_type, str) or not self.robot_type:
            raise ConfigError(
                "robot.robot_type", self.robot_type, f"a lerobot robot type, e.g. {sorted(ROBOT_MODULES)}"
            )
        if not isinstance(self.port, str):
            raise ConfigError("robot.port", self.port, "a serial port path such as /dev/ttyACM0 (or '')")
        if not isinstance(self.id, str) or not self.id:
            raise ConfigError("robot.id", self.id, "the non-empty id used with lerobot-calibrate")
        self.cameras = {name: dict(cam) for name, cam in dict(self.cameras).items()}
        for name, cam in self.cameras.items():
            if not name or "." in name or "/" in name:
                raise ConfigError("robot.cameras", name, "camera names without '.' or '/'")
            if "type" not in cam:
                raise ConfigError(f"robot.cameras.{name}.type", None, f"one of {sorted(CAMERA_MODULES)}")
            missing = [k for k in ("width", "height", "fps") if cam.get(k) is None]
            if missing:
                raise ConfigError(f"robot.cameras.{name}", cam, f"needs {missing} (lerobot requires them)")
        self.max_relative_target = _check_max_relative_target(self.max_relative_target)
        self.options = dict(self.options)
        for key in ("type", "port", "id", "cameras", "max_relative_target", "calibration_dir"):
            if key in self.options:
                raise ConfigError(f"robot.options.{key}", self.options[key], f"set robot.{key} instead")
        self.home_pose = [float(v) for v in self.home_pose]
        non_negative("robot.reset_s", self.reset_s)
        in_range("robot.fps", self.fps, 0.1, 1000)
        in_range("robot.max_episode_steps", self.max_episode_steps, 1, 10_000_000)
        in_range("robot.read_retries", self.read_retries, 0, 100)


def _check_max_relative_target(value: Any) -> float | dict[str, float] | None:
    """None, a positive float, or motor -> positive float (lerobot rejects ints, so cast)."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = {str(k): float(v) for k, v in value.items()}
        if not all(v > 0 for v in out.values()):
            raise ConfigError("robot.max_relative_target", value, "positive numbers per motor")
        return out
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            "robot.max_relative_target", value, "null, a positive number, or motor -> positive number"
        )
    return float(value)


def _import_lerobot_config(robot_type: str, cameras: dict[str, dict]) -> Any:
    """Import the modules that register ``robot_type`` and the camera types; return RobotConfig."""
    from lerobot.robots import RobotConfig

    module = ROBOT_MODULES.get(robot_type, robot_type)
    try:
        importlib.import_module(f"lerobot.robots.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"lerobot.robots.{module}":
            raise  # the robot's module exists but one of its dependencies is missing
        from lerobot.utils.import_utils import register_third_party_plugins

        register_third_party_plugins()
    known = RobotConfig.get_known_choices()
    if robot_type not in known:
        one_of("robot.robot_type", robot_type, set(known) | set(ROBOT_MODULES))
    for name, cam in cameras.items():
        cam_type = cam["type"]
        if cam_type not in CAMERA_MODULES:
            raise ConfigError(f"robot.cameras.{name}.type", cam_type, f"one of {sorted(CAMERA_MODULES)}")
        importlib.import_module(CAMERA_MODULES[cam_type])
    return RobotConfig


def build_lerobot_robot(config: LeRobotRobotConfig) -> Any:
    """lerobot's robot object for ``config`` (not connected; loads the calibration file if any)."""
    import draccus
    from lerobot.robots import make_robot_from_config

    robot_config_cls = _import_lerobot_config(config.robot_type, config.cameras)
    values: dict[str, Any] = {"type": config.robot_type, "id": config.id, **config.options}
    if config.port:
        values["port"] = config.port
    if config.cameras:
        values["cameras"] = config.cameras
    if config.max_relative_target is not None:
        values["max_relative_target"] = config.max_relative_target
    if config.calibration_dir:
        values["calibration_dir"] = config.calibration_dir
    try:
        lr_config = draccus.decode(robot_config_cls, values)
    except Exception as exc:  # draccus.DecodingError, lerobot's own ValueErrors
        raise ConfigError("robot", values, f"a valid lerobot {config.robot_type} config: {exc}") from exc
    return make_robot_from_config(lr_config)


def _joint_bounds(robot: Any, key: str) -> tuple[float, float]:
    """Bounds of one action key from its motor's normalisation mode and calibration."""
    from lerobot.motors import MotorNormMode

    bus = getattr(robot, "bus", None)
    motor = key.removesuffix(".pos")
    if bus is None or not key.endswith(".pos") or motor not in bus.motors:
        return -math.inf, math.inf
    mode = bus.motors[motor].norm_mode
    if mode is MotorNormMode.RANGE_M100_100:
        return -100.0, 100.0
    if mode is MotorNormMode.RANGE_0_100:
        return 0.0, 100.0
    if mode is MotorNormMode.DEGREES:
        cal = (bus.calibration or {}).get(motor)
        if cal is None:
            return -180.0, 180.0
        mid = (cal.range_min + cal.range_max) / 2
        resolution = bus.model_resolution_table[bus.motors[motor].model] - 1
        return (cal.range_min - mid) * 360 / resolution, (cal.range_max - mid) * 360 / resolution
    return -math.inf, math.inf


def _calibrate_from_file(robot: Any, config: LeRobotRobotConfig) -> None:
    """Replacement for lerobot's interactive ``calibrate()``: write the calibration file to the motors."""
    if not robot.calibration:
        raise CalibrationError(
            f"{config.robot_type} id={config.id!r} has no calibration file at {robot.calibration_fpath}. "
            f"Calibrate it once with: lerobot-calibrate --robot.type={config.robot_type} "
            f"--robot.port={config.port} --robot.id={config.id}  (or set robot.calibrate=true to be prompted)"
        )
    log.info("writing calibration %s to the motors of %s", robot.calibration_fpath, config.id)
    robot.bus.write_calibration(robot.calibration)


def _missing_port_message(port: str, detail: str = "") -> str:
    return (
        f"robot.port={port!r}: {detail or 'no such device'}. Is the arm's USB cable plugged in and its "
        "power supply on? Find the port with `lerobot-find-port` (unplug the cable when asked; it names "
        "the port that disappeared), then set robot.port=<that port>."
    )


class LeRobotRobot(Robot):
    """lerobot robot through the ``Robot`` contract (see the module docstring)."""

    def __init__(self, config: LeRobotRobotConfig) -> None:
        self.config = config
        self.name = f"lerobot/{config.robot_type}/{config.id}"
        self._robot: Any = None
        self._state: np.ndarray | None = None
        self._capture_time: float | None = None
        self._faults = {"read_retries": 0, "read_recovered": 0, "read_failures": 0}

    # -- lerobot object -----------------------------------------------------------------------
    @property
    def lerobot_robot(self) -> Any:
        """lerobot's robot object (built on first use; no device is opened)."""
        if self._robot is None:
            self._robot = build_lerobot_robot(self.config)
        return self._robot

    @functools.cached_property
    def _keys(self) -> tuple[list[str], dict[str, tuple[int, ...]], list[str]]:
        """(state keys, camera name -> (H, W, 3), action keys), in lerobot's order."""
        obs_ft = self.lerobot_robot.observation_features
        state = [k for k, v in obs_ft.items() if not isinstance(v, tuple)]
        images = {
            k: tuple(int(s) for s in v) for k, v in obs_ft.items() if isinstance(v, tuple) and len(v) == 3
        }
        actions = list(self.lerobot_robot.action_features)
        return state, images, actions

    # -- schema -------------------------------------------------------------------------------
    @property
    def observation_features(self) -> dict[str, Feature]:
        """Joint state plus one image per camera; readable before ``connect()``."""
        state, images, _ = self._keys
        feats = {STATE_KEY: Feature("float32", (len(state),), names=tuple(state))}
        for cam, shape in images.items():
            feats[IMAGE_PREFIX + cam] = Feature("uint8", shape)
        return feats

    @property
    def action_feature(self) -> Feature:
        """Joint goal positions, bounded by the motors' normalised ranges (see the module docstring)."""
        _, _, actions = self._keys
        bounds = [_joint_bounds(self.lerobot_robot, k) for k in actions]
        return Feature(
            "float32",
            (len(actions),),
            names=tuple(actions),
            low=tuple(float(b[0]) for b in bounds),
            high=tuple(float(b[1]) for b in bounds),
        )

    @property
    def task(self) -> str:
        """The configured language instruction."""
        return self.config.instruction

    @property
    def is_connected(self) -> bool:
        """lerobot's own view: the bus and every camera are connected."""
        return self._robot is not None and bool(self._robot.is_connected)

    # -- lifecycle ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the motor bus and cameras; apply the calibration file; configure the motors.

        Raises:
            DeviceMissingError: the serial port does not exist or the motors do not answer.
            CalibrationError: no calibration file and ``calibrate`` is false.
        """
        if self.is_connected:
            raise DeviceAlreadyConnectedError(f"{self.name} is already connected")
        port = self.config.port
        if port.startswith("/") and not os.path.exists(port):
            raise DeviceMissingError(_missing_port_message(port))
        robot = self.lerobot_robot
        if not self.config.calibrate:
            robot.calibrate = functools.partial(_calibrate_from_file, robot, self.config)
        try:
            robot.connect(calibrate=True)
        except ConnectionError as exc:
            self._cleanup_after_failed_connect()
            raise DeviceMissingError(
                _missing_port_message(port, f"lerobot could not connect ({exc})")
            ) from exc
        except BaseException:
            self._cleanup_after_failed_connect()
            raise
        self._state = None

    def _cleanup_after_failed_connect(self) -> None:
        try:
            self.disconnect()
        except Exception:  # the connect error is the one to report
            log.exception("cleanup after a failed connect of %s", self.name)

    def disconnect(self) -> None:
        """Disable torque (per lerobot's config) and close the bus and cameras.

        Safe to call twice, before ``connect()`` and after a failed or partial ``connect()``: whatever is
        still open is closed even if an earlier step fails; the first failure is raised at the end.
        """
        robot = self._robot
        self._state = None
        if robot is None:
            return
        errors: list[BaseException] = []
        if robot.is_connected:
            try:
                robot.disconnect()
            except Exception as exc:
                errors.append(exc)
        bus = getattr(robot, "bus", None)
        if bus is not None and bus.is_connected:
            try:
                bus.disconnect(getattr(robot.config, "disable_torque_on_disconnect", True))
            except Exception as exc:
                errors.append(exc)
            if bus.is_connected:  # torque could not be disabled: at least release the port
                try:
                    bus.disconnect(disable_torque=False)
                except Exception as exc:
                    errors.append(exc)
        for cam in getattr(robot, "cameras", {}).values():
            if cam.is_connected:
                try:
                    cam.disconnect()
                except Exception as exc:
                    errors.append(exc)
        for exc in errors:
            log.error("disconnecting %s: %r", self.name, exc)
        if errors:
            raise errors[0]

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: move to ``home_pose`` over ``reset_s`` seconds, if one is configured.

        ``seed`` is ignored (a real scene is reset by a person).
        """
        self._require_connected()
        self._state = None
        if not self.config.home_pose:
            return
        home = np.asarray(self.config.home_pose, np.float32)
        _, _, actions = self._keys
        if home.shape != (len(actions),):
            raise ConfigError(
                "robot.home_pose", self.config.home_pose, f"{len(actions)} values, one per {actions}"
            )
        start = self.hold_action(None)
        steps = max(1, int(round(self.config.reset_s * self.config.fps)))
        for i in range(1, steps + 1):
            t0 = time.perf_counter()
            self.send_action(start + (home - start) * (i / steps))
            if i < steps:
                time.sleep(max(0.0, 1.0 / self.config.fps - (time.perf_counter() - t0)))
        self._state = None

    # -- per tick -----------------------------------------------------------------------------
    def get_observation(self) -> dict[str, np.ndarray]:
        """Joint positions (float32[S]) and camera frames (uint8[H, W, 3]).

        A transient bus error is retried (``read_retries`` times within half a tick, counted in
        :meth:`fault_stats`); a read that still fails raises lerobot's error.
        """
        self._require_connected()
        state_keys, images, _ = self._keys
        raw = self._read_with_retries()
        self._capture_time = self._oldest_frame_time(time.time())
        state = np.asarray([raw[k] for k in state_keys], np.float32)
        self._state = state
        out = {STATE_KEY: state.copy()}
        for cam in images:
            out[IMAGE_PREFIX + cam] = np.ascontiguousarray(raw[cam], dtype=np.uint8)
        return out

    def _read_with_retries(self) -> dict[str, Any]:
        budget_end = time.monotonic() + 0.5 / self.config.fps
        attempt = 0
        while True:
            try:
                raw = self._robot.get_observation()
            except (ConnectionError, TimeoutError) as exc:
                if attempt >= self.config.read_retries or time.monotonic() >= budget_end:
                    self._faults["read_failures"] += 1
                    raise
                attempt += 1
                self._faults["read_retries"] += 1
                log.warning("%s: bus read failed (%s); retry %d of %d", self.name, exc, attempt,
                            self.config.read_retries)
                continue
            if attempt:
                self._faults["read_recovered"] += 1
            return raw

    def _oldest_frame_time(self, now: float) -> float | None:
        """Wall time of the oldest camera frame just read (lerobot stamps frames with perf_counter)."""
        stamps = [getattr(cam, "latest_timestamp", None) for cam in getattr(self._robot, "cameras", {}).values()]
        stamps = [t for t in stamps if isinstance(t, float)]
        if not stamps:
            return None
        return now - (time.perf_counter() - min(stamps))

    def capture_time(self) -> float | None:
        """When the oldest camera frame of the last observation was captured (None without cameras)."""
        return self._capture_time

    def fault_stats(self) -> dict[str, int]:
        """``read_retries`` (failed reads retried), ``read_recovered`` (reads that succeeded on a retry),
        ``read_failures`` (reads that failed after their retries)."""
        return dict(self._faults)

    def controlled_stop(self, hold: np.ndarray | None, hold_s: float) -> str:
        """Hold the arm with torque on for ``hold_s`` seconds (the caller then disconnects, which turns
        the torque off unless ``disable_torque_on_disconnect`` is false). The hold goal is ``hold`` (the
        last safe goal) or the last measured position; if the bus cannot take it, the motors keep their
        last goal, still powered, for the same time."""
        if not self.is_connected:
            return "none"
        result = "held"
        goal = hold if hold is not None else self._state
        if goal is not None:
            try:
                self.send_action(np.asarray(goal, np.float32))
            except Exception as exc:  # noqa: BLE001 - the bus may be what failed; the motors keep their goal
                log.error("%s: could not send the hold goal (%s); the motors keep their last goal", self.name, exc)
                result = "hold_failed"
        if hold_s > 0:
            log.warning("%s: holding the arm with torque on for %.1f s, then the torque goes off: support the arm",
                        self.name, hold_s)
            time.sleep(hold_s)
        return result

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Send joint goals float32[A]; returns the goals lerobot wrote (after max_relative_target)."""
        self._require_connected()
        _, _, keys = self._keys
        action = np.asarray(action, np.float32).reshape(-1)
        if action.shape != (len(keys),):
            raise ValueError(
                f"{self.name} takes {len(keys)} action values ({keys}), got shape {action.shape}"
            )
        goal = {k: float(v) for k, v in zip(keys, action, strict=True)}
        sent = self._robot.send_action(goal)
        return np.asarray([sent.get(k, goal[k]) for k in keys], np.float32)

    def episode_status(self) -> EpisodeStatus:
        """A real robot knows no reward or success by itself."""
        return EpisodeStatus()

    def hold_action(self, last_sent: np.ndarray | None) -> np.ndarray:
        """The last goal sent (a position-controlled arm holds it); before any, the current joint positions
        (read now if no observation was taken this episode).

        Holding at the *measured* position on every tick would let the arm creep: each hold would
        re-command the position it sagged to (or the encoder rounded to), one step further each tick.
        """
        if last_sent is not None:
            return np.asarray(last_sent, np.float32).copy()
        if not self.is_connected:
            return super().hold_action(last_sent)
        if self._state is None:
            self.get_observation()
        state_keys, _, action_keys = self._keys
        fallback = super().hold_action(last_sent)
        index = {k: i for i, k in enumerate(state_keys)}
        return np.asarray(
            [self._state[index[k]] if k in index else fallback[j] for j, k in enumerate(action_keys)],
            np.float32,
        )
