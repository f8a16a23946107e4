"""A run stopped by SIGTERM or Ctrl-C, or killed, resumes with ``--ckpt_path last`` into the uninterrupted run exactly.

Each run is a real ``python -m segmentation.fit`` process on the CPU (one thread, so float reductions happen in the
same order), training the quickstart model on a tiny phantom with a checkpoint every 2 steps. A fresh rerun would
also equal the uninterrupted run, so each test also proves that the second process restored the saved step: the
checkpoint's step lies strictly inside the run and the metrics lines written before it stay on disk untouched (their
``time`` values, wall-clock medians, differ between processes).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from segmentation.data.phantom import make_phantom

STEPS = 16
KILL_SEED = 12  # the kill point is random but reproducible
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc", "lr")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    paths = make_phantom(tmp_path_factory.mktemp("phantom"), n_train=2, n_val=1, n_test=1, slices_per_volume=4, size=96)
    return {k: v for k, v in paths.items() if k.startswith("train")}


def fit_command(phantom, output_dir, *extra):
    sizes = [f"--data.{k}=96" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")]
    return [sys.executable, "-m", "segmentation.fit", "--config", "configs/quickstart.yaml",
            "--output_dir", str(output_dir), *[f"--data.{k}={v}" for k, v in phantom.items()], *sizes,
            "--data.val_json=null", "--data.val_images=null", "--data.test_json=null", "--data.test_images=null",
            "--data.num_workers=0", f"--trainer.max_steps={STEPS}", "--trainer.enable_progress_bar=false",
            "--checkpoint_last.every_n_train_steps=2", "--metrics_json.period=2", *extra]  # fmt: skip


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(command):
    subprocess.run(command, check=True, env=ENV, capture_output=True)


def start_and_stop(command, output_dir, sig):
    """Start a run, wait until a seeded random step past the first checkpoint, then send ``sig``."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics, target = output_dir / "metrics.json", random.Random(KILL_SEED + sig).randint(3, STEPS - 4)
    while process.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if lines and json.loads(lines[-1])["iteration"] >= target:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(sig)
    output = process.communicate(timeout=120)[0].decode()
    return process.returncode, output


def saved_step(output_dir):
    """The step ``last.ckpt`` holds, read as plain containers (checkpoints load with ``weights_only=True``)."""
    step = torch.load(output_dir / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < STEPS, f"the checkpoint holds step {step}, not one inside the run"
    return step


def lines_before(output_dir, step):
    """The training lines written up to ``step``, as text (a line names the 0-based iteration just finished)."""
    lines = (output_dir / "metrics.json").read_text().splitlines()
    return [line for line in lines if json.loads(line)["iteration"] + 1 <= step]


def resume_and_check(phantom, output_dir, uninterrupted):
    """Resume with ``--ckpt_path last``; the lines before the saved step must be the very lines already on disk."""
    step = saved_step(output_dir)
    before = lines_before(output_dir, step)
    assert before, "no metrics line was written before the checkpoint"
    run(fit_command(phantom, output_dir, "--ckpt_path=last"))
    assert lines_before(output_dir, step) == before, "the resumed process rewrote lines before the saved step"
    assert_same_run(output_dir, uninterrupted)


def training_lines(output_dir):
    lines = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    return [{k: line[k] for k in ("iteration", *LOSS_KEYS)} for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(phantom, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    run(fit_command(phantom, output_dir))
    return output_dir


def assert_same_run(resumed, uninterrupted):
    assert training_lines(resumed) == training_lines(uninterrupted)
    ours = torch.load(resumed / "model_final.pth", weights_only=True)
    theirs = torch.load(uninterrupted / "model_final.pth", weights_only=True)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_saves_a_checkpoint_and_the_resumed_run_equals_the_uninterrupted_one(
    phantom, uninterrupted, tmp_path, sig
):
    # No periodic checkpoint falls inside the run, so last.ckpt can only be the one saved on the signal.
    command = fit_command(phantom, tmp_path, "--checkpoint_last.every_n_train_steps=1000")
    code, output = start_and_stop(command, tmp_path, sig)
    assert code == 1, output  # a clean exit with a message, not death by the signal
    assert (tmp_path / "checkpoints/last.ckpt").exists(), "nothing was saved on the signal"
    assert "resume with --ckpt_path last" in output and "Traceback" not in output
    resume_and_check(phantom, tmp_path, uninterrupted)


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(phantom, uninterrupted, tmp_path):
    code, _ = start_and_stop(fit_command(phantom, tmp_path), tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    resume_and_check(phantom, tmp_path, uninterrupted)
