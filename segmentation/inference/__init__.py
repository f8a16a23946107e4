"""Inference: what ``segmentation.predict`` reads (``inputs``) and writes (``writer``), its progress line
(``progress``), and the exported graph run by onnxruntime or OpenVINO (``runtimes``), cached per weights
(``graph_cache``)."""
