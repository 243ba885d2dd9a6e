"""A run directory with real artifacts of a tiny CNN (ONNX fp32/int8, OpenVINO fp32, TFLite int8, each with the
model.json a build writes), for the bundle, deploy and remote-bench tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

LABELS = ["red", "green", "blue"]
PREP = {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear"}


def tiny_run(root: Path) -> Path:
    """`root` as an edgetl run directory holding onnx_int8 and tflite_int8 (plus onnx_fp32)."""
    from edgetl.artifact import write_model_json
    from edgetl.export import ExportRequest
    from edgetl.export.onnx import export_fp32, quantize_int8
    from edgetl.export.openvino import export as export_openvino
    from edgetl.export.tflite import export as export_tflite
    from edgetl.formats import FORMATS
    from edgetl.fsutil import sha256_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, len(LABELS))).eval()
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(16, 3, 32, 32)).astype(np.float32)
    metadata = {"edgetl_version": "test", "labels": json.dumps(LABELS), "preprocessing": json.dumps(PREP),
                "layout": "NCHW", "input_shape": json.dumps([None, 3, 32, 32]), "backbone": "tiny",
                "recipe_sha256": "0" * 64}
    export = root / "export"
    results = {}
    fp32 = export_fp32(model, ExportRequest(export / "onnx_fp32", "fp32", calibration[:2], metadata))
    results["onnx_fp32"] = fp32
    results["onnx_int8"] = quantize_int8(fp32.path, ExportRequest(export / "onnx_int8", "int8", calibration[:2],
                                                                  metadata, calibration=calibration))
    results["openvino_fp32"] = export_openvino(model, ExportRequest(export / "openvino_fp32", "fp32", calibration[:2],
                                                                    metadata, onnx_file=fp32.path))
    tflite_fp32 = export_tflite(model, ExportRequest(export / "tflite_fp32", "fp32", calibration[:2], metadata,
                                                     options={"layout": "nhwc"}, onnx_file=fp32.path))
    results["tflite_int8"] = export_tflite(model, ExportRequest(export / "tflite_int8", "int8", calibration[:2],
                                                                metadata, calibration=calibration,
                                                                options={"layout": "nhwc", "int8": "full"},
                                                                fp32_file=tflite_fp32.path))
    artifacts = []
    for name, result in results.items():
        fmt, precision = name.split("_")
        files = [*FORMATS[fmt].files(result.path), write_model_json(result, name, fmt, precision, metadata)]
        hashes = {str(f.relative_to(root)): sha256_file(f) for f in files}
        artifacts.append({"name": name, "format": fmt, "precision": precision,
                          "path": str(result.path.relative_to(root)), "sha256": sha256_file(result.path),
                          "size_bytes": sum(f.stat().st_size for f in files[:-1]), "files": list(hashes),
                          "files_sha256": hashes})
    (root / "summary.json").write_text(json.dumps({"status": "ok", "artifacts": artifacts}))
    (root / ".edgetl-run").write_text("{}")
    return root


def find_python(version: str) -> Path | None:
    """An interpreter for `version` ("3.9") on this machine: pythonX.Y on PATH, else a pyenv install; None if absent."""
    import glob
    import pwd
    import shutil
    import subprocess

    # The account's own home: the tests point HOME at a temporary folder.
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path(pwd.getpwuid(os.getuid()).pw_dir) / ".pyenv")
    candidates = [shutil.which(f"python{version}")] + sorted(
        glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return Path(candidate)
    return None


VENV_CACHE = Path(os.environ.get("EDGETL_RUNNER_VENVS", "/var/tmp/edgetl-runner-venvs"))


def runner_env(python: Path, packages: list[str]) -> Path:
    """A virtual environment of `python` holding only `packages` (what a bundle's requirements.txt asks for, with a
    numpy pin); returns its interpreter. Made once in VENV_CACHE, and reused while `pip freeze` there still lists
    what it listed when it was made. Raises RuntimeError with pip's last line when they do not install."""
    import hashlib
    import json
    import shutil
    import subprocess

    version = subprocess.run([str(python), "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout.strip()
    folder = VENV_CACHE / hashlib.sha256(json.dumps([version, sorted(packages)]).encode()).hexdigest()[:16]
    interpreter, marker = folder / "bin" / "python", folder / ".edgetl-ready"

    def freeze() -> str:
        return subprocess.run([str(interpreter), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                              timeout=120).stdout

    if marker.is_file() and interpreter.exists() and marker.read_text() == freeze():
        return interpreter
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([str(python), "-m", "venv", str(folder)], check=True, capture_output=True)
    pip = subprocess.run([str(interpreter), "-m", "pip", "install", "--quiet", "--only-binary=:all:", *packages],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"pip could not install {packages} for {python}: "
                           f"{(pip.stderr.strip().splitlines() or ['?'])[-1]}")
    marker.write_text(freeze())
    return interpreter


TFLITE_SUPPORT = "tflite-support==0.4.4"  # the TFLite Support library: its metadata reader (and writer)


def tflite_support_reader() -> Path:
    """A folder holding the tflite-support package, to put on PYTHONPATH in a subprocess: its MetadataDisplayer is the
    reader LiteRT and MediaPipe tooling uses. Installed with --no-deps into VENV_CACHE once: it pins protobuf < 4,
    which edgetl's environment cannot have, and its metadata reader needs only flatbuffers."""
    import subprocess
    import sys

    folder = VENV_CACHE / TFLITE_SUPPORT.replace("==", "-")
    marker = folder / ".edgetl-ready"
    if not marker.is_file():
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
                              "--target", str(folder), TFLITE_SUPPORT], capture_output=True, text=True, timeout=900)
        if pip.returncode != 0:
            raise RuntimeError(f"pip could not install {TFLITE_SUPPORT}: "
                               f"{(pip.stderr.strip().splitlines() or ['?'])[-1]}")
        marker.write_text(TFLITE_SUPPORT)
    return folder
