"""Inference outside PyTorch: the exported graph run by onnxruntime or OpenVINO (``runtimes``), cached per weights
(``graph_cache``)."""
