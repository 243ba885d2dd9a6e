"""`edgetl build --nproc/--nnodes`: real torchrun, real gloo process groups, on this machine."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, tiny_recipe
from edgetl.pipeline import build
from edgetl.progress import Reporter


def _recipe(tmp_path, dataset, **sections):
    recipe = tiny_recipe(dataset, export={"formats": ["onnx"], "precisions": ["fp32"]}, **sections)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _edgetl(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _history(run) -> list[dict]:
    return json.loads((run / "train" / "history.json").read_text())


def test_two_gloo_processes_train_like_one(tmp_path, tiny_dataset):
    path = _recipe(tmp_path, tiny_dataset)
    result = _edgetl("build", path, "--out", tmp_path / "ddp", "--nproc", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "epoch 3/3" in result.stderr  # rank 0's progress reaches the user
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    single = build(path, out=tmp_path / "one", reporter=Reporter(enabled=False))
    assert ddp["model"]["world_size"] == 2 and single["model"]["world_size"] == 1
    # Same global batch and schedule, each process on half of every epoch: the losses follow the single run.
    pairs = zip(_history(tmp_path / "ddp"), _history(tmp_path / "one"), strict=True)
    for two, one in pairs:
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=0.15)
    assert abs(ddp["model"]["val_accuracy"] - single["model"]["val_accuracy"]) <= 100 / 12 + 1e-6  # one val image
    assert ddp["artifacts"][0]["val_accuracy"] == ddp["model"]["val_accuracy"]


def test_two_nodes_meet_at_the_master_address(tmp_path, tiny_dataset):
    path = _recipe(tmp_path, tiny_dataset, train={"epochs": 2})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["build", path, "--out", tmp_path / "run", "--nnodes", 2, "--master-addr", "127.0.0.1",
              "--master-port", port]
    follower = subprocess.Popen([sys.executable, "-m", "edgetl.cli", *map(str, common), "--node-rank", "1"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leader = _edgetl(*common, "--node-rank", 0)
    out, err = follower.communicate(timeout=300)
    assert leader.returncode == 0, leader.stderr[-3000:]
    assert follower.returncode == 0, err[-3000:]
    assert "node 1 of 2: done" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model"]["world_size"] == 2


def test_a_failing_distributed_build_is_one_message_and_its_exit_code(tmp_path, tiny_dataset):
    bad = _recipe(tmp_path, tiny_dataset, train={"epochs": "three"})
    result = _edgetl("build", bad, "--out", tmp_path / "bad", "--nproc", 2)
    assert result.returncode == 2 and "train.epochs" in result.stderr and "Traceback" not in result.stderr
    # an error rank 0 meets after training (parity beyond an impossible tolerance) ends every process, exit 1
    path = _recipe(tmp_path, tiny_dataset, train={"epochs": 1}, verify={"parity_atol": 1e-12})
    result = _edgetl("build", path, "--out", tmp_path / "parity", "--nproc", 2)
    assert result.returncode == 1 and "parity error" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    result = _edgetl("build", path, "--nproc", 2, "--nnodes", 2, "--node-rank", 2)
    assert result.returncode == 2 and "2 must be below --nnodes 2" in result.stderr
