"""The tiny VLA network: vision + language + proprio state -> fused embedding -> flow-matching action chunk.

Architecture (shapes for one sample; B is the batch):

- **vision**: a transformers vision model built from a small local config (``ViTModel`` by default;
  any ``model_type`` that ``AutoModel.from_config`` knows, e.g. ``siglip_vision_model``). Each camera
  image, uint8[H, W, 3] -> float[3, H, W] in [-1, 1], is encoded to ``last_hidden_state`` and mean-pooled
  over tokens -> float[D]. One shared encoder for all cameras.
- **language**: a transformers text model (``BertModel`` by default) over the instruction's token ids
  from the local word-level tokenizer (``tandem.policies.tiny_vla.tokenizer``); masked mean over tokens -> float[D].
- **state**: the normalised proprio/state vector float[S] -> Linear -> float[D].
- **fusion**: concat(cameras..., text, state) -> MLP -> LayerNorm -> ``features`` float[F]. This is the
  observation embedding that chunks carry for the critic.
- **action expert**: a flow-matching velocity field v(x_tau, tau | features) over the whole normalised
  chunk x float[P, A] (an MLP with residual blocks, FiLM-conditioned on the features and a sinusoidal
  time embedding; pi0/SmolVLA's action expert does the same with a transformer). Training: tau ~ U(0, 1),
  x_tau = tau * a + (1 - tau) * eps, target a - eps. Sampling: Euler from noise (tau = 0) to data (tau = 1)
  in ``flow_steps`` steps. Real-time chunking: ``sample_guided`` inpaints a chunk against a committed
  prefix (``tandem.policies.tiny_vla.rtc``).

Normalisation statistics (state and action mean/std) are buffers of the module, so the checkpoint
(``model.safetensors`` + ``config.json`` + tokenizer files) is self-contained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, positive
from tandem.policies.base import PolicyLoadError
from tandem.policies.tiny_vla.rtc import guidance_weight
from tandem.policies.tiny_vla.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def _default_vision() -> dict[str, Any]:
    return {
        "model_type": "vit",
        "patch_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    }


def _default_text() -> dict[str, Any]:
    return {"model_type": "bert", "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}


@dataclass
class TinyVLAModelConfig:
    """Architecture of a tiny VLA (saved as ``config.json`` ``"model"`` in a checkpoint).

    Attributes:
        state_dim: S, length of ``observation.state``.
        action_dim: A.
        chunk_length: P, actions per chunk.
        image_keys: observation keys of the cameras, in order (may be empty: state + language only).
        image_size: camera images are square, this many pixels a side.
        vocab_size: tokenizer vocabulary size (set from the tokenizer).
        max_text_len: instruction length in tokens, ``[CLS]`` included.
        dim: D, width of the vision, text and state embeddings.
        feature_dim: F, width of the fused observation embedding.
        vision: transformers config kwargs for the vision model (``model_type`` picks the class);
            ``hidden_size`` and ``image_size`` are set from ``dim`` and ``image_size``.
        text: transformers config kwargs for the text model; ``hidden_size``, ``vocab_size`` and
            ``max_position_embeddings`` are set from ``dim``, ``vocab_size`` and ``max_text_len``.
        head_hidden: width of the action expert.
        head_blocks: residual blocks in the action expert.
        time_dim: width of the flow-time embedding.
        flow_steps: Euler steps when sampling a chunk.
    """

    state_dim: int = 39
    action_dim: int = 4
    chunk_length: int = 16
    image_keys: list[str] = field(default_factory=lambda: ["observation.images.corner"])
    image_size: int = 96
    vocab_size: int = 64
    max_text_len: int = 16
    dim: int = 64
    feature_dim: int = 128
    vision: dict[str, Any] = field(default_factory=_default_vision)
    text: dict[str, Any] = field(default_factory=_default_text)
    head_hidden: int = 256
    head_blocks: int = 3
    time_dim: int = 32
    flow_steps: int = 10

    def __post_init__(self) -> None:
        in_range("model.state_dim", self.state_dim, 1, 100_000)
        in_range("model.action_dim", self.action_dim, 1, 1000)
        in_range("model.chunk_length", self.chunk_length, 1, 1000)
        in_range("model.image_size", self.image_size, 8, 1024)
        positive("model.vocab_size", self.vocab_size)
        in_range("model.max_text_len", self.max_text_len, 2, 512)
        positive("model.dim", self.dim)
        positive("model.feature_dim", self.feature_dim)
        positive("model.head_hidden", self.head_hidden)
        in_range("model.head_blocks", self.head_blocks, 1, 64)
        in_range("model.time_dim", self.time_dim, 2, 1024)
        in_range("model.flow_steps", self.flow_steps, 1, 1000)
        for name, cfg in (("model.vision", self.vision), ("model.text", self.text)):
            if "model_type" not in cfg:
                raise ConfigError(name, cfg, "needs a 'model_type' (e.g. 'vit', 'bert')")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def _vision_model(cfg: TinyVLAModelConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    kwargs = dict(cfg.vision)
    model_type = kwargs.pop("model_type")
    config = AutoConfig.for_model(model_type, hidden_size=cfg.dim, image_size=cfg.image_size, num_channels=3, **kwargs)
    if model_type == "vit":
        from transformers import ViTModel

        return ViTModel(config, add_pooling_layer=False)
    return AutoModel.from_config(config)


def _text_model(cfg: TinyVLAModelConfig) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    kwargs = dict(cfg.text)
    model_type = kwargs.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        hidden_size=cfg.dim,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_text_len,
        **kwargs,
    )
    if model_type == "bert":
        from transformers import BertModel

        return BertModel(config, add_pooling_layer=False)
    return AutoModel.from_config(config)


def time_embedding(tau: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding float[B, dim] of flow times ``tau`` float[B] in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=tau.device, dtype=torch.float32) / max(half - 1, 1))
    angles = tau.float()[:, None] * freqs[None] * 1000.0
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _ResBlock(nn.Module):
    """LayerNorm -> FiLM(cond) -> Linear -> GELU -> Linear, added to the input."""

    def __init__(self, width: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.film = nn.Linear(cond_dim, 2 * width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).chunk(2, dim=-1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(nn.functional.gelu(self.fc1(h)))


class FlowActionExpert(nn.Module):
    """Velocity field v(x_tau, tau | features): float[B, P, A] -> float[B, P, A]."""

    def __init__(self, cfg: TinyVLAModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        flat = cfg.chunk_length * cfg.action_dim
        cond_dim = cfg.feature_dim + cfg.time_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, cfg.time_dim), nn.GELU())
        self.inp = nn.Linear(flat + cond_dim, cfg.head_hidden)
        self.blocks = nn.ModuleList(_ResBlock(cfg.head_hidden, cond_dim) for _ in range(cfg.head_blocks))
        self.out_norm = nn.LayerNorm(cfg.head_hidden)
        self.out = nn.Linear(cfg.head_hidden, flat)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Velocity at ``x`` float[B, P, A], flow time ``tau`` float[B], given ``features`` float[B, F]."""
        b = x.shape[0]
        cond = torch.cat([features, self.time_mlp(time_embedding(tau, self.cfg.time_dim))], dim=-1)
        h = self.inp(torch.cat([x.reshape(b, -1), cond], dim=-1))
        for block in self.blocks:
            h = block(h, cond)
        return self.out(self.out_norm(h)).reshape(b, self.cfg.chunk_length, self.cfg.action_dim)


