"""edgetl never deletes what it did not write (README: "Output folders"): it writes only into folders it made and
marked, replaces an output only once its replacement is complete, and a run's summary never points at files that are
gone or claims a build went well when it did not. Each test here failed before its fix (issue 19)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, tiny_recipe
from conftest import run_cli as edgetl


def _dataset(root: Path) -> Path:
    make_image_folder(root / "train", {"red": 4, "green": 4}, size=24, seed=1)
    make_image_folder(root / "val", {"red": 2, "green": 2}, size=24, seed=2)
    return root


def _write_recipe(path: Path, dataset: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(tiny_recipe(dataset, train={"epochs": 1}, **sections)))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run directory) of one real tiny build, which tests copy before they touch it."""
    base = tmp_path_factory.mktemp("built")
    recipe = _write_recipe(base / "recipe.yaml", _dataset(base / "data"))
    code, out = edgetl("build", recipe, "--out", base / "run", "-q")
    assert code == 0, out
    return recipe, base / "run"


@pytest.fixture
def run(built, tmp_path) -> Path:
    """A copy of the built run directory, this test's own."""
    return Path(shutil.copytree(built[1], tmp_path / "run", symlinks=True))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _precious(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.txt").write_text("years of work")
    (folder / "photos").mkdir(exist_ok=True)
    (folder / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    return _tree(folder)


# --- edgetl bundle -o ------------------------------------------------------------------------------------------------

def test_bundle_refuses_a_folder_of_the_users_files(run, tmp_path):
    before = _precious(tmp_path / "precious")
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "precious")
    assert code == 2 and "precious" in out and "not a deploy bundle made by edgetl" in out, out
    assert _tree(tmp_path / "precious") == before


def test_bundle_refuses_to_replace_the_run_or_a_folder_holding_it(run, tmp_path, monkeypatch):
    before = _tree(run)
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", run)
    assert code == 2 and "would replace the run" in out, out
    monkeypatch.chdir(tmp_path)
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", ".")
    assert code == 2 and "would replace the run" in out, out
    assert _tree(run) == before


def test_bundle_replaces_its_own_bundle_and_takes_an_empty_folder(run, tmp_path):
    (tmp_path / "empty").mkdir()
    for out_dir in (tmp_path / "empty", tmp_path / "empty"):  # the second time it replaces its own bundle
        code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", out_dir, "--zip")
        assert code == 0, out
    assert (tmp_path / "empty" / "model.onnx").is_file() and (tmp_path / "empty" / ".edgetl-bundle").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch or old folder left


def test_bundle_refuses_to_overwrite_a_zip_it_did_not_write(run, tmp_path):
    (tmp_path / "b.zip").write_bytes(b"my own archive")
    (tmp_path / "b").mkdir()  # an empty folder refused for the zip's sake: left unmarked, as it was
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b", "--zip")
    assert code == 2 and "b.zip" in out, out
    assert (tmp_path / "b.zip").read_bytes() == b"my own archive" and not list((tmp_path / "b").iterdir())


def test_bundle_refuses_to_replace_an_earlier_bundle_holding_the_users_files(run, tmp_path):
    args = ("bundle", run, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b")
    assert edgetl(*args)[0] == 0
    (tmp_path / "b" / "notes.txt").write_text("mine")
    code, out = edgetl(*args)
    assert code == 2 and "notes.txt" in out and "did not write" in out, out
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine" and (tmp_path / "b" / "model.onnx").is_file()


def test_bundle_into_the_current_folder_or_its_parent_is_refused_cleanly(run, tmp_path, monkeypatch):
    inner = tmp_path / "work" / "here"
    inner.mkdir(parents=True)
    (inner / "keep.txt").write_text("mine")
    monkeypatch.chdir(inner)
    for target in (".", ".."):
        code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", target)
        assert code == 2 and "not a deploy bundle made by edgetl" in out, out
    assert (inner / "keep.txt").read_text() == "mine" and sorted(p.name for p in inner.iterdir()) == ["keep.txt"]


def test_swap_in_puts_the_old_folder_back_when_the_new_one_cannot_move_in(tmp_path, monkeypatch):
    import os

    from edgetl import fsutil
    from edgetl.errors import StorageError

    old, new = tmp_path / "out", tmp_path / "new"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    real = os.replace

    def second_rename_fails(src, dst):
        if Path(src) == new:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", second_rename_fails)
    with pytest.raises(StorageError, match="the disk is full"):
        fsutil.swap_in(new, old)
    assert (old / "a").read_text() == "old" and (new / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_bundle_refuses_a_model_file_changed_after_the_build(run, tmp_path):
    model = run / "export" / "onnx_int8" / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b")
    assert code == 2 and "model.onnx" in out and "sha256" in out, out
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_bundle_refuses_an_artifact_path_outside_the_run(run, tmp_path, where):
    secret = tmp_path / "secret.onnx"
    secret.write_text("password")
    summary = json.loads((run / "summary.json").read_text())
    artifact = next(a for a in summary["artifacts"] if a["name"] == "onnx_int8")
    artifact["path"] = str(secret) if where == "absolute" else "../secret.onnx"
    (run / "summary.json").write_text(json.dumps(summary))
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b")
    assert code == 2 and "outside the run directory" in out, out
    assert not (tmp_path / "b").exists()


# --- edgetl build --out ----------------------------------------------------------------------------------------------

def test_build_refuses_an_existing_folder_it_did_not_make(built, tmp_path):
    before = _precious(tmp_path / "project")
    code, out = edgetl("build", built[0], "--out", tmp_path / "project", "-q")
    assert code == 2 and "project" in out and "not a run directory made by edgetl" in out, out
    assert _tree(tmp_path / "project") == before


def test_build_refuses_an_output_folder_that_holds_or_is_inside_the_dataset(tmp_path):
    project = tmp_path / "project"
    recipe = _write_recipe(project / "recipe.yaml", _dataset(project / "data"))
    recipe.write_text(recipe.read_text().replace(str(project / "data"), "data"))  # data.path relative to the recipe
    before = _tree(project)
    for out_dir, says in ((project, "holds the dataset"), (project / "data", "inside the dataset"),
                          (project / "data" / "runs", "inside the dataset")):
        code, out = edgetl("build", recipe, "--out", out_dir, "-q")
        assert code == 2 and says in out, out
    assert _tree(project) == before


def test_build_takes_an_empty_folder_and_an_old_run_without_a_marker(built, run, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out = edgetl("build", built[0], "--out", tmp_path / "empty")
    assert code == 0 and (tmp_path / "empty" / ".edgetl-run").is_file(), out
    # As an edgetl before markers left it: no marker, stage records without their hash. Recognised by its stage
    # folders, and every stage reused.
    (run / ".edgetl-run").unlink()
    for marker in run.glob("*/stage.json"):
        saved = json.loads(marker.read_text())
        del saved["record_sha256"]
        marker.write_text(json.dumps(saved))
    code, out = edgetl("build", built[0], "--out", run)
    assert code == 0 and out.count("unchanged, reused") == 7, out
    assert (run / ".edgetl-run").is_file()


def test_an_old_run_killed_in_training_is_recognised_and_resumes(built, tmp_path):
    """An older edgetl kept a killed stage's checkpoint in the stage folder itself (train/checkpoint.pt, no
    stage.json, no marker, records without their hash): that run directory is still edgetl's, and training resumes
    from the checkpoint."""
    import os
    import signal
    import subprocess
    import sys

    import torch

    from conftest import REPO

    dataset = Path(yaml.safe_load(built[0].read_text())["data"]["path"])
    recipe = tmp_path / "three.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(dataset, train={"epochs": 3})))
    run = tmp_path / "old"
    cmd = [sys.executable, "-m", "edgetl.cli", "build", str(recipe), "--out", str(run)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if "epoch 1:" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    (run / "train").mkdir()  # the layout an older edgetl left
    os.replace(run / ".train.partial" / "checkpoint.pt", run / "train" / "checkpoint.pt")
    for leftover in [run / ".edgetl-run", *run.glob(".*.partial")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    for marker in run.glob("*/stage.json"):
        saved = json.loads(marker.read_text())
        del saved["record_sha256"]
        marker.write_text(json.dumps(saved))
    epoch = int(torch.load(run / "train" / "checkpoint.pt", weights_only=True)["state"]["epoch"])
    code, out = edgetl("build", recipe, "--out", run)
    assert code == 0 and "[1/7] data: unchanged, reused" in out, out
    assert f"resuming training after epoch {epoch}" in out, out
    assert not (run / "train" / "checkpoint.pt").exists() and not list(run.glob(".*.partial"))


def test_a_failed_rebuild_keeps_the_good_run_and_says_it_failed(built, run, tmp_path):
    truncated = tmp_path / "weights.pth"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    good = _tree(run / "train")
    recipe = _write_recipe(tmp_path / "bad.yaml", Path(yaml.safe_load(built[0].read_text())["data"]["path"]),
                           model={"weights": str(truncated)})
    code, out = edgetl("build", recipe, "--out", run, "-q")
    assert code == 2 and "weights.pth" in out, out
    assert _tree(run / "train") == good  # the last good model, its history and stage.json are untouched
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed: weights error" and "weights.pth" in summary["error"], summary["status"]
    assert summary["failed_stage"] == "train"
    before = json.loads((built[1] / "summary.json").read_text())
    assert [a["name"] for a in summary["artifacts"]] == [a["name"] for a in before["artifacts"]]  # all still intact
    assert all((run / a["path"]).is_file() for a in summary["artifacts"])
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b")
    assert code == 2 and "did not finish" in out, out
    code, out = edgetl("build", built[0], "--out", run)  # the good recipe again: everything is still there
    assert code == 0 and out.count("unchanged, reused") == 7, out
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"


def test_an_edited_stage_record_is_not_trusted(built, run):
    marker = run / "verify" / "stage.json"
    saved = json.loads(marker.read_text())
    saved["record"]["artifacts"]["onnx_int8"]["val_accuracy"] = 99.9
    marker.write_text(json.dumps(saved))
    code, out = edgetl("build", built[0], "--out", run)
    assert code == 0 and "[5/7] verify\n" in out, out  # verify ran again instead of reusing the edited record
    summary = json.loads((run / "summary.json").read_text())
    assert {a["val_accuracy"] for a in summary["artifacts"]} != {99.9}
    assert next(a for a in summary["artifacts"] if a["name"] == "onnx_int8")["val_accuracy"] != 99.9


def test_an_interrupted_rebuild_says_so_in_the_summary(built, run, tmp_path, monkeypatch):
    """Ctrl-C after a stage was swapped in (export, made again with other calibration images): the summary is not
    left saying `ok` about files that changed."""
    import dataclasses

    from edgetl import pipeline

    seen = {}

    def interrupted(ctx):  # the verify stage's cache key is being computed: its stage has not started
        seen["status"] = json.loads((run / "summary.json").read_text())["status"]  # while the build runs
        raise KeyboardInterrupt

    stages = tuple(dataclasses.replace(s, key=interrupted) if s.name == "verify" else s for s in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    dataset = Path(yaml.safe_load(built[0].read_text())["data"]["path"])
    recipe = _write_recipe(tmp_path / "other.yaml", dataset, export={"calibration_images": 6})
    code, out = edgetl("build", recipe, "--out", run)
    assert code == 130 and "interrupted" in out and "[4/7] export\n" in out, out
    assert seen["status"] == "building"  # what a SIGKILL at that moment would leave: bundles refuse it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed: interrupted" and summary["failed_stage"] is None
    # the int8 file was made again from other calibration images: no longer the one the summary recorded
    assert "onnx_int8" not in [a["name"] for a in summary["artifacts"]]
    from edgetl.fsutil import changed_files

    assert all(not changed_files(run, a["files_sha256"]) for a in summary["artifacts"])  # what is listed is intact
    code, out = edgetl("bundle", run, "--format", "onnx", "--precision", "int8", "-o", run.parent / "b")
    assert code == 2 and "did not finish" in out, out


@pytest.mark.parametrize("content", ["null", "[]", "\"text\""])
def test_a_stage_json_that_is_not_an_object_reruns_the_stage(built, run, content):
    (run / "bench" / "stage.json").write_text(content)
    code, out = edgetl("build", built[0], "--out", run)
    assert code == 0 and "[6/7] bench\n" in out, out


# --- edgetl report ---------------------------------------------------------------------------------------------------

def test_report_keeps_the_old_report_when_the_summary_is_malformed(run):
    plots = {**_tree(run / "report"), "md": (run / "report.md").read_bytes(), "html": (run / "report.html").read_bytes()}
    assert len(plots) == 5, "the build drew no plots"
    summary = json.loads((run / "summary.json").read_text())
    summary["artifacts"][0]["val_accuracy"] = "high"
    (run / "summary.json").write_text(json.dumps(summary))
    code, out = edgetl("report", run)
    assert code == 2 and "artifacts[0].val_accuracy" in out, out
    assert {**_tree(run / "report"), "md": (run / "report.md").read_bytes(),
            "html": (run / "report.html").read_bytes()} == plots


def test_temporary_folders_of_killed_processes_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import tempfile

    from edgetl.fsutil import process_temp_folder, remove_orphaned_temp_folders

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"edgetl-onnx-{int(gone.stdout)}-abc"  # a process killed outright left it
    live = tmp_path / f"edgetl-onnx-{os.getppid()}-abc"  # another process still running
    other = tmp_path / "edgetl-quant-k3j_x"  # a with-block's folder (it removes itself): its name has no process
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "m.onnx").write_bytes(b"x")
    mine = process_temp_folder("onnx")
    assert mine.parent == tmp_path and mine.name.startswith(f"edgetl-onnx-{os.getpid()}-")
    assert not dead.exists() and live.is_dir() and mine.is_dir() and other.is_dir()
    remove_orphaned_temp_folders()
    assert mine.is_dir() and live.is_dir()
