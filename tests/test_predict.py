"""``python -m segmentation.predict`` on every input kind, with a tiny random model whose checkpoint the test writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # the volumes extra, part of dev
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO
from tiny_model import tiny_arch

from segmentation import predict
from segmentation.inference import inputs, writer
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn

TINY_ARCH = tiny_arch()
SPACING, ORIGIN = (0.7, 0.8, 2.5), (-10.0, 5.0, 100.0)


def tiny_model_files(root: Path) -> tuple[Path, Path]:
    """A 128 px config and a random-init state dict for it (``torch.save`` of the network, as ``model_final.pth``)."""
    config = root / "tiny.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"arch": TINY_ARCH}, "data": {"min_size_test": 96, "max_size_test": 128}})
    )
    torch.manual_seed(0)
    weights = root / "tiny.pth"
    torch.save(build_mask_rcnn(MaskRCNNConfig(**TINY_ARCH)).state_dict(), weights)
    return config, weights


def ct_values(depth: int, h: int, w: int) -> np.ndarray:
    """int16 HU: air outside, soft tissue body, two dark lungs."""
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    lungs = (((yy - h / 2) / (0.3 * h)) ** 2 + ((np.abs(xx - w / 2) - 0.2 * w) / (0.15 * w)) ** 2) <= 1
    plane = np.where(lungs, -850, np.where(body, 40, -1000)).astype(np.int16)
    return np.stack([plane] * depth)


def ct_image(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """One CT file per slice with the tags GDCM needs to sort the series and recover its geometry."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.42"
    for z in range(image.GetDepth()):
        plane = image[:, :, z]
        for tag, value in (
            ("0020|000e", uid),
            ("0020|000d", f"{uid}.0"),
            ("0008|0060", "CT"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z)))),
            ("0020|0013", str(z + 1)),
        ):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(plane)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One prediction over an image, a folder of two images, an .mhd, a .nii.gz and a DICOM series folder."""
    root = tmp_path_factory.mktemp("predict")
    config, weights = tiny_model_files(root)
    gray = ct_values(1, 90, 120)[0]
    single = root / "single.png"
    Image.fromarray(np.where(gray < -500, 20, 150).astype(np.uint8)).save(single)
    folder = root / "folder"
    folder.mkdir()
    Image.open(single).convert("RGB").save(folder / "b.jpg")
    Image.open(single).save(folder / "a.png")
    volume = ct_image(ct_values(3, 48, 64))
    sitk.WriteImage(volume, str(root / "scan.mhd"))
    sitk.WriteImage(volume, str(root / "scan2.nii.gz"))
    write_dicom_series(volume, root / "dicom")
    out = root / "out"
    inputs = [single, folder, root / "scan.mhd", root / "scan2.nii.gz", root / "dicom"]
    args = ["--config", str(config), "--model.weights", str(weights), "--output_dir", str(out)]
    predict.main([*args, "--input", *map(str, inputs), "--score_threshold", "0.0", "--batch_size", "2"])
    images = json.loads((out / "images.json").read_text())["images"]
    return {"root": root, "out": out, "images": images, "volume": volume}


def test_predictions_load_with_pycocotools_against_images_json(run) -> None:
    coco = COCO(str(run["out"] / "images.json"))
    results = coco.loadRes(str(run["out"] / "predictions.json"))
    assert len(results.getAnnIds()) > 0
    assert coco.loadCats(1)[0]["name"] == "class_1"
    records = json.loads((run["out"] / "predictions.json").read_text())
    assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(records[0])


def test_every_input_kind_is_listed_in_order(run) -> None:
    root = run["root"]
    names = [(Path(i["file_name"]).relative_to(root).as_posix(), i.get("slice")) for i in run["images"]]
    volume_slices = [(name, z) for name in ("scan.mhd", "scan2.nii.gz", "dicom") for z in range(3)]
    assert names == [("single.png", None), ("folder/a.png", None), ("folder/b.jpg", None), *volume_slices]
    assert [i["id"] for i in run["images"]] == list(range(1, 13))
    assert {(i["height"], i["width"]) for i in run["images"]} == {(90, 120), (48, 64)}


def test_images_get_label_masks_and_overlays_at_their_original_size(run) -> None:
    out = run["out"]
    for name in ("single", "a", "b"):
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (90, 120) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert Image.open(out / "overlays" / f"{name}.png").size == (120, 90)


@pytest.mark.parametrize("name", ["scan.mhd", "scan2.nii.gz", "dicom.nii.gz"])
def test_mask_volumes_keep_the_input_geometry(run, name: str) -> None:
    volume = run["volume"]
    mask = sitk.ReadImage(str(run["out"] / "masks" / name))
    assert mask.GetSize() == volume.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSpacing() == pytest.approx(SPACING)
    assert mask.GetOrigin() == pytest.approx(ORIGIN)
    assert mask.GetDirection() == pytest.approx(volume.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    stem = name.split(".")[0]
    assert sorted(p.name for p in (run["out"] / "overlays" / stem).iterdir()) == ["0000.png", "0001.png", "0002.png"]


def test_volume_slice_masks_match_the_predictions_of_their_slice(run) -> None:
    """The mask volume is the union of the slice's detections (all kept at threshold 0)."""
    coco = COCO(str(run["out"] / "images.json"))
    results = coco.loadRes(str(run["out"] / "predictions.json"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(run["out"] / "masks" / "scan2.nii.gz")))
    for image in (i for i in run["images"] if i["file_name"].endswith("scan2.nii.gz")):
        anns = results.loadAnns(results.getAnnIds(imgIds=image["id"]))
        union = np.zeros((48, 64), dtype=bool)
        for ann in anns:
            union |= results.annToMask(ann).astype(bool)
        assert np.array_equal(labels[image["slice"]] > 0, union)


