"""CT + label volumes -> slice images and COCO jsons that our loader, pycocotools and the label volumes agree on."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from segmentation.data.coco import decode_mask, load_coco_json
from segmentation.data.images import window_to_uint8
from segmentation.data.volumes_to_coco import convert_volumes, main, parse_categories, split_volumes

SHAPE = (6, 32, 40)  # (z, y, x): 6 slices of 32 rows x 40 columns


def label_volume(seed: int) -> np.ndarray:
    """Slices 0 and 5 empty; 1: one blob; 2: two blobs; 3: a value-1 and a value-2 blob touching at a corner (one
    8-connected component) and another value-2 blob; 4: one blob at the image corner."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    shift = seed % 3
    labels[1, 4 + shift : 12, 5:15] = 1
    labels[2, 3:10, 2 + shift : 9] = 1
    labels[2, 15:25, 20:30] = 1
    labels[3, 2:6, 2:6] = 1
    labels[3, 6:9, 6:9] = 2  # touches the value-1 blob at a corner: 8-connected to it
    labels[3, 20:30, 25 + shift : 38] = 2
    labels[4, 20:32, 30:40] = 1
    return labels


COMPONENTS = [0, 1, 2, 2, 1, 0]  # 8-connected components of label > 0 per slice


def write_pair(tmp_path: Path, name: str, seed: int, suffix: str = ".nii.gz", spacing=(0.7, 0.8, 2.5)):
    ct = np.random.default_rng(seed).integers(-1100, 400, size=SHAPE).astype(np.int16)
    labels = label_volume(seed)
    paths = []
    for kind, values in (("ct", ct), ("label", labels)):
        image = sitk.GetImageFromArray(values)
        image.SetSpacing(spacing if kind == "ct" else (0.7, 0.8, 2.5))
        image.SetOrigin((-10.0, 5.0, 100.0))
        path = tmp_path / kind / f"{name}{suffix}"
        path.parent.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths[0], paths[1], ct, labels


def make_volumes(tmp_path: Path, n: int = 3):
    pairs = [write_pair(tmp_path, f"CT{k}", k, ".nii.gz" if k % 2 else ".mhd") for k in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs], {f"CT{k}": (p[2], p[3]) for k, p in enumerate(pairs)}


def decoded_slices(out: Path):
    """Yield ``(split, volume, slice, image array, [(category_id, bool mask, annotation)])`` for every image."""
    for split in ("train", "val", "test"):
        json_path = out / f"{split}.json"
        if not json_path.exists():
            continue
        loaded = load_coco_json(json_path, out / split)
        for record in loaded.images:
            volume, s = Path(record.file_name).stem.rsplit("_", 1)
            masks = [
                (a["category_id"], decode_mask(a["segmentation"], record.height, record.width), a)
                for a in record.annotations
            ]
            yield split, volume, int(s), np.asarray(Image.open(record.file_name)), masks


def test_round_trip_union_masks_equal_label_slices_and_pixels_are_the_window(tmp_path: Path):
    images, labels, volumes = make_volumes(tmp_path)
    convert_volumes(images, labels, tmp_path / "out", image_format="png", val_fraction=0.3, test_fraction=0.3)

    seen = set()
    for _, volume, s, pixels, masks in decoded_slices(tmp_path / "out"):
        ct, label = volumes[volume]
        assert np.array_equal(pixels, window_to_uint8(ct[s]))
        assert len(masks) == 1 and masks[0][0] == 1
        assert np.array_equal(masks[0][1], label[s] > 0)
        seen.add((volume, s))
    assert seen == {(v, s) for v in volumes for s in range(SHAPE[0])}


def test_per_component_masks_partition_the_slice_label(tmp_path: Path):
    images, labels, volumes = make_volumes(tmp_path, n=1)
    convert_volumes(images, labels, tmp_path / "out", image_format="png", per_component=True)

    for _, volume, s, _, masks in decoded_slices(tmp_path / "out"):
        label = volumes[volume][1][s]
        nonempty = [m for _, m, a in masks if a["area"] > 0]
        assert len(nonempty) == COMPONENTS[s]
        assert np.array_equal(np.sum([m for _, m, _ in masks], axis=0), label > 0)  # disjoint and covering
        for m in nonempty:
            n_parts = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(m.astype(np.uint8)), True))
            assert n_parts.max() == 1


def test_categories_give_one_annotation_per_label_value_and_slice(tmp_path: Path):
    images, labels, volumes = make_volumes(tmp_path, n=1)
    paths = convert_volumes(images, labels, tmp_path / "out", image_format="png", categories={1: "Lung", 2: "Nodule"})

    assert json.loads(paths["train_json"].read_text())["categories"] == [
        {"id": 1, "name": "Lung"},
        {"id": 2, "name": "Nodule"},
    ]
    for _, volume, s, _, masks in decoded_slices(tmp_path / "out"):
        label = volumes[volume][1][s]
        assert [c for c, _, _ in masks] == [1, 2]
        for category_id, mask, _ in masks:
            assert np.array_equal(mask, label == category_id)


