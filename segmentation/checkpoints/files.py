"""Find and read a weights file safely: local path, ``detectron2://`` or URL, cached, checksummed, never run.

A model-zoo ``.pkl`` goes through an unpickler that admits only plain containers and numpy arrays; torch files
through ``torch.load(weights_only=True)``; the kind of file is decided by content. detectron2's zoo publishes no
checksums, so the size and sha256 of each file are recorded beside it in the cache at its first download
(``<file>.sha256.json``) and checked on every later use; a published digest (``KNOWN_SHA256``) is checked too.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import json
import logging
import os
import pickle
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmentation.errors import UserError

logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)

DETECTRON2_SCHEME = "detectron2://"
DETECTRON2_HOST = "https://dl.fbaipublicfiles.com/detectron2/"
X101_ZOO_PATH = "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x/139653917/model_final_2d9806.pkl"
X101_ZOO_URL = DETECTRON2_HOST + X101_ZOO_PATH
X101_ZOO_SHA256 = "12f6e1811baf1b4d329c3f5ac5ec52d8f634d3cedc82a13fff55d0c05d84f442"
# Published digests of files we download, by URL; a download of one of these is verified without being asked to.
KNOWN_SHA256: dict[str, str] = {X101_ZOO_URL: X101_ZOO_SHA256}


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be read, or whose contents do not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that asks to import something other than plain data; nothing from it was run."""


class ChecksumError(CheckpointError):
    """A downloaded file whose sha256 is not the expected one; the download was deleted."""


class DownloadError(CheckpointError):
    """A URL that could not be fetched (offline, not found); says how to pass a local copy instead."""


# --------------------------------------------------------------------------------------------------------------
# Finding the file
# --------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$SEGMENTATION_CACHE``, or ``~/.cache/segmentation``."""
    return Path(os.environ.get("SEGMENTATION_CACHE", Path.home() / ".cache" / "segmentation")).expanduser()


def to_url(source: str) -> str:
    """Expand ``detectron2://X`` to detectron2's model-zoo URL; anything else is returned unchanged."""
    if source.startswith(DETECTRON2_SCHEME):
        return DETECTRON2_HOST + source[len(DETECTRON2_SCHEME) :]
    return source


def resolve(source: str | Path, cache_dir: Path | None = None, *, sha256: str | None = None) -> Path:
    """Return a local file for ``source``, downloading URLs once into the cache.

    Args:
        source: a local path, ``detectron2://<zoo path>``, or an ``http(s)://`` / ``file://`` URL.
        cache_dir: where downloads are kept, under the URL's path; default ``default_cache_dir()``.
        sha256: expected hex digest. Without it, URLs listed in ``KNOWN_SHA256`` are checked against the published
            digest. A download that does not match is deleted; a mismatching local file is left alone.

    Returns:
        The path of the local file.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ChecksumError: the file's sha256 is not the expected one.
    """
    text = to_url(str(source))
    if urllib.parse.urlparse(text).scheme not in ("http", "https", "file"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        if sha256 is not None:
            _check_digest(path, sha256, what=str(path), delete=False)
        return path
    expected = sha256 if sha256 is not None else KNOWN_SHA256.get(text)
    dest = _cache_path(text, cache_dir if cache_dir is not None else default_cache_dir())
    if dest.is_file():
        if expected is not None:
            _check_digest(dest, expected, what=f"{text} (cached at {dest})", delete=True)
        _check_record(dest, text)
        return dest
    _download(text, dest, expected)
    _write_record(dest, text)
    return dest


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256.json")


def _write_record(dest: Path, url: str) -> None:
    """Remember the size and sha256 of a first download: the zoo publishes no digests, so later uses check these."""
    record = {"url": url, "size": dest.stat().st_size, "sha256": _sha256(dest)}
    _record_path(dest).write_text(json.dumps(record, indent=1) + "\n")


def _check_record(dest: Path, url: str) -> None:
    """A cached file must still be the one first downloaded (same size and sha256); a changed one is deleted."""
    record_file = _record_path(dest)
    if not record_file.is_file():  # cached before records existed: record it now
        _write_record(dest, url)
        return
    record = json.loads(record_file.read_text())
    size = dest.stat().st_size
    if size != record.get("size") or _sha256(dest) != record.get("sha256"):
        dest.unlink(missing_ok=True)
        record_file.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest} (cached from {url}) changed since its download ({size} bytes now, {record.get('size')} then, "
            "or another sha256); it was deleted, run again to download it afresh"
        )


def _cache_path(url: str, cache_dir: Path) -> Path:
    parts = [p for p in urllib.parse.unquote(urllib.parse.urlparse(url).path).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"cannot derive a cache file name from URL {url!r}")
    return Path(cache_dir).joinpath(*parts)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(path: Path, expected: str, *, what: str, delete: bool) -> None:
    actual = _sha256(path)
    if actual != expected.lower():
        if delete:
            path.unlink(missing_ok=True)
        note = "; the file was deleted" if delete else ""
        raise ChecksumError(f"sha256 mismatch for {what}: expected {expected.lower()}, got {actual}{note}")


