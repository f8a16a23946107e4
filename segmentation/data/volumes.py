"""CT volumes in and out: SimpleITK readers and writers, and the HU window that turns a slice into an image.

Why this exists: users hold CT scans as volumes (MetaImage ``.mhd``/``.raw``, NIfTI ``.nii``/``.nii.gz``, a folder
holding a DICOM series), while the model reads 8-bit images. Everything that turns a volume into model input
(``segmentation.predict`` now, a volumes-to-COCO converter later) must cut slices the same way and window them with
the same arithmetic, or a model trained on converted slices would see different pixels at inference; so the
readers and the window live here, once. Mask volumes are written back with the input's spacing, origin and
direction, so they overlay the scan in any viewer.

SimpleITK is an optional dependency (the ``volumes`` extra); it is imported only when a volume is read or written.

Slices are axial planes ``array[z]`` of SimpleITK's ``(z, y, x)`` array: rows are ``y``, columns ``x``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOLUME_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr")


def sitk() -> Any:
    """The SimpleITK module, or an ImportError that names the extra to install."""
    try:
        import SimpleITK
    except ImportError as e:
        raise ImportError(
            "reading CT volumes needs SimpleITK: pip install 'segmentation[volumes]' (or pip install SimpleITK)"
        ) from e
    return SimpleITK


def has_volume_suffix(path: str | Path) -> bool:
    """Whether ``path`` names a volume file by its extension (``.mhd``, ``.nii.gz``, ...)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_name(path: str | Path) -> str:
    """The volume's name without volume extensions: ``scan.nii.gz`` -> ``scan``, a DICOM folder -> its name."""
    name = Path(path).name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_volume(path: str | Path) -> Any:
    """Read a 3-D scalar volume: a volume file, or a folder with exactly one DICOM series (sorted by position).

    Returns:
        The ``SimpleITK.Image`` (voxel values as stored, e.g. HU for CT after DICOM rescaling).

    Raises:
        ValueError: a folder without a DICOM series or with several, or an image that is not 3-D scalar.
    """
    lib = sitk()
    path = Path(path)
    if path.is_dir():
        series = lib.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if len(series) != 1:
            raise ValueError(f"{path}: expected one DICOM series in the folder, found {len(series)}")
        reader = lib.ImageSeriesReader()
        reader.SetFileNames(lib.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
        image = reader.Execute()
    else:
        image = lib.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: expected a 3-D scalar volume, got {image.GetDimension()}-D of size {image.GetSize()} "
            f"with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return image


def volume_array(image: Any) -> np.ndarray:
    """The voxels as a ``(z, y, x)`` numpy array (a copy)."""
    return sitk().GetArrayFromImage(image)


def mask_volume_path(out_dir: str | Path, source: str | Path) -> Path:
    """Where the mask volume of ``source`` goes: same format for ``.mhd``/``.mha``/``.nii(.gz)``, else ``.nii.gz``."""
    name = Path(source).name.lower()
    suffix = next((s for s in (".nii.gz", ".nii", ".mhd", ".mha") if name.endswith(s)), ".nii.gz")
    return Path(out_dir) / f"{volume_name(source)}{suffix}"


def write_label_volume(labels: np.ndarray, reference: Any, path: str | Path) -> Path:
    """Write a uint8 ``(z, y, x)`` label array with ``reference``'s spacing, origin and direction.

    Returns:
        The path written (a ``.mhd`` also writes its ``.raw`` beside it; both compressed).
    """
    lib = sitk()
    if tuple(labels.shape) != tuple(reversed(reference.GetSize())):
        raise ValueError(f"label array {labels.shape} does not match the volume size {reference.GetSize()[::-1]}")
    image = lib.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.CopyInformation(reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lib.WriteImage(image, str(path), useCompression=True)
    return path
