"""Small CT DICOM files written with pydicom, as a scanner exports them: one file per slice, with the geometry tags."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
PIXEL_SPACING = (0.7, 0.8)  # row spacing (y), column spacing (x)


def ct_slice(
    hu: np.ndarray, position: Sequence[float], orientation: Sequence[float], series_uid: str, **tags
) -> Dataset:
    """One CT slice storing ``hu`` as int16 with RescaleIntercept 0 (stored values are HU)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.826.0.1.3680043.2.1125.7", series_uid, "CT"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(hu, dtype=np.int16).tobytes()
    return ds


def write_series(
    folder: Path,
    hu: np.ndarray,
    z_positions: Sequence[float],
    *,
    orientation: Sequence[float] = AXIAL,
    series_uid: str | None = None,
    prefix: str = "IM",
    **tags,
) -> list[Path]:
    """One file per slice ``hu[k]`` at ``z_positions[k]`` mm along the slice normal (files named in shuffled order)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = series_uid or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.random.default_rng(len(z_positions)).permutation(len(z_positions))
    paths = []
    for k, z in enumerate(z_positions):
        path = folder / f"{prefix}{order[k]:04d}.dcm"
        ct_slice(hu[k], z * normal, orientation, uid, InstanceNumber=k + 1, **tags).save_as(
            path, enforce_file_format=True
        )
        paths.append(path)
    return paths
