"""detectron2's foreground/background label subsampling, shared by the RPN (anchors) and the ROI heads (proposals)."""

from __future__ import annotations

import torch
from torch import Tensor


def subsample_labels(
    positive: Tensor, negative: Tensor, num_samples: int, positive_fraction: float
) -> tuple[Tensor, Tensor]:
    """detectron2's ``subsample_labels``: random positives (at most the fraction), then negatives to fill up.

    Args:
        positive, negative: boolean masks of the candidates.
    Returns:
        indices of the sampled positives and negatives, each in random order.
    """
    pos = torch.nonzero(positive).squeeze(1)
    neg = torch.nonzero(negative).squeeze(1)
    num_pos = min(pos.numel(), int(num_samples * positive_fraction))
    num_neg = min(neg.numel(), num_samples - num_pos)
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:num_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:num_neg]]
    return pos, neg
