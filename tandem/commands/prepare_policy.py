"""``tandem prepare-policy SOURCE --out DIR``: a lerobot policy directory that loads with no network.

SmolVLA asks transformers for its VLM's config and processor by name (``vlm_model_name``, e.g.
``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``) and pi0/pi0.5's preprocessor for the PaliGemma tokenizer
(``google/paligemma-3b-pt-224``). On a machine whose Hugging Face hub cache holds the policy and those
repositories, this command copies, without any download:

- the policy's own files (``config.json``, ``model.safetensors``, ``policy_preprocessor.json``,
  ``policy_postprocessor.json`` and their state files) into ``DIR``, unchanged;
- the backbone's configuration, processor and tokenizer files (never its weights: the policy's
  ``model.safetensors`` holds the trained ones) into ``DIR/backbone/``, which ``policy=lerobot`` uses in
  place of the name (``policies/lerobot_adapter.py: use_local_backbone``);
- ``DIR/tandem_prepared.json``: where each came from (repository, snapshot revision) and the files.

It then loads the backbone's tokenizer (and, for SmolVLA, its config and processor) from ``DIR/backbone``
with the network off, so a directory it writes is known to load. ``SOURCE`` is a hub repository id in the
cache (``lerobot/smolvla_base``) or a local policy directory (a training run's ``pretrained_model``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
from pathlib import Path

from tandem.core.errors import ConfigError
from tandem.policies.base import PolicyLoadError
from tandem.policies.loading import BACKBONE_DIR, backbone_names, read_json

#: backbone files copied: configuration, processor, tokenizer and chat template files
BACKBONE_KEEP = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*")
#: never copied: weights (and their shard indexes), whatever their name
BACKBONE_SKIP = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf",
                 "*.index.json", ".*")
MANIFEST = "tandem_prepared.json"


def find_snapshot(name: str, cache_dir: str | None, what: str) -> tuple[Path, str]:
    """(directory, revision) of ``name``: a local directory as it is ("local"), or a hub repository's
    newest cached snapshot (its commit hash). Never downloads.

    Raises:
        ConfigError: ``name`` is neither a directory nor in the hub cache.
    """
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser().resolve(), "local"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(name, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError) as exc:
        from huggingface_hub import constants

        where = cache_dir or constants.HF_HUB_CACHE
        raise ConfigError(
            what, name, f"a local directory or a hub repository in the cache at {where} (on a machine with "
            f"network: `hf download {name}`, or set --cache-dir; nothing is downloaded here): {str(exc)[:200]}"
        ) from exc
    return path.resolve(), path.name


def _files(root: Path) -> list[Path]:
    """Regular files under ``root`` (symlinks to the cache's blobs followed), relative, sorted."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _keep_backbone_file(rel: Path) -> bool:
    name = rel.name
    if any(fnmatch.fnmatch(name, pattern) for pattern in BACKBONE_SKIP) or any(
        part.startswith(".") for part in rel.parts
    ):
        return False
    return any(fnmatch.fnmatch(name, pattern) for pattern in BACKBONE_KEEP)


def verify_backbone(backbone: Path, policy_type: str) -> None:
    """Load the backbone's tokenizer (SmolVLA: also its config and processor) from ``backbone`` offline.

    Raises:
        PolicyLoadError: transformers cannot load them from these files.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(backbone), local_files_only=True)
        if policy_type == "smolvla":
            AutoConfig.from_pretrained(str(backbone), local_files_only=True)
            AutoProcessor.from_pretrained(str(backbone), local_files_only=True)
    except Exception as exc:
        raise PolicyLoadError(
            f"tandem prepare-policy: the files copied into {backbone} do not load offline "
            f"({type(exc).__name__}: {str(exc)[:300]}); is the backbone's cache snapshot complete?"
        ) from exc


def prepare(source: str, out: Path, backbone: str | None = None, cache_dir: str | None = None,
            force: bool = False) -> dict:
    """Write the offline policy directory ``out`` from ``source`` (see the module docstring).

    Args:
        source: hub repository id in the cache, or a local lerobot policy directory.
        out: the directory to write (must be absent or empty unless ``force``).
        backbone: the backbone's repository id or directory (default: the name the policy asks for).
        cache_dir: the hub cache (default: huggingface_hub's, i.e. ``HF_HUB_CACHE``).
        force: replace the files of an existing ``out``.

    Returns:
        The manifest written to ``out/tandem_prepared.json``.

    Raises:
        ConfigError: a source or the output directory is not usable.
        PolicyLoadError: the source is not a lerobot policy, or the backbone does not load.
    """
    src, src_rev = find_snapshot(source, cache_dir, "source")
    if not (src / "config.json").is_file():
        raise PolicyLoadError(f"tandem prepare-policy: {source} ({src}) has no config.json: not a lerobot policy")
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError("--out", str(out), "a new or empty directory (or pass --force to replace its files)")
    policy_type = str(read_json(src / "config.json", "tandem prepare-policy").get("type", ""))
    names = [n for n in backbone_names(src) if not Path(n).is_absolute()] if backbone is None else [backbone]
    if len(names) > 1:
        raise ConfigError("--backbone", None, f"one of {names}: the policy names several; pick the one to copy")
    if out.exists() and force and (out / BACKBONE_DIR).is_dir():
        shutil.rmtree(out / BACKBONE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    policy_files = [rel for rel in _files(src) if len(rel.parts) == 1 and not rel.name.startswith(".")]
    for rel in policy_files:
        shutil.copy2(src / rel, out / rel)
    manifest: dict = {"source": source, "source_revision": src_rev, "type": policy_type,
                      "policy_files": [str(r) for r in policy_files], "backbone": None}
    if names:
        bb_src, bb_rev = find_snapshot(names[0], cache_dir, "--backbone")
        kept = [rel for rel in _files(bb_src) if _keep_backbone_file(rel)]
        if not kept:
            raise PolicyLoadError(f"tandem prepare-policy: {names[0]} ({bb_src}) has no config, processor or "
                                  "tokenizer files")
        for rel in kept:
            (out / BACKBONE_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bb_src / rel, out / BACKBONE_DIR / rel)
        verify_backbone(out / BACKBONE_DIR, policy_type)
        manifest.update(backbone=names[0], backbone_revision=bb_rev, backbone_files=[str(r) for r in kept])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(args: argparse.Namespace) -> int:
    """Prepare ``args.out`` from ``args.source``; print what was copied and the command that runs it."""
    out = Path(args.out).expanduser()
    m = prepare(args.source, out, backbone=args.backbone, cache_dir=args.cache_dir, force=args.force)
    print(f"tandem prepare-policy: {out} ({m['type'] or 'unknown type'}, {len(m['policy_files'])} policy files "
          f"from {m['source']} @ {m['source_revision']})")
    if m["backbone"]:
        print(f"  {BACKBONE_DIR}/: {len(m['backbone_files'])} config/processor/tokenizer files from {m['backbone']} "
              f"@ {m['backbone_revision']} (loaded offline: ok)")
    else:
        print("  no backbone named by the policy: nothing else needed")
    print(f"run: tandem run policy=lerobot policy.path={out}")
    return 0
