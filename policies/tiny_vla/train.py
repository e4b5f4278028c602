"""Behaviour cloning of the tiny VLA from a LeRobotDataset: the data, the model and the training loop.

1. **Data** (:func:`load_demos`): the dataset is opened with lerobot's ``LeRobotDataset`` with
   ``delta_timestamps={"action": [k / fps for k < P]}``, so each frame comes with the next P actions
   (``action_is_pad`` marks steps past the episode's end). Only successful episodes are used when the
   recorder's ``meta/tandem_episodes.jsonl`` says which they are. The frames are read once into memory
   (images uint8) - a few thousand 96x96 frames are a few hundred MB at most.
2. **Model** (:func:`build_model`): :class:`tandem.policies.tiny_vla.model.TinyVLA`; its state/action sizes,
   cameras and image size come from the dataset, the vocabulary from the dataset's instructions plus every
   MetaWorld instruction. Normalisation statistics are computed from the data and stored in the checkpoint.
3. **Training** (:func:`train`): AdamW with linear warm-up and cosine decay, flow-matching loss on the
   action chunk, random-shift image augmentation, a progress bar. Every ``eval_every`` steps (and at the
   end) the caller's ``evaluate`` (if any) scores the model, and the checkpoint (``model.safetensors`` +
   ``config.json`` + tokenizer) is written to ``out`` (atomically).

Running the policy in simulation needs the runtime, which components below it may not import: that
evaluation is ``tandem.commands.pretrain.evaluate``, handed in by ``tandem pretrain``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, non_negative, positive
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY
from tandem.hardware.metaworld_robot import TASK_INSTRUCTIONS
from tandem.policies.base import PolicyLoadError
from tandem.policies.loading import resolve_device, set_torch_threads
from tandem.policies.tiny_vla.model import TinyVLA, TinyVLAModelConfig, save_checkpoint
from tandem.policies.tiny_vla.tokenizer import build_tokenizer, encode

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Behaviour cloning settings (``configs/pretrain.yaml``).

    Attributes:
        dataset: LeRobotDataset root directory (``tandem demos`` writes ``data/demos``).
        repo_id: the dataset's repo id ("" = ``local/<directory name>``).
        out: checkpoint directory to write.
        steps: optimiser steps.
        batch_size: samples per step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps (then cosine decay to 10% of ``lr``).
        grad_clip: gradient norm clip (0: off).
        action_key: dataset feature to imitate ("action": what was executed; "base_action": proposals).
        only_successes: train only on episodes whose recorded outcome is a success.
        max_episodes: use at most this many episodes (0: all).
        image_shift: random-shift augmentation, in pixels (0: off).
        eval_every: evaluate (and checkpoint) every this many steps (0: only at the end).
        eval_episodes: evaluation episodes per task.
        eval_seed: seed of the first evaluation episode (keep it away from the demonstrations' seeds).
        eval_max_steps: evaluation episode time limit in ticks.
        horizon: H, the execution horizon of the evaluation sessions.
        device: "auto" (cuda when available), "cpu", "cuda".
        torch_threads: torch intra-op threads (0: torch's default).
        seed: seed of initialisation, batches and noise.
        version: weights version written into the checkpoint (chunks carry it).
        model: architecture; state/action sizes, cameras, image size and vocabulary come from the data.
    """

    dataset: str = "data/demos"
    repo_id: str = ""
    out: str = "checkpoints/tiny_vla"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    action_key: str = "action"
    only_successes: bool = True
    max_episodes: int = 0
    image_shift: int = 4
    eval_every: int = 0
    eval_episodes: int = 3
    eval_seed: int = 1000
    eval_max_steps: int = 200
    horizon: int = 10
    device: str = "auto"
    torch_threads: int = 1
    seed: int = 0
    version: int = 1
    model: TinyVLAModelConfig = field(default_factory=TinyVLAModelConfig)

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ConfigError("pretrain.dataset", self.dataset, "set the LeRobotDataset directory")
        if not self.out:
            raise ConfigError("pretrain.out", self.out, "set the checkpoint directory")
        in_range("pretrain.steps", self.steps, 1, 10_000_000)
        in_range("pretrain.batch_size", self.batch_size, 1, 65536)
        positive("pretrain.lr", self.lr)
        non_negative("pretrain.weight_decay", self.weight_decay)
        non_negative("pretrain.warmup_steps", self.warmup_steps)
        non_negative("pretrain.grad_clip", self.grad_clip)
        non_negative("pretrain.max_episodes", self.max_episodes)
        in_range("pretrain.image_shift", self.image_shift, 0, 64)
        non_negative("pretrain.eval_every", self.eval_every)
        non_negative("pretrain.eval_episodes", self.eval_episodes)
        in_range("pretrain.eval_max_steps", self.eval_max_steps, 1, 500)
        in_range("pretrain.horizon", self.horizon, 1, 1000)
        non_negative("pretrain.torch_threads", self.torch_threads)
        if isinstance(self.model, dict):
            self.model = TinyVLAModelConfig(**self.model)


