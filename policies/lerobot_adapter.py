"""``policy=lerobot``: any lerobot pretrained policy (SmolVLA, pi0, pi0.5, ACT, Diffusion, ...) as a base policy.

The policy is loaded from a local directory (``policy.path=DIR``, never downloaded) written by lerobot's
``save_pretrained``: ``config.json`` + ``model.safetensors`` + ``policy_preprocessor.json`` /
``policy_postprocessor.json`` (+ their state files). Loading follows lerobot 0.4.4's own route
(``PreTrainedConfig.from_pretrained`` -> ``get_policy_class(type).from_pretrained`` ->
``make_pre_post_processors(cfg, pretrained_path=DIR)``), so normalisation, tokenisation and device
placement are the policy's own. SmolVLA, pi0 and pi0.5 name a backbone (VLM config, processor,
tokenizer) by hub id; when ``DIR/backbone/`` exists (``tandem prepare-policy`` writes it) those names
point there instead (:func:`use_local_backbone`), so they load with the network off (docs/policies.md).
Their requests may carry a committed prefix (``scheduler.splice=rtc``): it goes to lerobot's own
real-time chunking (:func:`enable_rtc`), and the chunk's first d actions are the prefix.

Per request the robot's observation is mapped to the policy's ``input_features``:

- ``observation.state`` -> float32 tensor [S];
- each visual input feature <- a robot camera (same key, ``policy.image_map``, or the only camera when
  both sides have exactly one): uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1] (what lerobot's
  ``preprocess_observation`` does), resized if the sizes differ;
- the language instruction -> ``"task"`` (tokenised by the policy's preprocessor where it has a tokenizer).

The preprocessor adds the batch dimension and normalises; ``predict_action_chunk`` returns the whole
chunk [1, P, A]; the postprocessor unnormalises it. Diffusion keeps an observation history
(``n_obs_steps``): the adapter fills it as lerobot's ``select_action`` does, one entry per request
(so its spacing is the request interval, not the tick).

``Chunk.features`` is the policy's own observation embedding, read by a hook (F floats):

============ ========================================================================================
policy type  tensor
============ ========================================================================================
act          output of the transformer encoder ``model.encoder`` (tokens x B x D), mean over tokens
diffusion    the U-Net's global conditioning (``diffusion.unet`` input ``global_cond``, B x G: state +
             image features of the ``n_obs_steps`` observations)
smolvla,     the VLM prefix embedding ``model.embed_prefix`` (images + language + state tokens,
pi0, pi05    B x L x D), mean over non-padding tokens
other        none (F = 0)
============ ========================================================================================
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.validate import non_negative
from tandem.hardware.features import zero_observation
from tandem.policies.base import BasePolicy, Chunk, PolicyLoadError
from tandem.policies.loading import (
    BACKBONE_DIR,
    NAMED_BACKBONE_TYPES,
    backbone_names,
    resolve_device,
    resolve_path,
    set_torch_threads,
    tokenizer_steps,
)
from tandem.policies.tiny_vla.rtc import DELAY_KEY, PREFIX_KEY

log = logging.getLogger(__name__)

PREFIX_EMBEDDING_TYPES = ("smolvla", "pi0", "pi05")


@dataclass
class LeRobotPolicyConfig:
    """A lerobot pretrained policy directory and how to feed it.

    Attributes:
        type: registry key, always "lerobot".
        path: local directory saved by lerobot (``save_pretrained`` of the policy and its processors).
        device: "auto" (cuda when available), "cpu", "cuda", ...
        image_map: policy image key -> robot observation key, for cameras whose names differ
            (e.g. ``{"observation.images.top": "observation.images.corner"}``).
        n_action_steps: actions per chunk to use (0: the policy's whole predicted chunk).
        torch_threads: torch intra-op threads (0: torch's default).
    """

    type: str = "lerobot"
    path: str = ""
    device: str = "auto"
    image_map: dict[str, str] = field(default_factory=dict)
    n_action_steps: int = 0
    torch_threads: int = 1

    def __post_init__(self) -> None:
        non_negative("policy.n_action_steps", self.n_action_steps)
        non_negative("policy.torch_threads", self.torch_threads)


class _FeatureTap:
    """Captures a policy's observation embedding during inference (see the module docstring)."""

    def __init__(self, policy: Any, policy_type: str) -> None:
        self.value: Any = None
        self.kind = "none"
        self._handles: list[Any] = []
        if policy_type == "act" and hasattr(policy, "model") and hasattr(policy.model, "encoder"):
            self._handles.append(policy.model.encoder.register_forward_hook(self._act))
            self.kind = "act.model.encoder (mean over tokens)"
        elif policy_type == "diffusion" and hasattr(policy, "diffusion"):
            self._handles.append(policy.diffusion.unet.register_forward_pre_hook(self._diffusion, with_kwargs=True))
            self.kind = "diffusion.unet global_cond"
        elif policy_type in PREFIX_EMBEDDING_TYPES and hasattr(getattr(policy, "model", None), "embed_prefix"):
            model = policy.model
            original = model.embed_prefix

            def embed_prefix(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                embs, pad = out[0], out[1]
                m = pad.unsqueeze(-1).to(embs.dtype)
                self.value = (embs * m).sum(1) / m.sum(1).clamp_min(1.0)
                return out

            model.embed_prefix = embed_prefix  # instance attribute: shadows the method for this model only
            self.kind = f"{policy_type}.model.embed_prefix (mean over tokens)"

    def _act(self, module: Any, inputs: Any, output: Any) -> None:
        self.value = output.mean(0)  # (S, B, D) -> (B, D)

    def _diffusion(self, module: Any, args: Any, kwargs: Any) -> None:
        if self.value is None:  # first denoising step; the conditioning is the same for all
            self.value = kwargs.get("global_cond")

    def take(self, batch: int) -> np.ndarray:
        """The captured embedding float16[B, F] (F = 0 when the policy type has no tap), then clear it."""
        value, self.value = self.value, None
        if value is None:
            return np.zeros((batch, 0), np.float16)
        return value.detach().float().reshape(batch, -1).cpu().numpy().astype(np.float16)


class LeRobotPolicy(BasePolicy):
    """A lerobot policy behind tandem's ``infer(observation, task) -> Chunk``.

    Raises:
        PolicyLoadError: the directory is missing or is not a lerobot policy, a file is corrupt, or
            the policy does not fit the robot (state size, cameras, action size).
    """

    def __init__(self, config: LeRobotPolicyConfig, robot: Any) -> None:
        self.config = config
        set_torch_threads(config.torch_threads)
        path = resolve_path(config.path, "policy=lerobot")
        if not (path / "config.json").is_file():
            raise PolicyLoadError(
                f"policy=lerobot: {str(path)!r} has no config.json; point policy.path at a directory written by "
                "lerobot's save_pretrained (policy + pre/post-processors)"
            )
        self.device = resolve_device(config.device)
        self.policy, self.preprocessor, self.postprocessor = self._load(path)
        self.lerobot_type = str(self.policy.config.type)
        self.name = f"lerobot-{self.lerobot_type}"
        self._image_map, self._state_key = self._map_inputs(robot)
        out = self.policy.config.output_features.get("action")
        if out is None:
            raise PolicyLoadError(f"policy=lerobot: {path} has no 'action' output feature")
        self.action_dim = int(out.shape[0])
        robot_a = int(robot.action_feature.shape[0])
        if self.action_dim != robot_a:
            raise PolicyLoadError(
                f"policy=lerobot ({self.lerobot_type} in {path}) outputs {self.action_dim}-D actions but the robot "
                f"takes {robot_a}-D actions; pick a policy trained for this robot"
            )
        self._image_sizes = {k: tuple(self.policy.config.input_features[k].shape[1:]) for k in self._image_map}
        self._tap = _FeatureTap(self.policy, self.lerobot_type)
        self._rtc = enable_rtc(self.policy, self.postprocessor, self.action_dim)
        probe = self._infer_batch([zero_observation(robot.observation_features)], [robot.task])[0]
        self.chunk_length = probe.length
        self.feature_dim = int(probe.features.shape[0])
        log.info("lerobot %s from %s: P=%d A=%d F=%d features=%s rtc=%s", self.lerobot_type, path, self.chunk_length,
                 self.action_dim, self.feature_dim, self._tap.kind, self._rtc is not None)

    def _load(self, path: Path) -> tuple[Any, Any, Any]:
        # Offline: a missing file is an error instead of a download at run time (export HF_HUB_OFFLINE=0
        # to allow one). Set before lerobot (and with it huggingface_hub, which reads it on import) is
        # first imported.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from lerobot.configs.policies import PreTrainedConfig
            from lerobot.policies.factory import get_policy_class

            cfg = PreTrainedConfig.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise PolicyLoadError(f"policy=lerobot: cannot read {path}/config.json: {str(exc)[:300]}") from exc
        cfg.device = self.device
        cfg.pretrained_path = str(path)
        if getattr(cfg, "pretrained_backbone_weights", None):
            cfg.pretrained_backbone_weights = None  # the trained weights come from model.safetensors: no download
        pre, post = load_processors(path, cfg, self.device)
        if cfg.type in OPENPI_TYPES:
            check_openpi_transformers(cfg.type)
        try:
            policy = get_policy_class(cfg.type).from_pretrained(str(path), config=cfg, local_files_only=True)
        except Exception as exc:
            raise PolicyLoadError(
                f"policy=lerobot: cannot load the {cfg.type} weights in {path}: {str(exc)[:300]}"
                + _backbone_hint(path, cfg.type)
            ) from exc
        policy.eval()
        return policy, pre, post

    def _map_inputs(self, robot: Any) -> tuple[dict[str, str], str | None]:
        """(policy image key -> robot camera key, state key or None), checked against the robot."""
        from lerobot.configs.types import FeatureType

        feats = robot.observation_features
        cameras = [k for k, f in feats.items() if f.is_image]
        image_map: dict[str, str] = {}
        state_key = None
        where = f"policy=lerobot ({self.policy.config.type})"
        visual = [k for k, f in self.policy.config.input_features.items() if f.type is FeatureType.VISUAL]
        for key, feat in self.policy.config.input_features.items():
            if feat.type is FeatureType.VISUAL:
                src = self.config.image_map.get(key) or (key if key in feats else None)
                if src is None and len(visual) == 1 and len(cameras) == 1:
                    src = cameras[0]
                if src is None or src not in feats:
                    raise PolicyLoadError(
                        f"{where} needs image {key!r} but the robot has cameras {cameras}; map it with "
                        f"policy.image_map='{{{key}: <robot camera key>}}' or set robot.cameras"
                    )
                if int(feat.shape[0]) != int(feats[src].shape[-1]):
                    raise PolicyLoadError(f"{where}: {key} has {feat.shape[0]} channels, {src} has {feats[src].shape[-1]}")
                image_map[key] = src
            elif feat.type is FeatureType.STATE:
                if key not in feats:
                    raise PolicyLoadError(f"{where} needs {key!r}; the robot observes {sorted(feats)}")
                if tuple(feat.shape) != tuple(feats[key].shape):
                    raise PolicyLoadError(
                        f"{where} was trained on {key} of shape {tuple(feat.shape)} but the robot's is "
                        f"{tuple(feats[key].shape)}; pick a policy trained for this robot"
                    )
                state_key = key
            elif key not in feats:
                raise PolicyLoadError(f"{where} needs {key!r} ({feat.type.name}), which the robot does not observe")
        return image_map, state_key

    # -- inference ---------------------------------------------------------------------------------
    def _to_policy(self, observation: dict[str, np.ndarray], task: str) -> dict[str, Any]:
        import torch

        batch: dict[str, Any] = {"task": task}
        for key, src in self._image_map.items():
            img = torch.from_numpy(np.ascontiguousarray(observation[src])).permute(2, 0, 1).float().div_(255.0)
            if tuple(img.shape[1:]) != self._image_sizes[key]:
                img = torch.nn.functional.interpolate(
                    img[None], size=self._image_sizes[key], mode="bilinear", align_corners=False
                )[0]
            batch[key] = img
        if self._state_key is not None:
            batch[self._state_key] = torch.from_numpy(np.asarray(observation[self._state_key], np.float32))
        for key in self.policy.config.input_features:  # other inputs pass through as float
            if key not in batch and key in observation:
                batch[key] = torch.from_numpy(np.asarray(observation[key], np.float32))
        return batch

    def _predict(self, batch: dict[str, Any], **rtc: Any) -> Any:
        """Normalised inputs -> normalised chunk [B, P, A] (``rtc``: lerobot's RTC arguments, see :meth:`_rtc_args`)."""
        batch = {k: v for k, v in batch.items() if v is not None and (k.startswith("observation") or k == "task")}
        if self.lerobot_type == "diffusion":
            import torch
            from lerobot.policies.utils import populate_queues

            if self.policy.config.image_features:
                batch["observation.images"] = torch.stack(
                    [batch[k] for k in self.policy.config.image_features], dim=-4
                )
            self.policy._queues = populate_queues(self.policy._queues, batch)
        return self.policy.predict_action_chunk(batch, **rtc)

    def _rtc_args(self, observation: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray | None, int]:
        """lerobot's RTC arguments for a request that carries a committed prefix (``scheduler.splice=rtc``).

        Returns ``(kwargs, prefix float32[n, A] in robot units or None, d)``: ``prev_chunk_left_over`` is the
        prefix normalised as the policy's actions are ([1, n, A]), ``inference_delay`` d (clipped to n),
        ``execution_horizon`` n = min(L, P), where lerobot's guidance weights reach 0. Empty when the
        policy has no RTC or the request no usable prefix.
        """
        prefix = observation.get(PREFIX_KEY)
        if self._rtc is None or prefix is None:
            return {}, None, 0
        prefix = np.asarray(prefix, np.float32)
        if prefix.ndim != 2 or prefix.shape[1] != self.action_dim or len(prefix) == 0:
            return {}, None, 0
        import torch

        n = min(len(prefix), int(self.policy.config.chunk_size))
        delay = int(np.clip(int(np.asarray(observation.get(DELAY_KEY, [0])).reshape(-1)[0]), 0, n))
        scale, offset = self._rtc
        normalised = torch.from_numpy((prefix[:n] - offset) / scale)[None].to(self.device)
        return ({"inference_delay": delay, "prev_chunk_left_over": normalised, "execution_horizon": n},
                prefix[:n], delay)

    def _infer_batch(self, observations: list[dict[str, np.ndarray]], tasks: list[str]) -> list[Chunk]:
        import torch

        t0 = time.perf_counter()
        chunks = []
        for obs, task in zip(observations, tasks, strict=True):  # lerobot's queues are per sample
            rtc, prefix, delay = self._rtc_args(obs)
            # RTC's guidance takes a gradient through the denoiser: no inference_mode then (lerobot's no_grad
            # and enable_grad do the rest)
            with torch.inference_mode(prefix is None):
                self._tap.value = None
                batch = self.preprocessor(self._to_policy(obs, task))
                actions = self.postprocessor(self._predict(batch, **rtc))
                actions = actions.float().cpu().numpy()[0].copy()
                if delay:
                    actions[:delay] = prefix[:delay]  # frozen: the committed actions run there anyway
            if self.config.n_action_steps:
                actions = actions[: self.config.n_action_steps]
            feats = self._tap.take(1)[0]
            chunks.append(Chunk(actions=actions, features=feats, policy=self.name, version=self.version))
        dt = (time.perf_counter() - t0) / max(len(observations), 1)
        for c in chunks:
            c.infer_s = dt
        return chunks

    def infer_batch(self, observations: list[dict[str, np.ndarray]], tasks: list[str]) -> list[Chunk]:
        """Chunks for several observations (run one by one: lerobot policies keep per-episode queues)."""
        return self._infer_batch(observations, tasks)

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        """The policy's full chunk float32[P, A] for ``observation`` and its embedding float16[F]."""
        return self._infer_batch([observation], [task])[0]

    def reset(self) -> None:
        """Clear the policy's queues (observation history, cached actions)."""
        self.policy.reset()


OPENPI_TYPES = ("pi0", "pi05")


#: RTC's cap on the guidance weight (beta) when the policy's config sets none: the published default
RTC_MAX_GUIDANCE = 5.0


def enable_rtc(policy: Any, postprocessor: Any, action_dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Turn on lerobot's own real-time chunking for a flow-matching policy that has it (SmolVLA, pi0, pi0.5).

    lerobot's RTC (``lerobot.policies.rtc``) guides each denoising step towards ``prev_chunk_left_over``
    with the exponential prefix schedule (``RTCAttentionSchedule.EXP``) and the policy's own
    ``rtc_config.max_guidance_weight`` if its config has one, else :data:`RTC_MAX_GUIDANCE`. Without a
    prefix in a request it samples as before. The prefix arrives in robot units; lerobot guides in the
    policy's normalised action space, so the affine map of the postprocessor's unnormalisation is read
    once here (``u(x) = scale * x + offset`` from ``u(0)`` and ``u(1)``) and inverted per request.

    Returns:
        ``(scale, offset)`` float32[A] each, or None when the policy has no RTC (ACT, Diffusion, ...).
    """
    if not hasattr(policy, "init_rtc_processor") or not hasattr(policy.config, "rtc_config"):
        return None
    import torch
    from lerobot.configs.types import RTCAttentionSchedule
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    own = policy.config.rtc_config
    policy.config.rtc_config = RTCConfig(
        enabled=True, prefix_attention_schedule=RTCAttentionSchedule.EXP,
        max_guidance_weight=float(own.max_guidance_weight) if own is not None else RTC_MAX_GUIDANCE,
        execution_horizon=int(policy.config.chunk_size),
    )
    policy.init_rtc_processor()
    with torch.inference_mode():
        u0 = postprocessor(torch.zeros(1, 1, action_dim)).float().cpu().numpy().reshape(-1)
        u1 = postprocessor(torch.ones(1, 1, action_dim)).float().cpu().numpy().reshape(-1)
    scale = u1 - u0
    scale[np.abs(scale) < 1e-12] = 1.0  # a constant action dimension: any normalised value maps to it
    return scale.astype(np.float32), u0.astype(np.float32)


def use_local_backbone(path: Path, cfg: Any) -> dict[str, dict[str, Any]]:
    """Point a policy config at its local backbone; the processor overrides that do the same.

    SmolVLA asks transformers for its VLM's config and processor by ``vlm_model_name`` and pi0/pi0.5's
    preprocessor for the PaliGemma tokenizer by ``tokenizer_name``: hub names in a real checkpoint.
    When ``path/backbone/`` exists (``tandem prepare-policy`` writes it) both point there instead, so
    nothing is looked up by name. ``load_vlm_weights`` is always cleared: the VLM's trained weights are
    in the policy's own ``model.safetensors`` (lerobot would otherwise load the VLM's pretrained weights
    first, by name, only to overwrite them).

    Returns:
        ``preprocessor_overrides`` for lerobot's ``make_pre_post_processors`` (step key -> settings).
    """
    overrides: dict[str, dict[str, Any]] = {}
    if hasattr(cfg, "load_vlm_weights"):
        cfg.load_vlm_weights = False
    local = path / BACKBONE_DIR
    if cfg.type in NAMED_BACKBONE_TYPES and local.is_dir():
        if hasattr(cfg, "vlm_model_name"):
            cfg.vlm_model_name = str(local)
        for key in tokenizer_steps(path):
            overrides[key] = {"tokenizer_name": str(local)}
    return overrides


def load_processors(path: Path, cfg: Any, device: str) -> tuple[Any, Any]:
    """lerobot's pre/post-processor pipelines saved in ``path``, on ``device``, tokenizers from the local
    backbone (see :func:`use_local_backbone`).

    Raises:
        PolicyLoadError: a processor file is missing or corrupt, or a tokenizer is neither local nor cached.
    """
    from lerobot.policies.factory import make_pre_post_processors

    overrides = {"device_processor": {"device": device}, **use_local_backbone(path, cfg)}
    try:
        return make_pre_post_processors(cfg, pretrained_path=str(path), preprocessor_overrides=overrides)
    except Exception as exc:
        raise PolicyLoadError(
            f"policy=lerobot: cannot load the pre/post-processors in {path} (save them with "
            f"preprocessor.save_pretrained(dir)): {str(exc)[:300]}" + _backbone_hint(path, cfg.type)
        ) from exc


def check_openpi_transformers(policy_type: str) -> None:
    """Refuse pi0/pi0.5 up front when transformers lacks the openpi changes lerobot's code needs.

    lerobot 0.4.4's pi0 and pi0.5 call a Gemma with adaptive RMS norms, which only the transformers
    build of lerobot's ``pi`` extra has (the ``fix/lerobot_openpi`` branch, installed from source);
    lerobot checks it at the end of building the model, after allocating the full PaliGemma.

    Raises:
        PolicyLoadError: the installed transformers is not that build.
    """
    try:
        from transformers.models.siglip import check  # only in that build

        ok = bool(check.check_whether_transformers_replace_is_installed_correctly())
    except ImportError:
        ok = False
    if not ok:
        import transformers

        raise PolicyLoadError(
            f"policy=lerobot: lerobot's {policy_type} needs the transformers build of lerobot's 'pi' extra "
            f"(the fix/lerobot_openpi branch, installed from source: pip install 'lerobot[pi]' from a lerobot "
            f"checkout); the installed transformers {transformers.__version__} is the stock release, which "
            "lerobot refuses for pi0/pi0.5 after building the whole model"
        )


def _backbone_hint(path: Path, policy_type: str) -> str:
    """What to do when a policy that names a backbone cannot find it (empty for other types)."""
    if policy_type not in NAMED_BACKBONE_TYPES or (path / BACKBONE_DIR).is_dir():
        return ""
    try:
        names = ", ".join(backbone_names(path)) or "its backbone"
    except PolicyLoadError:
        names = "its backbone"
    return (
        f". {policy_type} asks transformers for {names} by name (config, processor, tokenizer); {path} has no "
        f"{BACKBONE_DIR}/ directory and this machine's hub cache lacks it (nothing is downloaded). On a machine "
        "whose hub cache has it run `tandem prepare-policy SOURCE --out DIR` and use DIR (docs/policies.md)"
    )