def _download(url: str, dest: Path, expected: str | None) -> None:
    """Stream ``url`` into a temporary file beside ``dest``; verify; then rename, so ``dest`` is never partial."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading %s to %s", url, dest)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, _open_url(url) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
        actual = digest.hexdigest()
        if expected is not None and actual != expected.lower():
            raise ChecksumError(
                f"sha256 mismatch for {url}: expected {expected.lower()}, got {actual}; the download was deleted"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _open_url(url: str) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"could not download {url} ({reason}); download it elsewhere and pass the local file instead, e.g. "
            "--model.weights /path/to/" + Path(urllib.parse.urlparse(url).path).name
        ) from e


# --------------------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Pickles of protocol < 3 written by Python 3 store bytes as ``_codecs.encode(text, "latin1")``."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"only latin1-encoded bytes are accepted, not {encoding!r}")
    return text.encode("latin1")


# The only globals a weights pickle may name: numpy's array and scalar reconstruction (under numpy 1.x and 2.x
# module names, mapped to the installed numpy's functions), OrderedDict, and protocol-2 bytes.
_NP_RECONSTRUCT = np.empty(0).__reduce__()[0]
_NP_SCALAR = np.float32(0).__reduce__()[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds containers, numbers, strings and numpy arrays and refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to load '{module}.{name}' from the pickle; a weights file may only hold "
                "dicts, lists, tuples, strings, numbers and numpy arrays (nothing from the file was run)"
            ) from None


def _read_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return _DataOnlyUnpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except Exception as e:  # any malformed pickle: report the file, keep the cause
            raise CheckpointError(f"{path}: not a readable weights pickle ({type(e).__name__}: {e})") from e


def read_torch_file(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file in one line (also for Lightning)."""
    # Our LightningModule saves its MaskRCNNConfig among the hyper-parameters: a plain dataclass, safe to rebuild.
    from segmentation.model.config import MaskRCNNConfig

    try:
        with torch.serialization.safe_globals([MaskRCNNConfig]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: torch.load(weights_only=True) refused the file; it holds something other than tensors and "
            f"plain data (nothing from the file was run): {e}"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


def _as_tensors(entries: Mapping[Any, Any], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    bad = []
    for key, value in entries.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[str(key)] = torch.from_numpy(np.array(value, copy=True))
        elif isinstance(value, torch.Tensor):
            out[str(key)] = value
        else:
            bad.append(f"{key} ({type(value).__name__})")
    if bad:
        raise CheckpointError(f"{path}: entries that are not numeric arrays: {', '.join(bad)}")
    return out


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read the parameters of a weights file, deciding its kind by content.

    Recognised: a torch file (zip or legacy format) holding a Lightning checkpoint (``state_dict`` with the network
    under ``model.``), a detectron2 training checkpoint (``model``) or a bare state dict; a pickle holding a
    detectron2 model-zoo dict (``model`` + ``__author__``), a Caffe2 dict (``blobs``, or the blobs themselves).

    Returns:
        The parameters (names as stored, except Lightning's ``model.`` prefix removed) and the kind, one of
        ``lightning``, ``detectron2-pth``, ``state_dict``, ``detectron2-pkl``, ``pickle``.
    """
    path = Path(path)
    data = None
    if not zipfile.is_zipfile(path):
        data = _read_pickle(path)
        if isinstance(data, int) and data == torch.serialization.MAGIC_NUMBER:  # legacy torch.save format
            data = None
    if data is None:
        data = read_torch_file(path)
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{path}: expected a dict, found {type(data).__name__}")
        if isinstance(data.get("state_dict"), Mapping):
            entries = {k[len("model.") :]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
            if not entries:
                raise CheckpointError(f"{path}: Lightning checkpoint without a 'model.' network in its state_dict")
            return _as_tensors(entries, path), "lightning"
        if isinstance(data.get("model"), Mapping):
            return _as_tensors(data["model"], path), "detectron2-pth"
        return _as_tensors(data, path), "state_dict"
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict in the pickle, found {type(data).__name__}")
    if isinstance(data.get("model"), Mapping) and "__author__" in data:
        return _as_tensors(data["model"], path), "detectron2-pkl"
    blobs = data["blobs"] if isinstance(data.get("blobs"), Mapping) else data
    return _as_tensors({k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}, path), "pickle"


def read_lightning_record(path: str | Path) -> dict[str, Any] | None:
    """What one of our Lightning ``.ckpt`` records about its model: ``arch`` (dict) and ``category_names``.

    None for any other file. Read with ``weights_only`` and memory-mapped, so looking costs no tensor copies.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None
    data = read_torch_file(path, mmap=True)
    if not isinstance(data, Mapping) or not isinstance(data.get("state_dict"), Mapping):
        return None
    hyper = data.get("hyper_parameters") if isinstance(data.get("hyper_parameters"), Mapping) else {}
    return {"arch": hyper.get("arch"), "category_names": data.get("category_names")}
