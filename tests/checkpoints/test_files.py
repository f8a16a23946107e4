"""Reading a checkpoint file: data-only unpickling, resolving paths/URLs/detectron2://, the cache and its sha256
records (checked on every later use), and what offline use says."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segmentation.checkpoints import files
from segmentation.checkpoints.files import (
    ChecksumError,
    DownloadError,
    UnsafeCheckpointError,
    read_checkpoint,
    resolve,
)
from segmentation.checkpoints.loading import load_weights
from segmentation.errors import UserError


def served(tmp_path: Path, content: bytes) -> str:
    source = tmp_path / "zoo" / "model.pkl"
    source.parent.mkdir(parents=True)
    source.write_bytes(content)
    return source.as_uri()


def test_first_download_records_size_and_sha256_beside_the_cached_file(tmp_path: Path) -> None:
    url = served(tmp_path, b"weights v1")
    path = resolve(url, tmp_path / "cache")
    record = json.loads(path.with_name("model.pkl.sha256.json").read_text())
    assert record == {"url": url, "size": 10, "sha256": hashlib.sha256(b"weights v1").hexdigest()}


def test_a_cached_file_changed_after_its_download_is_refused_and_deleted(tmp_path: Path) -> None:
    url = served(tmp_path, b"weights v1")
    path = resolve(url, tmp_path / "cache")
    path.write_bytes(b"weights v2")  # same size, other content: a corrupted or replaced cache entry
    with pytest.raises(ChecksumError, match="changed since its download"):
        resolve(url, tmp_path / "cache")
    assert not path.exists()
    assert resolve(url, tmp_path / "cache").read_bytes() == b"weights v1"  # the next use downloads afresh


def test_an_unreachable_url_says_it_could_not_be_downloaded_and_how_to_pass_a_local_file(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/detectron2/model_final_2d9806.pkl"  # port 9 (discard): nothing listens
    with pytest.raises(DownloadError, match=r"could not download .*model_final_2d9806\.pkl.*--model\.weights") as e:
        resolve(url, tmp_path / "cache")
    assert isinstance(e.value, UserError)
    assert not any((tmp_path / "cache").rglob("*.part"))


# ------------------------------------------------------------------------------------------------- safe reading


class Payload:
    """Unpickling this runs ``function(argument)``: the classic pickle attack."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch '{marker}'"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("nested", [False, True])
def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path, attack: str, nested: bool) -> None:
    marker = tmp_path / "pwned"
    payload = payloads(marker)[attack]
    content = {"model": {"conv.weight": payload}, "__author__": "x"} if nested else payload
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(
        UnsafeCheckpointError, match=r"refusing to load '(posix|os|builtins|__builtin__)\.(system|exec)'"
    ) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        load_weights(nn.Linear(1, 1), path)
    assert not marker.exists()
    # The payload is real: an ordinary unpickler runs it.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_torch_file_is_refused_without_running_it(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"x": payloads(marker)["os.system"]}}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="weights_only") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_numpy_1x_names_and_protocol_2_bytes_are_accepted(tmp_path: Path) -> None:
    """Old model-zoo pickles name numpy.core.multiarray (numpy 1.x) and encode bytes with _codecs.encode."""
    data = pickle.dumps({"model": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "__author__": "x"}, 2)
    assert b"_codecs" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    state, kind = read_checkpoint(path)
    assert kind == "detectron2-pkl"
    assert torch.equal(state["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


# ------------------------------------------------------------------------------------------------- finding files


def test_detectron2_scheme_builds_the_model_zoo_url() -> None:
    assert files.to_url(f"detectron2://{files.X101_ZOO_PATH}") == files.X101_ZOO_URL
    assert files.X101_ZOO_URL == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x/139653917/"
        "model_final_2d9806.pkl"
    )
    assert files.KNOWN_SHA256[files.X101_ZOO_URL] == files.X101_ZOO_SHA256


def count_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = urllib.request.urlopen

    def counting(url, *args, **kwargs):
        calls.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counting)
    return calls


def test_file_url_is_downloaded_once_into_the_cache_and_verified(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "served" / "model.pkl"
    source.parent.mkdir()
    source.write_bytes(b"weights v1")
    digest = hashlib.sha256(b"weights v1").hexdigest()
    cache = tmp_path / "cache"
    calls = count_downloads(monkeypatch)

    first = resolve(source.as_uri(), cache, sha256=digest)
    source.write_bytes(b"weights v2")  # the cache, not the source, answers the second call
    second = resolve(source.as_uri(), cache, sha256=digest)

    assert first == second == cache.joinpath(*source.parts[1:])
    assert first.read_bytes() == b"weights v1"
    assert len(calls) == 1
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.pkl", "model.pkl.sha256.json"]  # no .part left


def test_wrong_digest_deletes_the_download_and_names_both_digests(tmp_path: Path) -> None:
    source = tmp_path / "model.pkl"
    source.write_bytes(b"tampered")
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        resolve(source.as_uri(), cache, sha256=wrong)
    assert wrong in str(err.value) and hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_published_digest_is_checked_without_being_asked(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "model.pkl"
    source.write_bytes(b"not the zoo model")
    monkeypatch.setitem(files.KNOWN_SHA256, source.as_uri(), files.X101_ZOO_SHA256)
    with pytest.raises(ChecksumError, match=files.X101_ZOO_SHA256):
        resolve(source.as_uri(), tmp_path / "cache")

    # A cached copy of the zoo model that is not the published file is rejected and removed, not used.
    monkeypatch.setenv("SEGMENTATION_CACHE", str(tmp_path / "env-cache"))
    cached = tmp_path / "env-cache" / "detectron2" / files.X101_ZOO_PATH
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match=files.X101_ZOO_SHA256):
        resolve(f"detectron2://{files.X101_ZOO_PATH}")
    assert not cached.exists()


def test_detectron2_url_served_from_the_cache_without_network(tmp_path: Path, monkeypatch) -> None:
    cached = tmp_path / "detectron2" / "ImageNetPretrained" / "FAIR" / "X-101-32x8d.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    calls = count_downloads(monkeypatch)
    assert resolve("detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl", tmp_path) == cached
    assert calls == []


def test_missing_local_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pkl"):
        resolve(tmp_path / "nothing.pkl")
