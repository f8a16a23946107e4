"""Load detectron2, Caffe2, torchvision/timm and our own weights into our Mask R-CNN, safely and completely.

The promise of the project is detectron2's numbers, and the recipe starts from detectron2's model-zoo weights, so
this module is where a wrong load would silently cost AP. It therefore:

* finds the file: local paths, ``detectron2://`` (detectron2's model-zoo host), http(s) and file URLs, downloaded
  once into a cache, atomically, and checked against a published or given sha256;
* reads it without running code from it: model-zoo ``.pkl`` files go through an unpickler that only admits plain
  containers and numpy arrays, torch files through ``torch.load(weights_only=True)``; the kind of file is decided by
  its content, not by its extension;
* renames detectron2's (and Caffe2's ImageNet) parameter names to torchvision's ``MaskRCNN`` names, moving the
  background class from last to first as torchvision expects;
* loads strictly: only the class-dependent predictor tensors may be skipped (as detectron2 skips them when
  NUM_CLASSES changes); any other difference is an error that lists every offending key.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import logging
import os
import pickle
import re
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmentation.errors import UserError

logger = logging.getLogger(__name__)

DETECTRON2_SCHEME = "detectron2://"
DETECTRON2_HOST = "https://dl.fbaipublicfiles.com/detectron2/"
X101_ZOO_PATH = "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x/139653917/model_final_2d9806.pkl"
X101_ZOO_URL = DETECTRON2_HOST + X101_ZOO_PATH
X101_ZOO_SHA256 = "12f6e1811baf1b4d329c3f5ac5ec52d8f634d3cedc82a13fff55d0c05d84f442"
# Published digests of files we download, by URL; a download of one of these is verified without being asked to.
KNOWN_SHA256: dict[str, str] = {X101_ZOO_URL: X101_ZOO_SHA256}

BODY_PREFIX = "backbone.body."
# The tensors whose first dimension is the number of classes; the only ones allowed to differ in shape.
PREDICTOR_KEYS = frozenset(
    f"roi_heads.{name}.{kind}"
    for name in ("box_predictor.cls_score", "box_predictor.bbox_pred", "mask_predictor.mask_fcn_logits")
    for kind in ("weight", "bias")
)


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be read, or whose contents do not match the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that asks to import something other than plain data; nothing from it was run."""


