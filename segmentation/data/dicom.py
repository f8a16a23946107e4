"""DICOM folders: find the series in a folder, and cut each series into volumes whose geometry is true.

Why this exists: GDCM's series reader stacks every file of a SeriesInstanceUID and takes one slice spacing from the
first two positions. A series with a missing slice, a changing step, or slices in a second orientation (a scout or a
reformat exported into the same series) then gets a volume whose spacing is made up for part of it, and a mask
volume written with that geometry lands on the wrong anatomy in a viewer. Here the headers are read first
(pydicom, without pixels) and each series is cut into *consistent* stacks, as a radiologist's viewer shows them:
one stack per orientation, and a new stack at every gap or change of step. Each stack keeps its true geometry and
every slice is still predicted (the model is 2-D); the cut is reported, never silent. A series that cannot be cut
into true stacks (two slices at one position, a stack sheared by gantry tilt) is refused with an error naming the
folder, the series and the problem.

Pixels are read by SimpleITK (GDCM decodes compressed transfer syntaxes and applies the rescale to HU).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.errors import InputError

DICOM_SUFFIXES = (".dcm", ".dicom")
# Two slices belong to one stack while their step stays within this of the stack's step (mm, or a fraction of it).
STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION = 0.01, 0.01
ORIENTATION_TOLERANCE = 1e-3
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "NumberOfFrames",
]


@dataclass(frozen=True)
class DicomVolume:
    """One consistent stack of a series: its files in slice order and the name its outputs get."""

    name: str
    folder: Path
    files: tuple[Path, ...]
    series_uid: str


@dataclass(frozen=True)
class _Slice:
    path: Path
    position: np.ndarray | None
    orientation: np.ndarray | None


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm``/``.dicom`` file, or any file with the DICOM preamble (``DICM`` at byte 128); not a DICOMDIR."""
    if path.name.upper() == "DICOMDIR" or not path.is_file():
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files under ``folder`` and its subfolders (a study folder holds one subfolder per series)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [p for p in (Path(root) / name for name in sorted(files)) if is_dicom_file(p)]
    return found


def find_volumes(folder: Path, files: list[Path]) -> tuple[list[DicomVolume], list[str], list[str]]:
    """Group ``files`` by series and cut each series into consistent stacks.

    Returns:
        ``(volumes, notes, problems)``: the stacks in series order (by series number); a note for every series that
        was cut (what and why); a problem (``file: what``) for every file or series that cannot be read.
    """
    series: dict[str, list[_Slice]] = {}
    labels: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    volumes, notes = [], []
    for path in files:
        try:
            header = _read_header(path)
        except InputError as e:
            problems.append(str(e))
            continue
        if "Rows" not in header:
            notes.append(f"{path}: not an image ({header['SOPClassUID'].name}), not predicted")
            continue
        uid = str(header.get("SeriesInstanceUID", "")) or f"file:{path}"
        series.setdefault(uid, []).append(_slice_of(path, header))
        labels.setdefault(uid, _series_label(header, uid))
    for uid in sorted(series, key=lambda u: labels[u]):
        name = folder.name if len(series) == 1 else f"{folder.name}_{labels[uid][1]}"
        try:
            stacks, note = _stacks(series[uid], name, f"{folder}: series {labels[uid][1]} ({uid})")
        except InputError as e:
            problems.append(str(e))
            continue
        volumes += [DicomVolume(stack_name, folder, tuple(s.path for s in stack), uid) for stack_name, stack in stacks]
        notes += [note] if note else []
    return volumes, notes, problems


def read_dicom_volume(volume: DicomVolume) -> Any:
    """The stack's ``SimpleITK.Image``: one file read alone (a slice, or a multi-frame file), else the series reader."""
    from segmentation.data.volumes import sitk

    lib = sitk()
    files = [str(p) for p in volume.files]
    try:
        if len(files) == 1:
            return lib.ReadImage(files[0])
        reader = lib.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{volume.folder}: cannot read DICOM volume {volume.name}: {_short_message(e)}") from None


