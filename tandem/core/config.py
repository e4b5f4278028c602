"""Typed configs from plain dicts, and Hydra composition of ``configs/``.

Every component's config is a dataclass that validates itself in ``__post_init__``, so a wrong value
fails at start with the field name and the allowed values. :func:`build_dataclass` turns a plain dict
(a composed Hydra config, a YAML block) into one, naming unknown keys; :func:`build_group` does it for
a group option selected by ``type`` through ``tandem.core.registry``; :func:`compose` runs Hydra over
``configs/<name>.yaml`` with command-line overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from tandem.core.errors import ConfigError
from tandem.core.registry import config_class

CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Construct ``cls(**values)``, naming unknown keys (with a hint); nested dataclasses recurse."""
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{prefix}.{key}", value, f"unknown key; known keys: {sorted(fields)}{suffix}")
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            value = build_dataclass(hints[key], value, f"{prefix}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def build_group(group: str, values: dict | None) -> Any:
    """The typed config of a group option from its plain dict (selected by ``type``)."""
    if values is None:
        return None
    values = dict(values)
    cls = config_class(group, str(values.get("type")))
    return build_dataclass(cls, values, group)


def compose(config_name: str, overrides: list[str], schemas: dict[str, Any] | None = None) -> dict:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides into a plain dict.

    Args:
        config_name: a YAML file under ``configs/`` without its suffix ("run", "learner/default").
        overrides: Hydra overrides (``key=value``, ``group=option``, ``+key=value``).
        schemas: structured schemas to register in Hydra's ConfigStore first (name -> dataclass).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    for name, node in (schemas or {}).items():
        ConfigStore.instance().store(name=name, node=node)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as exc:  # hydra's errors name the bad override; keep them, add the fix
        raise ConfigError("overrides", list(overrides), f"{exc}") from exc
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)