class ChecksumError(CheckpointError):
    """A downloaded file whose sha256 is not the expected one; the download was deleted."""


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` did.

    Attributes:
        source: the source as given (path or URL).
        path: the local file that was read.
        kind: the file's container: ``detectron2-pkl`` (model zoo), ``detectron2-pth`` (detectron2 training
            output), ``lightning`` (our ``.ckpt``), ``state_dict`` (a bare torch state dict) or ``pickle``
            (a Caffe2 / plain pickle of arrays).
        names: the parameter naming found inside: ``detectron2``, ``torchvision`` (ours), ``resnet``
            (torchvision/timm ImageNet classifier) or ``caffe2``.
        loaded: model keys that received a tensor from the file.
        skipped: model keys whose tensor differs only by the number of classes; they keep their initialisation.
        ignored: file entries deliberately not used (detectron2's pixel mean/std and anchors, a classifier's
            ``fc``, everything outside the body when ``backbone_only``).
    """

    source: str
    path: Path
    kind: str
    names: str
    loaded: list[str]
    skipped: list[str]
    ignored: list[str]


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
        return dest
    _download(text, dest, expected)
    return dest


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
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
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


def _torch_load(path: Path) -> Any:
    # Our LightningModule saves its MaskRCNNConfig among the hyper-parameters: a plain dataclass, safe to rebuild.
    from segmentation.model.config import MaskRCNNConfig

    try:
        with torch.serialization.safe_globals([MaskRCNNConfig]):
            return torch.load(path, map_location="cpu", weights_only=True)
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
        data = _torch_load(path)
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


# --------------------------------------------------------------------------------------------------------------
# Renaming
# --------------------------------------------------------------------------------------------------------------

_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_D2_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"backbone\.bottom_up\.stem\.conv1\.weight"), lambda m: "backbone.body.conv1.weight"),
    (re.compile(rf"backbone\.bottom_up\.stem\.conv1\.norm\.{_NORM}"), lambda m: f"backbone.body.bn1.{m[1]}"),
    (
        re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([123])\.weight"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([123])\.norm\.{_NORM}"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}",
    ),
    (
        re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.weight"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight",
    ),
    (
        re.compile(rf"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.norm\.{_NORM}"),
        lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}",
    ),
    (
        re.compile(r"backbone\.fpn_lateral([2-5])\.(weight|bias)"),
        lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}",
    ),
    (
        re.compile(r"backbone\.fpn_output([2-5])\.(weight|bias)"),
        lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}",
    ),
    (re.compile(r"proposal_generator\.rpn_head\.conv\.(weight|bias)"), lambda m: f"rpn.head.conv.0.0.{m[1]}"),
    (
        re.compile(r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)"),
        lambda m: f"rpn.head.cls_logits.{m[1]}",
    ),
    (
        re.compile(r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)"),
        lambda m: f"rpn.head.bbox_pred.{m[1]}",
    ),
    (re.compile(r"roi_heads\.box_head\.fc1\.(weight|bias)"), lambda m: f"roi_heads.box_head.fc6.{m[1]}"),
    (re.compile(r"roi_heads\.box_head\.fc2\.(weight|bias)"), lambda m: f"roi_heads.box_head.fc7.{m[1]}"),
    (
        re.compile(r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)"),
        lambda m: f"roi_heads.box_predictor.{m[1]}.{m[2]}",
    ),
    (
        re.compile(r"roi_heads\.mask_head\.mask_fcn([1-9]\d*)\.(weight|bias)"),
        lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}",
    ),
    (
        re.compile(r"roi_heads\.mask_head\.deconv\.(weight|bias)"),
        lambda m: f"roi_heads.mask_predictor.conv5_mask.{m[1]}",
    ),
    (
        re.compile(r"roi_heads\.mask_head\.predictor\.(weight|bias)"),
        lambda m: f"roi_heads.mask_predictor.mask_fcn_logits.{m[1]}",
    ),
]
# detectron2 stores these buffers but ignores them when loading (detection_checkpoint.py); so do we.
_D2_IGNORED = re.compile(r"pixel_mean|pixel_std|(.*\.)?anchor_generator\.cell_anchors\.\d+")


def _rename(state: Mapping[str, torch.Tensor], rules: list[tuple[re.Pattern[str], Any]], what: str) -> dict:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, target in rules:
            m = pattern.fullmatch(key)
            if m:
                out[target(m)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} {what} key(s) with no known mapping: {', '.join(sorted(unknown))}")
    return out


def _detectron2_relayout(name: str, value: torch.Tensor) -> torch.Tensor:
    """detectron2 puts background last and has no background box/mask outputs; torchvision puts it first."""
    if name.startswith("roi_heads.box_predictor.cls_score."):
        return torch.cat([value[-1:], value[:-1]])
    if name.startswith("roi_heads.box_predictor.bbox_pred."):
        return torch.cat([value.new_zeros((4, *value.shape[1:])), value])
    if name.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
        return torch.cat([value.new_zeros((1, *value.shape[1:])), value])
    return value


def _map_detectron2(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    ignored = sorted(k for k in state if _D2_IGNORED.fullmatch(k))
    kept = {k: v for k, v in state.items() if not _D2_IGNORED.fullmatch(k)}
    renamed = _rename(kept, _D2_RULES, "detectron2")
    return {k: _detectron2_relayout(k, v) for k, v in renamed.items()}, ignored


def detectron2_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a detectron2 Mask R-CNN state dict to torchvision ``MaskRCNN`` names and class layout.

    The class-dependent tensors are re-laid-out: ``cls_score`` rows move the background from last to first,
    ``bbox_pred`` gains 4 zero rows and the mask predictor one zero channel for the background in front.
    detectron2's ``pixel_mean``, ``pixel_std`` and ``anchor_generator.cell_anchors.*`` are dropped.

    Raises:
        CheckpointError: listing every key that is not part of a detectron2 FPN Mask R-CNN.
    """
    return _map_detectron2(state)[0]


def detectron2_names_to_ours(names: list[str]) -> dict[str, str]:
    """detectron2 parameter names -> ours (torchvision's), for comparing per-parameter settings with detectron2."""
    renamed = _rename({name: name for name in names}, _D2_RULES, "detectron2")
    return {original: ours for ours, original in renamed.items()}


_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_RULES: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"conv1_w"), lambda m: "conv1.weight"),
    (re.compile(r"res_conv1_[bg]n_(s|b|rm|riv)"), lambda m: f"bn1.{_C2_BN[m[1]]}"),
    (
        re.compile(r"res([2-5])_(\d+)_branch2([abc])_w"),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{'abc'.index(m[3]) + 1}.weight",
    ),
    (
        re.compile(r"res([2-5])_(\d+)_branch2([abc])_[bg]n_(s|b|rm|riv)"),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{'abc'.index(m[3]) + 1}.{_C2_BN[m[4]]}",
    ),
    (re.compile(r"res([2-5])_(\d+)_branch1_w"), lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
    (
        re.compile(r"res([2-5])_(\d+)_branch1_[bg]n_(s|b|rm|riv)"),
        lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{_C2_BN[m[3]]}",
    ),
]
_C2_CLASSIFIER = re.compile(r"fc1000_[wb]|pred_[wb]")
_C2_KEY = re.compile(r"conv1_w|res_conv1_[bg]n_\w+|res\d_\d+_branch\w+")


def caffe2_to_resnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Caffe2 (Detectron1 / detectron2 ``ImageNetPretrained``) ResNet blobs to torchvision ResNet names.

    The renaming is what detectron2's ``convert_basic_c2_names`` does, expressed in torchvision's names:
    ``conv1_w`` -> ``conv1.weight``, ``res_conv1_bn_{s,b}`` -> ``bn1.{weight,bias}``, ``res{s}_{b}_branch2{a,b,c}``
    -> ``layer{s-1}.{b}.conv{1,2,3}`` / ``bn{1,2,3}``, ``branch1`` -> ``downsample.{0,1}``; ``_rm``/``_riv`` are
    running mean/var; GroupNorm blobs (``_gn_``) map like BN. The ImageNet classifier (``fc1000``) is dropped.

    Raises:
        CheckpointError: listing every other key.
    """
    return _rename({k: v for k, v in state.items() if not _C2_CLASSIFIER.fullmatch(k)}, _C2_RULES, "Caffe2")


def _naming(keys: list[str]) -> str:
    if any(k.startswith(("backbone.bottom_up.", "backbone.fpn_", "proposal_generator.")) for k in keys):
        return "detectron2"
    if any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in keys):
        return "torchvision"
    if any(_C2_KEY.fullmatch(k) for k in keys):
        return "caffe2"
    return "resnet"


def _to_our_names(state: dict[str, torch.Tensor], names: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a checkpoint of any supported naming onto our names; return the mapped entries and the ignored keys."""
    if names == "detectron2":
        return _map_detectron2(state)
    if names == "torchvision":
        return state, []
    if names == "caffe2":
        ignored = sorted(k for k in state if _C2_CLASSIFIER.fullmatch(k))
        return {BODY_PREFIX + k: v for k, v in caffe2_to_resnet(state).items()}, ignored
    ignored = sorted(k for k in state if k.startswith("fc."))
    return {BODY_PREFIX + k: v for k, v in state.items() if not k.startswith("fc.")}, ignored


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _differs_only_in_classes(key: str, in_file: torch.Size, in_model: torch.Size) -> bool:
    return key in PREDICTOR_KEYS and len(in_file) == len(in_model) and in_file[1:] == in_model[1:]


def load_weights(model: torch.nn.Module, source: str | Path, *, backbone_only: bool = False) -> LoadReport:
    """Load a weights file into ``model`` (torchvision ``MaskRCNN`` names), strictly.

    Args:
        model: the network; its ``state_dict()`` names are the target.
        source: anything ``resolve`` accepts: a detectron2 model-zoo ``.pkl`` or training ``.pth``, our Lightning
            ``.ckpt`` or exported state dict, or (with ``backbone_only``) an ImageNet ResNet/ResNeXt from
            torchvision, timm or Caffe2/detectron2 ``ImageNetPretrained``.
        backbone_only: load only ``backbone.body.*`` (ImageNet initialisation) and leave the rest of the model
            as it is; entries of a full detector checkpoint outside the body are ignored.

    Returns:
        A ``LoadReport``. Predictor tensors whose shape differs only in the number of classes are skipped, logged
        like detectron2 does, and keep the model's initialisation.

    Raises:
        CheckpointError: listing every missing key (``num_batches_tracked`` excepted), every unexpected key and
            every other shape mismatch; nothing is loaded then.
    """
    path = resolve(source)
    raw, kind = read_checkpoint(path)
    names = _naming(list(raw))
    if names in ("resnet", "caffe2") and not backbone_only:
        raise CheckpointError(
            f"{path} holds only an ImageNet {names} backbone, not a detector; load it with backbone_only=True"
        )
    state, ignored = _to_our_names(raw, names)

    model_state = model.state_dict()
    wanted = {k: v for k, v in model_state.items() if not backbone_only or k.startswith(BODY_PREFIX)}
    if backbone_only:
        ignored += sorted(k for k in state if not k.startswith(BODY_PREFIX))
        state = {k: v for k, v in state.items() if k.startswith(BODY_PREFIX)}
    ignored += sorted(k for k in state if k.endswith("num_batches_tracked") and k not in wanted)
    state = {k: v for k, v in state.items() if k in wanted or not k.endswith("num_batches_tracked")}
    if names == "caffe2":
        _fill_frozen_bn_statistics(state, wanted)

    unexpected = sorted(set(state) - set(wanted))
    missing = sorted(k for k in wanted if k not in state and not k.endswith("num_batches_tracked"))
    skipped, mismatched = [], []
    for key in sorted(set(state) & set(wanted)):
        in_file, in_model = state[key].shape, wanted[key].shape
        if in_file == in_model:
            continue
        if _differs_only_in_classes(key, in_file, in_model):
            logger.warning(
                "Skip loading parameter '%s' to the model due to incompatible shapes: %s in the checkpoint but %s "
                "in the model (a different number of classes); it keeps its initialisation.",
                key,
                tuple(in_file),
                tuple(in_model),
            )
            skipped.append(key)
        else:
            mismatched.append(f"{key}: {tuple(in_file)} in the file, {tuple(in_model)} in the model")
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the file: {', '.join(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes: {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"cannot load {path} ({kind}, {names} names) into the model; " + " | ".join(problems))

    to_load = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict(to_load, strict=False)
    logger.info("Loaded %d tensors from %s (%s, %s names)", len(to_load), path, kind, names)
    return LoadReport(
        source=str(source),
        path=path,
        kind=kind,
        names=names,
        loaded=sorted(to_load),
        skipped=skipped,
        ignored=ignored,
    )


def _fill_frozen_bn_statistics(state: dict[str, torch.Tensor], wanted: Mapping[str, torch.Tensor]) -> None:
    """Caffe2 ImageNet models store BN as an affine scale/bias only.

    detectron2's FrozenBatchNorm2d loads such (version-less) checkpoints with running_mean 0 and running_var 1,
    so the layer computes ``x * weight / sqrt(1 + eps) + bias``; we fill the same values.
    """
    for key, target in wanted.items():
        prefix, _, stat = key.rpartition(".")
        if stat in ("running_mean", "running_var") and key not in state and f"{prefix}.weight" in state:
            state[key] = torch.zeros_like(target) if stat == "running_mean" else torch.ones_like(target)
