"""What a fit does when the run cannot go on as configured: a non-finite loss stops it, fp16 on a CPU becomes fp32,
bad inputs (an empty json, a partial evaluation) stop it before the first step, a resume keeps the CSV log."""

import csv
import json
from pathlib import Path

import pytest
import torch

from segmentation.data.phantom import make_phantom
from segmentation.fit import main
from segmentation.model.mask_rcnn import MaskRCNN


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Every split's paths; ``tiny_fit`` trains on the train split alone, a test adds val or test explicitly."""
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_train=1, n_val=1, n_test=1, slices_per_volume=4, size=96)


def tiny_fit(phantom, output_dir, *extra):
    phantom = {k: v for k, v in phantom.items() if k.startswith("train")}
    sizes = [f"--data.{k}=96" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")]
    return ["--config", "configs/quickstart.yaml", "--output_dir", str(output_dir),
            *[f"--data.{k}={v}" for k, v in phantom.items()], *sizes, "--data.val_json=null",
            "--data.val_images=null", "--data.test_json=null", "--data.test_images=null", "--data.num_workers=0",
            "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", *extra]  # fmt: skip


def test_a_non_finite_loss_stops_with_the_step_and_the_image_ids(phantom, tmp_path, monkeypatch):
    forward, seen = MaskRCNN.forward, []

    def nan_at_second_step(self, images, targets=None, **kwargs):
        outputs = forward(self, images, targets, **kwargs)
        if self.training:
            seen.append([t["image_id"] for t in targets])
            if len(seen) == 2:
                outputs["loss_mask"] = outputs["loss_mask"] * float("nan")
        return outputs

    monkeypatch.setattr(MaskRCNN, "forward", nan_at_second_step)
    with pytest.raises(FloatingPointError) as error:
        main(tiny_fit(phantom, tmp_path, "--trainer.max_steps=4"))
    assert "iteration=1" in str(error.value) and str(seen[1]) in str(error.value)
    assert len(seen) == 2, "training went on after the non-finite loss"


def test_16_mixed_on_a_cpu_trains_in_fp32_with_a_warning(phantom, tmp_path):
    with pytest.warns(UserWarning, match="needs a CUDA GPU; running in 32-bit"):
        main(tiny_fit(phantom, tmp_path, "--trainer.max_steps=2", "--trainer.precision=16-mixed"))
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert lines and all("grad_scaler/skipped_steps" not in line for line in lines)  # written only under fp16
    weights = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())


def test_an_unreadable_training_image_stops_the_fit_before_the_first_step(phantom, tmp_path, capsys):
    """The loader would only meet the bad file mid-training: the check before the fit must name it first."""
    train = json.loads(phantom["train_json"].read_text())
    bad_name = train["images"][-1]["file_name"]
    images = tmp_path / "train"
    images.mkdir()
    for image in train["images"]:
        source = phantom["train_images"] / image["file_name"]
        (images / image["file_name"]).write_bytes(
            b"not an image" if image["file_name"] == bad_name else source.read_bytes()
        )
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit({**phantom, "train_images": images}, tmp_path / "run", "--trainer.max_steps=2"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert bad_name in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_resume_keeps_the_csv_rows_logged_before_it(phantom, tmp_path):
    """Lightning's CSVLogger deletes metrics.csv when it starts; a resumed run must extend the curve, not restart it."""
    every_step = ["--metrics_json.period=1", "--trainer.log_every_n_steps=1"]
    main(tiny_fit(phantom, tmp_path, "--trainer.max_steps=2", *every_step))
    main(tiny_fit(phantom, tmp_path, "--trainer.max_steps=4", *every_step, "--ckpt_path=last"))
    with (tmp_path / "metrics.csv").open(newline="") as file:
        iterations = [int(row["step"]) for row in csv.DictReader(file) if row["total_loss"]]
    assert iterations == [0, 1, 2, 3]


def val_split(phantom: dict[str, Path]) -> list[str]:
    return [f"--data.val_json={phantom['val_json']}", f"--data.val_images={phantom['val_images']}"]


@pytest.mark.parametrize("option", ["--trainer.limit_val_batches=2", "--trainer.limit_val_batches=0.5"])
def test_evaluating_part_of_the_val_json_is_refused_in_one_line_before_training(phantom, tmp_path, capsys, option):
    """AP counts every image of the json: scoring the predictions of a few batches would report a garbage AP."""
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit(phantom, tmp_path, "--trainer.max_steps=2", *val_split(phantom), option))
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # warnings may come first
    assert last_line.startswith("error: --trainer.limit_val_batches") and "--data.val_json" in last_line
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_json_without_images_stops_the_fit_naming_the_file(phantom, tmp_path, capsys, split):
    """An empty val json would silently skip evaluation and best.ckpt; an empty train json has nothing to learn."""
    empty = json.loads(phantom[f"{split}_json"].read_text()) | {"images": [], "annotations": []}
    (tmp_path / f"empty_{split}.json").write_text(json.dumps(empty))
    splits = {**phantom, f"{split}_json": tmp_path / f"empty_{split}.json"}
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit(splits, tmp_path / "run", "--trainer.max_steps=2", *val_split(splits)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"empty_{split}.json: the json has no images" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()