def _read_header(path: Path) -> dict[str, Any]:
    """The tags of ``_HEADER_TAGS`` that the file has; a file without Rows must be a non-image object (a report)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, ValueError, struct.error... on a bad file
        raise InputError(f"{path}: not a readable DICOM file ({type(e).__name__}: {_short_message(e)})") from None
    sop_class = dataset.get("SOPClassUID")
    if "Rows" not in dataset and (sop_class is None or "Image" in sop_class.name):
        raise InputError(f"{path}: DICOM file without its image tags (Rows): truncated or damaged")
    return {keyword: dataset.get(keyword) for keyword in _HEADER_TAGS if dataset.get(keyword) is not None}


def _slice_of(path: Path, header: dict[str, Any]) -> _Slice:
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames > 1 or "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
        return _Slice(path, None, None)  # a volume on its own (multi-frame) or a slice without geometry
    return _Slice(
        path,
        np.array([float(v) for v in header["ImagePositionPatient"]]),
        np.array([float(v) for v in header["ImageOrientationPatient"]]),
    )


def _series_label(header: dict[str, Any], uid: str) -> tuple[int, str]:
    """Sort key and readable name of a series: ``s<number>_<description>``, else the end of its UID."""
    number = header.get("SeriesNumber")
    description = re.sub(r"[^A-Za-z0-9.-]+", "_", str(header.get("SeriesDescription", ""))).strip("_")
    parts = [f"s{int(number)}" if number is not None else "", description]
    label = "_".join(p for p in parts if p) or uid.rsplit(".", 1)[-1]
    return (int(number) if number is not None else 1 << 30, label)


def _stacks(slices: list[_Slice], name: str, where: str) -> tuple[list[tuple[str, list[_Slice]]], str]:
    """Cut one series into ``(name, slices)`` stacks of one orientation and one step; the note says why it was cut."""
    groups: list[list[_Slice]] = []
    for s in (s for s in slices if s.orientation is not None):
        group = next(
            (g for g in groups if np.allclose(g[0].orientation, s.orientation, atol=ORIENTATION_TOLERANCE)), None
        )
        if group is None:
            groups.append([s])
        else:
            group.append(s)
    alone = [s for s in slices if s.orientation is None]
    stacks = [(f"{name}_{s.path.stem}" if len(slices) > 1 else name, [s]) for s in alone]
    reasons = []
    if len(groups) > 1:
        reasons.append(f"{len(groups)} orientations (" + ", ".join(f"{_plane(g[0])} {len(g)}" for g in groups) + ")")
    for group in groups:
        group_name = f"{name}_{_plane(group[0])}" if len(groups) > 1 else name
        runs, gaps = _runs(group, where)
        reasons += gaps
        for k, run in enumerate(runs, start=1):
            stacks.append((group_name if len(runs) == 1 else f"{group_name}_part{k}of{len(runs)}", run))
    if not reasons:
        return stacks, ""
    names = ", ".join(stack_name for stack_name, _ in stacks)
    return (
        stacks,
        f"{where}: {'; '.join(reasons)}: predicted as {len(stacks)} volumes, each with its own geometry: {names}",
    )


def _runs(group: list[_Slice], where: str) -> tuple[list[list[_Slice]], list[str]]:
    """Sort one orientation's slices along its normal and cut them wherever the step changes.

    A stack's step is set by its first two slices, unless the step after them differs: then the first slice stands
    alone (``0, 5, 7.5, 10`` mm -> ``[0]``, ``[5, 7.5, 10]``: the slice at 2.5 mm is the one missing).
    """
    orientation = group[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(group, key=lambda s: float(s.position @ normal))
    steps = [_step_along(a, b, normal, where) for a, b in zip(ordered, ordered[1:], strict=False)]
    runs, gaps, step = [[ordered[0]]], [], None
    for k, along in enumerate(steps):
        previous, current = ordered[k], ordered[k + 1]
        starts_run = step is None and k + 1 < len(steps) and not _same_step(along, steps[k + 1])
        if starts_run or (step is not None and not _same_step(along, step)):
            gaps.append(
                f"step {along:g} mm instead of {step or steps[k + 1]:g} mm between {_mm(previous.position)} and "
                f"{_mm(current.position)}"
            )
            runs.append([current])
            step = None
            continue
        runs[-1].append(current)
        step = along if step is None else step
    return runs, gaps


def _step_along(previous: _Slice, current: _Slice, normal: np.ndarray, where: str) -> float:
    """The distance between two consecutive slices along the normal; refused if zero or off the normal."""
    delta = current.position - previous.position
    along = float(delta @ normal)
    tolerance = max(STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION * abs(along))
    if along < tolerance:
        raise InputError(
            f"{where}: {previous.path.name} and {current.path.name} are at the same position "
            f"{_mm(previous.position)}: cannot stack them into one volume"
        )
    if np.linalg.norm(delta - along * normal) > tolerance:
        raise InputError(
            f"{where}: slices are not stacked along their normal (gantry tilt?) between "
            f"{previous.path.name} and {current.path.name}: refused, no true volume geometry"
        )
    return along


def _same_step(a: float, b: float) -> bool:
    return abs(a - b) <= max(STEP_TOLERANCE_MM, STEP_TOLERANCE_FRACTION * min(a, b))


def _plane(s: _Slice) -> str:
    """axial / coronal / sagittal by the slice normal's main patient axis, else oblique."""
    normal = np.abs(np.cross(s.orientation[:3], s.orientation[3:]))
    axis = int(np.argmax(normal))
    return ("sagittal", "coronal", "axial")[axis] if normal[axis] > 0.9 else "oblique"


def _mm(position: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in position) + ") mm"


def _short_message(error: BaseException) -> str:
    """The last non-empty line of an error (SimpleITK puts the reason after a line of source locations)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__
