"""detectron2 configs in, our config out: a user's detectron2 run reproduced without transcribing numbers by hand.

``files`` reads a detectron2 yaml with its ``_BASE_`` chain, ``keys`` holds detectron2's key tables (data, in
``keys.yaml``) and the reader that accounts for every key, ``architecture`` and ``settings`` map the keys onto
``MaskRCNNConfig`` and the input/solver/data-loader settings, and ``translate`` turns those into the LightningCLI
config every command parses.
"""
