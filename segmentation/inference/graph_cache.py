"""Where the runtime graph of a weights file lives: exported once, reused while weights and architecture match.

Exporting traces the whole network (seconds for the recipe), so a second ``Predictor`` or ``segmentation.predict``
run on the same weights must not pay it again. The key is the weights file's content hash plus the architecture
(a config override changes the graph without changing the file) plus ``GRAPH_VERSION`` (bumped when the export
changes). The folder is ``$SEGMENTATION_CACHE`` or ``~/.cache/segmentation``; the class names travel inside the
graph (ONNX metadata), so a ``.onnx`` given directly as ``--model.weights`` needs nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

GRAPH_VERSION = 1
CLASS_NAMES_KEY = "segmentation.class_names"


def cache_dir() -> Path:
    """``$SEGMENTATION_CACHE`` if set, else ``~/.cache/segmentation``."""
    return Path(os.environ.get("SEGMENTATION_CACHE") or Path.home() / ".cache" / "segmentation")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_path(weights: str | Path, arch: object) -> Path:
    """The cached graph's path for ``weights`` built as ``arch`` (a ``MaskRCNNConfig``, or None when the file
    records its architecture: the file hash covers it then)."""
    fields = None if arch is None else dataclasses.asdict(arch)  # type: ignore[call-overload]
    arch_json = json.dumps(fields, sort_keys=True, default=str)
    arch_hash = hashlib.sha256(f"{GRAPH_VERSION}:{arch_json}".encode()).hexdigest()[:12]
    return cache_dir() / "graphs" / f"{file_sha256(weights)[:24]}-{arch_hash}.onnx"


def write_class_names(path: str | Path, class_names: list[str]) -> None:
    """Record the class names in the graph's metadata (``onnx`` package)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = CLASS_NAMES_KEY, json.dumps(class_names)
    tmp = Path(f"{path}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one


def read_class_names(path: str | Path) -> list[str] | None:
    """The class names recorded by ``write_class_names``, or None for a graph exported elsewhere."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == CLASS_NAMES_KEY:
            return [str(n) for n in json.loads(entry.value)]
    return None
