"""``policy=tiny_vla``: the project's own small vision-language-action policy as a base policy.

Image(s) + language instruction + proprio state -> a chunk of P actions, sampled by flow matching;
``Chunk.features`` is the fused observation embedding (F floats). The network lives in
``tandem.policies.tiny_vla.model``; checkpoints are made by ``tandem pretrain`` (see docs/policies.md).
Torch is imported when the policy is built, not when its config is read.

Base weights pushed by a learner (weight kind ``base``, ``docs/links.md``) reach the policy in two steps:
:meth:`TinyVLAPolicy.stage_weights` builds and checks a new network beside the running one (off the
control thread, in the policy worker), :meth:`TinyVLAPolicy.activate_weights` swaps it in (the robot
asks for that at an episode boundary). ``policy.version=N`` with ``policy.versions_dir`` starts from an
earlier published base instead of ``policy.path`` (a rollback).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, non_negative
from tandem.hardware.features import STATE_KEY
from tandem.policies.base import BasePolicy, Chunk, PolicyLoadError
from tandem.policies.loading import (
    check_cameras,
    check_state,
    resolve_device,
    resolve_path,
    set_torch_threads,
)
from tandem.policies.tiny_vla.rtc import read_request
from tandem.policies.tiny_vla.tokenizer import encode


@dataclass
class TinyVLAPolicyConfig:
    """How to run a tiny VLA checkpoint.

    Attributes:
        type: registry key, always "tiny_vla".
        path: checkpoint directory (absolute, or relative to the working directory or the repository).
        device: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
        flow_steps: Euler steps when sampling (0: the checkpoint's own setting).
        seed: seed of the sampling noise.
        torch_threads: torch intra-op threads (0: torch's default); 1 leaves the other cores to the loop.
        rtc_max_guidance: beta, the cap of the real-time-chunking guidance weight, used when a request
            carries a committed prefix (``scheduler.splice=rtc``; 0: no guidance, the prefix is still
            frozen).
        version: 0: load ``path``. N > 0: load the base version N a learner published, the checkpoint
            ``<versions_dir>/v<N, 6 digits>`` (a rollback to an earlier base).
        versions_dir: a learner store's ``base`` directory (``<store_dir>/base``), where the learner keeps
            every base version it published; needed when ``version`` > 0.
    """

    type: str = "tiny_vla"
    path: str = "checkpoints/tiny_vla"
    device: str = "auto"
    flow_steps: int = 0
    seed: int = 0
    torch_threads: int = 1
    rtc_max_guidance: float = 5.0
    version: int = 0
    versions_dir: str = ""

    def __post_init__(self) -> None:
        in_range("policy.flow_steps", self.flow_steps, 0, 1000)
        non_negative("policy.torch_threads", self.torch_threads)
        in_range("policy.rtc_max_guidance", self.rtc_max_guidance, 0.0, 1000.0)
        non_negative("policy.version", self.version)
        if self.version > 0 and not self.versions_dir:
            raise ConfigError("policy.versions_dir", self.versions_dir,
                              "policy.version > 0 needs a learner store's base directory, e.g. <store_dir>/base")

    def checkpoint_path(self) -> str:
        """The checkpoint directory to load: ``path``, or the published version's directory."""
        if self.version > 0:
            return str(Path(self.versions_dir) / version_dir_name(self.version))
        return self.path


def version_dir_name(version: int) -> str:
    """The directory name of a published base version in a learner store (``v000003``)."""
    return f"v{int(version):06d}"


class TinyVLAPolicy(BasePolicy):
    """A loaded tiny VLA. ``robot`` (not connected) is checked against the checkpoint's schema.

    Raises:
        PolicyLoadError: the checkpoint is missing or corrupt, or does not fit the robot (state size,
            cameras, image size, action size).
    """

    name = "tiny_vla"

    def __init__(self, config: TinyVLAPolicyConfig, robot: Any = None, model: Any = None, tokenizer: Any = None) -> None:
        import torch

        from tandem.policies.tiny_vla.model import load_checkpoint

        self.config = config
        set_torch_threads(config.torch_threads)
        self.meta: dict[str, Any] = {}
        if model is None:
            path = resolve_path(config.checkpoint_path(), "policy=tiny_vla")
            model, tokenizer, self.meta = load_checkpoint(path, resolve_device(config.device))
            if config.version > 0:
                self.meta["version"] = config.version
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        cfg = model.cfg
        self.chunk_length = cfg.chunk_length
        self.action_dim = cfg.action_dim
        self.feature_dim = cfg.feature_dim
        self.version = int(self.meta.get("version", 0))
        self.flow_steps = config.flow_steps or cfg.flow_steps
        self._generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._text_cache: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards (model, text cache, version) against a swap mid-inference
        self._staged: dict[int, Any] = {}  # version -> network, the newest two
        if robot is not None:
            self._check_robot(robot)

    def _check_robot(self, robot: Any) -> None:
        cfg = self.model.cfg
        feats = robot.observation_features
        check_state(self.name, feats, STATE_KEY, cfg.state_dim)
        check_cameras(self.name, feats, cfg.image_keys)
        for key in cfg.image_keys:
            if tuple(feats[key].shape) != (cfg.image_size, cfg.image_size, 3):
                raise PolicyLoadError(
                    f"{self.name} was trained on {cfg.image_size}x{cfg.image_size} images but {key} is "
                    f"{feats[key].shape}; set robot.image_size={cfg.image_size}"
                )
        robot_a = int(robot.action_feature.shape[0])
        if robot_a != cfg.action_dim:
            raise PolicyLoadError(
                f"{self.name} outputs {cfg.action_dim}-D actions but the robot takes {robot_a}-D actions; "
                "pick a checkpoint trained for this robot"
            )

    # -- inference ---------------------------------------------------------------------------------
    def _text(self, tasks: list[str], model: Any = None, cache: dict[str, Any] | None = None) -> Any:
        """Text embeddings float[B, D], cached per instruction (the set of instructions is small).

        ``model`` and ``cache`` default to the running network and its cache (a swap replaces both)."""
        import torch

        model = self.model if model is None else model
        cache = self._text_cache if cache is None else cache
        missing = [t for t in dict.fromkeys(tasks) if t not in cache]
        if missing:
            ids, mask = encode(self.tokenizer, missing, model.cfg.max_text_len)
            emb = model.encode_text(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
            for t, e in zip(missing, emb, strict=True):
                cache[t] = e
        return torch.stack([cache[t] for t in tasks])

    # -- base weights from a learner ---------------------------------------------------------------
    def weights_schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype, shape) of the network's state_dict: the ``base`` weights this policy accepts."""
        from tandem.policies.tiny_vla.model import weights_schema

        return weights_schema(self.model)

    def stage_weights(self, arrays: dict[str, np.ndarray], version: int) -> None:
        """Build a network holding ``arrays`` beside the running one; :meth:`activate_weights` swaps it in.

        Raises:
            ValueError: the arrays do not fit the network (names, dtypes, shapes) or are not finite; the
                running network and any earlier staged one are untouched.
        """
        from tandem.policies.tiny_vla.model import model_with_weights

        new = model_with_weights(self.model, arrays)
        with self._lock:
            self._staged[int(version)] = new
            while len(self._staged) > 2:
                del self._staged[min(self._staged)]

    def activate_weights(self, version: int) -> None:
        """Swap in the network staged as ``version`` (its chunks carry that version from now on). Networks
        staged as older versions are dropped; a newer one staged meanwhile stays for the next swap.

        Raises:
            ValueError: no network is staged as ``version``.
        """
        with self._lock:
            if int(version) not in self._staged:
                raise ValueError(f"base version {version} is not staged (staged: {sorted(self._staged)})")
            self.version, self.model = int(version), self._staged.pop(int(version))
            self._staged = {v: m for v, m in self._staged.items() if v > int(version)}
            self._text_cache = {}

    def _batch(self, observations: list[dict[str, np.ndarray]]) -> tuple[Any, Any]:
        import torch

        keys = self.model.cfg.image_keys
        state = torch.from_numpy(np.stack([np.asarray(o[STATE_KEY], np.float32) for o in observations]))
        if keys:
            images = np.stack([np.stack([np.asarray(o[k], np.uint8) for k in keys]) for o in observations])
        else:
            images = np.zeros((len(observations), 0, 1, 1, 3), np.uint8)
        return torch.from_numpy(images).to(self.device), state.to(self.device)

    def infer_batch(self, observations: list[dict[str, np.ndarray]], tasks: list[str]) -> list[Chunk]:
        """Chunks for a batch of observations in one forward pass. Actions are clipped to [-1, 1].

        Observations that carry a committed prefix (``rtc.prefix``, ``rtc.delay``: see
        ``tandem.policies.tiny_vla.rtc``) are inpainted against it (real-time chunking): their first d
        actions equal the prefix and the rest is guided towards it; the others are sampled plainly.
        """
        import torch

        t0 = time.perf_counter()
        with self._lock:  # one network for the whole batch, even if a new one is swapped in meanwhile
            model, cache, version = self.model, self._text_cache, self.version
        p, a = self.chunk_length, self.action_dim
        rtc = [read_request(o, p, a) for o in observations]
        with torch.inference_mode():
            images, state = self._batch(observations)
            feats = model.features(images, state, self._text(list(tasks), model, cache))
            if not any(d > 0 or w.any() for _, w, d in rtc):
                actions = model.sample(feats, self.flow_steps, generator=self._generator)
        if any(d > 0 or w.any() for _, w, d in rtc):
            actions = model.sample_guided(
                feats,
                self.flow_steps,
                prefix=torch.from_numpy(np.stack([r[0] for r in rtc])).to(self.device),
                weights=torch.from_numpy(np.stack([r[1] for r in rtc])).to(self.device),
                delay=torch.tensor([r[2] for r in rtc], device=self.device),
                max_guidance=self.config.rtc_max_guidance,
                generator=self._generator,
            )
        with torch.inference_mode():
            actions = actions.clamp(-1.0, 1.0).float().cpu().numpy()
            feats = feats.float().cpu().numpy().astype(np.float16)
        dt = (time.perf_counter() - t0) / len(observations)
        return [
            Chunk(actions=act, features=f, policy=self.name, version=version, infer_s=dt)
            for act, f in zip(actions, feats, strict=True)
        ]

    def reseed(self, seed: int) -> None:
        """Restart the sampling noise from ``seed`` (paired comparisons run arms on the same noise)."""
        self._generator.manual_seed(int(seed))

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        """One chunk: float32[P, A] actions and float16[F] features."""
        return self.infer_batch([observation], [task])[0]
