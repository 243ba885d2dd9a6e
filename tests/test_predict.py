"""`edgetl predict` and `edgetl.load(...).predict(...)` on real exported files (the tiny run of device_fixtures):
the answers are edgetl's own runtime on edgetl's preprocessing, an unreadable image is reported and skipped, a model
file alone is read from the metadata embedded in it, and neither needs torch."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from device_fixtures import LABELS, PREP
from PIL import Image

from conftest import REPO, make_image_folder, run_cli

MODEL_FILES = {"onnx_int8": ["model.onnx"], "openvino_fp32": ["model.xml", "model.bin"],
               "tflite_int8": ["model.tflite"]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of 6 JPEGs in two subfolders, and a corrupt .png among them."""
    root = make_image_folder(tmp_path_factory.mktemp("photos"), {"red": 3, "blue": 3}, size=40, seed=4)
    (root / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "blue" / "._red_000.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # hidden: not an image to classify
    return root


def jpgs(root):
    """The photos' JPEGs a user would call images (not the hidden AppleDouble file)."""
    return sorted(p for p in root.rglob("*.jpg") if not p.name.startswith("."))


def expected_logits(run_dir, artifact: str, paths) -> np.ndarray:
    """What edgetl's verify path computes for these images with this file: its runtime on preprocess_files."""
    from edgetl.preprocess import Preprocessing, preprocess_files
    from edgetl.runtime import load_runner

    return load_runner(run_dir / "export" / artifact / MODEL_FILES[artifact][0]).run(
        preprocess_files([str(p) for p in paths], Preprocessing.from_json(PREP)))


def test_predict_a_folder_keeps_going_past_a_bad_image_and_writes_json_and_csv(run_dir, photos, tmp_path):
    good = jpgs(photos)
    code, output = run_cli("predict", run_dir / "export" / "onnx_int8", photos, "-k", "2", "--threads", "1",
                           "--json", tmp_path / "p.json", "--csv", tmp_path / "p.csv")
    assert code == 1, output  # documented: an image could not be read, the others were classified
    assert f"Cannot read image {photos / 'blue' / 'broken.png'}: not an image Pillow can read" in output
    assert "1 of 7 images could not be read; the others were classified." in output
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [r["image"] for r in rows] == sorted(str(p) for p in [*good, photos / "blue" / "broken.png"])
    by_image = {r["image"]: r for r in rows}
    expected = expected_logits(run_dir, "onnx_int8", good)
    np.testing.assert_allclose([by_image[str(p)]["logits"] for p in good], expected, atol=1e-5)
    assert [by_image[str(p)]["label"] for p in good] == [LABELS[i] for i in expected.argmax(1)]
    assert all(len(by_image[str(p)]["top"]) == 2 and by_image[str(p)]["error"] is None for p in good)
    broken = by_image[str(photos / "blue" / "broken.png")]
    assert broken["label"] is None and broken["top"] == [] and "broken.png" in broken["error"]
    for path in good:  # one text line per classified image: the path, then label probability pairs
        row = by_image[str(path)]
        assert f"{path}: {row['top'][0]['label']} {row['top'][0]['probability']:.3f}, {row['top'][1]['label']}" \
            in output
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(table[0]) == ["image", "label", "probability", "label_2", "probability_2", "error"]
    assert [(r["image"], r["label"]) for r in table] == [(r["image"], r["label"] or "") for r in rows]
    assert [r["error"] != "" for r in table] == [r["error"] is not None for r in rows]


def test_predict_a_run_directory_uses_its_chosen_artifact_and_stdout_json(run_dir, photos, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["chosen"] = "openvino_fp32"
    (run / "summary.json").write_text(json.dumps(summary))
    image = jpgs(photos)[0]
    code, output = run_cli("predict", run, image, "--json", "-")
    assert code == 0, output
    assert "openvino_fp32/model.xml (3 labels" in output
    rows = json.loads(output.splitlines()[-1])
    np.testing.assert_allclose(rows[0]["logits"], expected_logits(run, "openvino_fp32", [image])[0], atol=1e-4)


def test_load_takes_a_path_a_pil_image_and_a_camera_frame_alike(run_dir, photos, tmp_path, monkeypatch):
    import edgetl

    classifier = edgetl.load(run_dir / "export" / "tflite_int8" / "model.json", threads=1)
    assert classifier.labels == tuple(LABELS) and classifier.path.name == "model.tflite"
    path = jpgs(photos)[0]
    from_path = classifier.predict(path, top_k=3)
    image = Image.open(path)
    frame = np.asarray(image.convert("RGB"))
    assert classifier.predict(image) == from_path == classifier.predict(frame)
    expected = expected_logits(run_dir, "tflite_int8", [path])[0]
    assert from_path.label == LABELS[int(expected.argmax())] and from_path.index == int(expected.argmax())
    np.testing.assert_allclose(from_path.logits, expected, atol=1e-5)
    assert [t[0] for t in from_path.top] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]
    assert abs(sum(t[2] for t in from_path.top) - 1) < 1e-5
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])  # opaque RGBA: the same picture
    assert classifier.predict(rgba) == from_path
    from edgetl.errors import DataError

    with pytest.raises(DataError, match=r"H×W×3 RGB uint8 .* got shape \(40, 48, 3\) of float32.*frame\[\.\.\., ::-1\]"):
        classifier.predict(frame.astype(np.float32))
    with pytest.raises(DataError, match="Cannot classify a bytes"):
        classifier.predict(b"not an image")
    # In-memory images meet the limits a file does: a 1×10000 strip, and a bomb opened but not yet decoded.
    with pytest.raises(DataError, match=r"Cannot use the RGB image: 1x10000 pixels is more than"):
        classifier.predict(np.zeros((10000, 1, 3), np.uint8))
    Image.new("RGB", (3000, 3000)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000_000)  # Pillow only warns below twice it; edgetl refuses
    with pytest.warns(Image.DecompressionBombWarning):
        opened = Image.open(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"Cannot use the RGB image: decompression bomb refused: 3000x3000"):
        classifier.predict(opened)


