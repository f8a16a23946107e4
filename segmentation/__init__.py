"""Mask R-CNN fine-tuning with detectron2's numbers. ``from segmentation import Predictor`` is imported lazily, so
``import segmentation`` stays cheap for the command-line entry points."""


def __getattr__(name: str):
    if name == "Predictor":
        from segmentation.api import Predictor

        return Predictor
    raise AttributeError(f"module 'segmentation' has no attribute {name!r}")
