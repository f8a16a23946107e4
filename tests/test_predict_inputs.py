"""``segmentation.predict`` on the files radiology users hold: DICOM studies, series with a gap or a preview JPEG,
single DICOM files, NIfTI-2, ``.mgz``, and a folder with a file that cannot be read."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk  # the volumes extra, part of dev
from dicom_files import write_series
from PIL import Image
from test_predict import ct_values, tiny_model_files

from segmentation import predict
from segmentation.inference.progress import SliceProgress

H = W = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One predict run over every kind of input below; it must end with exit status 2 (two unreadable inputs)."""
    root = tmp_path_factory.mktemp("inputs")
    config, weights = tiny_model_files(root)
    hu = ct_values(5, H, W)
    write_series(root / "study" / "a", hu[:3], [0, 1, 2], SeriesNumber=2, SeriesDescription="Lung")
    write_series(root / "study" / "b", hu, [0.0, 2.5, 5.0, 10.0, 12.5], SeriesNumber=3, SeriesDescription="Body")
    write_series(root / "with_preview", hu[:3], [0, 1, 2])
    Image.fromarray(np.where(hu[0] < -500, 20, 150).astype(np.uint8)).save(root / "with_preview" / "preview.jpg")
    single = write_series(root / "single", hu[:1], [7.5], prefix="CT")[0]
    assert single.name == "CT0000.dcm"
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    nibabel.save(nibabel.MGHImage(hu[:3].transpose(2, 1, 0).astype(np.int32), affine), str(root / "brain.mgz"))
    nibabel.save(nibabel.Nifti2Image(hu[:3].transpose(2, 1, 0), affine), str(root / "scan.nii"))
    (root / "pngs").mkdir()
    Image.fromarray(np.where(hu[0] < -500, 20, 150).astype(np.uint8)).save(root / "pngs" / "good.png")
    (root / "pngs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), dtype=np.int16), isVector=False),
                    str(root / "fmri.nii.gz"))  # fmt: skip
    inputs = [root / "study", root / "with_preview", single, root / "brain.mgz", root / "scan.nii", root / "pngs",
              root / "fmri.nii.gz"]  # fmt: skip
    out = root / "out"
    args = ["--config", str(config), "--model.weights", str(weights), "--output_dir", str(out), "--batch_size", "2"]
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        predict.main([*args, "--score_threshold", "0.0", "--input", *map(str, inputs)])
    images = json.loads((out / "images.json").read_text())["images"]
    return {"root": root, "out": out, "images": images, "code": exit_info.value.code, "stderr": stderr.getvalue()}


def test_unreadable_inputs_are_reported_and_the_run_exits_2_after_writing_everything_else(run) -> None:
    root, err = run["root"], run["stderr"]
    assert run["code"] == 2
    assert f"warning: skipped {root / 'pngs' / 'broken.png'}: cannot read the image" in err
    assert f"warning: skipped {root / 'fmri.nii.gz'}: expected a 3-D scalar volume, got 4-D of size (5, 4, 3, 2)" in err
    summary = err[err.index("error: 2 input(s) could not be read") :]
    assert str(root / "pngs" / "broken.png") in summary and str(root / "fmri.nii.gz") in summary
    assert "Traceback" not in err
    assert (run["out"] / "predictions.json").exists() and (run["out"] / "masks" / "good.png").exists()


def test_every_readable_input_is_predicted_and_named_by_its_series(run) -> None:
    root = run["root"]
    listed = [(Path(i["file_name"]).relative_to(root).as_posix(), i.get("slice")) for i in run["images"]]
    assert listed == [
        *[("study", z) for z in range(3)],  # study_s2_Lung
        *[("study", z) for z in range(3)],  # study_s3_Body_part1of2: 0, 2.5, 5 mm
        *[("study", z) for z in range(2)],  # study_s3_Body_part2of2: 10, 12.5 mm
        ("with_preview/preview.jpg", None),
        *[("with_preview", z) for z in range(3)],
        ("single/CT0000.dcm", 0),
        *[("brain.mgz", z) for z in range(3)],
        *[("scan.nii", z) for z in range(3)],
        ("pngs/good.png", None),
    ]
    assert [i["id"] for i in run["images"]] == list(range(1, 21))
    masks = sorted(p.name for p in (run["out"] / "masks").iterdir())
    assert masks == sorted(["study_s2_Lung.nii.gz", "study_s3_Body_part1of2.nii.gz", "study_s3_Body_part2of2.nii.gz",
                            "preview.png", "with_preview.nii.gz", "CT0000.nii.gz", "brain.nii.gz", "scan.nii",
                            "good.png"])  # fmt: skip
    uids = {i.get("series_instance_uid") for i in run["images"] if i["file_name"].endswith("study")}
    assert len(uids) == 2 and None not in uids