def test_empty_slices_keep_an_area_0_annotation_unless_asked_not_to(tmp_path: Path):
    images, labels, _ = make_volumes(tmp_path, n=1)
    convert_volumes(images, labels, tmp_path / "with", image_format="png")
    convert_volumes(images, labels, tmp_path / "without", image_format="png", empty_annotations=False)

    h, w = SHAPE[1:]
    for _, _, s, _, masks in decoded_slices(tmp_path / "with"):
        if s in (0, 5):
            ((_, mask, ann),) = masks
            assert ann["segmentation"]["counts"] == [h * w] and ann["area"] == 0 and ann["bbox"] == [0, 0, 0, 0]
            assert not mask.any()
    slices = {s: masks for _, _, s, _, masks in decoded_slices(tmp_path / "without")}
    assert sorted(slices) == list(range(SHAPE[0]))  # the images stay
    assert slices[0] == [] and slices[5] == [] and all(len(slices[s]) == 1 for s in (1, 2, 3, 4))


def test_split_keeps_each_volume_in_one_split_and_is_deterministic(tmp_path: Path):
    images, labels, volumes = make_volumes(tmp_path, n=5)
    kwargs = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 1}
    paths = convert_volumes(images, labels, tmp_path / "a", **kwargs)
    convert_volumes(images, labels, tmp_path / "b", **kwargs)

    split_of: dict[str, set[str]] = {}
    for split, volume, _, _, _ in decoded_slices(tmp_path / "a"):
        split_of.setdefault(volume, set()).add(split)
    assert sorted(split_of) == sorted(volumes) and all(len(s) == 1 for s in split_of.values())
    assert sorted(next(iter(s)) for s in split_of.values()) == ["test", "train", "train", "train", "val"]
    for split in ("train", "val", "test"):
        assert paths[f"{split}_json"].read_bytes() == (tmp_path / "b" / f"{split}.json").read_bytes()
        assert paths[f"{split}_images"] == tmp_path / "a" / split


def test_split_must_leave_a_training_volume():
    with pytest.raises(ValueError, match="keep one for training"):
        split_volumes(2, 0.2, 0.2, seed=0)


@pytest.mark.parametrize("mismatch", ["spacing", "size"])
def test_geometry_mismatch_names_both_files(tmp_path: Path, mismatch: str):
    ct_path, label_path, _, _ = write_pair(
        tmp_path, "CT0", 0, spacing=(0.7, 0.8, 3.0 if mismatch == "spacing" else 2.5)
    )
    if mismatch == "size":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 32, 40), np.uint8)), str(label_path))
    with pytest.raises(ValueError, match=mismatch) as error:
        convert_volumes([ct_path], [label_path], tmp_path / "out")
    assert str(ct_path) in str(error.value) and str(label_path) in str(error.value)


def test_pycocotools_loads_each_json_with_its_own_area_and_bbox(tmp_path: Path, capsys):
    images, labels, _ = make_volumes(tmp_path)
    main(
        ["--images", *map(str, images), "--labels", *map(str, labels), "--out", str(tmp_path / "out")]
        + ["--val-fraction", "0.3", "--test-fraction", "0.3", "--per-component"]
    )
    printed = capsys.readouterr().out.split()
    assert printed == [
        item
        for split in ("train", "val", "test")
        for item in (
            f"--data.{split}_json",
            str(tmp_path / "out" / f"{split}.json"),
            f"--data.{split}_images",
            str(tmp_path / "out" / split),
        )
    ]

    for split in ("train", "val", "test"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(tmp_path / "out" / f"{split}.json"))
        assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "Lung"}]
        for ann in coco.anns.values():
            image = coco.imgs[ann["image_id"]]
            assert Image.open(tmp_path / "out" / split / image["file_name"]).mode == "L"
            assert image["file_name"].endswith(".jpg")
            rle = mask_util.frPyObjects(ann["segmentation"], image["height"], image["width"])
            assert ann["area"] == int(mask_util.area(rle)) == coco.annToMask(ann).sum()
            assert ann["bbox"] == mask_util.toBbox(rle).tolist()


def test_categories_argument_is_parsed_and_checked():
    assert parse_categories("1:Lung, 2:Nodule") == {1: "Lung", 2: "Nodule"}
    for bad in ("Lung", "0:Lung", "1:Lung,1:Nodule", "x:Lung", "1:"):
        with pytest.raises(ValueError, match="--categories"):
            parse_categories(bad)


def test_axis_y_cuts_coronal_slices_with_rows_along_z(tmp_path: Path):
    images, labels, volumes = make_volumes(tmp_path, n=1)
    convert_volumes(images, labels, tmp_path / "out", image_format="png", axis="y")

    slices = {s: (pixels, masks) for _, _, s, pixels, masks in decoded_slices(tmp_path / "out")}
    ct, label = volumes["CT0"]
    assert sorted(slices) == list(range(SHAPE[1]))
    for y, (pixels, ((_, mask, _),)) in slices.items():
        assert np.array_equal(pixels, window_to_uint8(ct[:, y, :]))
        assert np.array_equal(mask, label[:, y, :] > 0)


def test_a_300_slice_volume_converts(tmp_path) -> None:
    """More than 256 RLEs in one pycocotools call (its area overflowed once); tiny 4x4 slices keep it cheap."""
    values = np.full((300, 4, 4), -1000, dtype=np.int16)
    labels = np.zeros((300, 4, 4), dtype=np.uint8)
    labels[:, 1:3, 1:3] = 1
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "big.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "big_label.mha"))
    paths = convert_volumes([tmp_path / "big.mha"], [tmp_path / "big_label.mha"], tmp_path / "out", image_format="png")
    coco = json.loads(paths["train_json"].read_text())
    assert len(coco["images"]) == 300 and [a["area"] for a in coco["annotations"]] == [4] * 300


def test_help_shows_the_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: -600" in text and "(default: 1500" in text and "(default: jpg)" in text
