"""Crash-safe learner checkpoints: write a new file, fsync, rename into place; never delete first.

Layout of the checkpoint directory::

    ckpt-00001200.pt          torch.save of the learner state at update 1200
    ckpt-00001200.pt.sha256   its sha256 (hex), written before latest.json points at it
    latest.json               {"file": "ckpt-00001200.pt", "step": 1200, "sha256": ...} (atomic rename)

A checkpoint is written to ``*.tmp``, fsynced, renamed, and the directory fsynced; then its sha256
file; only then is ``latest.json`` replaced, and only after that are checkpoints beyond ``keep``
removed. Loading verifies every file it tries against its recorded sha256 (``latest.json``'s, else the
file's own ``.sha256``) before ``torch.load``; a file with no recorded hash, another hash, or that does
not load falls back to the newest verified older one, so a kill at any moment leaves a usable
checkpoint (or none, before the first). When checkpoints exist but none can be used,
:func:`load_checkpoint` raises :class:`CheckpointError` rather than let training restart at step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tandem.core.durable import write_bytes_atomic
from tandem.core.errors import ConfigError

log = logging.getLogger(__name__)

LATEST = "latest.json"
HASH_SUFFIX = ".sha256"


class CheckpointError(ConfigError):
    """Checkpoints exist but none is intact: the message lists each file's problem and what to do."""

    def __init__(self, message: str, directory: str = "") -> None:
        Exception.__init__(self, message)
        self.field, self.value, self.allowed = "checkpoints", directory, message


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
    digest = hashlib.sha256(data).hexdigest()
    write_bytes_atomic(path.with_name(path.name + HASH_SUFFIX), digest.encode())
    latest = {"file": path.name, "step": int(step), "sha256": digest}
    write_bytes_atomic(root / LATEST, json.dumps(latest).encode())
    for old in sorted(root.glob("ckpt-*.pt"))[:-keep] if keep > 0 else []:
        if old.name != path.name:
            old.unlink(missing_ok=True)
            old.with_name(old.name + HASH_SUFFIX).unlink(missing_ok=True)
    return path


def _recorded_hash(path: Path) -> str | None:
    """The sha256 recorded beside ``path`` (None: none, or unreadable)."""
    try:
        text = path.with_name(path.name + HASH_SUFFIX).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _candidates(root: Path) -> list[tuple[Path, str | None]]:
    """Checkpoints to try, best first, each with its recorded sha256 (None: none recorded): the one in
    latest.json, then newest to oldest."""
    out: list[tuple[Path, str | None]] = []
    try:
        latest = json.loads((root / LATEST).read_text())
        name, digest = latest["file"], latest["sha256"]
        if isinstance(name, str) and Path(name).name == name and name.startswith("ckpt-") and isinstance(digest, str):
            out.append((root / name, digest))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for p in sorted(root.glob("ckpt-*.pt"), reverse=True):
        if all(p != q for q, _ in out):
            out.append((p, _recorded_hash(p)))
    return out


def load_checkpoint_file(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """One checkpoint file's state, verified against the sha256 recorded beside it (``<file>.sha256``,
    as :func:`save_checkpoint` writes it) before it is loaded.

    Raises:
        CheckpointError: no recorded sha256 beside the file, or the file does not match it.
    """
    import torch

    path = Path(path)
    digest = _recorded_hash(path)
    if digest is None:
        raise CheckpointError(f"{path} has no {path.name}{HASH_SUFFIX} beside it: give the learner store "
                              "directory, or copy the file with its .sha256", str(path))
    if _sha256(path) != digest:
        raise CheckpointError(f"{path} does not match its recorded sha256 (damaged or altered)", str(path))
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(directory: str | Path, map_location: str = "cpu") -> dict[str, Any] | None:
    """The newest intact checkpoint's state; None when ``directory`` holds no checkpoint (or only the
    unhashed file of a first checkpoint that a kill interrupted: ``latest.json`` was never written).

    Every file is verified against its recorded sha256 before it is loaded.

    Raises:
        CheckpointError: checkpoints (or ``latest.json``) exist but none is intact; resuming would
            silently restart training at step 0.
    """
    import torch

    root = Path(directory)
    if not root.is_dir():
        return None
    problems: list[str] = []
    for path, digest in _candidates(root):
        if not path.exists():
            problems.append(f"{path.name}: missing")
            continue
        if digest is None:
            problems.append(f"{path.name}: no recorded sha256")
            log.warning("checkpoint %s has no recorded sha256; trying an older one", path)
            continue
        if _sha256(path) != digest:
            problems.append(f"{path.name}: sha256 differs from the recorded one")
            log.warning("checkpoint %s does not match its recorded sha256; trying an older one", path)
            continue
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # a file written with its hash but unloadable: fall back
            problems.append(f"{path.name}: does not load ({str(exc)[:80]})")
            log.warning("checkpoint %s unreadable (%s); trying an older one", path, exc)
            continue
        log.info("resuming from %s", path)
        return state
    if not (root / LATEST).exists() and all(p.endswith(": no recorded sha256") for p in problems):
        if problems:  # a kill inside the very first checkpoint, before its hash and latest.json
            log.warning("checkpoints %s: only unfinished files (%s); starting at step 0", root, "; ".join(problems))
        return None  # a new store: start at step 0
    raise CheckpointError(
        f"no usable checkpoint in {root} ({'; '.join(problems) or 'latest.json names no checkpoint'}); "
        f"tandem will not restart training at step 0 over them. Restore an intact checkpoint there, or move "
        f"{root} aside to start a new run at step 0", str(root),
    )