@dataclass
class DemoData:
    """Demonstration frames in memory.

    Attributes:
        images: uint8[N, C, H, W, 3] (C cameras; C = 0 for state-only data).
        state: float32[N, S].
        actions: float32[N, P, A], the P actions from each frame on.
        valid: bool[N, P], false past the episode's end.
        task_index: int64[N], index into ``tasks``.
        tasks: the language instructions.
        image_keys: camera feature keys, in order.
        episodes: number of episodes used.
        fps: the dataset's frame rate.
    """

    images: torch.Tensor
    state: torch.Tensor
    actions: torch.Tensor
    valid: torch.Tensor
    task_index: torch.Tensor
    tasks: list[str]
    image_keys: list[str]
    episodes: int
    fps: float

    def __len__(self) -> int:
        return int(self.state.shape[0])


def successful_episodes(root: Path) -> list[int] | None:
    """Episode indices whose outcome is a success, from the recorder's ``meta/tandem_episodes.jsonl``
    (None when the dataset was not written by tandem's recorder)."""
    path = root / "meta" / "tandem_episodes.jsonl"
    if not path.is_file():
        return None
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if entry.get("success"):
                out.append(int(entry["episode_index"]))
    return sorted(set(out))


def load_demos(config: PretrainConfig, chunk_length: int) -> DemoData:
    """Read the dataset once with ``LeRobotDataset`` (action chunks via ``delta_timestamps``)."""
    root = Path(config.dataset)
    if not (root / "meta" / "info.json").is_file():
        raise PolicyLoadError(f"pretrain.dataset={config.dataset!r} is not a LeRobotDataset (no meta/info.json)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    repo_id = config.repo_id or f"local/{root.name}"
    meta = LeRobotDatasetMetadata(repo_id, root=root)
    if config.action_key not in meta.features or STATE_KEY not in meta.features:
        raise PolicyLoadError(
            f"dataset {root} needs {STATE_KEY!r} and {config.action_key!r}; it has {sorted(meta.features)}"
        )
    episodes = list(range(meta.total_episodes))
    if config.only_successes:
        ok = successful_episodes(root)
        if ok is not None:
            episodes = [e for e in episodes if e in set(ok)]
    if config.max_episodes:
        episodes = episodes[: config.max_episodes]
    if not episodes:
        raise PolicyLoadError(f"dataset {root} has no (successful) episodes to learn from")
    fps = float(meta.fps)
    ds = LeRobotDataset(
        repo_id, root=root, episodes=episodes,
        delta_timestamps={config.action_key: [k / fps for k in range(chunk_length)]},
    )
    image_keys = [k for k in meta.features if k.startswith(IMAGE_PREFIX)]
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False, num_workers=0)
    images, states, actions, valid, tasks_seen = [], [], [], [], []
    for batch in loader:
        if image_keys:
            imgs = torch.stack([batch[k] for k in image_keys], dim=1)  # [B, C, 3, H, W] float in [0, 1]
            images.append(imgs.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous())
        states.append(batch[STATE_KEY].float())
        actions.append(batch[config.action_key].float())
        valid.append(~batch[f"{config.action_key}_is_pad"])
        tasks_seen.extend(batch["task"])
    tasks = sorted(set(tasks_seen))
    n = sum(len(s) for s in states)
    return DemoData(
        images=torch.cat(images) if images else torch.zeros((n, 0, 1, 1, 3), dtype=torch.uint8),
        state=torch.cat(states),
        actions=torch.cat(actions),
        valid=torch.cat(valid),
        task_index=torch.tensor([tasks.index(t) for t in tasks_seen], dtype=torch.int64),
        tasks=tasks,
        image_keys=image_keys,
        episodes=len(episodes),
        fps=fps,
    )


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image uint8[B, C, H, W, 3] by up to ``pad`` pixels (edge padding), per sample."""
    if pad <= 0 or images.shape[1] == 0:
        return images
    b, c, h, w, _ = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(b, c * 3, h, w).float()
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    out = torch.stack([x[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offsets.tolist())])
    return out.reshape(b, c, 3, h, w).permute(0, 1, 3, 4, 2).to(torch.uint8)


def build_model(config: PretrainConfig, data: DemoData, tokenizer: Any) -> TinyVLA:
    """A fresh TinyVLA sized for ``data``, with normalisation statistics from it."""
    size = int(data.images.shape[2]) if data.image_keys else config.model.image_size
    mcfg = TinyVLAModelConfig(**{
        **asdict(config.model),
        "state_dim": int(data.state.shape[1]),
        "action_dim": int(data.actions.shape[2]),
        "image_keys": list(data.image_keys),
        "image_size": size,
        "vocab_size": len(tokenizer),
    })
    torch.manual_seed(config.seed)
    model = TinyVLA(mcfg)
    acts = data.actions[data.valid]
    model.set_stats(data.state.mean(0), data.state.std(0), acts.mean(0), acts.std(0))
    return model


#: scores a model during training: (model, tokenizer, data, config, weights version) -> a JSON-able dict
#: with "success_rate" and "per_task" (``tandem.commands.pretrain.evaluate`` runs it in simulation)
Evaluate = Callable[[TinyVLA, Any, DemoData, PretrainConfig, int], dict[str, Any]]


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(config: PretrainConfig, evaluate: Evaluate | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate (with ``evaluate``, when given and ``config.eval_episodes`` > 0) and checkpoint;
    returns the summary (also in the checkpoint's ``meta``)."""
    t_start = time.perf_counter()
    set_torch_threads(config.torch_threads)
    device = resolve_device(config.device)
    data = load_demos(config, config.model.chunk_length)
    log.info("pretrain: %d frames from %d episodes, tasks %s, cameras %s", len(data), data.episodes, data.tasks,
             data.image_keys)
    tokenizer = build_tokenizer([*TASK_INSTRUCTIONS.values(), *data.tasks], config.model.max_text_len)
    model = build_model(config, data, tokenizer).to(device).train()
    ids, mask = encode(tokenizer, data.tasks, model.cfg.max_text_len)
    task_ids, task_mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    meta: dict[str, Any] = {}
    bar = tqdm(range(config.steps), desc="pretrain", disable=not progress, dynamic_ncols=True)

    def checkpoint(step: int) -> None:
        entry: dict[str, Any] = {"step": step, "loss": round(float(np.mean(losses[-100:])), 5)}
        if evaluate is not None and config.eval_episodes > 0:
            entry["eval"] = evaluate(model, tokenizer, data, config, config.version)
            bar.write(f"step {step}: loss {entry['loss']:.4f}  success {entry['eval']['success_rate']:.0%} "
                      f"{entry['eval']['per_task']}")
        history.append(entry)
        meta.update({
            "version": config.version, "steps": step, "frames": len(data), "episodes": data.episodes,
            "tasks": data.tasks, "dataset": str(config.dataset), "history": history,
            "train_s": round(time.perf_counter() - t_start, 1), "pretrain": _jsonable(asdict(config)),
        })
        save_checkpoint(model, tokenizer, config.out, meta)

    for step in bar:
        for group in opt.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        idx = torch.randint(len(data), (config.batch_size,), generator=gen)
        images = random_shift(data.images[idx], config.image_shift, gen).to(device)
        ti = data.task_index[idx].to(device)
        uniq, inverse = torch.unique(ti, return_inverse=True)
        text = model.encode_text(task_ids[uniq], task_mask[uniq])[inverse]  # each instruction encoded once
        feats = model.features(images, data.state[idx].to(device), text)
        loss = model.flow_loss(feats, data.actions[idx].to(device), data.valid[idx].to(device), generator=noise_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        done = step + 1
        if config.eval_every and done % config.eval_every == 0 and done < config.steps:
            checkpoint(done)
    checkpoint(config.steps)
    bar.close()
    return meta


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
