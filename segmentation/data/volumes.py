"""CT volumes in and out: SimpleITK (and nibabel) readers, the mask-volume writer.

Why this exists: users hold CT scans as volumes (MetaImage ``.mhd``/``.raw``, NIfTI ``.nii``/``.nii.gz``, FreeSurfer
``.mgz``, a DICOM file or a folder holding a DICOM series), while the model reads 8-bit images. Everything that turns a
volume into model input (``segmentation.predict`` now, a volumes-to-COCO converter later) must cut slices the same way
and window them with the same arithmetic, or a model trained on converted slices would see different pixels at
inference; so the readers and the window live here, once. Mask volumes are written back with the input's spacing, origin
and direction, so they overlay the scan in any viewer.

SimpleITK is an optional dependency (the ``volumes`` extra); it is imported only when a volume is read or written. Files
SimpleITK cannot read (NIfTI-2, ``.mgz``/``.mgh``) are read with nibabel (same extra) and converted to a
``SimpleITK.Image`` with the same geometry (nibabel's RAS affine turned into ITK's LPS), so everything downstream sees
one type. DICOM folders go through ``data.dicom``, which refuses to stack a series with a made-up spacing.

Slices are axial planes ``array[z]`` of SimpleITK's ``(z, y, x)`` array: rows are ``y``, columns ``x``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segmentation.errors import InputError

VOLUME_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mgz", ".mgh", ".dcm")
# RAS (nibabel) to LPS (ITK): flip the first two patient axes.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    """Read a 3-D scalar volume: a volume file, a DICOM file, or a folder holding one consistent DICOM series.

    Returns:
        The ``SimpleITK.Image`` (voxel values as stored, e.g. HU for CT after DICOM rescaling).

    Raises:
        InputError: a file neither SimpleITK nor nibabel reads, an image that is not 3-D scalar (4-D NIfTI, RGB), a
            folder without a DICOM series, with several, or whose series is not one volume (gaps, orientations).
    """
    path = Path(path)
    image = _read_dicom_folder(path) if path.is_dir() else _read_volume_file(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: expected a 3-D scalar volume, got {image.GetDimension()}-D of size {image.GetSize()} "
            f"with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    return image


def _read_dicom_folder(path: Path) -> Any:
    from segmentation.data import dicom

    found, notes, problems = dicom.find_volumes(path, dicom.dicom_files(path))
    if problems or len(found) != 1:
        detail = "; ".join(problems + notes) or f"found {len({v.series_uid for v in found})}"
        raise InputError(f"{path}: expected one DICOM series in the folder that stacks into one volume: {detail}")
    return dicom.read_dicom_volume(found[0])


def _read_volume_file(path: Path) -> Any:
    """SimpleITK first (it keeps every format's own geometry conventions), nibabel for what it cannot read."""
    lib = sitk()
    try:
        return lib.ReadImage(str(path))
    except RuntimeError as sitk_error:
        try:
            return _read_with_nibabel(path)
        except (ImportError, InputError):
            raise
        except Exception as nib_error:  # nibabel's ImageFileError, OSError, ValueError...
            reason = str(sitk_error).strip().splitlines()[-1]
            raise InputError(f"{path}: neither SimpleITK ({reason}) nor nibabel ({nib_error}) can read it") from None


def _read_with_nibabel(path: Path) -> Any:
    """A NIfTI-2 / MGH file as a ``SimpleITK.Image``: voxels ``(i, j, k)`` -> array ``(k, j, i)``, LPS geometry."""
    import nibabel

    volume = nibabel.load(str(path))
    shape = tuple(volume.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D scalar volume, got {len(shape)}-D of shape {tuple(volume.shape)}")
    data = np.asarray(volume.dataobj).reshape(shape)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)  # MGH stores big-endian; ITK takes native order
    affine = _RAS_TO_LPS @ volume.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk().GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in (affine[:3, :3] / spacing).ravel()])
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
