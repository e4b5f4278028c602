"""MetaWorld v3 tasks on MuJoCo as a ``Robot``.

Observation: ``observation.state`` float32[39] (MetaWorld's state: hand xyz, gripper opening, object
poses, previous frame, goal) and one uint8[H, W, 3] image per configured camera under
``observation.images.<camera>``. Action: float32[4] in [-1, 1]: end-effector xyz displacement
(scaled by MetaWorld to 1/100 m per unit) and gripper effort. Reward and success come from the task.

Rendering is tuned for CPU: the offscreen buffer is sized to the image, multisampling, shadows and
shadow-casting lights are off. ``realtime=False`` runs as fast as possible (tests).

Cameras of a paced robot (``realtime=True``, ``render_thread=True``) render on a thread of their own
(``tandem.hardware.render.CameraThread``), as real cameras are read asynchronously: each
``send_action`` hands the new state over, ``get_observation`` takes the newest frames without waiting,
and ``capture_time()`` says when the state they show was produced, so the control loop's lateness
measures the runtime, not MuJoCo rendering, and each tick records its frame's capture time (its age is
``obs_time - capture_time``). After a reset the first frames of the new scene are waited for. With
``realtime=False`` (simulated time: tests, training, evaluation) the cameras render in
``get_observation``, so each observation shows exactly the current state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, one_of, positive
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY, Feature
from tandem.hardware.render import CameraThread, configure_gl
from tandem.hardware.robot import EpisodeStatus, Robot

# The language instruction for each supported task (what a VLA is conditioned on).
TASK_INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "button-press-topdown-v3": "press the button from the top",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "door-open-v3": "open the door",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "plate-slide-v3": "slide the plate into the goal",
    "faucet-open-v3": "turn the faucet on",
    "coffee-button-v3": "press the coffee machine button",
    # multi-stage tasks (grasp, carry, place or pull): the long-horizon suite, configs/robot/metaworld_long.yaml
    "shelf-place-v3": "pick up the block and place it on the shelf",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "bin-picking-v3": "pick the puck out of the red bin and place it in the blue bin",
    "pick-place-wall-v3": "pick up the puck, carry it over the wall and place it at the goal",
}

# Where an episode's scene (object and goal positions) comes from. "train" and "unseen" draw fresh positions
# from the task's own reset ranges, each split from its own random stream, so no unseen scene is a train scene;
# "mt1" picks one of MetaWorld MT1's 50 fixed variations (the scenes of earlier releases).
SCENE_SPLITS = ("train", "unseen", "mt1")
_SPLIT_STREAM = {"train": 1, "unseen": 2}

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
STATE_DIM = 39
ACTION_DIM = 4


@dataclass
class MetaWorldRobotConfig:
    """A simulated Sawyer arm on a MetaWorld v3 task.

    Attributes:
        type: registry key, always "metaworld".
        task: MetaWorld v3 task name (see ``TASK_INSTRUCTIONS``); the first task of a session.
        suite: optional list of task names; episode i of a session runs ``suite[i % len(suite)]``
            (empty: just ``task``).
        cameras: camera names to render (0..n of ``CAMERAS``).
        image_size: square image side in pixels.
        fps: control rate in Hz.
        realtime: pace ticks on the wall clock (False: as fast as possible, for tests and training).
        max_episode_steps: episode time limit in ticks.
        render_thread: with ``realtime``, render the cameras on their own thread (as real cameras are
            read); False renders them inside ``get_observation`` (in the control loop's tick).
        camera_fps: with the render thread, the most frames per second it renders (a camera's frame
            rate; 0: every step's state, as fast as it can).
        scenes: where episode scenes come from: "train" (sessions, demonstrations, pretraining),
            "unseen" (evaluation only) or "mt1" (MT1's 50 fixed variations). With "train" or "unseen"
            the episode seed picks a fresh scene of that split: the object and goal positions are drawn
            from the task's reset ranges with a random stream of the split's own, seeded by the seed.
    """

    type: str = "metaworld"
    task: str = "pick-place-v3"
    suite: list[str] = field(default_factory=list)
    cameras: list[str] = field(default_factory=lambda: ["corner"])
    image_size: int = 96
    fps: float = 50.0
    realtime: bool = True
    max_episode_steps: int = 500
    scenes: str = "train"
    render_thread: bool = True
    camera_fps: float = 30.0

    def __post_init__(self) -> None:
        one_of("robot.task", self.task, TASK_INSTRUCTIONS)
        one_of("robot.scenes", self.scenes, SCENE_SPLITS)
        for name in self.suite:
            one_of("robot.suite", name, TASK_INSTRUCTIONS)
        for cam in self.cameras:
            one_of("robot.cameras", cam, CAMERAS)
        in_range("robot.image_size", self.image_size, 8, 1024)
        positive("robot.fps", self.fps)
        in_range("robot.max_episode_steps", self.max_episode_steps, 1, 500)
        if not isinstance(self.render_thread, bool):
            raise ConfigError("robot.render_thread", self.render_thread, "true or false")
        in_range("robot.camera_fps", self.camera_fps, 0.0, 1000.0)


class MetaWorldRobot(Robot):
    simulated = True
    """MetaWorld task through the ``Robot`` contract."""

    def __init__(self, config: MetaWorldRobotConfig) -> None:
        self.config = config
        self.name = "metaworld"
        self._task = config.task
        self._sims: dict[str, tuple[object, object, CameraThread | None]] = {}  # task -> (env, renderer, camera)
        self._env = None
        self._renderer = None  # cameras rendered in get_observation (simulated time, or render_thread=False)
        self._camera: CameraThread | None = None  # cameras rendered on their own thread (paced)
        self._capture_time: float | None = None
        self._obs: np.ndarray | None = None
        self._status = EpisodeStatus()
        self.scene: dict = {}  # the current episode's scene: split, seed, task, object/goal vector

    # -- schema -------------------------------------------------------------------------------
    @property
    def observation_features(self) -> dict[str, Feature]:
        """State plus one image per camera."""
        s = self.config.image_size
        feats = {STATE_KEY: Feature("float32", (STATE_DIM,))}
        for cam in self.config.cameras:
            feats[IMAGE_PREFIX + cam] = Feature("uint8", (s, s, 3))
        return feats

    @property
    def action_feature(self) -> Feature:
        """xyz displacement and gripper effort, each in [-1, 1]."""
        return Feature(
            "float32", (ACTION_DIM,), names=("dx", "dy", "dz", "gripper"), low=(-1.0,) * 4, high=(1.0,) * 4
        )

    @property
    def task(self) -> str:
        """The current task's language instruction."""
        return TASK_INSTRUCTIONS[self._task]

    @property
    def task_name(self) -> str:
        """The current MetaWorld task name."""
        return self._task

    @property
    def tasks(self) -> list[str]:
        """The suite (or just the configured task)."""
        return list(self.config.suite) or [self.config.task]

    def set_task(self, name: str) -> None:
        """Switch task; its scene is built on first use and kept for the session."""
        one_of("task", name, TASK_INSTRUCTIONS)
        self._task = name
        if self.is_connected:
            self._activate(name)

    @property
    def is_connected(self) -> bool:
        """True once the simulation is built."""
        return self._env is not None

    # -- lifecycle ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Build the MuJoCo scene of the current task (and its offscreen renderer if cameras are set)."""
        configure_gl()
        self._activate(self._task)

    def _activate(self, name: str) -> None:
        if name not in self._sims:
            self._sims[name] = self._build(name)
        self._env, self._renderer, self._camera = self._sims[name]
        if self._camera is not None and self._camera.latest()[2] < 0:  # a new scene: its first frames
            self._publish(wait=True)

    @property
    def camera_thread(self) -> CameraThread | None:
        """The current task's camera thread (None: cameras render in ``get_observation``, or none are set)."""
        return self._camera

    def _build(self, name: str) -> tuple[object, object, CameraThread | None]:
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the Meta-World/* environments)

        env = gym.make("Meta-World/MT1", env_name=name, seed=0, max_episode_steps=10_000)
        selector = _task_selector(env)
        if selector is not None:
            selector.toggle_sample_tasks_on_reset(False)  # reset() picks the scene from its seed
            selector.unwrapped.set_task(selector.tasks[0])  # the task's settings (goal observable, ...)
        renderer, camera = None, None
        if self.config.cameras:
            import mujoco

            model = env.unwrapped.model
            size = self.config.image_size
            model.vis.global_.offwidth = size
            model.vis.global_.offheight = size
            model.vis.quality.offsamples = 0
            model.vis.quality.shadowsize = 0
            model.light_castshadow[:] = 0
            if self.config.realtime and self.config.render_thread:
                camera = CameraThread(model, self.config.cameras, size, size, flip=True, name=f"cameras-{name}",
                                      fps=self.config.camera_fps)
                try:
                    camera.start()
                except BaseException:
                    env.close()
                    raise
            else:
                renderer = mujoco.Renderer(model, height=size, width=size)
        return env, renderer, camera

    def disconnect(self) -> None:
        """Free renderers and simulations. Safe to call twice."""
        sims, self._sims = self._sims, {}
        self._env, self._renderer, self._camera = None, None, None
        errors = []
        for env, renderer, camera in sims.values():
            closers = (getattr(camera, "stop", None), getattr(renderer, "close", None), getattr(env, "close", None))
            for closer in closers:
                try:
                    if closer is not None:
                        closer()
                except Exception as exc:  # keep closing the rest; report the first
                    errors.append(exc)
        if errors:
            raise errors[0]

    def reset(self, seed: int | None = None) -> None:
        """New episode; ``seed`` picks the scene of ``config.scenes`` (object and goal positions).

        The same (task, split, seed) always gives the same scene; ``self.scene`` records it.
        """
        self._require_connected()
        split = self.config.scenes
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        env = self._env.unwrapped
        selector = _task_selector(self._env)
        if split == "mt1" and selector is not None:
            # MT1 has 50 fixed variations (object and goal positions): the seed picks one.
            index = int(np.random.default_rng(seed).integers(len(selector.tasks)))
            env.set_task(selector.tasks[index])
        elif split != "mt1":
            # a fresh draw from the task's reset ranges; the env redraws (from the same stream) when a
            # draw breaks the task's own constraints (e.g. goal too close to the object)
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            env.np_random = np.random.default_rng([_SPLIT_STREAM[split], int(seed)])
        if self._camera is not None:
            with self._camera.paused():  # the reset may move bodies and sites of the shared model
                obs, _ = self._env.reset(seed=seed)
            self._publish(wait=True)  # the first frames show the new scene
        else:
            obs, _ = self._env.reset(seed=seed)
        self._obs = np.asarray(obs, np.float32)
        self._status = EpisodeStatus()
        vec = getattr(env, "_last_rand_vec", None)
        self.scene = {"task": self._task, "split": split, "seed": int(seed),
                      "positions": [round(float(v), 5) for v in vec] if vec is not None else []}

    # -- per tick -----------------------------------------------------------------------------
    def _publish(self, wait: bool = False) -> None:
        """Hand the current state to the camera thread (and wait for its frames)."""
        seq = self._camera.publish(self._env.unwrapped.data)
        if wait:
            self._camera.wait_for(seq)

    def capture_time(self) -> float | None:
        """When the state the last observation's frames show was produced (wall clock, s); None when the
        cameras render inside ``get_observation`` (the frames are as old as the read)."""
        return self._capture_time

    def get_observation(self) -> dict[str, np.ndarray]:
        """Current state and camera images (uint8[S, S, 3] each).

        With a camera thread the images are its newest frames, usually of the state before the last
        action (a frame's age is ``obs_time - capture_time()``); otherwise they are rendered now.
        """
        self._require_connected()
        out = {STATE_KEY: self._obs.copy()}
        if self._camera is not None:
            frames, self._capture_time, _ = self._camera.latest()
            for cam in self.config.cameras:
                out[IMAGE_PREFIX + cam] = frames[cam]
        elif self._renderer is not None:
            data = self._env.unwrapped.data
            for cam in self.config.cameras:
                self._renderer.update_scene(data, camera=cam)
                # MetaWorld's cameras render upside down; flip to an upright image.
                out[IMAGE_PREFIX + cam] = np.ascontiguousarray(self._renderer.render()[::-1])
        return out

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Step the simulation with the clipped action; returns what was applied."""
        self._require_connected()
        sent = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        obs, reward, terminated, _truncated, info = self._env.step(sent)
        self._obs = np.asarray(obs, np.float32)
        if self._camera is not None:
            self._publish()
        self._status = EpisodeStatus(
            reward=float(reward), success=bool(info.get("success", 0.0) > 0.5), terminated=bool(terminated)
        )
        return sent

    def episode_status(self) -> EpisodeStatus:
        """Reward/success of the last step."""
        return self._status

    def hold_action(self, last_sent: np.ndarray | None) -> np.ndarray:
        """Zero displacement, keeping the last gripper command (a held object stays held)."""
        hold = np.zeros(ACTION_DIM, np.float32)
        if last_sent is not None:
            hold[3] = last_sent[3]
        return hold

    def expert_action(self) -> np.ndarray:
        """The task's scripted expert action for the current state (used by scripted policies/operators)."""
        self._require_connected()
        return np.asarray(expert_for(self._task).get_action(self._obs), np.float32)


def _task_selector(env: object) -> object | None:
    """MetaWorld's task-sampling wrapper inside a gym.make() stack, if any."""
    while env is not None:
        if hasattr(env, "tasks") and hasattr(env, "toggle_sample_tasks_on_reset"):
            return env
        env = getattr(env, "env", None)
    return None


def task_for_instruction(instruction: str) -> str:
    """The MetaWorld task name whose language instruction is ``instruction``."""
    for name, text in TASK_INSTRUCTIONS.items():
        if text == instruction:
            return name
    raise ValueError(f"no MetaWorld task has the instruction {instruction!r}")


def expert_for(task: str) -> object:
    """MetaWorld's scripted expert policy object for ``task`` (has ``get_action(state)``)."""
    configure_gl()
    import metaworld.policies as mp

    name = "Sawyer" + "".join(p.capitalize() for p in task.removesuffix("-v3").split("-")) + "V3Policy"
    if not hasattr(mp, name):
        raise ValueError(f"MetaWorld has no scripted expert {name} for task {task!r}")
    return getattr(mp, name)()
