"""Read a detectron2 yaml: a dump from OUTPUT_DIR, or one of detectron2's own files with its ``_BASE_`` chain.

Each file is parsed once; ``_BASE_`` names are resolved relative to the file that names them, as detectron2 does, so
a user's checkout of detectron2's ``configs/`` works as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from segmentation.detectron2_config.keys import UnsupportedConfigError


def load_config(path: str | Path) -> dict[str, Any]:
    """A detectron2 yaml with its ``_BASE_`` chain merged in (each file over its base, lists replaced whole)."""
    path = Path(path)
    with open(path) as f:
        return with_bases(yaml.safe_load(f) or {}, path)


def with_bases(data: Any, path: Path) -> dict[str, Any]:
    """``data``, the parsed content of ``path``, merged over the files its ``_BASE_`` chain names."""
    if not isinstance(data, dict):
        raise UnsupportedConfigError(f"{path}: not a detectron2 config (a yaml mapping)")
    data = dict(data)
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    base_path = Path(base).expanduser()
    base_path = base_path if base_path.is_absolute() else path.parent / base_path
    if not base_path.is_file():
        raise UnsupportedConfigError(
            f"{path}: its _BASE_ {base!r} ({base_path}) does not exist; give the fully resolved config.yaml that "
            "detectron2 writes to OUTPUT_DIR, or keep the file inside a checkout of detectron2's configs/ folder"
        )
    return _merge(load_config(base_path), data)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def is_detectron2_config(path_or_dict: Mapping[str, Any] | str | Path) -> bool:
    """True for a detectron2 (yacs) config: a mapping with an upper-case ``MODEL`` section (or a ``_BASE_``).

    Our LightningCLI configs use lower-case ``model``; the two can be told apart by that alone.
    """
    cfg = path_or_dict if isinstance(path_or_dict, Mapping) else _parsed(path_or_dict)
    return isinstance(cfg, Mapping) and (isinstance(cfg.get("MODEL"), Mapping) or "_BASE_" in cfg)


def detectron2_config_at(path: str | Path) -> dict[str, Any] | None:
    """The detectron2 config in the file ``path``, its ``_BASE_`` chain merged in; None when the file is something
    else (one of our configs, or not yaml at all: the command's own parser then reports it)."""
    data = _parsed(path)
    return with_bases(data, Path(path)) if is_detectron2_config(data) else None


def _parsed(path: str | Path) -> Any:
    """The yaml content of ``path``; None when it is not yaml."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError:
        return None
