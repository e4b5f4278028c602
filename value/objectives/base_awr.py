"""``base_awr``: ALOE's improvement step, an advantage-weighted update of the tiny VLA base itself.

Every update is a critic step (the chunked critic's TD regression, ``critic.py``; its bootstrap action
a' is a chunk sampled from the *current* base at s_{t+H} when the base can be run there, else the
recorded next proposal) and, when due, a base step:

    L_base = sum_b w_b * l_b / B,    l_b = the tiny VLA's flow-matching loss on the data chunk of sample b

with the per-sample weight w_b chosen by ``weighting``:

- ``aloe``:   w = clip(exp(A / beta), 0, w_max),  A = Q_pess(s, a_data) - V(s),
              V(s) = mean_k Q_pess(s, a_k), a_k ~ pi_current(s), k = 1..samples (``advantages.py``);
- ``dagger``: w = 1 (imitate every executed chunk, human takeovers included: the DAgger baseline);
- ``awr``:    w = clip(exp(A_beh / beta), 0, w_max) with a *progress* value of past behaviour instead of
              the current policy's: A_beh = y - V_beh(s), y the chunk's discounted reward plus
              gamma^H V_beh(s_{t+H}) (zero after a terminal), V_beh a small state-value ensemble trained
              by the same regression on the replayed data. ALOE's AWR baseline fits such a value to
              Monte-Carlo returns; a batch here holds one chunk's rewards and its successor, not the whole
              episode's return, so V_beh is its bootstrapped (TD(H)) estimate.

The data chunk is the executed one (what ran, human actions included), H = ``session.horizon`` ticks;
the base predicts P = its chunk length; the loss covers the first min(H, P) steps (the rest is masked
as padding, as in pretraining). The base reads each sample's instruction and cameras: the learner
attaches ``task`` and ``images_jpeg`` (camera key -> JPEG bytes, what the robot sent in the chunk record
with ``link.image_size`` > 0) to every batch (``value/record_extras.py``); they are decoded here with
torchvision (:func:`decode_jpeg_batch`) and resized to the base's image size. A batch may carry
``images`` uint8[B, C, h, w, 3] already decoded instead. Samples whose instruction (and ``task`` in the
config is empty) or, for a base with cameras, images are unknown are left out of the base step (the
critic still trains on them): ``base/rows`` counts the ones used.

Publishes ``{"base": the network's state_dict as numpy arrays}`` (the schema the robot's policy
accepts); :meth:`BaseAWRObjective.save_published` writes each published version as a tiny VLA
checkpoint (the learner keeps them in ``<store_dir>/base/v<N>`` for ``policy.version=N``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, non_negative, one_of, positive
from tandem.policies.heads.build import critic_config
from tandem.policies.heads.config import Dims, build_settings
from tandem.policies.heads.critic import ChunkedCritic
from tandem.policies.tiny_vla.model import load_checkpoint, save_checkpoint, weights_arrays
from tandem.policies.tiny_vla.tokenizer import encode
from tandem.value.objectives.advantages import advantage, awr_weights, weighted_bc_loss
from tandem.value.objectives.common import grad_step, to_tensors
from tandem.value.objectives.critic import CriticObjective, CriticObjectiveConfig
from tandem.value.objectives.targets import valid_ticks

WEIGHTINGS = ("aloe", "dagger", "awr")


@dataclass
class BaseAWRConfig:
    """The base update (``learner.objective.base`` when ``learner.objective.type=base_awr``).

    Attributes:
        checkpoint: the tiny VLA checkpoint the robot runs (``policy.path``): the learner starts from it.
        weighting: "aloe" (critic advantage of the current policy), "dagger" (w = 1) or "awr" (advantage
            over a progress value of past behaviour); see the module docstring.
        beta: temperature of the weights, in the critic's value units.
        w_max: cap of the weights.
        samples: K, current-policy chunks per state for V(s) (aloe).
        normalize: divide the weighted loss by the weight sum instead of the batch size.
        lr, weight_decay, grad_clip: AdamW settings of the base (grad_clip 0: off).
        base_every: one base step every this many critic steps.
        warmup_steps: critic-only updates before the first base step.
        task: the instruction of samples whose batch carries no ``task``.
        value_hidden: width of the progress value's MLP (awr).
        keep_versions: published versions kept in the learner's store (``<store_dir>/base``, for rollback;
            3.7 MB each for the shipped base); older ones are deleted.
        seed: seed of the flow noise and of the policy samples.
        device: where the base trains ("" = the learner's device).
    """

    checkpoint: str = "checkpoints/tiny_vla"
    weighting: str = "aloe"
    beta: float = 1.0
    w_max: float = 20.0
    samples: int = 4
    normalize: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    base_every: int = 1
    warmup_steps: int = 0
    task: str = ""
    value_hidden: int = 128
    keep_versions: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        one_of("weighting", self.weighting, WEIGHTINGS)
        positive("beta", self.beta)
        positive("w_max", self.w_max)
        in_range("samples", self.samples, 1, 256)
        positive("lr", self.lr)
        non_negative("weight_decay", self.weight_decay)
        non_negative("grad_clip", self.grad_clip)
        in_range("base_every", self.base_every, 1, 1_000_000)
        non_negative("warmup_steps", self.warmup_steps)
        in_range("value_hidden", self.value_hidden, 1, 65536)
        in_range("keep_versions", self.keep_versions, 1, 1_000_000)
        if not self.checkpoint:
            raise ConfigError("checkpoint", self.checkpoint, "the tiny VLA checkpoint the robot runs (policy.path)")


def decode_jpeg_batch(jpegs: list[list[bytes]]) -> np.ndarray:
    """JPEG images [B][C] (bytes) -> uint8[B, C, h, w, 3] (torchvision's decoder; all images one size).

    Raises:
        ValueError: an image is not a JPEG of the first image's size.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    out = []
    for cams in jpegs:
        row = []
        for data in cams:
            img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            row.append(img.permute(1, 2, 0).numpy())
        out.append(np.stack(row) if row else np.zeros((0, 1, 1, 3), np.uint8))
    shapes = {a.shape for a in out}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes in one batch: {sorted(shapes)[:3]}")
    return np.stack(out)


def flow_loss_per_sample(model: Any, features: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """The tiny VLA's flow-matching loss per sample: float[B] (mean squared velocity error over valid steps).

    Args:
        model: a ``TinyVLA``.
        features: float[B, F], the model's fused embedding.
        actions: float[B, P, A] in robot units (P the model's chunk length).
        valid: bool[B, P].
        generator: noise generator (on the model's device).
    """
    a = model.normalize_actions(actions)
    eps = torch.randn(a.shape, generator=generator, device=a.device)
    tau = torch.rand(a.shape[0], generator=generator, device=a.device)
    x = tau[:, None, None] * a + (1 - tau[:, None, None]) * eps
    err = (model.expert(x, tau, features) - (a - eps)).pow(2).mean(-1)  # [B, P]
    w = valid.to(err.dtype)
    return (err * w).sum(1) / w.sum(1).clamp_min(1.0)


class BaseAWRObjective:
    """The ``base_awr`` objective. Follows ``tandem.value.objectives.base.Objective``.

    Args:
        config: BaseAWRConfig.
        critic: CriticConfig settings (as the learner's ``objective.critic``).
        critic_objective: CriticObjectiveConfig settings.
        device: torch device.
        distributed: average gradients over ranks.
    """

    name = "base_awr"
    uses_record_extras = True  # the learner attaches each row's task and images (value/record_extras.py)

    def __init__(self, config: BaseAWRConfig, critic: dict | None = None, critic_objective: dict | None = None,
                 device: str = "cpu", distributed: bool = False) -> None:
        self.config = config
        self.critic_settings = dict(critic or {})
        self.critic_objective_config = build_settings(CriticObjectiveConfig, dict(critic_objective or {}),
                                                      "objective.critic_objective")
        critic_config(self.critic_settings, Dims(1, 1, 1, 1), "objective.critic")  # checked now, built later
        self.device = torch.device(device)
        self.distributed = distributed
        path = Path(config.checkpoint)
        if not path.is_absolute() and not path.exists():
            path = Path(__file__).resolve().parents[2] / path  # relative to the repository
        self.model, self.tokenizer, self.meta = load_checkpoint(path, str(self.device))
        self.model.train()
        # the learner numbers the bases it publishes after the one the robot starts from
        self.initial_versions = {"base": int(self.meta.get("version", 0))}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.critic_objective: CriticObjective | None = None
        self.value: torch.nn.Module | None = None
        self.value_optimizer: torch.optim.Optimizer | None = None
        self.dims: Dims | None = None
        self.base_steps = 0
        self._batch: dict[str, Any] | None = None  # the batch of the running update (for a')

    # -- building ----------------------------------------------------------------------------------
    def build(self, dims: Dims) -> None:
        """The critic (and the progress value for ``awr``) at the data's sizes."""
        from dataclasses import replace

        cfg = self.model.cfg
        if dims.action_dim != cfg.action_dim:
            raise ConfigError("objective.base.checkpoint", self.config.checkpoint,
                              f"its actions are {cfg.action_dim}-D but the records' are {dims.action_dim}-D")
        critic = ChunkedCritic(replace(critic_config(self.critic_settings, dims, "objective.critic"),
                                       device=str(self.device)))
        self.critic_objective = CriticObjective(critic, self.critic_objective_config, next_action=self._next_action,
                                                distributed=self.distributed)
        if self.config.weighting == "awr":
            h = self.config.value_hidden
            self.value = torch.nn.Sequential(
                torch.nn.Linear(dims.state_dim + dims.feature_dim, h), torch.nn.LayerNorm(h), torch.nn.GELU(),
                torch.nn.Linear(h, h), torch.nn.GELU(), torch.nn.Linear(h, 1)).to(self.device)
            self.value_optimizer = torch.optim.AdamW(self.value.parameters(), lr=critic.config.lr)
        self.dims = dims

    # -- the base network on a batch ---------------------------------------------------------------
    def _tasks(self, batch: dict[str, Any], n: int) -> list[str]:
        tasks = batch.get("task")
        tasks = [None] * n if tasks is None else list(np.asarray(tasks, dtype=object).reshape(-1))
        out = [str(t) if t is not None else self.config.task for t in tasks]
        if not all(out):
            raise ValueError("a sample carries no task and objective.base.task is empty: set the instruction")
        return out

    def usable_rows(self, batch: dict[str, Any]) -> np.ndarray:
        """bool[B]: the samples the base can be run on (instruction known; images known if it has cameras)."""
        n = len(batch["state"])
        tasks = batch.get("task")
        ok = np.full(n, bool(self.config.task)) if tasks is None else np.array(
            [t is not None or bool(self.config.task) for t in np.asarray(tasks, dtype=object).reshape(-1)], bool)
        keys = self.model.cfg.image_keys
        if keys and "images" not in batch:
            jpegs = batch.get("images_jpeg")
            have = np.zeros(n, bool) if jpegs is None else np.array(
                [isinstance(d, dict) and all(k in d for k in keys) for d in jpegs], bool)
            ok &= have
        return ok

    def _images(self, batch: dict[str, Any], n: int, prefix: str = "") -> torch.Tensor:
        """The base's camera images uint8[B, C, s, s, 3] (s its image size) of the batch."""
        cfg = self.model.cfg
        if not cfg.image_keys:
            return torch.zeros((n, 0, 1, 1, 3), dtype=torch.uint8, device=self.device)
        if prefix + "images" in batch:
            images = torch.as_tensor(np.asarray(batch[prefix + "images"]), dtype=torch.uint8, device=self.device)
        elif prefix + "images_jpeg" in batch:
            images = torch.from_numpy(decode_jpeg_batch(
                [[d[k] for k in cfg.image_keys] for d in batch[prefix + "images_jpeg"]])).to(self.device)
        else:
            raise ValueError(f"the base uses cameras {cfg.image_keys} but the batch has no {prefix}images")
        if images.shape[2:4] != (cfg.image_size, cfg.image_size):
            b, c, h, w, _ = images.shape
            x = images.reshape(b * c, h, w, 3).permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                                antialias=True, align_corners=False)
            images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(
                b, c, cfg.image_size, cfg.image_size, 3)
        return images

    def _features(self, batch: dict[str, Any], state: torch.Tensor, prefix: str = "") -> torch.Tensor:
        """The base's fused embedding float[B, F'] of the batch's (images, state, task)."""
        cfg = self.model.cfg
        b = state.shape[0]
        images = self._images(batch, b, prefix)
        ids, mask = encode(self.tokenizer, self._tasks(batch, b), cfg.max_text_len)
        text = self.model.encode_text(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
        return self.model.features(images, state, text)

    def _can_sample_next(self, batch: dict[str, Any]) -> bool:
        cams = not self.model.cfg.image_keys or "next_images" in batch or "next_images_jpeg" in batch
        return cams and bool(self.usable_rows(batch).all())

    @torch.no_grad()
    def _sample(self, feats: torch.Tensor, k: int, horizon: int) -> torch.Tensor:
        """k chunks per sample from the current base: float[B, k, H, A] (first H steps, clipped to [-1, 1])."""
        b = feats.shape[0]
        rep = feats.repeat_interleave(k, dim=0)
        chunks = self.model.sample(rep, self.model.cfg.flow_steps, generator=self.generator).clamp(-1.0, 1.0)
        chunks = chunks[:, :horizon]
        if chunks.shape[1] < horizon:  # a base chunk shorter than H: hold its last action
            chunks = torch.cat([chunks, chunks[:, -1:].expand(-1, horizon - chunks.shape[1], -1)], dim=1)
        return chunks.reshape(b, k, horizon, -1)

    def _next_action(self, next_state: torch.Tensor, next_features: torch.Tensor,
                     next_base: torch.Tensor) -> torch.Tensor:
        """a' for the TD target: a chunk of the current base at s_{t+H} (ALOE), else the recorded proposal."""
        batch = self._batch
        if batch is None or not self._can_sample_next(batch):
            return next_base
        with torch.no_grad():
            feats = self._features(batch, next_state, prefix="next_")
            return self._sample(feats, 1, next_base.shape[1])[:, 0]

    # -- one update ------------------------------------------------------------------------------
    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One critic step and, when due, one base step; returns their metrics."""
        if self.critic_objective is None:
            s, f = batch["state"].shape[1], batch["features"].shape[1]
            _, h, a = batch["executed"].shape
            self.build(Dims(int(s), int(f), int(h), int(a)))
        co = self.critic_objective
        b = to_tensors(batch, self.device)
        self._batch = batch
        try:
            metrics = co.update_tensors(b)
        finally:
            self._batch = None
        if self.value is not None:
            metrics.update(self._value_step(b))
        due = co.steps > self.config.warmup_steps and co.steps % self.config.base_every == 0
        if due:
            rows = self.usable_rows(batch)
            metrics["base/rows"] = float(rows.sum())
            if rows.any():
                if not rows.all():
                    keep = torch.from_numpy(rows).to(self.device)
                    n = len(rows)
                    batch = {k: (v[rows] if isinstance(v, np.ndarray) and len(v) == n else v) for k, v in batch.items()}
                    b = {k: v[keep] for k, v in b.items()}
                metrics.update(self._base_step(batch, b))
                self.base_steps += 1
        metrics["base/steps"] = float(self.base_steps)
        return metrics

    def _value_target(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """y = sum_k gamma^k r_k over valid ticks + gamma^h V_beh(s_{t+h}) (h valid ticks: H, or fewer for a
        truncated episode's last chunk bootstrapping from its final observation; no bootstrap after a terminal)."""
        gamma = self.critic_objective.critic.config.gamma
        scale = self.critic_objective.config.reward_scale
        h = b["reward"].shape[1]
        disc = gamma ** torch.arange(h, device=self.device, dtype=torch.float32)
        ret = (b["reward"] * scale * b["valid"].float() * disc).sum(1)
        with torch.no_grad():
            nxt = self.value(torch.cat([b["next_state"], b["next_features"]], dim=1)).squeeze(1)
        boot = (b["next_valid"] & ~b["done"]).float()
        return ret + gamma ** valid_ticks(b["valid"]) * boot * nxt

    def _value_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        y = self._value_target(b)
        v = self.value(torch.cat([b["state"], b["features"]], dim=1)).squeeze(1)
        loss = (v - y).pow(2).mean()
        grad_step(self.value_optimizer, loss, list(self.value.parameters()), 1.0, self.distributed)
        return {"value/loss": float(loss.detach())}

    def sample_weights(self, batch: dict[str, Any], b: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-sample weights w float[B] of the configured weighting (no gradient)."""
        cfg, co = self.config, self.critic_objective
        if cfg.weighting == "dagger":
            return torch.ones(b["state"].shape[0], device=self.device)
        with torch.no_grad():
            if cfg.weighting == "aloe":
                feats = self._features(batch, b["state"])
                policy = self._sample(feats, cfg.samples, b["executed"].shape[1])
                adv = advantage(co.critic, b["state"], b["features"], b["executed"], policy, generator=co.generator)
            else:
                v = self.value(torch.cat([b["state"], b["features"]], dim=1)).squeeze(1)
                adv = self._value_target(b) - v
        return awr_weights(adv, cfg.beta, cfg.w_max)

    def _base_step(self, batch: dict[str, Any], b: dict[str, torch.Tensor]) -> dict[str, float]:
        w = self.sample_weights(batch, b)
        loss_per, n = self.base_loss(batch, b)
        loss = weighted_bc_loss(loss_per, w, self.config.normalize)
        norm = grad_step(self.optimizer, loss, list(self.model.parameters()), self.config.grad_clip, self.distributed)
        return {"base/loss": float(loss.detach()), "base/flow_loss": float(loss_per.detach().mean()),
                "base/w_mean": float(w.mean()), "base/w_max": float(w.max()), "base/grad_norm": norm,
                "base/steps_covered": float(n)}

    def base_loss(self, batch: dict[str, Any], b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(the flow-matching loss per sample float[B] on the executed chunks, the steps covered min(H, P))."""
        p = self.model.cfg.chunk_length
        executed, valid = b["executed"], b["valid"]
        h = executed.shape[1]
        n = min(h, p)
        actions = torch.zeros((executed.shape[0], p, executed.shape[2]), device=self.device)
        mask = torch.zeros((executed.shape[0], p), dtype=torch.bool, device=self.device)
        actions[:, :n], mask[:, :n] = executed[:, :n], valid[:, :n]
        feats = self._features(batch, b["state"])
        return flow_loss_per_sample(self.model, feats, actions, mask, self.generator), n

    # -- publishing and checkpoints --------------------------------------------------------------
    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{"base": the tiny VLA's state_dict as numpy arrays} (what the robot's policy swaps in)."""
        return {"base": weights_arrays(self.model)}

    def save_published(self, kind: str, version: int, directory: Path) -> None:
        """Write published base ``version`` as a tiny VLA checkpoint in ``directory`` (other kinds: nothing)."""
        if kind != "base":
            return
        meta = {**{k: v for k, v in self.meta.items() if k != "history"}, "version": int(version),
                "base_steps": self.base_steps, "weighting": self.config.weighting}
        save_checkpoint(self.model, self.tokenizer, directory, meta)
        import shutil

        versions = sorted(p for p in Path(directory).parent.glob("v*") if p.is_dir() and p.name[1:].isdigit())
        for old in versions[: -self.config.keep_versions]:
            shutil.rmtree(old, ignore_errors=True)

    def state_dict(self) -> dict[str, Any]:
        """Base, its optimiser, critic objective, progress value, counters, generator."""
        return {
            "dims": list(self.dims) if self.dims is not None else None,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "critic_objective": self.critic_objective.state_dict() if self.critic_objective else None,
            "value": self.value.state_dict() if self.value is not None else None,
            "value_optimizer": self.value_optimizer.state_dict() if self.value_optimizer is not None else None,
            "base_steps": self.base_steps, "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        if state.get("dims"):
            self.build(Dims(*(int(d) for d in state["dims"])))
            self.critic_objective.load_state_dict(state["critic_objective"])
            if self.value is not None and state.get("value") is not None:
                self.value.load_state_dict(state["value"])
                self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.base_steps = int(state["base_steps"])
        self.generator.set_state(state["generator"])

