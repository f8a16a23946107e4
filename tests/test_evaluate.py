"""``python -m segmentation.evaluate``: a detectron2 run (config dump + checkpoint) scores exactly as detectron2 did."""

import json
import os
import subprocess
import sys

import pytest
from pycocotools.coco import COCO

from segmentation.evaluate import main
from segmentation.evaluation.coco_evaluator import evaluate_results_file

pytestmark = pytest.mark.parity
TASK_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.fixture(scope="module")
def tiny(parity_dir):
    return parity_dir / "tiny_lung"


def evaluate_args(tiny, output_dir, weights="model_final.pkl"):
    return ["--config", str(tiny / "config.yaml"), "--model.weights", str(tiny / weights),
            "--data.val_json", str(tiny / "dataset/coco_val_lung.json"), "--data.val_images", str(tiny / "dataset/val"),
            "--output_dir", str(output_dir), "--data.num_workers=0", "--trainer.enable_progress_bar=false"]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("eval")
    main(evaluate_args(tiny, output_dir))
    return output_dir


def expected_ap(tiny):
    return json.loads((tiny / "expected/coco_eval.json").read_text())


def test_detectron2_config_and_zoo_format_checkpoint_give_detectron2_ap(tiny, evaluated):
    ours = json.loads((evaluated / "eval.json").read_text())
    theirs = expected_ap(tiny)["returned_by_COCOEvaluator"]
    assert set(ours) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for name in TASK_NAMES:
            assert ours[task][name] == theirs[task][name], (task, name)


def test_all_twelve_stats_of_our_predictions_match_detectron2(tiny, evaluated):
    evaluation = evaluate_results_file(evaluated / "predictions.json", tiny / "dataset/coco_val_lung.json")
    for task in ("bbox", "segm"):
        ours = [100 * s for s in evaluation.stats[task]]
        assert ours == expected_ap(tiny)["stats12_percent"][task], task


def test_predictions_file_has_detectron2_format_and_loads_in_pycocotools(tiny, evaluated):
    predictions = json.loads((evaluated / "predictions.json").read_text())
    theirs = json.loads((tiny / "expected/predictions.json").read_text())
    assert len(predictions) == len(theirs)
    assert all(set(p) == set(theirs[0]) for p in predictions)
    assert all(isinstance(p["segmentation"]["counts"], str) for p in predictions)
    gt = COCO(str(tiny / "dataset/coco_val_lung.json"))
    assert len(gt.loadRes(str(evaluated / "predictions.json")).anns) == len(predictions)


def test_detectron2_training_output_checkpoint_gives_the_same_predictions(tiny, evaluated, tmp_path):
    main(evaluate_args(tiny, tmp_path, weights="model_final.pth"))
    assert (tmp_path / "predictions.json").read_text() == (evaluated / "predictions.json").read_text()


def test_scoring_detectron2s_results_file_reproduces_its_numbers_exactly(tiny, tmp_path):
    main(["--predictions", str(tiny / "expected/predictions.json"), "--data.val_json",
          str(tiny / "dataset/coco_val_lung.json"), "--output_dir", str(tmp_path)])  # fmt: skip
    assert json.loads((tmp_path / "eval.json").read_text()) == expected_ap(tiny)["returned_by_COCOEvaluator"]


# Runs ``segmentation.evaluate`` with each rank writing down which images it evaluated (Lightning relaunches this
# script for ranks 1 and 2, so every rank records).
RECORDING_EVALUATE = """
import json, os
from segmentation.evaluate import main
from segmentation.training.module import MaskRCNNModule

evaluate_batch = MaskRCNNModule._evaluate_batch


def recording(self, split, batch):
    with open(os.path.join(os.environ["SHARDS_DIR"], f"rank{self.global_rank}.jsonl"), "a") as f:
        ids = [int(info["image_id"]) for info in batch[1]]
        f.write(json.dumps({"world_size": self.trainer.world_size, "image_ids": ids}) + "\\n")
    evaluate_batch(self, split, batch)


MaskRCNNModule._evaluate_batch = recording
main()
"""


def test_ddp_on_three_cpu_processes_gives_the_single_process_numbers(tiny, evaluated, tmp_path):
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=3", "--trainer.strategy=ddp"]
    args = evaluate_args(tiny, tmp_path / "run") + ddp
    script, shards = tmp_path / "recording_evaluate.py", tmp_path / "shards"
    script.write_text(RECORDING_EVALUATE)
    shards.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHARDS_DIR": str(shards)}
    subprocess.run([sys.executable, str(script), *args], check=True, env=env, capture_output=True)
    assert json.loads((tmp_path / "run/eval.json").read_text()) == json.loads((evaluated / "eval.json").read_text())
    assert len(json.loads((tmp_path / "run/predictions.json").read_text())) == 28
    seen = {}
    for rank in range(3):
        lines = [json.loads(line) for line in (shards / f"rank{rank}.jsonl").read_text().splitlines()]
        assert {line["world_size"] for line in lines} == {3}
        seen[rank] = [i for line in lines for i in line["image_ids"]]
    every_image = {image["id"] for image in json.loads((tiny / "dataset/coco_val_lung.json").read_text())["images"]}
    assert sorted(i for ids in seen.values() for i in ids) == sorted(every_image)  # disjoint shards, all images
    assert all(seen.values()), "a rank evaluated nothing"
