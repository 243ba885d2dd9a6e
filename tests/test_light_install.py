"""The light install (`pip install edgetl`, no extra) in a fresh virtual environment: numpy, Pillow, click, rich,
PyYAML and onnxruntime, no torch; `edgetl predict`, `edgetl bench` and its gate work there, and `edgetl build` /
`edgetl.build` name the `train` extra instead of a traceback. The environment's dependencies are installed once
into the runner-venv cache (tests/device_fixtures.py); edgetl itself is built from this checkout every time."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib

import pytest
from device_fixtures import LABELS, VENV_CACHE

from conftest import REPO, make_image_folder, unavailable

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _light_venv(tmp_path_factory):
    dependencies = PYPROJECT["project"]["dependencies"]
    folder = VENV_CACHE / ("light-" + hashlib.sha256(json.dumps([sys.version, dependencies]).encode()).hexdigest()[:16])
    python, marker = folder / "bin" / "python", folder / ".edgetl-ready"
    if not (marker.is_file() and python.exists()):
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:", "setuptools>=68",
                              *dependencies], capture_output=True, text=True, timeout=900)
        if pip.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            unavailable(f"the light install's dependencies do not install: {pip.stderr.strip()[-300:]}")
        marker.write_text("ready")
    source = tmp_path_factory.mktemp("source")  # never build inside the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "edgetl", source / "edgetl", ignore=shutil.ignore_patterns("__pycache__"))
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--force-reinstall", str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    return _light_venv(tmp_path_factory)


def run(light, *args, cwd=None):
    return subprocess.run([str(light / "bin" / args[0]), *map(str, args[1:])], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_the_light_install_has_no_torch_and_names_what_it_installs(light):
    installed = run(light, "python", "-m", "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"numpy", "pillow", "click", "rich", "onnxruntime", "edgetl"} <= names
    assert not names & {"torch", "torchvision", "timm", "pydantic", "openvino", "onnx", "matplotlib", "scipy"}


def test_predict_and_the_gate_run_on_the_light_install(light, run_dir, tmp_path):
    images = make_image_folder(tmp_path / "photos", {"x": 2}, size=40)
    model = run_dir / "export" / "onnx_int8" / "model.onnx"
    predicted = run(light, "edgetl", "predict", model.parent, images, "--json", "-")
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    assert len(rows) == 2 and all(r["label"] in LABELS for r in rows)
    api = run(light, "python", "-c", f"import edgetl, sys; print(edgetl.load({str(model)!r}).predict("
                                     f"{rows[0]['image']!r}).label); print('torch' in sys.modules)")
    assert api.stdout.split() == [rows[0]["label"], "False"], api.stderr
    for fmt, name in (("openvino", "model.xml"), ("tflite", "model.tflite")):  # runtimes the light install lacks
        missing = run(light, "edgetl", "predict", run_dir / "export" / f"{fmt}_fp32" / name, images)
        assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
        assert "missing runtime" in missing.stderr and f"pip install 'edgetl[{fmt}]'" in missing.stderr
    quick = ["--runs", "10", "--repeats", "5", "--warmup", "2", "--no-cold-start"]
    saved = run(light, "edgetl", "bench", model, *quick, "--save-baseline", tmp_path / "base.json")
    assert saved.returncode == 0, saved.stderr
    gated = run(light, "edgetl", "bench", model, *quick, "--baseline", tmp_path / "base.json", "--max-regression",
                "200%", "--json", tmp_path / "rows.json")
    assert gated.returncode == 0, gated.stderr
    assert json.loads((tmp_path / "rows.json").read_text())[0]["gate"]["mode"] == "interleaved"


def test_the_light_install_asked_to_train_names_the_extra(light, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {path: data}\n")
    for command in ("build", "check"):
        result = run(light, "edgetl", command, recipe)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"edgetl: training stack missing: `edgetl {command}` needs the training stack" in result.stderr
        assert "pip install 'edgetl[train]'" in result.stderr
    api = run(light, "python", "-c", f"import edgetl\ntry:\n    edgetl.build({str(recipe)!r})\n"
                                     "except edgetl.errors.TrainingStackMissingError as exc:\n    print(exc)")
    assert "edgetl.build needs the training stack" in api.stdout, api.stderr
