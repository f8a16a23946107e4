"""Downloads: a size + sha256 record beside each cached file, checked on every later use; offline says what to do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from segmentation.checkpoints.files import ChecksumError, DownloadError, resolve
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