def test_predict_images_matches_the_model_on_a_pre_resized_image() -> None:
    """Resizing happens before the model; outputs come back at the original size."""
    torch.manual_seed(0)
    model = build_mask_rcnn(MaskRCNNConfig(**TINY_ARCH)).eval()
    image = np.random.default_rng(0).integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    (out,) = predict.predict_images(model, [image], 96, 128)
    resized = np.asarray(Image.fromarray(image).resize((128, 96), Image.Resampling.BILINEAR))
    with torch.no_grad():
        (expected,) = model([torch.from_numpy(resized.transpose(2, 0, 1).copy()).float()], output_sizes=[(60, 80)])
    assert out["masks"].shape[1:] == (60, 80)
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(out[key], expected[key])


def test_label_map_keeps_the_best_detection_above_the_threshold() -> None:
    masks = torch.zeros((3, 4, 4), dtype=torch.bool)
    masks[0, :2], masks[1, 1:3], masks[2, 3] = True, True, True
    detections = {"masks": masks, "scores": torch.tensor([0.9, 0.95, 0.1]), "labels": torch.tensor([1, 2, 1])}
    assert writer.label_map(detections, 0.5).tolist() == [[1] * 4, [2] * 4, [2] * 4, [0] * 4]


def test_missing_inputs_and_weights_are_errors_without_traceback(tmp_path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match="input not found"):
        inputs.discover_inputs([tmp_path / "nope.png"])
    config, _ = tiny_model_files(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--config", str(config), "--input", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "--model.weights is required" in capsys.readouterr().err


def test_two_processes_write_the_single_process_outputs(run, tmp_path) -> None:
    root, out = run["root"], tmp_path / "ddp"
    inputs = [root / "single.png", root / "folder", root / "scan.mhd", root / "scan2.nii.gz", root / "dicom"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segmentation.predict", "--config", str(root / "tiny.yaml"), "--model.weights",
               str(root / "tiny.pth"), "--output_dir", str(out), "--device", "cpu", "--score_threshold", "0.0",
               "--batch_size", "2", "--input", *map(str, inputs)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert json.loads((out / "images.json").read_text()) == json.loads((run["out"] / "images.json").read_text())
    ours = json.loads((out / "predictions.json").read_text())
    single = json.loads((run["out"] / "predictions.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in ours] == [(r["image_id"], r["category_id"]) for r in single]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(ours, single, strict=True))
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(p.name for p in (run["out"] / "masks").iterdir())


def test_help_needs_no_output_dir_and_lists_the_inputs(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--input" in out and "--output_dir" in out and "DICOM" in out
