"""Fault tolerance with real builds: killed at several points and started again, a build resumes from its last
completed stage or epoch and ends with the summary of an uninterrupted build; Ctrl-C stops it with a message; a full
disk is one clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, make_image_folder, tiny_recipe, unavailable
from edgetl.pipeline import build
from edgetl.progress import Reporter

# (what is interrupted, the output line after which the signal is sent, signal, stage that must not be complete)
KILL_POINTS = [
    ("Ctrl-C during training", "epoch 1:", signal.SIGINT, "train"),
    ("SIGKILL during training", "epoch 2:", signal.SIGKILL, "train"),
    ("SIGTERM during int8 calibration", "onnx fp32 written", signal.SIGTERM, "export"),
    ("SIGKILL during export", "openvino fp32 written", signal.SIGKILL, "export"),
    ("SIGKILL during verify", "onnx_int8: val acc", signal.SIGKILL, "verify"),
    ("SIGKILL during bench", "] bench", signal.SIGKILL, "bench"),
]


def _recipe(tmp_path: Path, dataset: Path) -> Path:
    recipe = tiny_recipe(dataset, data={"workers": 2}, train={"epochs": 3},
                         export={"formats": ["onnx", "openvino"], "precisions": ["fp32", "int8"]},
                         bench={"min_runs": 200})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The recipe both tests build, and one uninterrupted build of it: what a resumed build must end like, and the
    stages a full disk is given room for."""
    base = tmp_path_factory.mktemp("resume")
    dataset = base / "tiny"
    make_image_folder(dataset / "train", {"red": 12, "green": 12}, seed=1)
    make_image_folder(dataset / "val", {"red": 6, "green": 6}, seed=2)
    path = _recipe(base, dataset)
    summary = build(path, out=base / "straight", reporter=Reporter(enabled=False))
    return {"recipe": path, "run": base / "straight", "summary": summary}


def _interrupt(cmd: list[str], marker: str, sig: signal.Signals) -> tuple[int, str, int]:
    """Run a build in its own process group and signal the whole group (as a terminal's Ctrl-C does) right after
    `marker` appears in its output."""
    # SIGINT at its default, as in a terminal: a CI job started in the background may have it ignored, and an
    # ignored SIGINT is inherited (Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen, deadline = [], time.time() + 600
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.time() > deadline:
            os.killpg(proc.pid, sig)
            break
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + rest, proc.pid


def _comparable(summary: dict) -> dict:
    """What an interrupted build must reproduce: models, accuracies, artifacts (not timings or latencies)."""
    artifacts = [{k: a[k] for k in ("name", "path", "format", "precision", "val_accuracy", "accuracy_drop_pp")}
                 for a in summary["artifacts"]]
    model = {k: summary["model"][k] for k in ("val_accuracy", "epochs_run", "best_epoch", "params")}
    return {"status": summary["status"], "model": model, "artifacts": artifacts,
            "data": summary["data"]["class_counts"]}


