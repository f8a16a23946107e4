"""What ``segmentation.predict`` reads: the command line's paths turned into sources, and each source's pixels.

Why this exists: users point predict at whatever they hold: an image, a folder of images, a volume file, one DICOM
file, a DICOM series folder (sometimes with a ``preview.jpg`` beside it), a patient/study folder with several series.
Each of these is resolved here, once, into a list of sources with the names their outputs get, so the command only
loops over sources. The rules:

* an image file (``IMAGE_SUFFIXES``) is an image; a volume file (``.mhd .mha .nii .nii.gz .nrrd .mgz .mgh``) or a
  single DICOM file (``.dcm``, or any file with the DICOM preamble) is a volume: a DICOM slice is a 1-slice volume, a
  multi-frame file its frames; to predict a whole series, give its folder;
* a folder gives its images (sorted, not recursive) **and** the DICOM files under it (recursive), grouped by series
  and cut into consistent stacks by ``data.dicom`` (a gap, a change of step or a second orientation starts a new
  stack, reported as a note). A folder with one series names its volume after the folder; with several, each is
  named ``<folder>_s<SeriesNumber>_<SeriesDescription>``. A ``preview.jpg`` beside a series is predicted as an image
  as well (it is an image the user may want to see), and the series is never skipped;
* a file that cannot be read (corrupt image or DICOM, a 4-D volume, a series that cannot be stacked) is a *problem*:
  the command reports it, predicts everything else and exits non-zero at the end (``SkippedInputsError``).

Files of other types inside a folder (``.txt``, ``.json``, ``DICOMDIR``) are not inputs and are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.data import dicom, volumes
from segmentation.data.images import CtWindow, read_image_bgr
from segmentation.errors import InputError, MissingFileError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Source:
    """One input: an image file, a volume file, or one stack of a DICOM series folder.

    ``path`` is what ``images.json`` records as ``file_name`` (the file, or the folder holding the series);
    ``name`` the stem of its output files (made unique by ``unique_names``).
    """

    kind: str  # "image", "volume" or "dicom"
    path: Path
    name: str
    stack: dicom.DicomVolume | None = None


@dataclass
class Discovery:
    """The sources of the command line, the notes to print (cut series) and the problems (unreadable inputs)."""

    sources: list[Source]
    notes: list[str]
    problems: list[str]


class SkippedInputsError(UserError):
    """Some inputs could not be read; everything else was predicted and written."""

    def __init__(self, problems: Sequence[str], out_dir: Path) -> None:
        listed = "\n  ".join(problems)
        super().__init__(
            f"{len(problems)} input(s) could not be read and were skipped (the others are written to {out_dir}):"
            f"\n  {listed}"
        )


def discover_inputs(paths: Sequence[str | Path]) -> Discovery:
    """Expand the command line's paths into sources, in the order given (see the module docstring for the rules).

    Raises:
        MissingFileError: a path that does not exist (a typo stops the command before any work).
    """
    found = Discovery([], [], [])
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise MissingFileError(f"input not found: {path}")
        if path.is_dir():
            _add_folder(path, found)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.sources.append(Source("image", path, path.stem))
        elif volumes.has_volume_suffix(path) or dicom.is_dicom_file(path):
            found.sources.append(Source("volume", path, volumes.volume_name(path)))
        else:
            found.sources.append(Source("image", path, path.stem))  # read by PIL: any format it knows
    return found


def _add_folder(folder: Path, found: Discovery) -> None:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    found.sources += [Source("image", p, p.stem) for p in images]
    stacks, notes, problems = dicom.find_volumes(folder, dicom.dicom_files(folder))
    found.sources += [Source("dicom", folder, stack.name, stack) for stack in stacks]
    found.notes += notes
    found.problems += problems
    if not images and not stacks and not problems:
        found.problems.append(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) and no DICOM files in the folder")


def unique_names(names: Sequence[str]) -> list[str]:
    """File-name stems for the outputs: duplicates get ``_1``, ``_2``... in input order."""
    used: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in used:
            candidate, k = f"{name}_{k}", k + 1
        used.add(candidate)
        out.append(candidate)
    return out


def read_image(source: Source, window: CtWindow) -> np.ndarray:
    """The image as uint8 ``(H, W, 3)`` BGR, as training reads it.

    Raises:
        InputError: the file is not an image PIL can decode (corrupt, truncated, another format).
    """
    try:
        return read_image_bgr(str(source.path), window)
    except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated data...
        raise InputError(f"{source.path}: cannot read the image ({e})") from None


def read_volume(source: Source) -> Any:
    """The source's ``SimpleITK.Image`` (3-D scalar).

    Raises:
        InputError: a file SimpleITK and nibabel cannot read, a volume that is not 3-D scalar, a broken DICOM file.
    """
    if source.stack is not None:
        return dicom.read_dicom_volume(source.stack)
    return volumes.read_volume(source.path)
