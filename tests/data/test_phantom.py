"""The phantom dataset is deterministic and shaped like the user's data (and tiny_lung): one RLE annotation a slice."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from segmentation.data.coco import load_coco_json
from segmentation.data.phantom import main, make_phantom
from segmentation.data.rle import uncompressed_counts

SMALL = {"n_train": 1, "n_val": 2, "n_test": 1, "slices_per_volume": 6, "size": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path):
    make_phantom(tmp_path / "a", seed=3, **SMALL)
    make_phantom(tmp_path / "b", seed=3, **SMALL)
    make_phantom(tmp_path / "c", seed=4, **SMALL)

    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a")["train.json"] != _files(tmp_path / "c")["train.json"]


def test_uncompressed_rle_is_column_major_and_starts_with_zeros():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = mask[1:, 2] = True
    assert uncompressed_counts(mask) == [0, 1, 6, 2, 3]
    assert uncompressed_counts(np.zeros((3, 4), dtype=bool)) == [12]


def test_the_json_loads_with_pycocotools_and_has_one_lung_annotation_per_slice(tmp_path: Path):
    paths = make_phantom(tmp_path, **SMALL)

    for split in ("train", "val", "test"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(paths[f"{split}_json"]))
        assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "Lung"}]
        for image_id, image in coco.imgs.items():
            (ann,) = coco.imgToAnns[image_id]
            h, w = image["height"], image["width"]
            assert Image.open(paths[f"{split}_images"] / image["file_name"]).mode == "L"
            assert image["file_name"].startswith("PHANTOM_")
            counts = ann["segmentation"]["counts"]
            assert isinstance(counts, list) and sum(counts) == h * w and ann["iscrowd"] == 0
            rle = mask_util.frPyObjects(ann["segmentation"], h, w)
            assert ann["area"] == int(mask_util.area(rle)) == coco.annToMask(ann).sum()
            assert ann["bbox"] == mask_util.toBbox(rle).tolist()
            if ann["area"] == 0:
                assert counts == [h * w] and ann["bbox"] == [0.0, 0.0, 0.0, 0.0]

    train = json.loads(paths["train_json"].read_text())
    assert any(a["area"] == 0 for a in train["annotations"]) and any(a["area"] > 0 for a in train["annotations"])
    val = load_coco_json(paths["val_json"], paths["val_images"])
    assert {(r.height, r.width) for r in val.images} == {(64, 64), (48, 64)}


def test_cli_writes_the_splits(tmp_path: Path, capsys):
    main(["--out", str(tmp_path), "--seed", "1", "--n-train", "1", "--n-val", "1", "--n-test", "1", "--slices", "2",
          "--size", "32"])  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "test.json", "train", "train.json", "val", "val.json"]
    assert f"--data.train_json {tmp_path / 'train.json'}" in capsys.readouterr().out
