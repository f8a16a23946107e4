"""The rows of ``scripts/parity_report.py``'s table, one module per group: ``inputs`` (mapped images, augmentation),
``model_outputs`` (tiny_lung and X101 features, proposals, predictions, losses), ``evaluation`` (COCO AP) and
``solver`` (learning rates, parameter groups, gradient clipping); ``table`` holds the row type and the tolerances.
Each row runs our code on detectron2's inputs through ``tests/parity_references.py``, as the parity tests do."""
