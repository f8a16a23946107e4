"""COCO instance json: categories, images and annotations, read the way detectron2's ``load_coco_json`` reads them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One dataset category: its json id, its name and the model label it trains as (1..K, 0 is background)."""

    id: int
    name: str
    label: int


def contiguous_categories(categories: Sequence[dict]) -> list[Category]:
    """Map the json's category ids, whatever they are, to model labels 1..K in sorted-id order.

    detectron2 sorts the ids and numbers them 0..K-1; torchvision reserves 0 for background, so our label is
    detectron2's contiguous id + 1. Evaluation maps labels back to json ids with the same list.
    """
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in 'categories': {sorted(ids)}")
    by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    return [Category(id=i, name=by_id[i], label=k + 1) for k, i in enumerate(sorted(ids))]
