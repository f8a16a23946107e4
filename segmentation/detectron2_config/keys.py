"""detectron2's keys: their defaults and the no-op ones (data, in ``keys.yaml``), and the reader that looks them up.

The tables are data so that following a newer detectron2 means editing yaml, not logic. The reader gives a key the
file does not set detectron2's default, as detectron2's ``get_cfg()`` would, remembers every key it read, and
collects every refusal, so that one error lists them all and a key nobody read (a typo, a newer detectron2's key) is
refused instead of silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from segmentation.errors import UserError


class UnsupportedConfigError(UserError, ValueError):
    """A detectron2 config that asks for something this project does not implement; lists every such key."""


@cache
def key_tables() -> tuple[dict[str, Any], dict[str, str]]:
    """detectron2's defaults and the no-op keys with their reasons, from ``keys.yaml``."""
    tables = yaml.safe_load(Path(__file__).with_name("keys.yaml").read_text())
    return tables["defaults"], tables["no_op"]


def _leaf_keys(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


class KeyReader:
    """Looks up dotted keys (detectron2's default when the file does not set one), remembers which were read, and
    collects every refusal, so one error can list all of them."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.problems: list[str] = []
        self.read: set[str] = set()

    def get(self, key: str) -> Any:
        self.read.add(key)
        node: Any = self.cfg
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return key_tables()[0][key]
            node = node[part]
        return node

    def require(self, key: str, ok: Callable[[Any], bool], expected: str) -> None:
        """Refuse ``key`` (recorded, raised later with the others) unless ``ok(value)``."""
        value = self.get(key)
        if not ok(value):
            self.problems.append(f"{key} = {value!r} is not supported (expected {expected})")

    def equal(self, key: str, accepted: Any) -> None:
        self.require(key, lambda v: v == accepted, repr(accepted))

    def check_every_key_accounted_for(self) -> None:
        """Refuse keys that are neither read nor a listed no-op: a typo, or a key of another detectron2 version."""
        defaults, no_op = key_tables()
        for key in _leaf_keys(self.cfg):
            if key in self.read or any(key == k or key.startswith(k + ".") for k in no_op):
                continue
            known = "is not translated" if key in defaults else "is not a key of detectron2's defaults.py"
            self.problems.append(f"{key} = {self.get(key)!r} {known}")

    def raise_problems(self) -> None:
        """Raise one error listing every refusal collected, if any."""
        if self.problems:
            raise UnsupportedConfigError(
                "detectron2 config uses settings this project does not implement:\n  " + "\n  ".join(self.problems)
            )
