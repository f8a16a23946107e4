"""CT volume reading, windowing and mask-volume writing (SimpleITK)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk  # the volumes extra, part of dev

from segmentation.data import volumes
from segmentation.data.images import window_to_uint8
from segmentation.errors import InputError, UserError


def make_volume(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 5.0, 100.0))
    image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    return image


def test_lung_window_maps_its_ends_to_0_and_255_and_clips_outside() -> None:
    hu = np.array([-2000, -1350, -600, 150, 3000], dtype=np.int16)
    assert window_to_uint8(hu).tolist() == [0, 0, 128, 255, 255]
    assert window_to_uint8(np.array([0.0, 50.0, 100.0]), center=50, width=100).tolist() == [0, 128, 255]


def test_window_width_must_be_positive() -> None:
    with pytest.raises(ValueError, match="width"):
        window_to_uint8(np.zeros(3), width=0)


@pytest.mark.parametrize("suffix", [".mhd", ".nii.gz", ".nii", ".mha"])
def test_volume_files_round_trip_voxels_and_geometry(tmp_path, suffix: str) -> None:
    values = np.random.default_rng(0).integers(-1024, 1500, size=(4, 6, 5)).astype(np.int16)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(make_volume(values), str(path))
    image = volumes.read_volume(path)
    assert np.array_equal(volumes.volume_array(image), values)
    labels = (values > 0).astype(np.uint8)
    out = volumes.write_label_volume(labels, image, volumes.mask_volume_path(tmp_path / "masks", path))
    assert out.name == f"scan{suffix}"
    written = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(written), labels)
    assert written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSpacing() == pytest.approx(image.GetSpacing())
    assert written.GetOrigin() == pytest.approx(image.GetOrigin())
    assert written.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)


def test_names_and_mask_paths() -> None:
    assert volumes.volume_name("/a/scan.nii.gz") == "scan"
    assert volumes.volume_name("/a/CT_0001") == "CT_0001"
    assert volumes.mask_volume_path("/o", "/a/scan.MHD").name == "scan.mhd"
    assert volumes.mask_volume_path("/o", "/a/dicom_dir").name == "dicom_dir.nii.gz"
    assert volumes.has_volume_suffix("x.NII.GZ") and not volumes.has_volume_suffix("x.png")


def test_label_volume_of_the_wrong_size_is_refused(tmp_path) -> None:
    image = make_volume(np.zeros((2, 3, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="does not match"):
        volumes.write_label_volume(np.zeros((2, 4, 3), dtype=np.uint8), image, tmp_path / "m.nii.gz")


def test_a_2d_image_is_not_a_volume(tmp_path) -> None:
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), dtype=np.int16)), str(path))
    with pytest.raises(ValueError, match="3-D scalar volume"):
        volumes.read_volume(path)


def test_a_folder_without_dicom_is_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("no dicom here")
    with pytest.raises(ValueError, match="one DICOM series"):
        volumes.read_volume(tmp_path)


def test_missing_simpleitk_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    with pytest.raises(ImportError, match=r"segmentation\[volumes\]"):
        volumes.read_volume("scan.nii.gz")


def test_a_4d_nifti_is_refused_naming_file_and_shape(tmp_path) -> None:
    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), dtype=np.int16), isVector=False), str(path))
    with pytest.raises(
        ValueError, match=r"fmri\.nii\.gz: expected a 3-D scalar volume, got 4-D of size \(5, 4, 3, 2\)"
    ) as info:
        volumes.read_volume(path)
    assert isinstance(info.value, UserError)  # the command prints it in one line and exits 2


def nifti1_through_simpleitk(tmp_path, values: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """What SimpleITK makes of the same voxels and affine in a NIfTI-1 file: the geometry nibabel files must get."""
    import nibabel

    path = tmp_path / "reference.nii.gz"
    nibabel.save(nibabel.Nifti1Image(values, affine), str(path))
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("kind", ["nifti2", "mgz"])
def test_nifti2_and_mgz_are_read_through_nibabel_with_simpleitks_geometry(tmp_path, kind: str) -> None:
    import nibabel

    values = np.random.default_rng(0).integers(-1024, 1500, size=(6, 5, 4)).astype(np.int16)  # (i, j, k)
    affine = np.array([[0.0, 0.8, 0.0, -10.0], [0.7, 0.0, 0.0, 5.0], [0.0, 0.0, 2.5, 100.0], [0.0, 0.0, 0.0, 1.0]])
    if kind == "nifti2":
        path = tmp_path / "scan.nii.gz"
        nibabel.save(nibabel.Nifti2Image(values, affine), str(path))
    else:
        path = tmp_path / "scan.mgz"
        nibabel.save(nibabel.MGHImage(values.astype(np.int32), affine), str(path))
    with pytest.raises(RuntimeError):  # the reason for the fallback: SimpleITK has no reader for these
        sitk.ReadImage(str(path))
    image = volumes.read_volume(path)
    expected = nifti1_through_simpleitk(tmp_path, values, affine)
    assert np.array_equal(volumes.volume_array(image), sitk.GetArrayFromImage(expected))
    assert image.GetSpacing() == pytest.approx(expected.GetSpacing())
    assert image.GetOrigin() == pytest.approx(expected.GetOrigin())
    assert image.GetDirection() == pytest.approx(expected.GetDirection())
    assert volumes.volume_name(path) == "scan" and volumes.mask_volume_path(tmp_path, path).name == "scan.nii.gz"


def test_a_4d_nifti2_is_refused_naming_file_and_shape(tmp_path) -> None:
    import nibabel

    path = tmp_path / "perfusion.nii"
    nibabel.save(nibabel.Nifti2Image(np.zeros((4, 3, 2, 5), dtype=np.int16), np.eye(4)), str(path))
    with pytest.raises(
        InputError, match=r"perfusion\.nii: expected a 3-D scalar volume, got 4-D of shape \(4, 3, 2, 5\)"
    ):
        volumes.read_volume(path)


def test_a_file_no_reader_knows_is_an_error_naming_it(tmp_path) -> None:
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"not a volume")
    with pytest.raises(InputError, match=r"scan\.nii\.gz: neither SimpleITK .* nor nibabel .* can read it"):
        volumes.read_volume(path)
