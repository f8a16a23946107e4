"""A command's ``--config`` that is a detectron2 yaml is read once and replaced by ours; ours pass as given."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segmentation.detectron2_config.translate import translate_detectron2_configs


@pytest.fixture
def yaml_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every yaml file parsed while the test runs."""
    reads: list[str] = []
    safe_load = yaml.safe_load

    def counting(stream: object) -> object:
        reads.append(getattr(stream, "name", "<text>"))
        return safe_load(stream)

    monkeypatch.setattr(yaml, "safe_load", counting)
    return reads


def test_a_detectron2_dump_is_read_once_and_handed_on_as_our_config(parity_dir: Path, yaml_reads: list[str]) -> None:
    dump = parity_dir / "tiny_lung" / "config.yaml"
    args = translate_detectron2_configs(["--config", str(dump), "--model.optimizer", "torch.optim.Adam"])

    assert yaml_reads.count(str(dump)) == 1
    assert args[0] == "--config" and args[2:] == ["--model.optimizer", "torch.optim.Adam"]
    ours = yaml.safe_load(args[1])
    assert ours["model"]["arch"]["num_classes"] == 1 and ours["trainer"]["max_steps"] == 60


def test_our_own_config_and_other_arguments_pass_through_unchanged(tmp_path: Path) -> None:
    ours = tmp_path / "fit.yaml"
    ours.write_text("model:\n  arch:\n    depth: 101\n")
    args = [f"--config={ours}", "--data.train_json", "train.json", "--config", "missing.yaml"]

    assert translate_detectron2_configs(args) == args


def test_translating_a_dump_writes_no_file(parity_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The translation used to leave a temporary yaml behind on every run; it now hands on yaml text."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dump = parity_dir / "tiny_lung" / "config.yaml"
    beside = set(dump.parent.iterdir())

    translate_detectron2_configs(["--config", str(dump)])

    assert list(tmp_path.iterdir()) == []
    assert set(dump.parent.iterdir()) == beside
