"""Dataset validation: one bad input each, and the exact finding: fatal naming file and ids, or tolerated, counted."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmentation.check_data import main
from segmentation.data.check import DataError, DataReport, check_datamodule_splits, check_split
from segmentation.data.coco import (
    DEGENERATE_BOX,
    EMPTY_MASK,
    NO_ANNOTATIONS,
    SHORT_POLYGON,
    CocoFormatError,
    load_coco_json,
)
from segmentation.data.datamodule import CocoDataModule
from segmentation.errors import UserError

H, W = 8, 10
JSON = "ann.json"


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a bool mask (column-major, first run = zeros)."""
    counts, current, run = [], False, 0
    for value in mask.T.reshape(-1):
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    return {"size": list(mask.shape), "counts": [*counts, run]}


def _write_jpeg(path: Path, h: int = H, w: int = W) -> None:
    Image.fromarray(np.full((h, w), 128, dtype=np.uint8)).save(path)


def _dataset(tmp_path: Path) -> dict:
    """A clean split: image 1 with an RLE instance, image 2 with a polygon instance; files in tmp_path/images."""
    (tmp_path / "images").mkdir()
    for image_id in (1, 2):
        _write_jpeg(tmp_path / "images" / f"img{image_id}.jpg")
    mask = np.zeros((H, W), dtype=bool)
    mask[2:5, 3:7] = True
    return {
        "images": [{"id": i, "file_name": f"img{i}.jpg", "height": H, "width": W} for i in (1, 2)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [3, 2, 4, 3], "area": 12, "iscrowd": 0,
             "segmentation": _rle(mask)},
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [3, 2, 4, 3], "area": 12, "iscrowd": 0,
             "segmentation": [[3.0, 2.0, 7.0, 2.0, 7.0, 5.0, 3.0, 5.0]]},
        ],
        "categories": [{"id": 1, "name": "lung"}],
    }  # fmt: skip


def _check(tmp_path: Path, data: dict, **kwargs) -> DataReport:
    (tmp_path / JSON).write_text(json.dumps(data))  # NaN/Infinity are written as json's NaN/Infinity literals
    return check_split(tmp_path / JSON, tmp_path / "images", **kwargs)


def test_a_clean_split_reports_no_problem(tmp_path: Path):
    report = _check(tmp_path, _dataset(tmp_path))

    assert report.ok
    assert report.fatal == []
    assert report.tolerated == {}
    assert (report.images, report.annotations) == (2, 2)
    assert "2 images, 2 annotations — OK" in report.format()


