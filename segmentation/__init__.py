"""Mask R-CNN fine-tuning with detectron2's numbers.

``from segmentation import Predictor, train`` is imported lazily, so ``import segmentation`` stays cheap.
"""


def __getattr__(name: str):
    if name in ("Predictor", "train"):
        from segmentation import api

        return getattr(api, name)
    raise AttributeError(f"module 'segmentation' has no attribute {name!r}")
