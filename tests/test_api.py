"""The Python API gives the detections segmentation.predict writes, for paths, PIL images and arrays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from PIL import Image

from segmentation import predict
from segmentation.errors import UserError

sys.path.insert(0, str(Path(__file__).parent / "checkpoints"))
from dicom_files import write_series  # noqa: E402
from test_loading import TINY_ARCH, lightning_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    lightning_checkpoint(root / "last.ckpt")
    yy, xx = np.mgrid[0:64, 0:80]
    Image.fromarray(np.where((yy - 32) ** 2 + (xx - 40) ** 2 < 300, 30, 160).astype(np.uint8)).save(root / "s.png")
    return root


def test_import_segmentation_does_not_import_torch() -> None:
    code = "import sys, segmentation; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_predictor_matches_what_predict_writes(files: Path, tmp_path: Path) -> None:
    from segmentation import Predictor

    predictor = Predictor(files / "last.ckpt", min_size=512, max_size=512)
    ours = predictor(files / "s.png")
    predict.main(["--model.weights", str(files / "last.ckpt"), "--input", str(files / "s.png"),
                  "--output_dir", str(tmp_path), "--score_threshold", "0.0"])  # fmt: skip
    written = json.loads((tmp_path / "predictions.json").read_text())
    assert len(written) == len(ours["scores"]) > 0
    assert ours["masks"].shape == (len(ours["scores"]), 64, 80) and ours["masks"].dtype == bool
    np.testing.assert_allclose(sorted(r["score"] for r in written), sorted(ours["scores"]), rtol=1e-5)
    x, y, w, h = max(written, key=lambda r: r["score"])["bbox"]
    np.testing.assert_allclose(ours["boxes"][np.argmax(ours["scores"])], [x, y, x + w, y + h], atol=1e-3)
    assert isinstance(ours["class_names"], np.ndarray) and set(ours["class_names"]) <= {"left lung", "right lung"}
    keep = ours["scores"] > np.median(ours["scores"])  # every key indexes alike
    assert len(ours["class_names"][keep]) == len(ours["boxes"][keep]) == keep.sum()


def test_arrays_pil_and_lists_give_the_same_detections(files: Path) -> None:
    from segmentation import Predictor

    predictor = Predictor(files / "last.ckpt")
    gray = np.asarray(Image.open(files / "s.png"))
    by_path = predictor(files / "s.png")
    rgba = Image.open(files / "s.png").convert("RGBA")  # PIL images go through convert("RGB") as files do
    for other in (
        predictor(gray),
        predictor(Image.open(files / "s.png")),
        predictor(rgba),
        predictor(gray[:, :, None]),
    ):
        np.testing.assert_array_equal(other["scores"], by_path["scores"])
    listed = predictor([gray, files / "s.png"])
    assert isinstance(listed, list) and len(listed) == 2
    np.testing.assert_array_equal(listed[1]["scores"], by_path["scores"])
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(predictor(rgb)["scores"], by_path["scores"])
    overlay = predictor.draw(gray, by_path)
    assert isinstance(overlay, Image.Image) and overlay.size == (80, 64)
    assert np.any(np.asarray(overlay) != np.asarray(Image.fromarray(rgb)))  # something was drawn


def test_channel_order_bgr_reads_opencv_arrays(files: Path) -> None:
    from segmentation import Predictor

    rgb = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    as_rgb = Predictor(files / "last.ckpt")(rgb)
    as_bgr = Predictor(files / "last.ckpt", channel_order="BGR")(np.ascontiguousarray(rgb[:, :, ::-1]))
    np.testing.assert_array_equal(as_bgr["scores"], as_rgb["scores"])
    np.testing.assert_array_equal(as_bgr["masks"], as_rgb["masks"])


def test_bad_images_and_options_are_clear_errors(files: Path) -> None:
    from segmentation import Predictor

    with pytest.raises(UserError, match="channel_order must be one of RGB, BGR"):
        Predictor(files / "last.ckpt", channel_order="bgr")
    with pytest.raises(TypeError, match="window_centre"):
        Predictor(files / "last.ckpt", window_centre=40)
    predictor = Predictor(files / "last.ckpt")
    with pytest.raises(UserError, match=r"got shape \(8, 8, 3\) float32"):
        predictor(np.zeros((8, 8, 3), np.float32))


def test_a_config_file_gives_the_architecture_and_test_sizes(files: Path, tmp_path: Path) -> None:
    """A state dict records no architecture: the config file given to Predictor does, as --config does for predict."""
    from segmentation import Predictor

    checkpoint = torch.load(files / "last.ckpt", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    torch.save(state, tmp_path / "model_final.pth")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"arch": TINY_ARCH}, "data": {"min_size_test": 96, "max_size_test": 96}})
    )
    from_file = Predictor(tmp_path / "model_final.pth", config=config)
    assert (from_file.min_size, from_file.max_size) == (96, 96)
    reference = Predictor(files / "last.ckpt", min_size=96, max_size=96)
    np.testing.assert_allclose(from_file(files / "s.png")["scores"], reference(files / "s.png")["scores"], rtol=1e-6)


def test_16_bit_arrays_are_windowed_as_hu_plus_offset(files: Path) -> None:
    from segmentation.api import to_bgr_uint8

    hu = np.array([[-1000, -600, 150]], dtype=np.int16)
    out = to_bgr_uint8((hu + 1024).astype(np.uint16))
    assert out.shape == (1, 3, 3) and out[0, 0, 0] < out[0, 1, 0] < out[0, 2, 0]
    assert out[0, 2, 0] == 255 and out[0, 0, 0] > 0  # lung window -600 +- 750: 150 HU is at the top


def test_unknown_runtime_is_a_clear_error(files: Path) -> None:
    from segmentation import Predictor

    with pytest.raises(UserError, match="runtime 'tensorrt' is not available"):
        Predictor(files / "last.ckpt", runtime="tensorrt")


def test_train_runs_fit_from_a_config_and_dict_overrides(tmp_path: Path, caplog) -> None:
    from segmentation import train
    from segmentation.data.phantom import make_phantom

    data = make_phantom(tmp_path / "phantom", n_train=1, n_val=1, n_test=1, slices_per_volume=4, size=128)
    sizes = {f"data.{k}": 128 for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")}
    overrides = {**{f"data.{k}": v for k, v in data.items()}, **sizes, "data.num_workers": 0, "trainer.max_steps": 2}
    run_dir, final = train("configs/quickstart.yaml", overrides, output_dir=tmp_path / "run")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert final["iteration"] == 2 and "total_loss" in final  # the last training line ...
    assert {"segm/AP", "bbox/AP", "test/segm/AP"} <= final.keys()  # ... merged with the val and test results
    assert "`weights_only` was not set" not in caplog.text  # every checkpoint save and load says what it does
    from segmentation import Predictor

    predictor = Predictor(run_dir / "checkpoints" / "last.ckpt", min_size=128, max_size=128)
    categories = json.loads(Path(data["val_json"]).read_text())["categories"]
    assert predictor.class_names == [c["name"] for c in categories]  # recorded by fit, read back without a config


def test_a_dicom_slice_is_read_in_hu_through_the_ct_window(files: Path, tmp_path: Path) -> None:
    """A radiologist's single ``.dcm`` (stored values are HU after the rescale) is windowed as predict windows volume
    slices, so it gives the detections of the same slice exported as 16-bit HU + 1024."""
    from segmentation import Predictor
    from segmentation.api import to_bgr_uint8

    hu = np.random.default_rng(0).integers(-1000, 400, size=(1, 64, 64)).astype(np.int16)
    (path,) = write_series(tmp_path / "series", hu, [0.0])
    as_16_bit = (hu[0] + 1024).astype(np.uint16)

    np.testing.assert_array_equal(to_bgr_uint8(path), to_bgr_uint8(as_16_bit))
    predictor = Predictor(files / "last.ckpt", min_size=96, max_size=96)
    from_dicom, from_array = predictor(path), predictor(as_16_bit)
    np.testing.assert_array_equal(from_dicom["masks"], from_array["masks"])
    np.testing.assert_array_equal(from_dicom["scores"], from_array["scores"])


def test_a_volume_path_is_refused_naming_the_predict_command(tmp_path: Path) -> None:
    from segmentation.api import to_bgr_uint8

    volume = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 16, 16), dtype=np.int16)), str(volume))
    with pytest.raises(UserError, match=r"ct\.nii\.gz is a volume of 3 slices; predict it with .*predict"):
        to_bgr_uint8(volume)