def test_a_build_killed_at_every_point_resumes_and_ends_like_an_uninterrupted_one(tmp_path, straight):
    path = straight["recipe"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgetl.cli", "build", str(path), "--out", str(run)]
    trained_before = 0  # epochs done when the previous build was stopped during training
    exported_before = False  # the previous build was stopped in export, after its ONNX fp32 file was written
    stopped = []  # the builds' process ids
    for what, marker, sig, unfinished in KILL_POINTS:
        code, output, pid = _interrupt(cmd, marker, sig)
        stopped.append(pid)
        if trained_before:  # it went on from the checkpoint, not from the start
            assert f"resuming training after epoch {trained_before}" in output, f"{what}\n{output[-3000:]}"
        if exported_before:  # ... and from the files the export had finished
            assert "onnx_fp32: finished before the build was stopped, reused" in output, f"{what}\n{output[-3000:]}"
        exported_before = unfinished == "export"
        checkpoint = run / ".train.partial" / "checkpoint.pt"  # the epoch it holds (a kill can land a bit late)
        trained_before = int(torch.load(checkpoint, weights_only=True)["state"]["epoch"]) \
            if unfinished == "train" and checkpoint.is_file() else 0
        assert marker in output, f"{what}: the build ended before '{marker}'\n{output[-3000:]}"
        assert "Traceback" not in output, f"{what}\n{output[-3000:]}"
        if sig == signal.SIGINT:
            assert code == 130 and "interrupted" in output, f"{what}: exit {code}\n{output[-2000:]}"
        elif sig == signal.SIGTERM:  # stopped like Ctrl-C: its summary says so, its temporary files are gone
            assert code == 143 and "edgetl: stopped (SIGTERM)" in output, f"{what}: exit {code}\n{output[-2000:]}"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["status"] == "failed: interrupted" and summary["failed_stage"] == "export", summary
            assert not list(run.rglob("*.tmp")) or all(p.parent.name == "train" for p in run.rglob("*.tmp"))
            assert not list(Path(tempfile.gettempdir()).glob(f"edgetl-onnx-{pid}-*")), what
        else:
            assert code == -signal.SIGKILL, f"{what}: exit {code}"
        assert not (run / unfinished / "stage.json").exists(), f"{what}: {unfinished} completed before the kill"
        if unfinished == "train":
            # the epochs done so far are kept, in the stage's partial folder (the stage folder appears when it is done)
            assert (run / ".train.partial" / "checkpoint.pt").is_file(), what
    # A build killed outright while it held ONNX exports to reuse leaves their folder (here the folder the last
    # killed build would have left, had it exported): the next build removes it, since that process is gone.
    (Path(tempfile.gettempdir()) / f"edgetl-onnx-{stopped[-1]}-left").mkdir()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [f for pid in stopped for f in Path(tempfile.gettempdir()).glob(f"edgetl-onnx-{pid}-*")]
    assert "data: unchanged, reused" in result.stderr and "verify: unchanged, reused" in result.stderr
    resumed = json.loads((run / "summary.json").read_text())
    history = json.loads((run / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not list(run.rglob("*.tmp")) or all(p.parent.name == "train" for p in run.rglob("*.tmp"))
    assert not list(run.glob(".*.partial")), "a finished build leaves no partial stage folder"

    assert _comparable(resumed) == _comparable(straight["summary"])
    straight_history = json.loads((straight["run"] / "train" / "history.json").read_text())
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in straight_history], rel=1e-4)


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize(("megabytes", "while_writing"), [(3, ".train.partial/checkpoint.pt"), (None, "export")])
def test_a_full_disk_is_one_clear_error_and_nothing_half_written(tmp_path, straight, megabytes, while_writing):
    path = straight["recipe"]
    disk = tmp_path / "disk"
    if megabytes is None:  # room for the stages before export (copied from a real build), not for its files
        done = straight["run"]
        kept = ("data", "inputs", "train")
        used = sum(p.stat().st_size for stage in kept for p in (done / stage).rglob("*") if p.is_file())
        megabytes = used // 2**20 + 6
    if not _mount_tmpfs(disk, megabytes):
        unavailable("needs root and mount to make a small real filesystem (tmpfs)")
    try:
        if while_writing == "export":
            for stage in kept:
                shutil.copytree(done / stage, disk / "run" / stage)
        result = subprocess.run([sys.executable, "-m", "edgetl.cli", "build", str(path), "--out", str(disk / "run")],
                                cwd=REPO, capture_output=True, text=True, timeout=600)
        assert result.returncode == 1 and "storage error" in result.stderr and "disk is full" in result.stderr, \
            result.stderr[-3000:]
        assert "Traceback" not in result.stderr and while_writing in result.stderr
        stage = while_writing.split("/")[0].removeprefix(".").removesuffix(".partial")
        assert not (disk / "run" / stage / "stage.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_failed_export_keeps_its_finished_files_and_the_next_build_reuses_only_the_intact_ones(
        tmp_path, straight, monkeypatch):
    """OpenVINO failing after the ONNX files were made: the build fails, the ONNX files wait in the export stage's
    resume folder, and the next build reuses them, except one whose bytes changed meanwhile (made again)."""
    import io

    from rich.console import Console

    from edgetl.errors import ExportError
    from edgetl.export import openvino

    run = tmp_path / "run"
    for stage in ("data", "inputs", "train"):
        shutil.copytree(straight["run"] / stage, run / stage)

    def broken(*args, **kwargs):
        raise ExportError("OpenVINO is broken in this test")

    monkeypatch.setattr(openvino, "export", broken)
    with pytest.raises(ExportError, match="broken in this test"):
        build(straight["recipe"], out=run, reporter=Reporter(enabled=False))
    kept = run / ".export.partial" / "resume"
    assert sorted(p.name for p in kept.iterdir()) == ["onnx_fp32", "onnx_int8"]
    assert not (run / "export" / "stage.json").exists()
    monkeypatch.undo()
    int8 = kept / "onnx_int8" / "model.onnx"
    int8.write_bytes(int8.read_bytes() + b"\0")  # no longer the file done.json describes
    said = io.StringIO()
    summary = build(straight["recipe"], out=run, reporter=Reporter(console=Console(file=said, width=200)))
    assert "onnx_fp32: finished before the build was stopped, reused" in said.getvalue(), said.getvalue()
    assert "onnx_int8: finished before" not in said.getvalue()
    assert "onnx fp32 written" not in said.getvalue()  # reused, not written again
    assert not (run / ".export.partial").exists() and not (run / "export" / "resume").exists()
    assert _comparable(summary) == _comparable(straight["summary"])