def test_a_gapped_series_is_predicted_as_stacks_with_their_true_geometry_and_the_cut_is_reported(run) -> None:
    first = sitk.ReadImage(str(run["out"] / "masks" / "study_s3_Body_part1of2.nii.gz"))
    second = sitk.ReadImage(str(run["out"] / "masks" / "study_s3_Body_part2of2.nii.gz"))
    assert first.GetSize()[2] == 3 and second.GetSize()[2] == 2
    assert first.GetSpacing()[2] == pytest.approx(2.5) and second.GetSpacing()[2] == pytest.approx(2.5)
    assert first.GetOrigin()[2] == pytest.approx(0.0) and second.GetOrigin()[2] == pytest.approx(10.0)
    assert f"warning: {run['root'] / 'study'}: series s3_Body" in run["stderr"]
    assert "step 5 mm instead of 2.5 mm" in run["stderr"]


def test_the_single_dicom_file_keeps_its_position(run) -> None:
    mask = sitk.ReadImage(str(run["out"] / "masks" / "CT0000.nii.gz"))
    assert mask.GetSize() == (W, H, 1) and mask.GetOrigin()[2] == pytest.approx(7.5)


def test_volumes_print_slices_done_rate_and_eta_on_stderr(run) -> None:
    lines = [line for line in run["stderr"].splitlines() if line.startswith("study_s2_Lung: ")]
    assert lines[-1].startswith("study_s2_Lung: 3/3 slices, ") and " slices/s, ETA 0:00:00" in lines[-1]


def test_progress_reports_rate_and_eta_at_most_once_per_interval() -> None:
    times = iter([0.0, 10.0, 10.5, 20.0, 30.0])
    stream = io.StringIO()
    progress = SliceProgress("scan", 300, stream=stream, interval=1.0, clock=lambda: next(times))
    progress.update(100)  # t = 10 s: 10 slices/s, 200 left
    progress.update(110)  # t = 10.5 s: within the interval, not printed
    progress.update(200)  # t = 20 s
    progress.update(300)  # t = 30 s: the end
    assert stream.getvalue().splitlines() == [
        "scan: 100/300 slices, 10.0 slices/s, ETA 0:00:20",
        "scan: 200/300 slices, 10.0 slices/s, ETA 0:00:10",
        "scan: 300/300 slices, 10.0 slices/s, ETA 0:00:00",
    ]


def test_two_processes_report_an_unreadable_input_once_written_and_exit_2(run, tmp_path) -> None:
    """Each process reads its share; the problem met by rank 1 is in every process's summary, and the run fails."""
    root, out = run["root"], tmp_path / "ddp"
    pngs = root / "pngs"
    inputs = [pngs / "good.png", pngs, root / "with_preview"]  # every 2nd of: good, broken, good, preview, series
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "segmentation.predict", "--config", str(root / "tiny.yaml"), "--model.weights",
               str(root / "tiny.pth"), "--output_dir", str(out), "--device", "cpu", "--score_threshold", "0.0",
               "--input", *map(str, inputs)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, encoding="utf-8", errors="replace", env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode != 0
    assert done.stderr.count(f"warning: skipped {pngs / 'broken.png'}") == 1  # read by rank 1 only
    summary = f"error: 1 input(s) could not be read and were skipped (the others are written to {out}):\n  {pngs}"
    assert done.stderr.count(summary) == 2
    listed = [Path(i["file_name"]).name for i in json.loads((out / "images.json").read_text())["images"]]
    assert listed == ["good.png", "good.png", "preview.jpg", "with_preview", "with_preview", "with_preview"]