class TinyVLA(nn.Module):
    """The whole network. Inputs are batched tensors; see the module docstring for the architecture."""

    def __init__(self, cfg: TinyVLAModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.vision = _vision_model(cfg) if cfg.image_keys else None
        self.text = _text_model(cfg)
        self.state_proj = nn.Sequential(nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d))
        fused_in = d * (len(cfg.image_keys) + 2)
        self.fuse = nn.Sequential(
            nn.Linear(fused_in, cfg.feature_dim), nn.GELU(), nn.Linear(cfg.feature_dim, cfg.feature_dim),
            nn.LayerNorm(cfg.feature_dim),
        )
        self.expert = FlowActionExpert(cfg)
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))

    # -- normalisation ---------------------------------------------------------------------------
    def set_stats(self, state_mean: Any, state_std: Any, action_mean: Any, action_std: Any) -> None:
        """Set normalisation statistics (std is floored at 1e-3 so constant dimensions stay finite)."""
        for name, value in (("state_mean", state_mean), ("state_std", state_std),
                            ("action_mean", action_mean), ("action_std", action_std)):
            t = torch.as_tensor(value, dtype=torch.float32).reshape(getattr(self, name).shape)
            if name.endswith("std"):
                t = t.clamp_min(1e-3)
            getattr(self, name).copy_(t)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """float[..., A] robot units -> normalised."""
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """float[..., A] normalised -> robot units."""
        return actions * self.action_std + self.action_mean

    # -- encoders --------------------------------------------------------------------------------
    def encode_text(self, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Instruction tokens int64[B, L] (mask int64[B, L]) -> float[B, D], masked mean over tokens."""
        hidden = self.text(input_ids=token_ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Camera images uint8[B, C, H, W, 3] (C cameras) -> float[B, C * D]."""
        b, c = images.shape[:2]
        if c == 0 or self.vision is None:
            return images.new_zeros((b, 0), dtype=torch.float32)
        x = images.reshape(b * c, *images.shape[2:]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        hidden = self.vision(pixel_values=x).last_hidden_state
        return hidden.mean(1).reshape(b, -1)

    def features(self, images: torch.Tensor, state: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fused observation embedding float[B, F] from images uint8[B, C, H, W, 3], state float[B, S]
        (robot units) and a text embedding float[B, D] (``encode_text``)."""
        s = self.state_proj((state - self.state_mean) / self.state_std)
        return self.fuse(torch.cat([self.encode_images(images), text, s], dim=-1))

    # -- flow matching ---------------------------------------------------------------------------
    def flow_loss(
        self, features: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Flow-matching loss: mean squared velocity error over valid steps.

        Args:
            features: float[B, F].
            actions: float[B, P, A] in robot units.
            valid: bool[B, P], false where the chunk runs past the episode's end (padding).
        """
        a = self.normalize_actions(actions)
        eps = torch.randn(a.shape, generator=generator, device=a.device)
        tau = torch.rand(a.shape[0], generator=generator, device=a.device)
        x = tau[:, None, None] * a + (1 - tau[:, None, None]) * eps
        err = (self.expert(x, tau, features) - (a - eps)).pow(2).mean(-1)
        w = valid.to(err.dtype)
        return (err * w).sum() / w.sum().clamp_min(1.0)

    @torch.no_grad()
    def sample(self, features: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Action chunks float[B, P, A] (robot units) by Euler integration of the flow from noise."""
        b = features.shape[0]
        x = torch.randn((b, self.cfg.chunk_length, self.cfg.action_dim), generator=generator, device=features.device)
        dt = 1.0 / steps
        for k in range(steps):
            tau = torch.full((b,), k * dt, device=features.device)
            x = x + dt * self.expert(x, tau, features)
        return self.unnormalize_actions(x)

    def sample_guided(
        self,
        features: torch.Tensor,
        steps: int,
        prefix: torch.Tensor,
        weights: torch.Tensor,
        delay: torch.Tensor,
        max_guidance: float = 5.0,
        generator: torch.Generator | None = None,
        hard_prefix: bool = True,
    ) -> torch.Tensor:
        """Action chunks float[B, P, A] (robot units) inpainted against a committed prefix (RTC).

        Each Euler step from noise (tau = 0) to data (tau = 1) corrects the velocity towards the prefix:
        x1 = x + (1 - tau) v is the predicted chunk, g = (dx1/dx)^T [(Y - x1) * W] (one vector-Jacobian
        product) and v <- v + min(beta, (1 - tau)/tau * (tau^2 + (1 - tau)^2)/(1 - tau)^2) g, all in
        normalised action units. Samples whose weights are all zero are sampled exactly as :meth:`sample`
        (the same noise draws).

        Args:
            features: float[B, F], the observation embeddings.
            steps: Euler steps.
            prefix: float[B, P, A], Y, the committed prefix in robot units (padded past its end).
            weights: float[B, P], W, the guidance mask (``tandem.policies.tiny_vla.rtc.prefix_weights``).
            delay: int[B], d, frozen steps per sample.
            max_guidance: beta, the cap of the guidance weight.
            generator: noise generator.
            hard_prefix: return the first d steps equal to the prefix (the old plan runs there; the
                scheduler checks this to know the policy honoured the request).
        """
        b = features.shape[0]
        feats = features.detach().clone()  # a normal tensor: inference-mode tensors cannot enter autograd
        y = self.normalize_actions(prefix.detach().clone().float())
        w = weights.detach().clone().float()[..., None]
        x = torch.randn((b, self.cfg.chunk_length, self.cfg.action_dim), generator=generator, device=features.device)
        guided = bool((w > 0).any())
        dt = 1.0 / steps
        for k in range(steps):
            tau_f = k * dt
            tau = torch.full((b,), tau_f, device=features.device)
            if not guided:
                with torch.no_grad():
                    x = x + dt * self.expert(x, tau, feats)
                continue
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                v = self.expert(xg, tau, feats)
                x1 = xg + (1.0 - tau_f) * v
                (g,) = torch.autograd.grad(x1, xg, grad_outputs=(y - x1.detach()) * w)
            c = guidance_weight(tau_f, max_guidance)
            x = (x + dt * (v.detach() + c * g)).detach()
        if hard_prefix:
            steps_i = torch.arange(self.cfg.chunk_length, device=features.device)[None, :, None]
            frozen = steps_i < delay.to(features.device).reshape(b, 1, 1)
            x = torch.where(frozen, y, x)
        return self.unnormalize_actions(x)


def weights_schema(model: nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (numpy dtype, shape) of every tensor of ``model.state_dict()``: the schema of the ``base``
    weight kind the learner publishes and the robot's policy accepts."""
    return {k: (str(v.detach().cpu().numpy().dtype), tuple(v.shape)) for k, v in model.state_dict().items()}


def weights_arrays(model: nn.Module) -> dict[str, Any]:
    """Numpy copies (on the CPU) of every tensor of ``model.state_dict()``, keyed like :func:`weights_schema`."""
    return {k: v.detach().to("cpu").numpy().copy() for k, v in model.state_dict().items()}


def model_with_weights(model: nn.Module, arrays: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` (same config, same device, eval mode) holding ``arrays`` instead of its weights.

    Raises:
        ValueError: the arrays do not match ``model``'s state_dict (names, dtypes, shapes) or hold NaN or inf.
    """
    import copy

    import numpy as np

    schema = weights_schema(model)
    missing, extra = sorted(set(schema) - set(arrays)), sorted(set(arrays) - set(schema))
    if missing or extra:
        raise ValueError(f"base weights names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, (dtype, shape) in schema.items():
        arr = np.asarray(arrays[name])
        if str(arr.dtype) != dtype or tuple(arr.shape) != tuple(shape):
            raise ValueError(f"base weights {name}: got {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"base weights {name}: non-finite values")
    device = next(model.parameters()).device
    new = copy.deepcopy(model)
    new.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
    return new.to(device).eval()


# -- checkpoints -----------------------------------------------------------------------------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_TYPE = "tiny_vla"


def save_checkpoint(model: TinyVLA, tokenizer: Any, path: Any, meta: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` + tokenizer files into directory ``path``.

    ``config.json`` records the sha256 of ``model.safetensors`` (``weights_sha256``), which
    :func:`load_checkpoint` verifies before loading. Written into a sibling temporary directory first
    and renamed over ``path``, so a crash never leaves a half-written checkpoint where a good one was.
    """
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE))
    tokenizer.save_pretrained(str(tmp))
    digest = hashlib.sha256((tmp / WEIGHTS_FILE).read_bytes()).hexdigest()
    doc = {"type": CHECKPOINT_TYPE, "model": model.cfg.to_dict(), "meta": meta or {}, "weights_sha256": digest}
    (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Any, device: str = "cpu") -> tuple[TinyVLA, Any, dict[str, Any]]:
    """(model in eval mode on ``device``, tokenizer, meta) from a checkpoint directory.

    The weights file is verified against ``config.json``'s ``weights_sha256`` before it is loaded (a
    checkpoint from before tandem recorded it loads with a warning that it is unverified).

    Raises:
        PolicyLoadError: the directory is missing, a file is missing or corrupt (its sha256 differs
            from the recorded one), or the weights do not match the config; the message names the
            directory and the problem.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_dir():
        raise PolicyLoadError(f"tiny_vla checkpoint directory {str(path)!r} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json"):
        if not (path / name).is_file():
            raise PolicyLoadError(f"tiny_vla checkpoint {str(path)!r} has no {name}; is it a tiny_vla checkpoint?")
    try:
        doc = json.loads((path / CONFIG_FILE).read_text())
        if doc.get("type") != CHECKPOINT_TYPE:
            raise ValueError(f"type is {doc.get('type')!r}, expected {CHECKPOINT_TYPE!r}")
        cfg = TinyVLAModelConfig(**doc["model"])
        recorded = doc.get("weights_sha256")
        if recorded is not None and not (isinstance(recorded, str) and len(recorded) == 64):
            raise ValueError(f"weights_sha256 is {str(recorded)[:80]!r}, expected 64 hex digits")
    except Exception as exc:
        raise PolicyLoadError(f"tiny_vla checkpoint {str(path)!r}: bad {CONFIG_FILE}: {exc}") from exc
    data = (path / WEIGHTS_FILE).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if recorded is None:
        log.warning("tiny_vla checkpoint %s records no weights_sha256 in %s: its weights are not verified "
                    "(save it again with tandem pretrain to record one)", path, CONFIG_FILE)
    elif actual != recorded:
        raise PolicyLoadError(
            f"tiny_vla checkpoint {str(path)!r}: {WEIGHTS_FILE} is corrupt: its sha256 {actual[:16]}... differs "
            f"from weights_sha256 {recorded[:16]}... in {CONFIG_FILE}; restore the checkpoint or train it again"
        )
    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:
        raise PolicyLoadError(f"tiny_vla checkpoint {str(path)!r}: cannot load the tokenizer: {exc}") from exc
    model = TinyVLA(cfg)
    try:
        from safetensors.torch import load

        state = load(data)
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise PolicyLoadError(
            f"tiny_vla checkpoint {str(path)!r}: {WEIGHTS_FILE} is corrupt or does not match {CONFIG_FILE}: "
            f"{str(exc)[:300]}"
        ) from exc
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise PolicyLoadError(f"tiny_vla checkpoint {str(path)!r}: weight {name} holds NaN or inf")
    model.to(device).eval()
    return model, tokenizer, dict(doc.get("meta", {}))