@pytest.mark.parametrize("artifact", list(MODEL_FILES))
def test_a_model_file_alone_is_read_from_its_embedded_metadata(run_dir, photos, tmp_path, artifact, monkeypatch):
    import onnxruntime

    import edgetl

    for name in MODEL_FILES[artifact]:  # the model file(s) without the model.json beside them
        shutil.copy(run_dir / "export" / artifact / name, tmp_path / name)
    sessions = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: sessions.append(a[0]) or real(*a, **k))
    classifier = edgetl.load(tmp_path / MODEL_FILES[artifact][0], threads=1)
    # an ONNX file's metadata comes from the session that runs it: the file is not opened (and optimized) twice
    assert sessions == ([str(tmp_path / "model.onnx")] if artifact.startswith("onnx") else [])
    assert classifier.labels == tuple(LABELS) and classifier.preprocessing.crop == PREP["crop"]
    path = jpgs(photos)[1]
    np.testing.assert_allclose(classifier.predict(path).logits, expected_logits(run_dir, artifact, [path])[0],
                               atol=1e-4)


def test_models_edgetl_cannot_describe_are_one_clear_error(run_dir, photos, tmp_path):
    import onnx

    plain = onnx.load(str(run_dir / "export" / "onnx_fp32" / "model.onnx"))
    del plain.metadata_props[:]  # a model from elsewhere: no labels, no preprocessing
    onnx.save(plain, str(tmp_path / "foreign.onnx"))
    code, output = run_cli("predict", tmp_path / "foreign.onnx", photos)
    assert code == 2 and f"{tmp_path / 'foreign.onnx'} has no model.json beside it and no edgetl metadata" in output
    (tmp_path / "empty").mkdir()
    code, output = run_cli("predict", tmp_path / "empty", photos)
    assert code == 2 and "is a folder with no model.json or summary.json" in output
    code, output = run_cli("predict", run_dir, tmp_path / "nothere.jpg")
    assert code == 2 and f"{tmp_path / 'nothere.jpg'} does not exist" in output
    code, output = run_cli("predict", run_dir, tmp_path / "empty")
    assert code == 2 and "holds no image files" in output
    code, output = run_cli("predict", run_dir, photos, "--json", "-", "--csv", "-")
    assert code == 2 and "--json - and --csv - both write to stdout" in output


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "timm", "pydantic"}:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, NoTorch())
    from edgetl.cli import main
    main(sys.argv[1:])
""")


def test_predict_runs_without_torch(run_dir, photos):
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", str(run_dir), str(photos / "red"),
                             "--json", "-"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)  # the run records no chosen artifact: tflite int8, said so nowhere else
    assert len(rows) == 3 and all(r["label"] in LABELS for r in rows)


def test_the_bundle_runner_classifies_a_folder_and_reports_a_bad_image(run_dir, photos, tmp_path):
    from test_bundle import device_run

    code, output = run_cli("bundle", run_dir, "--format", "onnx", "--precision", "int8", "-o", tmp_path / "b")
    assert code == 0, output
    out = device_run(tmp_path / "b", "predict", "--json", "--threads", "1", photos)
    assert out.returncode == 1 and "broken.png" in out.stderr  # no torch, no edgetl on "the device"
    rows = json.loads(out.stdout)
    good = jpgs(photos)
    assert [r["label"] for r in rows if not r["error"]] == [LABELS[i] for i in
                                                            expected_logits(run_dir, "onnx_int8", good).argmax(1)]
