"""Helpers shared by the learned policies: where a policy directory is, which device, schema checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tandem.hardware.features import Feature
from tandem.policies.base import PolicyLoadError

REPO_ROOT = Path(__file__).resolve().parent.parent


def resolve_path(path: str, what: str) -> Path:
    """A policy directory: absolute, relative to the working directory, or relative to the repository.

    Raises:
        PolicyLoadError: ``path`` is empty or is not a directory in any of those places.
    """
    if not path:
        raise PolicyLoadError(f"{what}: no policy directory given (set policy.path=DIR)")
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise PolicyLoadError(
        f"{what}: policy directory {path!r} does not exist (looked in: {', '.join(str(c) for c in candidates)})"
    )


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other names pass through."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PolicyLoadError(f"policy.device={name!r} but no CUDA GPU is visible; use device=auto or cpu")
    return name


def set_torch_threads(n: int) -> None:
    """Limit torch's intra-op threads (0: leave the default). Leaves cores to the control loop."""
    if n > 0:
        import torch

        torch.set_num_threads(n)
        os.environ.setdefault("OMP_NUM_THREADS", str(n))


def check_state(name: str, features: dict[str, Feature], state_key: str, state_dim: int) -> None:
    """Raise PolicyLoadError unless the robot observes ``state_key`` with ``state_dim`` elements."""
    feat = features.get(state_key)
    if feat is None:
        raise PolicyLoadError(f"{name} needs {state_key!r} but the robot observes only {sorted(features)}")
    if int(feat.shape[0]) != state_dim:
        raise PolicyLoadError(
            f"{name} was trained on a {state_dim}-D {state_key} but the robot's is {feat.shape[0]}-D; "
            "pick a policy trained for this robot"
        )


def check_cameras(name: str, features: dict[str, Feature], keys: list[str]) -> None:
    """Raise PolicyLoadError unless every camera in ``keys`` is observed by the robot."""
    missing = [k for k in keys if k not in features]
    if missing:
        have = [k for k, f in features.items() if f.is_image]
        raise PolicyLoadError(
            f"{name} needs cameras {missing} but the robot has {have}; set robot.cameras to match"
        )


#: The sub-directory of a lerobot policy directory that holds its backbone's configuration, processor and
#: tokenizer files (never its weights: those are in the policy's model.safetensors). See docs/policies.md.
BACKBONE_DIR = "backbone"

#: lerobot policy types that ask transformers for a backbone by name (SmolVLA: its VLM's config and
#: processor; pi0/pi0.5: the PaliGemma tokenizer).
NAMED_BACKBONE_TYPES = ("smolvla", "pi0", "pi05")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``.

    Raises:
        PolicyLoadError: the file is missing or is not a JSON object.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PolicyLoadError(f"{what}: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyLoadError(f"{what}: {path} is not a JSON object")
    return data


def backbone_names(path: Path) -> list[str]:
    """The names a lerobot policy directory asks transformers for: ``vlm_model_name`` in its config.json
    and every ``tokenizer_name`` of its ``policy_preprocessor.json`` steps, in that order, each once.

    A name is a hub repository id (``HuggingFaceTB/SmolVLM2-500M-Video-Instruct``,
    ``google/paligemma-3b-pt-224``) or a directory. ACT and Diffusion name none.
    """
    names: list[str] = []
    config = read_json(path / "config.json", "policy=lerobot")
    if isinstance(config.get("vlm_model_name"), str) and config["vlm_model_name"]:
        names.append(config["vlm_model_name"])
    pre = path / "policy_preprocessor.json"
    if pre.is_file():
        for step in read_json(pre, "policy=lerobot").get("steps", []):
            name = (step.get("config") or {}).get("tokenizer_name")
            if isinstance(name, str) and name and name not in names:
                names.append(name)
    return names


def tokenizer_steps(path: Path) -> list[str]:
    """The override keys (registry name, else class name) of the ``policy_preprocessor.json`` steps of
    ``path`` that load a tokenizer by ``tokenizer_name``."""
    pre = path / "policy_preprocessor.json"
    if not pre.is_file():
        return []
    keys = []
    for step in read_json(pre, "policy=lerobot").get("steps", []):
        if "tokenizer_name" in (step.get("config") or {}):
            keys.append(step.get("registry_name") or step.get("class", "").rsplit(".", 1)[-1])
    return keys
