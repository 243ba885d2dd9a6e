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


def _ranks_under(ancestor: int) -> dict[int, int]:
    """{RANK: pid} of the edgetl ranks that descend from process `ancestor` (read from /proc)."""
    from pathlib import Path

    def parent(pid: int) -> int:
        try:
            return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace")
                       .split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("EDGETL_DDP_CHILD") != "1" or "RANK" not in env:
            continue
        pid = int(entry.name)
        up = pid
        while up > 1 and up != ancestor:
            up = parent(up)
        if up == ancestor and int(env["RANK"]) not in ranks:
            ranks[int(env["RANK"])] = pid
    return ranks


def test_a_rank_that_dies_mid_training_ends_the_build_with_one_message(tmp_path, tiny_dataset):
    """A follower killed (SIGKILL) during the fine-tune: the build ends within minutes, not at the process group's
    one-day timeout, with one distributed-error message and a failed summary; nothing is left running."""
    import os
    import signal
    import time

    path = _recipe(tmp_path, tiny_dataset, train={"epochs": 200})
    build_proc = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "build", str(path), "--out",
                                   str(tmp_path / "run"), "--nproc", "2"], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in build_proc.stderr:  # rank 0's progress: wait until the distributed fine-tune is under way
            seen.append(line)
            if "epoch 2/200" in line:
                break
        ranks = _ranks_under(build_proc.pid)
        assert 1 in ranks, ("".join(seen)[-3000:], ranks)
        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        _, rest = build_proc.communicate(timeout=300)
    finally:
        if build_proc.poll() is None:
            build_proc.kill()
    err = "".join(seen) + rest
    assert time.monotonic() - start < 300
    assert build_proc.returncode == 1 and "distributed error" in err and "Traceback" not in err, err[-3000:]
    assert "epoch 200/200" not in err
    # Which of the two says it first is a race: rank 0's gloo call failing (the lost connection, named), or torchrun
    # stopping rank 0 (SIGTERM) as soon as it sees the dead follower. Either is the one distributed error.
    lost = "another process of the distributed fine-tune stopped" in err and "Connection" in err
    stopped = "torch.distributed.run stopped this build (SIGTERM): another process of it failed" in err
    assert lost or stopped, err[-3000:]
    assert err.count("edgetl: distributed error") == 1, err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed: distributed error" and summary["failed_stage"] == "train", summary
    assert not list((tmp_path / "run").glob(".*.tmp")) and (tmp_path / "run" / "report.md").is_file()
    time.sleep(1)  # torchrun reaps its workers before it exits; give the kernel a moment to drop their entries
    assert not [pid for pid in ranks.values() if _alive(pid)], ranks


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
