"""Detections are rescaled, clipped and pasted at the requested (original) size, detectron2's way."""

from __future__ import annotations

import pytest
import torch

from segmentation.model import postprocess
from segmentation.model.postprocess import detector_postprocess, paste_masks_in_image


def test_paste_fills_the_float_box_at_pixel_centres() -> None:
    masks = torch.ones(1, 1, 28, 28)
    pasted = paste_masks_in_image(masks, torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (60, 80))
    assert pasted.shape == (1, 60, 80) and pasted.dtype == torch.bool
    expected = torch.zeros(60, 80, dtype=torch.bool)
    expected[20:40, 10:30] = True
    assert torch.equal(pasted[0], expected)


def test_postprocess_scales_to_the_output_size_and_pastes_there() -> None:
    detections = {
        "boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 9.0], [40.0, 10.0, 70.0, 30.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 1, 2]),
        "masks": torch.ones(3, 1, 28, 28),
    }
    out = detector_postprocess(detections, input_hw=(50, 64), output_hw=(100, 128))
    # The empty box is dropped; the last one is clipped to the output width 128.
    assert out["boxes"].tolist() == [[20.0, 40.0, 60.0, 80.0], [80.0, 20.0, 128.0, 60.0]]
    assert out["scores"].tolist() == [0.8999999761581421, 0.699999988079071]
    assert out["labels"].tolist() == [1, 2]
    assert out["masks"].shape == (2, 100, 128)
    assert out["masks"][0].sum() == 40 * 40 and out["masks"][0, 40:80, 20:60].all()


def test_pasting_in_chunks_equals_pasting_at_once(monkeypatch) -> None:
    torch.manual_seed(0)
    masks, boxes = torch.rand(5, 1, 28, 28), torch.tensor([[2.0, 3.0, 20.0, 30.0]]) + torch.arange(5.0)[:, None]
    at_once = paste_masks_in_image(masks, boxes, (40, 50))
    monkeypatch.setattr(postprocess, "PASTE_PIXELS_PER_CHUNK", 2 * 40 * 50)  # two masks per grid_sample
    assert torch.equal(paste_masks_in_image(masks, boxes, (40, 50)), at_once)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_traced_paste_holds_for_any_number_of_detections(monkeypatch) -> None:
    """An exported graph is traced on one image: its paste must not keep that image's number of chunks."""
    monkeypatch.setattr(postprocess, "PASTE_PIXELS_PER_CHUNK", 40 * 50)  # one mask per chunk when not traced
    torch.manual_seed(0)
    masks, boxes = torch.rand(3, 1, 28, 28), torch.tensor([[2.0, 3.0, 20.0, 30.0], [10, 5, 45, 38], [0, 0, 50, 40]])
    traced = torch.jit.trace(lambda m, b: paste_masks_in_image(m, b, (40, 50)), (masks[:1], boxes[:1]))
    assert torch.equal(traced(masks, boxes), paste_masks_in_image(masks, boxes, (40, 50)))
