"""Hostile and broken input, end to end through the `edgetl` command: every case is a clear message and an exit code,
or a handled outcome; never a traceback. One test per case (README: "Hostile input")."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import make_image_folder, tiny_recipe, unavailable
from conftest import run_cli as edgetl


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root / "train", {"red": 4, "green": 4}, size=24, seed=1)
    make_image_folder(root / "val", {"red": 2, "green": 2}, size=24, seed=2)
    return root


def check(tmp_path: Path, dataset: Path, **sections) -> tuple[int, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(dataset, **sections)))
    return edgetl("check", path)


def noise(size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)


def jpeg_bytes(mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise()).convert(mode).save(buf, "JPEG")
    return buf.getvalue()


# --- images: refused with the file named ---------------------------------------------------------------------------

BAD_IMAGES = {
    "truncated_jpeg": (lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated or corrupt"),
    "zero_byte_file": (lambda: b"", "empty file (0 bytes)"),
    "text_named_jpg": (lambda: b"<html>404 Not Found</html>\n" * 20, "not an image"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_naming_the_file(tmp_path, dataset, case):
    content, reason = BAD_IMAGES[case]
    (dataset / "train" / "red" / f"{case}.jpg").write_bytes(content())
    code, out = check(tmp_path, dataset)
    assert code == 2 and f"{case}.jpg" in out and reason in out, out
    code, out = check(tmp_path, dataset, data={"skip_bad_images": True})  # or skipped and counted, on request
    assert code == 0 and "1 bad images skipped" in out, out


def test_a_decompression_bomb_is_refused(tmp_path, dataset):
    # 12000 × 12000 = 144 Mpixel, over Pillow's 89 Mpixel limit, in a PNG of a few hundred kB
    Image.new("1", (12000, 12000)).save(dataset / "train" / "red" / "bomb.png")
    assert (dataset / "train" / "red" / "bomb.png").stat().st_size < 2_000_000
    code, out = check(tmp_path, dataset)
    assert code == 2 and "bomb.png" in out and "decompression bomb" in out, out


def test_a_named_pipe_called_jpg_is_refused_without_blocking(tmp_path, dataset):
    os.mkfifo(dataset / "train" / "red" / "pipe.jpg")  # opening it to read would wait forever for a writer
    code, out = check(tmp_path, dataset)
    assert code == 2 and "pipe.jpg" in out and "not a regular file" in out, out


# --- images: handled, converted to RGB -----------------------------------------------------------------------------

def _sixteen_bit_png(path: Path) -> None:
    Image.fromarray(np.linspace(0, 65535, 32 * 32, dtype=np.uint16).reshape(32, 32)).save(path)


def _cmyk_jpeg(path: Path) -> None:
    path.write_bytes(jpeg_bytes("CMYK"))


def _animated_gif(path: Path) -> None:
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


@pytest.mark.parametrize(("name", "write", "mode"), [("deep.png", _sixteen_bit_png, "I;16"),
                                                    ("print.jpg", _cmyk_jpeg, "CMYK"),
                                                    ("moving.gif", _animated_gif, "P")])
def test_unusual_image_modes_are_converted_and_counted(tmp_path, dataset, name, write, mode):
    write(dataset / "train" / "red" / name)
    assert Image.open(dataset / "train" / "red" / name).mode == mode
    code, out = check(tmp_path, dataset)
    assert code == 0 and "9 train / 4 val" in out and "1 converted to RGB" in out, out


# --- folders ------------------------------------------------------------------------------------------------------

def test_a_symlink_loop_in_the_data_folder_terminates(tmp_path, dataset):
    os.symlink(dataset / "train", dataset / "train" / "red" / "loop")
    code, out = check(tmp_path, dataset)
    assert code == 0 and "8 train / 4 val" in out, out


def test_a_class_with_one_image_trains_or_says_why(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", {"red": 1, "green": 6}, size=24, seed=1)
    code, out = check(tmp_path, root)  # no val folder: a val split is carved from train, but not from one image
    assert code == 0 and "6 train / 1 val" in out and "warning: no val image of red" in out, out
    make_image_folder(root / "val", {"red": 2, "green": 2}, size=24, seed=2)
    code, out = check(tmp_path, root)  # with its own val folder one train image is enough to run
    assert code == 0 and "7 train / 4 val" in out and "warning" not in out, out


# --- recipes --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\ndata: {dataset: x}\ntrain: {epochs: ten}\n", "train.epochs"),
    ("name: x\ndata: {dataset: x}\ntrain: {epocs: 3}\n", "epochs"),
    ("name: !!python/object/apply:os.system ['touch PWNED']\ndata: {dataset: x}\n", "not valid YAML"),
])
def test_a_hostile_or_mistyped_recipe_is_refused(tmp_path, text, expected, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    code, out = edgetl("check", path)
    assert code == 2 and "recipe.yaml" in out and expected in out, out
    assert not (tmp_path / "PWNED").exists()


# --- files from other people ---------------------------------------------------------------------------------------

def test_a_checkpoint_with_code_in_its_pickle_is_refused_unrun(tmp_path, dataset):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"state_dict": {"weight": Payload()}}))
    code, out = check(tmp_path, dataset, model={"weights": str(evil)})
    assert code == 2 and "evil.pth" in out and "weights_only" in out, out
    assert not marker.exists()


def test_a_dataset_archive_escaping_its_folder_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/red/a.jpg", jpeg_bytes())
        zf.writestr("../../escaped.txt", "outside")
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGETL_CACHE", str(cache))
    path = tmp_path / "recipe.yaml"
    recipe = tiny_recipe(tmp_path, data={"dataset": "evil", "url": archive.as_uri()})
    del recipe["data"]["path"]
    path.write_text(yaml.safe_dump(recipe))
    code, out = edgetl("check", path)
    assert code == 2 and "Refusing to extract" in out and "../../escaped.txt" in out, out
    assert not list(tmp_path.rglob("escaped.txt")) and not (cache / "datasets" / "evil").exists()


def test_an_onnx_file_that_is_not_onnx_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    code, out = edgetl("bench", fake, "-n", 5)
    assert code == 2 and "model.onnx" in out, out


def test_a_baseline_from_another_version_is_refused(tmp_path, run_dir):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"schema": "edgetl-latency-baseline", "schema_version": 0, "edgetl_version": "0.0.1",
                               "rows": []}))
    model = next(run_dir.rglob("*.onnx"))
    code, out = edgetl("bench", model, "-n", 5, "--baseline", old)
    assert code == 2 and "old.json" in out and "0.0.1" in out, out


def test_an_image_that_breaks_after_the_scan_stops_training_with_one_line_from_a_worker(tmp_path, dataset):
    from edgetl.backbones import create_model
    from edgetl.data import Sample
    from edgetl.errors import DataError
    from edgetl.preprocess import Preprocessing
    from edgetl.recipe import TrainSection
    from edgetl.train import fine_tune

    images = sorted((dataset / "train").rglob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:200])  # e.g. overwritten by a sync tool mid-build
    created = create_model("efficientnet_lite0", 2)
    created.preprocessing = Preprocessing(resize=36, crop=32)
    samples = [Sample(str(p), i % 2) for i, p in enumerate(images)] + [Sample(str(broken), 0)]
    cfg = TrainSection(epochs=1, batch_size=3, warmup_epochs=0, probe_epochs=0)
    with pytest.raises(DataError) as caught:
        fine_tune(created, samples, np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, int), cfg, workers=2)
    message = str(caught.value)
    assert message.startswith(f"Cannot read image {broken}") and "Traceback" not in message and "\n" not in message


def test_a_loader_worker_killed_mid_epoch_is_one_clear_error(tmp_path, dataset, monkeypatch):
    import signal

    from edgetl import train
    from edgetl.backbones import create_model
    from edgetl.data import Sample
    from edgetl.errors import DataError
    from edgetl.preprocess import Preprocessing
    from edgetl.recipe import TrainSection

    main_process = os.getpid()

    def load_or_die(path):  # a worker's first image kills it, as the OOM killer would (workers are forked with this)
        assert os.getpid() != main_process  # workers=2: the main process never reads an image itself
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(train, "load_rgb", load_or_die)
    monkeypatch.setattr(train, "_worker_context", lambda workers: None)  # forked workers carry the patch
    created = create_model("efficientnet_lite0", 2)
    created.preprocessing = Preprocessing(resize=36, crop=32)
    samples = [Sample(str(p), i % 2) for i, p in enumerate(sorted((dataset / "train").rglob("*.jpg")))]
    cfg = TrainSection(epochs=1, batch_size=3, warmup_epochs=0, probe_epochs=0)
    with pytest.raises(DataError, match="data loader worker process died.*data.workers to 0"):
        train.fine_tune(created, samples, np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, int), cfg, workers=2)


# --- issue 19: resource exhaustion and the tracebacks that were left ----------------------------------------------

def _alias_bomb(levels: int) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *l{levels - 1}\ndata: {{dataset: x}}\n"


def test_a_yaml_alias_bomb_is_refused_at_load_with_a_short_message(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(_alias_bomb(7))  # 9^7 = 4.8 million values from 300 bytes; the message was 34.7 MB
    assert path.stat().st_size < 400
    code, out = edgetl("check", path)
    assert code == 2 and "recipe.yaml" in out and "alias" in out and len(out) < 1000, out[:2000]


def test_an_echoed_bad_value_is_cut_short(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata: {dataset: x}\ntrain: {epochs: [" + ", ".join(["many"] * 3000) + "]}\n")
    code, out = edgetl("check", path)
    assert code == 2 and "train.epochs" in out and len(out) < 1000, out[:2000]


def test_a_deeply_nested_recipe_value_is_refused(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ndata: {dataset: x}\ntrain: " + "[" * 3000 + "]" * 3000 + "\n")
    code, out = edgetl("check", path)
    assert code == 2 and "recipe.yaml" in out and "nested too deeply" in out, out


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntrain: {epochs: 2}\ndata: {dataset: x}\ntrain: {epochs: 9}\n")
    code, out = edgetl("check", path)
    assert code == 2 and "recipe.yaml" in out and "'train' is given twice, at lines 2 and 4" in out, out


def test_a_very_thin_image_is_a_bad_image_not_gigabytes(tmp_path, dataset):
    Image.new("RGB", (1, 10000)).save(dataset / "train" / "red" / "strip.png")  # 125 bytes; resized: 2.7 GB
    code, out = check(tmp_path, dataset)
    assert code == 2 and "strip.png" in out and "50:1" in out, out
    code, out = check(tmp_path, dataset, data={"skip_bad_images": True})
    assert code == 0 and "1 bad images skipped" in out, out


def test_the_device_copy_refuses_a_very_thin_image_too(tmp_path, run_dir, images):
    import subprocess
    import sys

    from edgetl.bundle import make_bundle

    Image.new("RGB", (5000, 1)).save(tmp_path / "strip.png")
    bundle = make_bundle(run_dir, "onnx", "int8", tmp_path / "b").folder
    result = subprocess.run([sys.executable, "-m", "edgetl_runner", "predict", str(tmp_path / "strip.png")],
                            cwd=bundle, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "strip.png" in result.stderr and "50:1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_weights_that_are_a_text_file_are_a_weights_error(tmp_path, dataset):
    (tmp_path / "hello.pth").write_text("hello")
    code, out = check(tmp_path, dataset, model={"weights": str(tmp_path / "hello.pth")})
    assert code == 2 and "hello.pth" in out and "model.weights" in out, out


def test_thread_counts_are_bounded_when_checked(tmp_path, dataset, run_dir):
    code, out = check(tmp_path, dataset, bench={"threads": [100000000000]})
    assert code == 2 and "bench.threads" in out, out
    code, out = edgetl("bench", next(run_dir.rglob("*.onnx")), "-n", 2, "-t", "100000000000")
    assert code == 2 and "thread counts" in out, out


def _onnx_model(path: Path, inputs: dict[str, int]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(name, dtype, [1, 3, 8, 8] if dtype == TensorProto.FLOAT else [1])
              for name, dtype in inputs.items()]
    out = helper.make_tensor_value_info("y", list(inputs.values())[0], None)
    node = helper.make_node("Identity", [next(iter(inputs))], ["y"])
    onnx.save(helper.make_model(helper.make_graph([node], "g", values, [out]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(("inputs", "says"), [({"text": 8}, "string"),  # TensorProto.STRING
                                              ({"a": 1, "b": 1}, "2 inputs (a, b)")])
def test_bench_refuses_a_model_it_cannot_feed(tmp_path, inputs, says):
    model = _onnx_model(tmp_path / "odd.onnx", inputs)
    code, out = edgetl("bench", model, "-n", 2, "--no-cold-start")
    assert code == 2 and "odd.onnx" in out and says in out, out


def test_a_stage_that_must_rerun_in_a_read_only_run_dir_is_a_storage_error(tmp_path, dataset):
    import subprocess

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(dataset, train={"epochs": 1})))
    assert edgetl("build", recipe, "--out", tmp_path / "run", "-q")[0] == 0
    recipe.write_text(yaml.safe_dump(tiny_recipe(dataset, train={"epochs": 1}, bench={"min_runs": 6})))
    if os.geteuid() == 0:  # root ignores permission bits: a read-only bind mount is what a read-only disk is
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "run"), str(tmp_path / "run")],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            unavailable(f"cannot make a read-only mount here: {mounted.stderr.strip()}")
        subprocess.run(["mount", "-o", "remount,ro,bind", str(tmp_path / "run")], check=True)
    else:
        for folder in [tmp_path / "run", *(p for p in (tmp_path / "run").rglob("*") if p.is_dir())]:
            folder.chmod(0o555)
    try:
        code, out = edgetl("build", recipe, "--out", tmp_path / "run", "-q")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(tmp_path / "run")], check=True)
        else:
            for folder in [tmp_path / "run", *(p for p in (tmp_path / "run").rglob("*") if p.is_dir())]:
                folder.chmod(0o755)
    assert code == 1 and "storage error" in out and "bench" in out and "read-only" in out, out


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(("file", "edit", "says"), [
    ("model.json", lambda m: "not json {", "model.json: cannot read it as JSON"),
    ("model.json", lambda m: [], "a JSON object is expected"),
    ("model.json", lambda m: m | {"labels": [1, 2, 3]}, "`labels` must be a non-empty list of strings"),
    ("summary.json", lambda s: [], "a JSON object is expected"),
    ("summary.json", lambda s: s | {"artifacts": ["onnx_int8"]}, "artifacts[0] must be an object"),
])
def test_bundle_of_a_damaged_run_is_one_message(run_copy, tmp_path, file, edit, says):
    path = run_copy / "export" / "onnx_int8" / "model.json" if file == "model.json" else run_copy / "summary.json"
    if file == "model.json":  # the build recorded this file's hash: re-record it, so only its content is at fault
        text = edit(json.loads(path.read_text()))
        path.write_text(text if isinstance(text, str) else json.dumps(text))
        from edgetl.fsutil import sha256_file

        _edit_json(run_copy / "summary.json", lambda s: {**s, "artifacts": [
            {**a, "files_sha256": {**a["files_sha256"], "export/onnx_int8/model.json": sha256_file(path)}}
            if a["name"] == "onnx_int8" else a for a in s["artifacts"]]})
    else:
        _edit_json(path, edit)
    code, out = edgetl("bundle", run_copy, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b")
    assert code == 2 and says in out, out


@pytest.mark.parametrize(("edit", "says"), [
    (lambda s: s | {"artifacts": [7]}, "artifacts[0] must be an object"),
    (lambda s: s | {"artifacts": [{**s["artifacts"][0], "val_accuracy": "96%"}]}, "artifacts[0].val_accuracy"),
    (lambda s: s | {"artifacts": [{**s["artifacts"][0], "latency_by_threads": {"1": {"p50": "fast"}}}]},
     "latency_by_threads.1.p50"),
    (lambda s: s | {"artifacts": [{**s["artifacts"][0], "latency_ms": [1, 2]}]}, "artifacts[0].latency_ms"),
    (lambda s: s | {"model": {"val_accuracy": "high"}}, "model.val_accuracy"),
])
@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_of_a_damaged_summary_are_one_message(run_copy, command, edit, says):
    _edit_json(run_copy / "summary.json", edit)
    code, out = edgetl(command, run_copy, *([run_copy] if command == "compare" else []))
    assert code == 2 and "summary.json" in out and says in out, out


def test_a_tar_whose_links_escape_once_resolved_is_called_malicious(tmp_path, monkeypatch):
    import tarfile

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        for name, target in (("train/up", ".."), ("train/up/out", "..")):  # train/up/out -> ../.. once resolved
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    monkeypatch.setenv("EDGETL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "recipe.yaml"
    recipe = tiny_recipe(tmp_path, data={"dataset": "evil", "url": archive.as_uri()})
    del recipe["data"]["path"]
    path.write_text(yaml.safe_dump(recipe))
    code, out = edgetl("check", path)
    assert code == 2 and "may be malicious" in out and "corrupt" not in out, out


def test_an_output_file_in_a_missing_folder_is_refused_not_created(tmp_path, run_dir):
    missing = tmp_path / "no" / "such" / "dir"
    code, out = edgetl("compare", run_dir, run_dir, "--json", missing / "x.json")
    assert code == 2 and "does not exist" in out, out
    code, out = edgetl("bench", next(run_dir.rglob("*.onnx")), "-n", 2, "--json", missing / "x.json")
    assert code == 2 and "does not exist" in out, out
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("url", ["ssh://", "http://host", "ssh://host:99999", "ssh://[::1", "ssh://host/path"])
def test_a_malformed_device_url_is_bad_input(url, run_dir):
    code, out = edgetl("bench", next(run_dir.rglob("*.onnx")), "-n", 2, "--device", url)
    assert code == 2 and "device address error" in out, out


def test_bench_of_a_model_that_loads_but_fails_to_run_is_one_message(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # a batch of one has 3*8*8 values, which do not split into 7 rows: found only when it runs (the batch is dynamic)
    shape = numpy_helper.from_array(np.array([7, -1], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    model = tmp_path / "bad_reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    code, out = edgetl("bench", model, "-n", 2, "--no-cold-start")
    assert code == 2 and "bad_reshape.onnx loads but fails to run in onnxruntime" in out, out
