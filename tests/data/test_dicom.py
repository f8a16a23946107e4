"""DICOM folders: series found by their tags, cut into stacks with a true geometry, bad files and series named."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk  # the volumes extra, part of dev
from dicom_files import AXIAL, CORONAL, ct_slice, write_series

from segmentation.data import dicom, volumes
from segmentation.errors import InputError, UserError


def slices(depth: int, h: int = 8, w: int = 6) -> np.ndarray:
    """Slice k filled with HU 100 * k, so a read-back volume shows which slices it holds, in which order."""
    return np.stack([np.full((h, w), 100 * k, dtype=np.int16) for k in range(depth)])


def stacks_of(folder):
    return dicom.find_volumes(folder, dicom.dicom_files(folder))


def test_a_regular_series_is_one_volume_named_after_its_folder(tmp_path) -> None:
    write_series(tmp_path / "CT_chest", slices(4), [10.0, 12.5, 15.0, 17.5])
    found, notes, problems = stacks_of(tmp_path / "CT_chest")
    assert [v.name for v in found] == ["CT_chest"] and notes == [] and problems == []
    image = dicom.read_dicom_volume(found[0])
    assert image.GetSpacing() == pytest.approx((0.8, 0.7, 2.5))
    assert image.GetOrigin() == pytest.approx((0.0, 0.0, 10.0))
    assert sitk.GetArrayFromImage(image)[:, 0, 0].tolist() == [0, 100, 200, 300]


def test_a_gap_cuts_the_series_into_stacks_each_with_its_true_spacing(tmp_path) -> None:
    """Slice at z=7.5 missing: one volume with a uniform 2.5 mm spacing would put the last two slices 2.5 mm off."""
    write_series(tmp_path / "gap", slices(5), [0.0, 2.5, 5.0, 10.0, 12.5])
    found, notes, problems = stacks_of(tmp_path / "gap")
    assert [v.name for v in found] == ["gap_part1of2", "gap_part2of2"] and problems == []
    assert len(notes) == 1 and "step 5 mm instead of 2.5 mm" in notes[0] and str(tmp_path / "gap") in notes[0]
    first, second = (dicom.read_dicom_volume(v) for v in found)
    assert first.GetSize()[2] == 3 and first.GetOrigin()[2] == pytest.approx(0.0)
    assert first.GetSpacing()[2] == pytest.approx(2.5)
    assert second.GetSize()[2] == 2 and second.GetOrigin()[2] == pytest.approx(10.0)
    assert second.GetSpacing()[2] == pytest.approx(2.5)
    assert sitk.GetArrayFromImage(second)[:, 0, 0].tolist() == [300, 400]


def test_after_a_missing_second_slice_the_first_stands_alone(tmp_path) -> None:
    write_series(tmp_path / "gap", slices(4), [0.0, 5.0, 7.5, 10.0])
    found, notes, _ = stacks_of(tmp_path / "gap")
    assert [len(v.files) for v in found] == [1, 3] and "step 5 mm instead of 2.5 mm" in notes[0]
    assert dicom.read_dicom_volume(found[1]).GetOrigin()[2] == pytest.approx(5.0)


def test_a_stack_sheared_off_its_normal_is_refused(tmp_path) -> None:
    """Gantry tilt: each slice shifted in y as z grows; stacking along z would move every slice but the first."""
    (tmp_path / "tilt").mkdir()
    for k in range(3):
        ct_slice(slices(1)[0], (0.0, 0.5 * k, 2.0 * k), AXIAL, "1.2.3.5").save_as(
            tmp_path / "tilt" / f"{k}.dcm", enforce_file_format=True
        )
    found, _, problems = stacks_of(tmp_path / "tilt")
    assert found == [] and "not stacked along their normal (gantry tilt?)" in problems[0] and "1.2.3.5" in problems[0]


def test_two_orientations_in_one_series_are_two_volumes(tmp_path) -> None:
    uid = "1.2.826.0.1.3680043.2.1125.99"
    write_series(tmp_path / "mixed", slices(3), [0.0, 2.0, 4.0], series_uid=uid, prefix="AX")
    write_series(tmp_path / "mixed", slices(2), [-5.0, -3.0], orientation=CORONAL, series_uid=uid, prefix="CO")
    found, notes, problems = stacks_of(tmp_path / "mixed")
    assert [v.name for v in found] == ["mixed_axial", "mixed_coronal"] and problems == []
    assert "2 orientations (axial 3, coronal 2)" in notes[0] and uid in notes[0]
    axial, coronal = (dicom.read_dicom_volume(v) for v in found)
    assert axial.GetDirection() == pytest.approx(np.eye(3).ravel())
    assert coronal.GetSize()[2] == 2 and coronal.GetSpacing()[2] == pytest.approx(2.0)
    assert coronal.GetOrigin() == pytest.approx((0.0, -5.0, 0.0))


def test_a_study_folder_gives_one_volume_per_series_named_by_the_series(tmp_path) -> None:
    study = tmp_path / "patient7"
    write_series(study / "a", slices(3), [0, 1, 2], SeriesNumber=3, SeriesDescription="Lung 1.0 B70f")
    write_series(study / "b", slices(2), [0, 5], SeriesNumber=2, SeriesDescription="Abdomen/5mm")
    found, notes, problems = stacks_of(study)
    assert [v.name for v in found] == ["patient7_s2_Abdomen_5mm", "patient7_s3_Lung_1.0_B70f"]
    assert [len(v.files) for v in found] == [2, 3] and notes == [] and problems == []


def test_two_slices_at_one_position_are_refused_naming_folder_and_series(tmp_path) -> None:
    write_series(tmp_path / "dup", slices(3), [0.0, 2.5, 2.5], series_uid="1.2.3.4")
    found, _, problems = stacks_of(tmp_path / "dup")
    assert found == []
    assert len(problems) == 1 and str(tmp_path / "dup") in problems[0] and "1.2.3.4" in problems[0]
    assert "same position" in problems[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"not a dicom file", "not a readable DICOM file"), (300, "truncated or damaged")],
    ids=["not-dicom", "truncated"],
)
def test_a_corrupt_file_is_a_problem_naming_it_and_the_rest_of_the_series_is_kept(tmp_path, content, problem) -> None:
    paths = write_series(tmp_path / "s", slices(3), [0, 1, 2])
    broken = tmp_path / "s" / "broken.dcm"
    broken.write_bytes(paths[0].read_bytes()[:content] if isinstance(content, int) else content)
    found, _, problems = stacks_of(tmp_path / "s")
    assert [len(v.files) for v in found] == [3]
    assert len(problems) == 1 and problems[0].startswith(f"{broken}: ") and problem in problems[0]


def test_files_without_suffix_are_found_by_their_preamble_and_dicomdir_is_not_a_slice(tmp_path) -> None:
    paths = write_series(tmp_path / "s", slices(2), [0, 1])
    paths[0].rename(tmp_path / "s" / "IM_0001")
    (tmp_path / "s" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    assert sorted(p.name for p in dicom.dicom_files(tmp_path / "s")) == sorted(["IM_0001", paths[1].name])


def test_volumes_to_coco_and_other_single_volume_readers_refuse_a_gapped_series(tmp_path) -> None:
    """``read_volume`` must return one volume: a series that is not one stack is an error naming it, never stacked."""
    write_series(tmp_path / "gap", slices(4), [0.0, 1.0, 2.0, 4.0])
    with pytest.raises(InputError, match=r"gap: expected one DICOM series .* step 2 mm instead of 1 mm") as info:
        volumes.read_volume(tmp_path / "gap")
    assert isinstance(info.value, UserError)


def test_the_plane_name_follows_the_slice_normal(tmp_path) -> None:
    assert dicom._plane(dicom._Slice(tmp_path, np.zeros(3), np.array(AXIAL))) == "axial"
    assert dicom._plane(dicom._Slice(tmp_path, np.zeros(3), np.array(CORONAL))) == "coronal"
    assert dicom._plane(dicom._Slice(tmp_path, np.zeros(3), np.array([0, 1, 0, 0, 0, -1.0]))) == "sagittal"
    oblique = np.array([1, 0, 0, 0, np.cos(0.7), np.sin(0.7)])
    assert dicom._plane(dicom._Slice(tmp_path, np.zeros(3), oblique)) == "oblique"


def test_a_multi_frame_file_is_a_volume_of_its_frames_alone_and_in_a_folder(tmp_path) -> None:
    dataset = ct_slice(slices(1)[0], (0.0, 0.0, 5.0), AXIAL, "1.2.3.9")
    dataset.NumberOfFrames, dataset.PixelData = 3, slices(3).tobytes()
    (tmp_path / "mf").mkdir()
    dataset.save_as(tmp_path / "mf" / "enhanced.dcm", enforce_file_format=True)
    image = volumes.read_volume(tmp_path / "mf" / "enhanced.dcm")
    assert sitk.GetArrayFromImage(image)[:, 0, 0].tolist() == [0, 100, 200]
    found, notes, problems = stacks_of(tmp_path / "mf")
    assert [(v.name, len(v.files)) for v in found] == [("mf", 1)] and notes == problems == []
