"""Corrupt checkpoint and weight files (issue #24, defect 9): every file is verified by its recorded sha256
before use, and a learner whose checkpoints are all unusable refuses to start instead of training from 0."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tandem.policies.base import PolicyLoadError
from tandem.protocol.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

MARK = 1234.5  # a value whose bytes are easy to find inside a checkpoint file


def flip_tensor_bytes(path: Path) -> None:
    """Change one float of the saved tensor in place: the file still loads, with a different value."""
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<f", MARK) * 4)
    assert at > 0
    data[at : at + 4] = struct.pack("<f", 9999.0)
    path.write_bytes(bytes(data))


def save_three(root: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(root, step, {"step": step, "w": torch.full((64,), MARK)}, keep=3)


def test_flipped_tensor_bytes_in_an_older_fallback_are_caught(tmp_path):
    """latest (3) has a bad hash, the older 2 had tensor bytes flipped (it still loads with torch):
    both are refused by their hash and the learner resumes from 1, with the original values."""
    save_three(tmp_path)
    flip_tensor_bytes(tmp_path / "ckpt-00000003.pt")
    flip_tensor_bytes(tmp_path / "ckpt-00000002.pt")
    assert torch.load(tmp_path / "ckpt-00000002.pt", weights_only=True)["w"][0] == 9999.0  # loads, and is wrong
    state = load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.all(state["w"] == MARK)


def test_every_checkpoint_unusable_raises_instead_of_restarting_at_zero(tmp_path):
    save_three(tmp_path)
    for step in (1, 2, 3):
        flip_tensor_bytes(tmp_path / f"ckpt-{step:08d}.pt")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*sha256 differs.*move .* aside") as err:
        load_checkpoint(tmp_path)
    assert "ckpt-00000001.pt" in str(err.value) and "step 0" in str(err.value)
    # files of an older tandem, with no recorded hash and latest.json gone: unverifiable, refused too
    for step in (1, 2, 3):
        (tmp_path / f"ckpt-{step:08d}.pt.sha256").unlink()
    (tmp_path / "latest.json").write_text("{torn")
    with pytest.raises(CheckpointError, match="no recorded sha256"):
        load_checkpoint(tmp_path)


def test_empty_and_interrupted_first_checkpoint_start_at_zero(tmp_path):
    assert load_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert load_checkpoint(tmp_path / "empty") is None
    # killed inside the very first checkpoint: the file, but neither its hash nor latest.json
    save_checkpoint(tmp_path / "first", 5, {"step": 5})
    (tmp_path / "first" / "ckpt-00000005.pt.sha256").unlink()
    (tmp_path / "first" / "latest.json").unlink()
    assert load_checkpoint(tmp_path / "first") is None
    # but a latest.json that names nothing loadable is a store that had checkpoints
    (tmp_path / "first" / "latest.json").write_text(json.dumps({"file": "ckpt-00000009.pt", "step": 9, "sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="ckpt-00000009.pt: missing"):
        load_checkpoint(tmp_path / "first")


def test_tandem_learn_refuses_to_start_on_unusable_checkpoints(tmp_path):
    """What an operator sees: `tandem learn` exits with code 2 and a `tandem:` line naming the fix."""
    ckpts = tmp_path / "store" / "checkpoints"
    save_three(ckpts)
    for step in (1, 2, 3):
        flip_tensor_bytes(ckpts / f"ckpt-{step:08d}.pt")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "learn", f"learner.store_dir={tmp_path / 'store'}",
         "learner.experience_port=0", "learner.weights_port=0", "learner.max_seconds=5"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tandem: config error: no usable checkpoint in"), proc.stderr[-2000:]
    assert not (tmp_path / "store" / "checkpoints" / "ckpt-00000000.pt").exists()


# -- policy weight files (the tiny VLA) -------------------------------------------------------------


def test_tiny_vla_weights_are_verified_by_hash(tmp_path, caplog):
    """The shipped checkpoint records its weights' sha256; a copy with one byte of a tensor flipped
    (still a valid safetensors file) is refused; a checkpoint without a recorded hash loads unverified,
    with a warning."""
    from tandem.policies.loading import REPO_ROOT
    from tandem.policies.tiny_vla.model import load_checkpoint as load_policy

    shipped = REPO_ROOT / "checkpoints" / "tiny_vla"
    doc = json.loads((shipped / "config.json").read_text())
    assert len(doc["weights_sha256"]) == 64
    load_policy(shipped)  # verified, loads
    bad = Path(shutil.copytree(shipped, tmp_path / "flipped"))
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-100] ^= 0x01  # inside the last tensor's data: safetensors still parses the file
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(PolicyLoadError, match="model.safetensors is corrupt: its sha256 .* differs"):
        load_policy(bad)
    del doc["weights_sha256"]
    (bad / "config.json").write_text(json.dumps(doc, indent=2))
    with caplog.at_level("WARNING", logger="tandem.policies.tiny_vla.model"):
        load_policy(bad)
    assert any("not verified" in r.getMessage() for r in caplog.records)
