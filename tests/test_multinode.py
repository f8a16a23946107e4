"""Multi-node DDP: two torchrun "nodes" on localhost train and evaluate exactly as one node with two processes.

Both forms are a world of two CPU processes (gloo) with the same data shards and seeds, so their metrics.json must be
identical, not merely close. One catch, measured: on the CPU, Lightning's own launcher (form a) sets each process to
``cpu_count // processes_per_node`` intra-op threads unless ``OMP_NUM_THREADS`` is set, while a torchrun node with one
process keeps every core; a different thread count changes float reduction order, and at initialisation the nearly
tied RPN scores then pick other proposals (loss_cls differed in the 4th digit at iteration 0). With
``OMP_NUM_THREADS=1`` in both forms the two runs agree bit for bit, so the comparison is exact.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from segmentation.data.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # a hung rendezvous fails the test instead of blocking it
TIMING_KEYS = {"time", "data_time", "rank_data_time", "eta_seconds"}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_train=1, n_val=1, n_test=1, slices_per_volume=4, size=128)


def fit_args(phantom: dict[str, Path], output_dir: Path) -> list[str]:
    data = [f"--data.{key}={path}" for key, path in phantom.items()]
    sizes = [f"--data.{k}=128" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")]
    return ["--config", "configs/quickstart.yaml", "--output_dir", str(output_dir), *data, *sizes,
            "--data.num_workers=0", "--data.batch_size=1", "--trainer.enable_progress_bar=false",
            "--trainer.max_steps=2", "--metrics_json.period=1", "--trainer.accelerator=cpu",
            "--trainer.strategy=ddp"]  # fmt: skip


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"  # the same intra-op threads in both forms: see the module docstring
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_concurrently(commands: list[list[str]], timeout_s: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """Start every command at once; return each one's exit status and output. On a timeout, kill them all."""
    processes = [
        subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    try:
        outputs = [p.communicate(timeout=timeout_s)[0] for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        pytest.fail(f"multi-process run did not finish in {timeout_s} s: {commands}")
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out) for p, out in zip(processes, outputs, strict=True)]


def torchrun_node(node_rank: int, port: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
            f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
            "-m", "segmentation.fit", *args, "--trainer.num_nodes=2", "--trainer.devices=1"]  # fmt: skip


@pytest.fixture(scope="module")
def one_node(phantom: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """1 node x 2 processes: Lightning starts the second process itself."""
    output_dir = tmp_path_factory.mktemp("one_node")
    [(code, out)] = run_concurrently(
        [[sys.executable, "-m", "segmentation.fit", *fit_args(phantom, output_dir), "--trainer.devices=2"]]
    )
    assert code == 0, out[-3000:]
    return output_dir, out


@pytest.fixture(scope="module")
def two_nodes(phantom: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, str]]]:
    """2 nodes x 1 process: two torchrun commands, as on two machines, sharing one run directory (only rank 0
    writes; the directory is on the shared filesystem a resume needs)."""
    output_dir = tmp_path_factory.mktemp("two_nodes")
    port = free_port()
    args = fit_args(phantom, output_dir)
    return output_dir, run_concurrently([torchrun_node(0, port, args), torchrun_node(1, port, args)])


def metrics_lines(output_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    """A line without wall-clock timings, NaN made comparable (NaN != NaN)."""
    return {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in line.items() if k not in TIMING_KEYS}


def test_lightning_starts_a_world_of_two_processes_on_one_node(one_node: tuple[Path, str]) -> None:
    _, out = one_node
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in out and "GLOBAL_RANK: 1, MEMBER: 2/2" in out


def test_two_torchrun_nodes_form_one_world_of_two_processes_and_both_exit_cleanly(
    two_nodes: tuple[Path, list[tuple[int, str]]],
) -> None:
    output_dir, [(code0, out0), (code1, out1)] = two_nodes
    assert code0 == 0, out0[-3000:]
    assert code1 == 0, out1[-3000:]
    # global rank = node_rank * devices + local rank: the process of node 1 is rank 1 of a world of 2
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in out0 and "GLOBAL_RANK: 1, MEMBER: 2/2" in out1
    assert "Evaluation results for segm" in out0 and "Evaluation results for segm" not in out1  # rank 0 reports
    trainer = yaml.safe_load((output_dir / "config.yaml").read_text())["trainer"]
    assert trainer["num_nodes"] == 2 and int(trainer["devices"]) == 1
    for name in ("metrics.json", "checkpoints/last.ckpt", "model_final.pth", "inference/eval.json"):
        assert (output_dir / name).is_file(), name


def test_two_nodes_train_the_same_steps_to_the_same_losses_as_one_node(
    one_node: tuple[Path, str], two_nodes: tuple[Path, list[tuple[int, str]]]
) -> None:
    expected = [comparable(line) for line in metrics_lines(one_node[0]) if "total_loss" in line]
    got = [comparable(line) for line in metrics_lines(two_nodes[0]) if "total_loss" in line]
    assert [line["iteration"] for line in got] == [0, 1]
    assert got == expected  # exact: same shards, seeds and threads give the same floats


def test_two_nodes_evaluate_val_and_test_to_the_same_ap_as_one_node(
    one_node: tuple[Path, str], two_nodes: tuple[Path, list[tuple[int, str]]]
) -> None:
    expected = [comparable(line) for line in metrics_lines(one_node[0]) if "total_loss" not in line]
    got = [comparable(line) for line in metrics_lines(two_nodes[0]) if "total_loss" not in line]
    assert len(got) == 2 and "segm/AP" in got[0] and "test/segm/AP" in got[1]
    assert got == expected
    for name in ("eval.json", "test_eval.json"):
        assert (two_nodes[0] / "inference" / name).read_text() == (one_node[0] / "inference" / name).read_text()
