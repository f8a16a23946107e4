"""``python -m segmentation.fit``: one command trains, evaluates val and test, and leaves a resumable run directory."""

import importlib
import inspect
import json
import re

import pytest
import torch
import yaml

from segmentation.data.datamodule import CocoDataModule
from segmentation.data.phantom import make_phantom
from segmentation.fit import main
from segmentation.model.config import MaskRCNNConfig
from segmentation.model.mask_rcnn import build_mask_rcnn
from segmentation.training.schedule import Schedule, lr_multiplier

TRAINING_KEYS = {
    "iteration", "total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "lr", "time",
    "data_time", "rank_data_time", "eta_seconds", "fast_rcnn/cls_accuracy", "fast_rcnn/fg_cls_accuracy",
    "fast_rcnn/false_negative", "mask_rcnn/accuracy", "mask_rcnn/false_positive", "mask_rcnn/false_negative",
    "roi_head/num_fg_samples", "roi_head/num_bg_samples", "rpn/num_pos_anchors", "rpn/num_neg_anchors",
}  # fmt: skip
AP_KEYS = {f"{task}/{name}" for task in ("bbox", "segm") for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
EVALUATION_KEYS = AP_KEYS | {"validation_loss"} | {
    f"operating_point/{name}"
    for name in ("score_threshold", "precision", "recall", "f1", "dice", "iou", "true_positives", "false_positives",
                 "false_negatives", "images")
}  # fmt: skip


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_train=1, n_val=1, n_test=1, slices_per_volume=4, size=128)


