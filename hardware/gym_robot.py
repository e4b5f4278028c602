"""Any gymnasium environment with (dict) observations and a continuous action as a ``Robot``.

The default config is PushT (``gym_pusht/PushT-v0``, ``obs_type="pixels_agent_pos"``):

- ``observation.state``: float32[2], the agent's xy position in PushT's 512x512 pixel frame;
- ``observation.images.top``: uint8[96, 96, 3], the top-down render;
- action: float32[2], the absolute xy target of the agent's PD controller, in [0, 512] (pixels);
- success: the block covers more than 95% of the target (the episode then terminates).

Mapping: ``state_keys`` lists observation keys whose values are flattened and concatenated (in that
order) into ``observation.state``; ``image_keys`` maps an observation key holding an (H, W, 3) uint8
image to a camera name, giving ``observation.images.<camera>``. Nested dict observations are addressed
as ``"outer/inner"``; a non-dict observation is available under the key ``"obs"``.

Schemas are read from the env's spaces. Gymnasium has no way to get the spaces without constructing
the env, so the first schema read before ``connect()`` builds a throw-away env, reads its spaces and
closes it (for PushT: a few milliseconds, no window, no rendering); the spaces are cached.

The env is created with ``gym.make(env_id, **env_kwargs)``; an ``env_id`` of the form
``"namespace/Name-v0"`` first imports the module ``namespace`` if it exists (``import gym_pusht``
registers PushT), and gymnasium's own ``"module:namespace/Name-v0"`` form works too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, one_of, positive
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.hardware.robot import EpisodeStatus, Robot

# The key a non-dict observation is exposed under.
PLAIN_OBS_KEY = "obs"
# info keys that carry the task's success flag, in the order they are looked up (``robot.success_keys``'s
# default): gymnasium-robotics' "is_success", gym-pusht's and MetaWorld's "success", gym-hil's "succeed".
SUCCESS_INFO_KEYS = ("is_success", "success", "succeed")
ACTION_MODES = ("position", "delta")


@dataclass
class GymRobotConfig:
    """A gymnasium environment driven through the Robot contract.

    Attributes:
        type: registry key, always "gym".
        env_id: gymnasium id, e.g. "gym_pusht/PushT-v0".
        env_kwargs: keyword arguments of ``gym.make`` (PushT: obs_type, observation_width, ...).
        instruction: the language instruction of the task.
        state_keys: observation keys concatenated (flattened, float32) into ``observation.state``.
        image_keys: observation key -> camera name, giving ``observation.images.<camera>``.
        hold_key: observation key whose current value is the action that keeps the agent still
            (position-controlled envs, e.g. PushT's "agent_pos"); "" to hold the last sent action.
        action_mode: "position" (the action is a target: hold = ``hold_key`` or the last action) or
            "delta" (end-effector deltas or velocities, e.g. gym-hil: hold = zero motion, since
            repeating the last action would keep the robot moving; ``hold_key`` is not used).
        success_keys: ``info`` keys read, in order, for the task's success flag (the first present
            one counts); the defaults cover gymnasium-robotics, gym-pusht and gym-hil ("succeed").
        fps: control rate in Hz (PushT: 10, its native rate).
        realtime: pace ticks on the wall clock (False: as fast as possible, for tests and training).
        max_episode_steps: episode time limit in ticks (also passed to ``gym.make``).
    """

    type: str = "gym"
    env_id: str = "gym_pusht/PushT-v0"
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"obs_type": "pixels_agent_pos"})
    instruction: str = "push the T-shaped block onto the target"
    state_keys: list[str] = field(default_factory=lambda: ["agent_pos"])
    image_keys: dict[str, str] = field(default_factory=lambda: {"pixels": "top"})
    hold_key: str = "agent_pos"
    action_mode: str = "position"
    success_keys: list[str] = field(default_factory=lambda: list(SUCCESS_INFO_KEYS))
    fps: float = 10.0
    realtime: bool = True
    max_episode_steps: int = 300

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id.strip():
            raise ConfigError("robot.env_id", self.env_id, "a gymnasium id such as 'gym_pusht/PushT-v0'")
        if not isinstance(self.env_kwargs, dict):
            raise ConfigError("robot.env_kwargs", self.env_kwargs, "a mapping of gym.make keyword arguments")
        self.env_kwargs = dict(self.env_kwargs)
        self.state_keys = list(self.state_keys)
        self.image_keys = dict(self.image_keys)
        if not self.state_keys and not self.image_keys:
            raise ConfigError(
                "robot.state_keys", self.state_keys, "state_keys and image_keys cannot both be empty"
            )
        for key in self.state_keys:
            if not isinstance(key, str) or not key:
                raise ConfigError("robot.state_keys", self.state_keys, "non-empty observation key strings")
        if len(set(self.state_keys)) != len(self.state_keys):
            raise ConfigError("robot.state_keys", self.state_keys, "each key at most once")
        cameras = list(self.image_keys.values())
        for key, cam in self.image_keys.items():
            if not isinstance(cam, str) or not cam or "." in cam or "/" in cam:
                raise ConfigError(f"robot.image_keys.{key}", cam, "a camera name without '.' or '/'")
        if len(set(cameras)) != len(cameras):
            raise ConfigError("robot.image_keys", self.image_keys, "distinct camera names")
        one_of("robot.action_mode", self.action_mode, ACTION_MODES)
        self.success_keys = list(self.success_keys)
        if not self.success_keys or not all(isinstance(k, str) and k for k in self.success_keys):
            raise ConfigError("robot.success_keys", self.success_keys,
                              f"a non-empty list of info keys, e.g. {list(SUCCESS_INFO_KEYS)}")
        positive("robot.fps", self.fps)
        in_range("robot.max_episode_steps", self.max_episode_steps, 1, 10_000_000)


def _lookup(tree: Any, key: str) -> Any:
    """``tree["a"]["b"]`` for ``key="a/b"``; a non-dict ``tree`` is ``{"obs": tree}``."""
    node = tree if isinstance(tree, dict) or hasattr(tree, "spaces") else {PLAIN_OBS_KEY: tree}
    for part in key.split("/"):
        children = node.spaces if hasattr(node, "spaces") and isinstance(node.spaces, dict) else node
        node = children[part]
    return node


def _leaf_keys(space: Any, prefix: str = "") -> list[str]:
    """All addressable observation keys of a (possibly nested) gymnasium space."""
    children = getattr(space, "spaces", None)
    if not isinstance(children, dict):
        return [prefix or PLAIN_OBS_KEY]
    keys: list[str] = []
    for name, sub in children.items():
        keys += _leaf_keys(sub, f"{prefix}/{name}" if prefix else name)
    return keys


def _space_for(obs_space: Any, key: str, field_name: str) -> Any:
    try:
        return _lookup(obs_space, key)
    except (KeyError, TypeError):
        raise ConfigError(
            field_name, key, f"one of the env's observation keys {_leaf_keys(obs_space)}"
        ) from None


def _truthy(value: Any) -> bool:
    return bool(np.all(np.asarray(value, np.float64) > 0.5))


class GymRobot(Robot):
    simulated = True
    """A gymnasium env through the ``Robot`` contract (see the module docstring for the mapping)."""

    def __init__(self, config: GymRobotConfig) -> None:
        self.config = config
        self.name = f"gym/{config.env_id}"
        self._env: Any = None
        self._spaces: tuple[Any, Any] | None = None
        self._obs: Any = None
        self._status = EpisodeStatus()
        self._low = self._high = np.zeros(0, np.float32)

    # -- env construction ---------------------------------------------------------------------
    def _make_env(self) -> Any:
        """``gym.make`` the configured env (headless: SDL's dummy video driver for pygame envs)."""
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        import gymnasium as gym

        env_id = self.config.env_id
        with warnings.catch_warnings():  # pygame (gym-pusht's renderer) warns about pkg_resources on import
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            if ":" not in env_id and "/" in env_id:
                namespace = env_id.split("/", 1)[0]
                if importlib.util.find_spec(namespace) is not None:
                    importlib.import_module(namespace)  # registers the namespace's envs
            try:
                return gym.make(
                    env_id, max_episode_steps=self.config.max_episode_steps, **self.config.env_kwargs
                )
            except gym.error.Error as exc:
                raise ConfigError("robot.env_id", env_id, f"a registered gymnasium id ({exc})") from exc

    def _get_spaces(self) -> tuple[Any, Any]:
        """(observation_space, action_space), from the live env or a cached probe env."""
        if self._env is not None:
            return self._env.observation_space, self._env.action_space
        if self._spaces is None:
            env = self._make_env()
            try:
                spaces = (env.observation_space, env.action_space)
            finally:
                env.close()
            self._check_spaces(*spaces)
            self._spaces = spaces
        return self._spaces

    def _check_spaces(self, obs_space: Any, act_space: Any) -> None:
        from gymnasium import spaces

        if not isinstance(act_space, spaces.Box):
            raise ConfigError(
                "robot.env_id",
                self.config.env_id,
                f"an env with a continuous Box action space, not {act_space}",
            )
        for key in self.config.state_keys:
            sub = _space_for(obs_space, key, "robot.state_keys")
            if not isinstance(sub, spaces.Box):
                raise ConfigError("robot.state_keys", key, f"a Box observation, not {sub}")
        for key in self.config.image_keys:
            sub = _space_for(obs_space, key, "robot.image_keys")
            if not (
                isinstance(sub, spaces.Box)
                and sub.dtype == np.uint8
                and len(sub.shape) == 3
                and sub.shape[2] == 3
            ):
                raise ConfigError("robot.image_keys", key, f"an (H, W, 3) uint8 image observation, not {sub}")
        if self.config.hold_key and self.config.action_mode == "position":
            sub = _space_for(obs_space, self.config.hold_key, "robot.hold_key")
            if int(np.prod(sub.shape)) != int(np.prod(act_space.shape)):
                raise ConfigError(
                    "robot.hold_key",
                    self.config.hold_key,
                    f"an observation of the action's size {act_space.shape}, not {sub.shape}",
                )

    # -- schema -------------------------------------------------------------------------------
    @property
    def observation_features(self) -> dict[str, Feature]:
        """``observation.state`` (if ``state_keys``) and one image per ``image_keys`` entry."""
        obs_space, _ = self._get_spaces()
        feats: dict[str, Feature] = {}
        if self.config.state_keys:
            names: list[str] = []
            for key in self.config.state_keys:
                size = int(np.prod(_lookup(obs_space, key).shape))
                names += [key] if size == 1 else [f"{key}.{i}" for i in range(size)]
            feats[STATE_KEY] = Feature("float32", (len(names),), names=tuple(names))
        for key, cam in self.config.image_keys.items():
            feats[IMAGE_PREFIX + cam] = Feature("uint8", tuple(int(s) for s in _lookup(obs_space, key).shape))
        return feats

    @property
    def action_feature(self) -> Feature:
        """float32[A], bounded by the env's Box action space (PushT: xy target in [0, 512] pixels)."""
        _, act_space = self._get_spaces()
        low = np.asarray(act_space.low, np.float64).reshape(-1)
        high = np.asarray(act_space.high, np.float64).reshape(-1)
        return Feature(
            "float32", (low.size,), low=tuple(float(v) for v in low), high=tuple(float(v) for v in high)
        )

    @property
    def task(self) -> str:
        """The configured language instruction."""
        return self.config.instruction

    @property
    def is_connected(self) -> bool:
        """True once the env is built."""
        return self._env is not None

    # -- lifecycle ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Build the env and check the key mapping against its spaces."""
        if self._env is not None:
            return
        env = self._make_env()
        try:
            self._check_spaces(env.observation_space, env.action_space)
        except BaseException:
            env.close()
            raise
        self._env = env
        self._spaces = (env.observation_space, env.action_space)
        self._low, self._high = self.action_feature.bounds()

    def disconnect(self) -> None:
        """Close the env. Safe to call twice."""
        env, self._env = self._env, None
        self._obs = None
        if env is not None:
            env.close()

    def reset(self, seed: int | None = None) -> None:
        """New episode; the same ``seed`` gives the same initial scene."""
        self._require_connected()
        self._obs, _ = self._env.reset(seed=seed)
        self._status = EpisodeStatus()

    # -- per tick -----------------------------------------------------------------------------
    def get_observation(self) -> dict[str, np.ndarray]:
        """State vector and camera images of the latest env observation."""
        self._require_connected()
        if self._obs is None:
            raise RuntimeError(f"{self.name}: call reset() before get_observation()")
        out: dict[str, np.ndarray] = {}
        if self.config.state_keys:
            parts = [
                np.asarray(_lookup(self._obs, k), np.float32).reshape(-1) for k in self.config.state_keys
            ]
            out[STATE_KEY] = np.concatenate(parts)
        for key, cam in self.config.image_keys.items():
            out[IMAGE_PREFIX + cam] = np.ascontiguousarray(_lookup(self._obs, key), dtype=np.uint8)
        return out

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Step the env with the action clipped to the Box bounds; returns the clipped float32[A]."""
        self._require_connected()
        space = self._env.action_space
        sent = np.clip(np.asarray(action, np.float32).reshape(-1), self._low, self._high)
        obs, reward, terminated, _truncated, info = self._env.step(
            sent.astype(space.dtype).reshape(space.shape)
        )
        self._obs = obs
        success = next((_truthy(info[k]) for k in self.config.success_keys if k in info), False)
        self._status = EpisodeStatus(reward=float(reward), success=success, terminated=bool(terminated))
        return sent

    def episode_status(self) -> EpisodeStatus:
        """Reward, success and terminal of the last step (truncation is the loop's business)."""
        return self._status

    def hold_action(self, last_sent: np.ndarray | None) -> np.ndarray:
        """Zero motion (``action_mode=delta``); the current value of ``hold_key`` (position-controlled
        envs); else the last action."""
        if self.config.action_mode == "delta":
            return np.zeros(self.action_feature.shape, np.float32)
        if self.config.hold_key and self._obs is not None:
            return np.asarray(_lookup(self._obs, self.config.hold_key), np.float32).reshape(-1).copy()
        return super().hold_action(last_sent)