def _ann(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _missing_image(tmp_path: Path, data: dict) -> None:
    (tmp_path / "images" / "img2.jpg").unlink()


def _truncated_jpeg(tmp_path: Path, data: dict) -> None:
    _write_jpeg(tmp_path / "images" / "img2.jpg", 64, 64)
    data["images"][1].update(height=64, width=64)
    data["annotations"].pop()
    payload = (tmp_path / "images" / "img2.jpg").read_bytes()
    (tmp_path / "images" / "img2.jpg").write_bytes(payload[: len(payload) // 2])


def _wrong_size(tmp_path: Path, data: dict) -> None:
    _write_jpeg(tmp_path / "images" / "img2.jpg", H + 1, W)


def _unknown_image(tmp_path: Path, data: dict) -> None:
    _ann(data, 11)["image_id"] = 7


def _unknown_category(tmp_path: Path, data: dict) -> None:
    _ann(data, 11)["category_id"] = 9


def _odd_polygon(tmp_path: Path, data: dict) -> None:
    _ann(data, 11)["segmentation"] = [[3.0, 2.0, 7.0, 2.0, 7.0, 5.0, 3.0]]


def _rle_wrong_size(tmp_path: Path, data: dict) -> None:
    _ann(data, 10)["segmentation"] = {"size": [H + 1, W], "counts": [(H + 1) * W]}


def _rle_counts_wrong_sum(tmp_path: Path, data: dict) -> None:
    _ann(data, 10)["segmentation"] = {"size": [H, W], "counts": [3, 4]}


def _nan_bbox(tmp_path: Path, data: dict) -> None:
    _ann(data, 11)["bbox"] = [3, 2, math.nan, 3]


def _inf_area(tmp_path: Path, data: dict) -> None:
    _ann(data, 11)["area"] = math.inf


def _duplicate_image(tmp_path: Path, data: dict) -> None:
    data["images"].append(dict(data["images"][1]))


def _duplicate_annotation(tmp_path: Path, data: dict) -> None:
    data["annotations"].append({**_ann(data, 10), "image_id": 2})


def _outside_root(tmp_path: Path, data: dict) -> None:
    data["images"][1]["file_name"] = "../../etc/passwd"


def _image_file(tmp_path: Path) -> str:
    return str((tmp_path / "images" / "img2.jpg").resolve())


def _json_file(tmp_path: Path) -> str:
    return str(tmp_path / JSON)


FATAL_CASES = [
    # (break the clean split, file the problem is in, image id, annotation id, message pattern)
    (_missing_image, _image_file, 2, None, r"does not exist"),
    (_truncated_jpeg, _image_file, 2, None, r"(?i)cannot be decoded .*truncated"),
    (_wrong_size, _image_file, 2, None, r"decodes to width x height 10x9 .* json says 10x8"),
    (_unknown_image, _json_file, 7, 11, r"refers to an image id that is not in 'images'"),
    (_unknown_category, _json_file, 2, 11, r"category_id 9, which is not in 'categories'"),
    (_odd_polygon, _json_file, 2, 11, r"odd number of coordinates"),
    (_rle_wrong_size, _json_file, 1, 10, r"RLE of size \[9, 10\]"),
    (_rle_counts_wrong_sum, _json_file, 1, 10, r"RLE counts summing to 7, expected height\*width = 80"),
    (_nan_bbox, _json_file, 2, 11, r"non-finite bbox"),
    (_inf_area, _json_file, 2, 11, r"area=inf; expected a finite number"),
    (_duplicate_image, _json_file, 2, None, r"image id 2 appears more than once"),
    (_duplicate_annotation, _json_file, 2, 10, r"annotation id 10 appears more than once"),
    (_outside_root, _json_file, 2, None, r"outside the image root"),
]


@pytest.mark.parametrize(
    ("corrupt", "file", "image_id", "annotation_id", "message"),
    FATAL_CASES,
    ids=[case[0].__name__.lstrip("_") for case in FATAL_CASES],
)
def test_each_fatal_problem_is_reported_naming_its_file_and_ids(
    tmp_path: Path, corrupt: Callable, file: Callable, image_id, annotation_id, message: str
):
    data = _dataset(tmp_path)
    corrupt(tmp_path, data)
    report = _check(tmp_path, data)

    assert not report.ok
    (problem,) = report.fatal
    assert (problem.file, problem.image_id, problem.annotation_id) == (file(tmp_path), image_id, annotation_id)
    assert re.search(message, problem.message), problem.message
    assert "FATAL" in report.format() and file(tmp_path) in report.format()


JSON_CASES = [case for case in FATAL_CASES if case[1] is _json_file and case[0] is not _odd_polygon]


@pytest.mark.parametrize("corrupt", [c[0] for c in JSON_CASES], ids=[c[0].__name__.lstrip("_") for c in JSON_CASES])
def test_loading_stops_at_the_problem_the_check_reports(tmp_path: Path, corrupt: Callable):
    """One pass serves both: load_coco_json raises the check's own finding (file, ids and message)."""
    data = _dataset(tmp_path)
    corrupt(tmp_path, data)
    (problem,) = _check(tmp_path, data).fatal

    with pytest.raises(CocoFormatError) as info:
        load_coco_json(tmp_path / JSON, tmp_path / "images")
    assert str(info.value) == problem.format()


def test_odd_polygons_are_dropped_by_loading_as_detectron2_does_but_refused_by_the_check(tmp_path: Path):
    data = _dataset(tmp_path)
    _ann(data, 11)["segmentation"] = [[3.0, 2.0, 7.0, 2.0, 7.0, 5.0, 3.0], [3.0, 2.0, 7.0, 2.0, 7.0, 5.0]]

    assert not _check(tmp_path, data).ok
    image = load_coco_json(tmp_path / JSON, tmp_path / "images").images[1]
    assert image.annotations[0]["segmentation"] == [[3.0, 2.0, 7.0, 2.0, 7.0, 5.0]]


def test_a_file_outside_the_root_is_accepted_when_allowed(tmp_path: Path):
    data = _dataset(tmp_path)
    _write_jpeg(tmp_path / "outside.jpg")
    data["images"][1]["file_name"] = "../outside.jpg"

    assert _check(tmp_path, data, allow_outside_root=True).ok
    assert not _check(tmp_path, data).ok


@pytest.mark.parametrize(
    ("change", "kind", "annotation_id"),
    [
        ({"area": 0, "bbox": [0, 0, 0, 0], "segmentation": {"size": [H, W], "counts": [H * W]}}, EMPTY_MASK, 10),
        ({"segmentation": {"size": [H, W], "counts": [H * W]}}, EMPTY_MASK, 10),
        ({"bbox": [3, 2, 0, 3]}, DEGENERATE_BOX, 10),
        ({"segmentation": [[1.0, 1.0, 2.0, 2.0], [3.0, 2.0, 7.0, 2.0, 7.0, 5.0]]}, SHORT_POLYGON, 10),
    ],
    ids=["area_0", "empty_mask", "degenerate_box", "short_polygon"],
)
def test_what_detectron2_drops_is_tolerated_and_counted(tmp_path: Path, change: dict, kind: str, annotation_id: int):
    data = _dataset(tmp_path)
    _ann(data, annotation_id).update(change)
    report = _check(tmp_path, data)

    assert report.ok
    assert report.tolerated == {kind: 1}
    (example,) = report.examples[kind]
    assert (example.image_id, example.annotation_id) == (1, annotation_id)
    assert f"warning: 1 x {kind}" in report.format()


def test_images_without_annotations_are_counted(tmp_path: Path):
    data = _dataset(tmp_path)
    data["annotations"] = []
    report = _check(tmp_path, data)

    assert report.ok
    assert report.tolerated == {NO_ANNOTATIONS: 2}


def test_every_problem_is_found_in_one_pass(tmp_path: Path):
    data = _dataset(tmp_path)
    for corrupt in (_missing_image, _unknown_category, _rle_counts_wrong_sum):
        corrupt(tmp_path, data)
    data["images"].append({"id": 3, "file_name": "img3.jpg", "height": H})
    report = _check(tmp_path, data)

    found = sorted((p.image_id, p.annotation_id or 0) for p in report.fatal)
    assert found == [(1, 10), (2, 0), (2, 11), (3, 0)]
    assert report.tolerated == {}  # images 1 and 2 have (bad) annotations; image 3's entry is itself fatal


def test_check_images_false_reads_the_json_only(tmp_path: Path):
    data = _dataset(tmp_path)
    _missing_image(tmp_path, data)

    assert _check(tmp_path, data, check_images=False).ok


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", r"not valid json"), ("[]", r"expected a json object"), (None, r"cannot be read")],
)
def test_an_unreadable_json_is_fatal(tmp_path: Path, content: str | None, message: str):
    if content is not None:
        (tmp_path / JSON).write_text(content)
    report = check_split(tmp_path / JSON, tmp_path)

    (problem,) = report.fatal
    assert problem.file == str(tmp_path / JSON)
    assert re.search(message, problem.message), problem.message


def test_the_datamodule_check_raises_a_data_error_with_the_report(tmp_path: Path):
    data = _dataset(tmp_path)
    _unknown_category(tmp_path, data)
    (tmp_path / JSON).write_text(json.dumps(data))
    datamodule = CocoDataModule(train_json=str(tmp_path / JSON), train_images=str(tmp_path / "images"))

    with pytest.raises(DataError, match=r"train: .*1 fatal problem.*\n.*annotation id 11") as info:
        check_datamodule_splits(datamodule)
    assert len(info.value.reports) == 1
    assert isinstance(info.value, UserError)  # the entry points print it and exit without a traceback


def test_the_datamodule_trains_on_the_records_the_check_read_without_parsing_a_json_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    data = _dataset(tmp_path)
    (tmp_path / JSON).write_text(json.dumps(data))
    (tmp_path / "other.json").write_text(json.dumps(data))
    parsed: list[str] = []
    json_load = json.load

    def counting_load(file, **kwargs):
        parsed.append(Path(file.name).name)
        return json_load(file, **kwargs)

    monkeypatch.setattr(json, "load", counting_load)
    root, train, val = str(tmp_path / "images"), str(tmp_path / JSON), str(tmp_path / "other.json")
    datamodule = CocoDataModule(train_json=train, train_images=root, val_json=val, val_images=root, num_workers=0)

    check_datamodule_splits(datamodule)
    datamodule.setup("fit")
    assert datamodule.num_classes == 1 and len(datamodule.val_split.images) == 2
    assert parsed == [JSON, "other.json"]


def test_cli_exits_1_with_the_report_and_no_traceback(tmp_path: Path):
    data = _dataset(tmp_path)
    _truncated_jpeg(tmp_path, data)
    (tmp_path / JSON).write_text(json.dumps(data))
    args = ["--data.train_json", str(tmp_path / JSON), "--data.train_images", str(tmp_path / "images")]
    result = subprocess.run(
        [sys.executable, "-m", "segmentation.check_data", *args], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert "FATAL" in result.stdout and "img2.jpg" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_exits_0_on_a_clean_split(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / JSON).write_text(json.dumps(_dataset(tmp_path)))
    args = ["--data.val_json", str(tmp_path / JSON), "--data.val_images", str(tmp_path / "images")]

    assert main([*args, "--data.allow_outside_root", "false"]) == 0
    assert "val: " in capsys.readouterr().out