def small_run(phantom, output_dir, *extra):
    data = [f"--data.{key}={path}" for key, path in phantom.items()]
    sizes = [f"--data.{k}=128" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")]
    return ["--config", "configs/quickstart.yaml", "--output_dir", str(output_dir), *data, *sizes,
            "--data.num_workers=0", "--trainer.enable_progress_bar=false", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def run(phantom, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    main(small_run(phantom, output_dir, "--trainer.max_steps=3"))
    return output_dir


def metrics_lines(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def test_run_directory_holds_config_metrics_checkpoints_and_final_model(run):
    for name in ("config.yaml", "metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "model_final.pth"):
        assert (run / name).is_file(), name


def test_metrics_json_has_training_curves_then_val_and_test_ap(run):
    train, val, test = metrics_lines(run)
    assert train["iteration"] == 2 and set(train) == TRAINING_KEYS
    assert val["iteration"] == 3 and set(val) == EVALUATION_KEYS | {"iteration"}
    assert test["iteration"] == 3 and set(test) == {f"test/{key}" for key in EVALUATION_KEYS} | {"iteration"}
    assert val["validation_loss"] > 0


def test_final_model_is_a_plain_state_dict_of_the_network(run):
    state = torch.load(run / "model_final.pth", weights_only=True)
    assert "backbone.body.conv1.weight" in state and "roi_heads.mask_predictor.mask_fcn_logits.weight" in state


def test_saved_config_reruns_the_same_recipe(run):
    saved = (run / "config.yaml").read_text()
    assert "max_steps: 3" in saved and "fpn_out_channels: 64" in saved


def test_prints_detectron2_tables_for_val_and_test(phantom, tmp_path, capfd):
    main(small_run(phantom, tmp_path, "--trainer.max_steps=1"))
    out = capfd.readouterr().out
    assert out.count("Evaluation results for bbox: \n|  ") == 2
    assert out.count("Evaluation results for segm:") == 2
    assert out.count("copypaste: AP,AP50,AP75,APs,APm,APl") == 4


def test_resume_continues_at_the_next_step_without_duplicate_lines(phantom, tmp_path):
    main(small_run(phantom, tmp_path, "--trainer.max_steps=3"))
    main(small_run(phantom, tmp_path, "--trainer.max_steps=5", "--ckpt_path=last"))
    checkpoint = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 5
    lines = metrics_lines(tmp_path)
    training = [line for line in lines if "total_loss" in line]
    assert [line["iteration"] for line in training] == [2, 4]
    quickstart = Schedule(warmup_iters=100, milestones=[350, 450])
    assert training[1]["lr"] == 1e-3 * lr_multiplier(quickstart, base_lr=1e-3, max_iter=5)(4)
    assert [line["iteration"] for line in lines if "bbox/AP" in line] == [3, 5]


def help_texts(help_output: str, prefix: str) -> dict[str, str]:
    """``--help`` option name -> its help text (without the metavar and the ``(type: ..., default: ...)`` suffix)."""
    blocks = re.findall(rf"^  --{re.escape(prefix)}(\w+)(.*(?:\n {{3,}}.*)*)", help_output, flags=re.MULTILINE)
    texts = {}
    for name, block in blocks:
        words = " ".join(block.split())
        words = re.sub(r"^([A-Z_]+|\{[^}]*\})\s*", "", words)  # the metavar: NAME or {choice,...}
        texts[name] = words.split("(type:", 1)[0].strip()
    return texts


def test_help_describes_every_data_option(capsys):
    """jsonargparse takes option help from the CocoDataModule docstring: an argument it cannot parse shows none."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    texts = help_texts(capsys.readouterr().out, "data.")
    assert set(texts) == set(inspect.signature(CocoDataModule).parameters)
    assert [name for name, text in texts.items() if not text] == []


FIT_ONLY_OPTIONS = {
    "--ckpt_path", "--reference_world_size", "--metrics_json", "--save_on_interrupt", "--checkpoint_last",
    "--checkpoint_best",
}  # fmt: skip


def top_level_options(command: str, capsys) -> set[str]:
    """The options ``python -m <command> --help`` lists in its usage or its option lines, by their first name part
    (``--checkpoint_last.x`` counts as ``--checkpoint_last``)."""
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(command).main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    names = re.findall(r"\[(--[\w.]+)", out) + re.findall(r"^\s+(--[\w.]+)", out, flags=re.MULTILINE)
    return {name.split(".", 1)[0] for name in names}


def test_fit_registers_the_training_options(capsys):
    assert FIT_ONLY_OPTIONS <= top_level_options("segmentation.fit", capsys)


@pytest.mark.parametrize(
    "command", ["segmentation.evaluate", "segmentation.export", "segmentation.predict", "segmentation.check_data"]
)
def test_other_commands_do_not_list_the_training_options(command, capsys):
    """Checkpoint callbacks, metrics.json, resuming and world-size scaling mean nothing to a command that does not
    train: they are fit's options, not the shared CLI's."""
    options = top_level_options(command, capsys)
    assert "--data" in options and "--model" in options  # the help was read
    assert options & FIT_ONLY_OPTIONS == set()


RECIPE = "configs/mask_rcnn_X_101_32x8d_FPN_3x.yaml"


def test_recipe_config_prints_the_seed_values_and_the_zoo_url(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", RECIPE, "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for expected in (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x/"
        "139653917/model_final_2d9806.pkl",
        "depth: 101", "num_groups: 32", "width_per_group: 8", "freeze_at: 2", "norm: FrozenBN",
        "roi_batch_size_per_image: 128", "class_path: torch.optim.Adam", "lr: 0.0001", "warmup_iters: 1000",
        "warmup_factor: 0.001",
        "max_steps: 3000", "batch_size: 4", "num_workers: 2", "precision: 16-mixed", "min_size_train: 512",
    ):  # fmt: skip
        assert expected in printed, expected


def test_recipe_config_trains_on_cpu_without_downloading_weights(phantom, tmp_path):
    data = [f"--data.{key}={path}" for key, path in phantom.items()]
    sizes = [f"--data.{k}=128" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")]
    main(["--config", RECIPE, "--model.weights=null", "--trainer.max_steps=2", "--data.batch_size=1",
          "--data.num_workers=0", "--output_dir", str(tmp_path), *data, *sizes])  # fmt: skip
    assert [line["iteration"] for line in metrics_lines(tmp_path)] == [1, 2, 2]


def test_bad_data_stops_before_the_first_step_with_a_report_and_no_traceback(phantom, tmp_path, capsys):
    broken = json.loads(phantom["val_json"].read_text())
    broken["annotations"][0]["image_id"] = 987654  # an annotation of an image the json does not have
    (tmp_path / "val.json").write_text(json.dumps(broken))
    with pytest.raises(SystemExit) as exit_info:
        main(small_run(phantom, tmp_path / "run", f"--data.val_json={tmp_path / 'val.json'}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "987654" in err and "val.json" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_detectron2_dump_trains_with_sgd_and_an_override_chooses_another(parity_dir, capsys):
    dump = str(parity_dir / "tiny_lung" / "config.yaml")
    with pytest.raises(SystemExit):
        main(["--config", dump, "--print_config"])
    captured = capsys.readouterr()
    assert "class_path: torch.optim.SGD" in captured.out and "momentum: 0.0" in captured.out
    assert "detectron2's default optimizer, torch.optim.SGD" in captured.err + captured.out
    with pytest.raises(SystemExit):
        main(["--config", dump, "--model.optimizer", "torch.optim.Adam", "--model.optimizer.lr=1e-4", "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: torch.optim.Adam" in printed and "momentum" not in printed


def test_top_level_optimizer_option_points_to_the_model_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/quickstart.yaml", "--optimizer", "AdamW"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model.optimizer" in err and len(err.strip().splitlines()) == 1


def test_detectron2_per_tensor_clipping_applies_during_training(phantom, tmp_path):
    """Clipping every gradient element to 0 leaves SGD (no momentum, no decay) nothing to change."""
    main(small_run(phantom, tmp_path, "--trainer.max_steps=1", "--model.optimizer=torch.optim.SGD",
                   "--model.optimizer.lr=0.1", "--model.gradient_clipping.clip_type=value",
                   "--model.gradient_clipping.clip_value=0.0", "--trainer.val_check_interval=null"))  # fmt: skip
    after = torch.load(tmp_path / "model_final.pth", weights_only=True)
    torch.manual_seed(0)  # the quickstart's seed_everything: rebuild the same initial weights
    arch = yaml.safe_load(open("configs/quickstart.yaml"))["model"]["arch"]
    before = build_mask_rcnn(MaskRCNNConfig(**arch)).state_dict()
    trained = [k for k in after if "num_batches_tracked" not in k and "running" not in k]
    assert all(torch.equal(after[k], before[k]) for k in trained)


# Lightning options users pass keep detectron2's run semantics: iterations, one run directory.


def test_accumulating_gradients_counts_iterations_and_evaluates_only_after_the_last(phantom, tmp_path):
    main(
        small_run(
            phantom, tmp_path, "--metrics_json.period=1", "--trainer.max_steps=2", "--trainer.accumulate_grad_batches=2"
        )
    )
    lines = metrics_lines(tmp_path)
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1]
    assert [line["iteration"] for line in lines if "bbox/AP" in line] == [2]  # one val, after the last step
    assert [line["iteration"] for line in lines if "test/bbox/AP" in line] == [2]


def test_a_custom_logger_leaves_config_and_metrics_in_the_run_directory(phantom, tmp_path):
    elsewhere = tmp_path / "logger_store"
    run = tmp_path / "run"
    logger = "--trainer.logger=pytorch_lightning.loggers.CSVLogger"
    main(small_run(phantom, run, "--metrics_json.period=1", "--trainer.max_steps=1", logger,
                   f"--trainer.logger.save_dir={elsewhere}"))  # fmt: skip
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert not list(elsewhere.rglob("config.yaml")) and not list(elsewhere.rglob("metrics.json"))
    assert list(elsewhere.rglob("metrics.csv"))  # the logger still logs where it was told
