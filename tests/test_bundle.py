"""Deploy bundles on this machine: contents, the torch-free runner's predictions against edgetl's own runners,
its bench JSON, the zip, and errors. (The same bundles on an emulated arm64 device: tests/test_arm64.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from device_fixtures import LABELS, PREP

from conftest import unavailable
from edgetl.bundle import make_bundle
from edgetl.cli import main
from edgetl.errors import BundleError

# The device has no torch and no edgetl: the runner must not import either.
BLOCK = textwrap.dedent("""
    import importlib.abc, runpy, sys
    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "edgetl"}:
                raise ImportError(f"{name} is not on the device")
    sys.meta_path.insert(0, Blocked())
    sys.argv = ["edgetl_runner", *sys.argv[1:]]
    runpy.run_module("edgetl_runner", run_name="__main__", alter_sys=True)
""")


def device_run(bundle, *args):
    return subprocess.run([sys.executable, "-c", BLOCK, *map(str, args)], cwd=bundle, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_bundle_predicts_like_edgetl_without_torch_or_edgetl(run_dir, images, tmp_path, fmt):
    from edgetl.preprocess import Preprocessing, preprocess_files
    from edgetl.runtime import load_runner

    result = CliRunner().invoke(main, ["bundle", str(run_dir), "--format", fmt, "--precision", "int8", "-o",
                                       str(tmp_path / "bundle"), "--zip"])
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "bundle"
    suffix = ".tflite" if fmt == "tflite" else ".onnx"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [".edgetl-bundle", "README.md", "edgetl_runner", "model.json", f"model{suffix}", "requirements.txt"])
    requirements = (bundle / "requirements.txt").read_text().split()
    assert requirements[:2] == ["numpy>=1.21", "Pillow>=9"] and len(requirements) == 3
    assert requirements[2].startswith("ai-edge-litert" if fmt == "tflite" else "onnxruntime")
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["file"] == f"model{suffix}" and meta["labels"] == LABELS and meta["preprocessing"] == PREP
    built = json.loads((run_dir / "export" / f"{fmt}_int8" / "model.json").read_text())
    io = ("input_dtype", "input_quantization", "output_dtype", "output_quantization")
    assert {k: meta[k] for k in io} == {k: built[k] for k in io}  # the bundle keeps the measured I/O tensors
    assert meta["input_dtype"] == ("int8" if fmt == "tflite" else "float32")
    with zipfile.ZipFile(tmp_path / "bundle.zip") as archive:
        assert f"model{suffix}" in archive.namelist() and "edgetl_runner/__main__.py" in archive.namelist()
    # What edgetl itself predicts for these images with this very file...
    expected = load_runner(run_dir / "export" / f"{fmt}_int8" / f"model{suffix}").run(
        preprocess_files([str(p) for p in images], Preprocessing.from_json(PREP)))
    # ... the bundle's runner predicts on "the device" (no torch, no edgetl importable).
    out = device_run(bundle, "predict", "--json", "--threads", "1", *images)
    assert out.returncode == 0, out.stderr
    predictions = json.loads(out.stdout)
    assert [p["top"][0]["label"] for p in predictions] == [LABELS[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([p["logits"] for p in predictions], expected, atol=1e-5)
    assert all(abs(sum(t["probability"] for t in p["top"]) - 1) < 1e-5 for p in predictions)  # 3 labels, top-3
    text = device_run(bundle, "predict", "-k", "1", images[0])
    assert text.returncode == 0 and text.stdout.startswith(f"{images[0]}: {LABELS[expected[0].argmax()]} ")
    bench = device_run(bundle, "bench", "--runs", "7", "--warmup", "1")
    assert bench.returncode == 0, bench.stderr
    row = json.loads(bench.stdout)
    assert row["runs"] == 7 and row["format"] == fmt and row["precision"] == "int8"
    assert 0 < row["min_ms"] <= row["p50_ms"] <= row["max_ms"] and row["cold_start_ms"] > 0
    assert row["device"]["machine"] == "x86_64" and row["device"]["runtimes"]
    info = device_run(bundle, "info")
    assert info.returncode == 0 and json.loads(info.stdout)["model"] == meta, info.stderr


def test_runner_refuses_a_damaged_model_json_in_one_line(run_dir, tmp_path):
    bundle = make_bundle(run_dir, "onnx", "int8", tmp_path / "b").folder
    meta = json.loads((bundle / "model.json").read_text())
    (bundle / "model.json").write_text(json.dumps({**meta, "labels": "red green blue"}))
    out = device_run(bundle, "predict", "missing.jpg")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "model.json: `labels` must be a non-empty list of strings" in out.stderr


def test_minimal_bundle_of_a_model_file_for_a_remote_bench(run_dir, tmp_path):
    """bundle_model_file: a model file edgetl did not export gets a stub model.json (only what is known) whose bench
    runs on the device; one edgetl exported keeps its model.json, measured I/O tensors included."""
    import shutil

    from edgetl.bundle import bundle_model_file

    (tmp_path / "foreign").mkdir()
    shutil.copyfile(run_dir / "export" / "onnx_fp32" / "model.onnx", tmp_path / "foreign" / "net.onnx")
    stub = bundle_model_file(tmp_path / "foreign" / "net.onnx", tmp_path / "stub")
    meta = json.loads((stub / "model.json").read_text())
    assert (meta["name"], meta["format"], meta["file"], meta["files"]) == ("net", "onnx", "model.onnx", ["model.onnx"])
    assert meta["labels"] is None and meta["input_dtype"] is None and meta["precision"] is None
    bench = device_run(stub, "bench", "--runs", "3", "--warmup", "1")
    assert bench.returncode == 0 and json.loads(bench.stdout)["name"] == "net", bench.stderr
    made = bundle_model_file(run_dir / "export" / "tflite_int8" / "model.tflite", tmp_path / "made", "x", "int8")
    meta = json.loads((made / "model.json").read_text())
    built = json.loads((run_dir / "export" / "tflite_int8" / "model.json").read_text())
    assert meta == {**built, "name": "x"}


def test_runner_errors_are_one_line(run_dir, tmp_path):
    bundle = make_bundle(run_dir, "onnx", "int8", tmp_path / "b").folder
    (tmp_path / "not-an-image.jpg").write_text("hello")
    out = device_run(bundle, "predict", tmp_path / "not-an-image.jpg")  # unreadable: said, exit 1 (docs/predict.md)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"edgetl_runner: data error: Cannot read image {tmp_path / 'not-an-image.jpg'}: not an image Pillow can read "
        "(unrecognised or corrupt header)."]
    missing = device_run(bundle, "predict", tmp_path / "nothere.jpg")  # a path that is not there: bad input, exit 2
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "nothere.jpg does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_bundle_errors_name_what_is_missing(run_dir, tmp_path):
    with pytest.raises(BundleError, match="has no openvino_int8 artifact .*onnx_fp32, onnx_int8, openvino_fp32, tflite"):
        make_bundle(run_dir, "openvino", "int8", tmp_path / "b")
    with pytest.raises(BundleError, match="not an edgetl run directory"):
        make_bundle(tmp_path, "onnx", "int8", tmp_path / "b")
    result = CliRunner().invoke(main, ["bundle", str(run_dir), "--format", "coreml", "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "unknown format 'coreml'" in result.output and not (tmp_path / "b").exists()


def test_runner_is_python39_syntax_and_imports_fast(run_dir, tmp_path):
    import ast

    bundle = make_bundle(run_dir, "tflite", "int8", tmp_path / "b").folder
    for source in (bundle / "edgetl_runner").rglob("*.py"):
        ast.parse(source.read_text(), feature_version=(3, 9))  # SyntaxError if it needs a newer Python
        assert "edgetl." not in source.read_text().replace("edgetl_runner.", "")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import edgetl_runner.__main__"], cwd=bundle,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # -X importtime names every module imported, one per line: "import time: self | cumulative | package.module"
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in out.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert {"edgetl_runner", "json"} <= imported  # the parse saw the imports
    heavy = {"torch", "torchvision", "timm", "jax", "tensorflow", "matplotlib", "pydantic", "yaml", "scipy", "onnx",
             "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "edgetl", "PIL"} & imported
    assert not heavy, f"importing the runner loads {sorted(heavy)}: runtimes and Pillow are imported when used"


@pytest.mark.parametrize(("version", "numpy"), [("3.9", "numpy<2"), ("3.12", "numpy>=2")])
def test_runner_on_the_oldest_and_newest_python_and_numpy(run_dir, images, tmp_path, version, numpy):
    """The bundle's runner in a fresh venv of another Python holding only numpy, Pillow and the runtimes (as a device
    would): same predictions as edgetl here, for the ONNX and TFLite int8 bundles."""
    from device_fixtures import find_python, runner_env

    from edgetl.preprocess import Preprocessing, preprocess_files
    from edgetl.runtime import load_runner

    python = find_python(version)
    if python is None:
        unavailable(f"no Python {version} on this machine (pythonX.Y on PATH or a pyenv install)")
    interpreter = runner_env(python, [numpy, "pillow", "onnxruntime", "ai-edge-litert"])
    for fmt, suffix in (("onnx", ".onnx"), ("tflite", ".tflite")):
        bundle = make_bundle(run_dir, fmt, "int8", tmp_path / fmt).folder
        out = subprocess.run([str(interpreter), "-m", "edgetl_runner", "predict", "--json", *map(str, images)],
                             cwd=bundle, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        expected = load_runner(run_dir / "export" / f"{fmt}_int8" / f"model{suffix}").run(
            preprocess_files([str(p) for p in images], Preprocessing.from_json(PREP)))
        np.testing.assert_allclose([p["logits"] for p in json.loads(out.stdout)], expected, atol=1e-5)
        timed = subprocess.run([str(interpreter), "-m", "edgetl_runner", "bench", "--runs", "3", "--rounds", "2",
                                "--warmup", "1"], cwd=bundle, capture_output=True, text=True, timeout=120)
        assert timed.returncode == 0 and len(json.loads(timed.stdout)["trial_p50_ms"]) == 2, timed.stderr[-500:]
        info = json.loads(subprocess.run([str(interpreter), "-m", "edgetl_runner", "info"], cwd=bundle,
                                         capture_output=True, text=True, timeout=60, check=True).stdout)
        assert info["device"]["python"].startswith(version + ".")
        assert info["device"]["runtimes"]["numpy"].split(".")[0] == ("1" if numpy == "numpy<2" else "2")
