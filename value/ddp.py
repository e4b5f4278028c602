"""Several learner processes (``torchrun``) with DistributedDataParallel.

Rank 0 owns the sockets and the replay store. Every training step it samples ``world_size`` x B
records and broadcasts a command (idle, batch, stop) and the batch to all ranks as one packed wire
message (msgpack header + raw arrays, no pickle); each rank trains on its strided shard of B (every buffer on every rank, see :func:`shard`), and DDP
averages the gradients, so all ranks hold identical parameters after every step. Backend: gloo on
CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tandem.protocol.wire import DEFAULT_MAX_BYTES, Message, decode, encode, pack_frames, unpack_frames

IDLE, BATCH, STOP = 0, 1, 2


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 (owns the sockets, the store and the checkpoints)."""
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    A single process (no WORLD_SIZE, or 1) starts no group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)


def _comm_device(info: DistInfo) -> str:
    return f"cuda:{info.local_rank}" if info.backend == "nccl" else "cpu"


def broadcast_step(info: DistInfo, command: int, batch: dict[str, np.ndarray] | None = None) -> tuple[int, dict[str, np.ndarray] | None]:
    """Rank 0 sends (command, batch); every rank returns them. Non-zero ranks pass anything."""
    if not info.enabled:
        return command, batch
    import torch
    import torch.distributed as dist

    dev = _comm_device(info)
    if info.is_main:
        blob = pack_frames(encode(Message(kind="batch", arrays=batch))) if command == BATCH else b""
        ctrl = torch.tensor([command, len(blob)], dtype=torch.int64, device=dev)
    else:
        ctrl = torch.zeros(2, dtype=torch.int64, device=dev)
    dist.broadcast(ctrl, src=0)
    command, size = int(ctrl[0]), int(ctrl[1])
    if command != BATCH:
        return command, None
    if info.is_main:
        data = torch.frombuffer(bytearray(blob), dtype=torch.uint8).to(dev)
    else:
        data = torch.empty(size, dtype=torch.uint8, device=dev)
    dist.broadcast(data, src=0)
    if info.is_main:
        return command, batch
    raw = data.cpu().numpy().tobytes()
    return command, decode(unpack_frames(raw), max_bytes=max(DEFAULT_MAX_BYTES, size), copy=True).arrays


def shard(batch: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """This rank's B rows of a batch of ``world_size`` x B: rows rank, rank + world_size, rank + 2 world_size...

    The replay hands a batch over buffer by buffer (demo rows, then autonomous, then takeover), so a
    contiguous slice would give one rank only autonomous records and another only takeovers; the strided
    slice gives every rank each buffer's share to within one row.
    """
    if not info.enabled:
        return batch
    n = len(next(iter(batch.values()))) // info.world_size
    return {k: v[info.rank : n * info.world_size : info.world_size] for k, v in batch.items()}


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
