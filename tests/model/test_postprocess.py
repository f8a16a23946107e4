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


def _full_paste(masks: torch.Tensor, boxes: torch.Tensor, h: int, w: int, threshold: float = 0.5) -> torch.Tensor:
    """The paste sampled at every pixel centre of the image: what the windowed paste must equal."""
    xs, ys = torch.arange(w, dtype=torch.float32) + 0.5, torch.arange(h, dtype=torch.float32) + 0.5
    x0, y0, x1, y1 = boxes.split(1, dim=1)
    gx, gy = (xs - x0) / (x1 - x0) * 2 - 1, (ys - y0) / (y1 - y0) * 2 - 1
    n = masks.shape[0]
    grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=3)
    return torch.nn.functional.grid_sample(masks, grid, align_corners=False)[:, 0] >= threshold


def _random_boxes(generator: torch.Generator, h: int, w: int) -> torch.Tensor:
    """Fractional boxes of every kind: sub-pixel, tiny, mid-sized, larger than the map, on and past the border."""
    sizes = torch.cat(
        [torch.rand(40, generator=generator) * 0.9 + 0.05]
        + [
            torch.rand(40, generator=generator) * (high - low) + low
            for low, high in [(1, 4), (4, 56), (56, 2.5 * max(h, w))]
        ]
    )
    n = sizes.numel()
    widths, heights = sizes * (0.5 + torch.rand(n, generator=generator)), sizes
    x0 = torch.rand(n, generator=generator) * (w + 20) - 10 - widths / 2
    y0 = torch.rand(n, generator=generator) * (h + 20) - 10 - heights / 2
    boxes = torch.stack([x0, y0, x0 + widths, y0 + heights], dim=1)
    on_border = torch.tensor([[0.0, 0.0, 7.3, 9.6], [w - 5.5, h - 0.2, w, h], [0.0, 2.5, w, 11.0], [0.0, 0.0, w, h]])
    # Edges through pixel centres: there a map of ones samples exactly 0.5, the closest call the window makes.
    on_centres = torch.tensor([[11.5, 4.5, 20.5, 13.5], [0.5, 0.5, 1.5, 1.5], [w - 2.5, h - 30.5, w - 0.5, h - 0.5]])
    return torch.cat([boxes, on_border, on_centres])


@pytest.mark.parametrize("image_hw", [(256, 320), (37, 61)])
@pytest.mark.parametrize("maps", ["random", "ones", "near_one"])
def test_windowed_paste_equals_sampling_every_pixel(image_hw, maps) -> None:
    """Outside its window a pixel centre is over a pixel from the box: sampling it could not reach 0.5."""
    generator = torch.Generator().manual_seed(sum(image_hw) + len(maps))
    h, w = image_hw
    boxes = _random_boxes(generator, h, w)
    shape = (boxes.shape[0], 1, 28, 28)
    masks = {
        "random": torch.rand(shape, generator=generator),
        "ones": torch.ones(shape),
        "near_one": 1 - torch.rand(shape, generator=generator) * 1e-3,
    }[maps]
    pasted = paste_masks_in_image(masks, boxes, image_hw)
    assert pasted.any(), "the comparison must include pasted pixels"
    assert torch.equal(pasted, _full_paste(masks, boxes, h, w))


def test_a_threshold_below_one_half_pastes_over_the_whole_image() -> None:
    """Below 0.5 the window's argument fails (a far pixel can sample 0.4), so every pixel is sampled."""
    masks, boxes = torch.ones(1, 1, 28, 28), torch.tensor([[10.0, 10.0, 310.0, 310.0]])
    pasted = paste_masks_in_image(masks, boxes, (400, 400), threshold=0.3)
    assert torch.equal(pasted, _full_paste(masks, boxes, 400, 400, threshold=0.3))
    assert pasted[0, :, 310].any(), "a pixel past the box reaches 0.3 here"


def test_each_mask_is_sampled_only_near_its_box(monkeypatch) -> None:
    """Sampling cost follows the boxes, not the image: a small box in a large image samples a few pixels."""
    sampled = []
    grid_sample = torch.nn.functional.grid_sample
    monkeypatch.setattr(
        postprocess.F, "grid_sample", lambda m, g, **k: sampled.append(g.shape[1:3]) or grid_sample(m, g, **k)
    )
    boxes = torch.tensor([[10.2, 20.7, 30.0, 40.5], [500.5, 0.0, 512.0, 3.0], [600.0, 5.0, 700.0, 9.0]])
    masks = torch.ones(3, 1, 28, 28)
    pasted = paste_masks_in_image(masks, boxes, (512, 512))
    assert sampled == [(23, 22), (4, 13)]  # rows 19..41, columns 9..30; the box past the image samples nothing
    assert torch.equal(pasted, _full_paste(masks, boxes, 512, 512)) and not pasted[2].any()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_traced_paste_holds_for_any_number_of_detections() -> None:
    """An exported graph is traced on one image: its paste must not keep that image's detections or windows."""
    torch.manual_seed(0)
    masks, boxes = torch.rand(3, 1, 28, 28), torch.tensor([[2.0, 3.0, 20.0, 30.0], [10, 5, 45, 38], [0, 0, 50, 40]])
    traced = torch.jit.trace(lambda m, b: paste_masks_in_image(m, b, (40, 50)), (masks[:1], boxes[:1]))
    assert torch.equal(traced(masks, boxes), paste_masks_in_image(masks, boxes, (40, 50)))
