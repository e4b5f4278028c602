"""Crash-safe learner checkpoints: write a new file, fsync, rename into place; never delete first.

Layout of the checkpoint directory::

    ckpt-00001200.pt      torch.save of the learner state at update 1200
    latest.json           {"file": "ckpt-00001200.pt", "step": 1200, "sha256": ...} (atomic rename)

A checkpoint is written to ``*.tmp``, fsynced, renamed, and the directory fsynced; only then is
``latest.json`` replaced, and only after that are checkpoints beyond ``keep`` removed. Loading checks
the sha256 recorded in ``latest.json``; a missing or corrupt file falls back to the newest readable
older one, so a kill at any moment leaves a usable checkpoint (or none, before the first).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tandem.core.durable import write_bytes_atomic

log = logging.getLogger(__name__)

LATEST = "latest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and point ``latest.json`` at it.

    Returns:
        the checkpoint's path.
    """
    import io

    import torch

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"ckpt-{step:08d}.pt"
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    latest = {"file": path.name, "step": int(step), "sha256": hashlib.sha256(data).hexdigest()}
    write_bytes_atomic(root / LATEST, json.dumps(latest).encode())
    for old in sorted(root.glob("ckpt-*.pt"))[:-keep] if keep > 0 else []:
        if old.name != path.name:
            old.unlink(missing_ok=True)
    return path


def _candidates(root: Path) -> list[tuple[Path, str | None]]:
    """Checkpoints to try, best first: the one in latest.json (with its hash), then newest to oldest."""
    out: list[tuple[Path, str | None]] = []
    try:
        latest = json.loads((root / LATEST).read_text())
        out.append((root / latest["file"], latest["sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for p in sorted(root.glob("ckpt-*.pt"), reverse=True):
        if all(p != q for q, _ in out):
            out.append((p, None))
    return out


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> dict[str, Any] | None:
    """The newest intact checkpoint's state (None if there is none)."""
    import torch

    root = Path(directory)
    if not root.is_dir():
        return None
    for path, digest in _candidates(root):
        if not path.exists():
            continue
        if digest is not None and _sha256(path) != digest:
            log.warning("checkpoint %s does not match its recorded sha256; trying an older one", path)
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torn or corrupt file: fall back
            log.warning("checkpoint %s unreadable (%s); trying an older one", path, exc)
            continue
        log.info("resuming from %s", path)
        return state
    return None
