"""Lightning's checkpoint reading (``--ckpt_path``) through our safe reader.

Lightning's own ``TorchCheckpointIO`` fetches URLs with ``weights_only=False`` and lets a truncated file end in a
``PytorchStreamReader`` traceback; this plugin resolves the path like every other weights file (cache, sha256
record) and reads it with ``weights_only=True``, errors naming the file in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.plugins.io import TorchCheckpointIO

from segmentation.checkpoints.files import read_torch_file, resolve


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``load_checkpoint`` is ``resolve`` + ``torch.load(weights_only=True)``."""

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return read_torch_file(resolve(path))
