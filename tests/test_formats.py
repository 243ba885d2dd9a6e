"""Every format of the table with its real exporter and runtime on a tiny model: export -> load -> outputs match
torch within a tolerance per precision; metadata in the file; layouts; the runtime fallback; errors."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_export_runtime import TinyNet

from conftest import unavailable
from edgetl import formats
from edgetl.errors import ModelFileError, RuntimeMissingError
from edgetl.export import ExportRequest
from edgetl.export.onnx import export_fp32
from edgetl.runtime import load_runner

# Largest |logit diff| vs torch, as a share of the largest |logit|: fp32 is exact up to float rounding, fp16 weights
# lose ~3 decimal digits, int8 is a real approximation.
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.15}
PREPROCESSING = {"resize": 36, "crop": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "interpolation": "bilinear"}
METADATA = {"labels": json.dumps(["a", "b", "c"]), "edgetl_version": "test", "layout": "NCHW",
            "preprocessing": json.dumps(PREPROCESSING)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    inputs = np.random.default_rng(0).normal(size=(24, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
    out = tmp_path_factory.mktemp("formats")
    onnx_fp32 = export_fp32(model, ExportRequest(out / "onnx_fp32", "fp32", inputs[:2], METADATA)).path
    return {"model": model, "inputs": inputs, "reference": reference, "out": out, "onnx": onnx_fp32, "files": {}}


def export(tiny, fmt: str, precision: str, **options):
    """Export through the format table's exporter module (fp16/int8 from the same format's fp32 file)."""
    key = (fmt, precision, tuple(sorted(options.items())))
    if key not in tiny["files"]:
        exporter = importlib.import_module(formats.FORMATS[fmt].exporter)
        fp32 = None if precision == "fp32" else export(tiny, fmt, "fp32", **options).path
        name = f"{fmt}_{precision}_{'_'.join(f'{k}-{v}' for k, v in sorted(options.items()))}"
        request = ExportRequest(tiny["out"] / name, precision, tiny["inputs"][:2], {**METADATA, "precision": precision},
                                calibration=tiny["inputs"][:16], options=options, fp32_file=fp32,
                                onnx_file=tiny["onnx"])
        tiny["files"][key] = exporter.export(tiny["model"], request)
    return tiny["files"][key]


@pytest.mark.parametrize("precision", formats.PRECISIONS)
@pytest.mark.parametrize("fmt", list(formats.FORMATS))
def test_export_load_and_match_torch(tiny, fmt, precision):
    result = export(tiny, fmt, precision)
    assert result.path.suffix == formats.FORMATS[fmt].suffix
    runner = load_runner(result.path, threads=1)
    assert runner.input_shape[1:] == (3, 32, 32)
    scale = np.abs(tiny["reference"]).max()
    for batch in (1, 5, 24):  # the batch dimension is dynamic (or resized) in every runtime
        out = runner.run(tiny["inputs"][:batch])
        assert out.shape == (batch, 3)
        error = np.abs(out - tiny["reference"][:batch]).max() / scale
        assert error <= TOLERANCE[precision], f"{fmt} {precision}: relative error {error:.2e}"
    if precision != "fp32":  # really converted, not a copy of the fp32 model
        assert not np.allclose(runner.run(tiny["inputs"]), tiny["reference"], atol=1e-7, rtol=0)
    if precision == "int8":
        assert result.details["quantization"] == "ptq"


def test_openvino_metadata_is_in_rt_info_and_weights_beside_the_xml(tiny):
    import openvino as ov

    for precision in ("fp32", "int8"):
        result = export(tiny, "openvino", precision)
        assert result.path.with_suffix(".bin").is_file()
        model = ov.Core().read_model(str(result.path))
        assert json.loads(model.get_rt_info(["edgetl", "labels"]).astype(str)) == ["a", "b", "c"]
        assert model.get_rt_info(["edgetl", "precision"]).astype(str) == precision
    assert export(tiny, "openvino", "int8").details["calibration_images"] == 16


def test_tflite_metadata_layout_and_int8_io(tiny):
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export.tflite import read_metadata

    for precision in ("fp32", "fp16", "int8"):
        path = export(tiny, "tflite", precision).path
        meta = read_metadata(path)
        assert meta["layout"] == "NHWC" and meta["precision"] == precision
        assert json.loads(meta["labels"]) == ["a", "b", "c"]
        details = Interpreter(model_path=str(path)).get_input_details()[0]
        assert list(details["shape"]) == [1, 32, 32, 3]
        assert details["dtype"] == (np.int8 if precision == "int8" else np.float32)


READ_STANDARD_METADATA = """
import json, sys
from tensorflow_lite_support.metadata.python import metadata
reader = metadata.MetadataDisplayer.with_model_file(sys.argv[1])
print(json.dumps({"metadata": json.loads(reader.get_metadata_json()), "files": reader.get_packed_associated_file_list(),
                  "labels": reader.get_associated_file_buffer("labels.txt").decode()}))
"""


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tflite_files_carry_the_standard_metadata_that_its_readers_read(tiny, precision):
    """Labels and normalization as the TFLite Support / MediaPipe metadata reader sees them (run in a subprocess
    with only that package added: it cannot be installed beside edgetl)."""
    from device_fixtures import tflite_support_reader

    try:
        reader = tflite_support_reader()
    except RuntimeError as exc:
        unavailable(str(exc))
    path = export(tiny, "tflite", precision).path
    result = subprocess.run([sys.executable, "-c", READ_STANDARD_METADATA, str(path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(reader)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    read = json.loads(result.stdout)
    assert read["files"] == ["labels.txt"] and read["labels"] == "a\nb\nc\n"
    graph = read["metadata"]["subgraph_metadata"][0]
    image, logits = graph["input_tensor_metadata"][0], graph["output_tensor_metadata"][0]
    assert image["content"] == {"content_properties_type": "ImageProperties",
                                "content_properties": {"color_space": "RGB"}}
    normalization = image["process_units"][0]
    assert normalization["options_type"] == "NormalizationOptions"
    # edgetl normalizes (pixel / 255 - mean) / std: on 0-255 pixels that is mean x 255, std x 255
    np.testing.assert_allclose(normalization["options"]["mean"], np.multiply(PREPROCESSING["mean"], 255), rtol=1e-6)
    np.testing.assert_allclose(normalization["options"]["std"], np.multiply(PREPROCESSING["std"], 255), rtol=1e-6)
    assert logits["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
                                           "description": "The class of each output logit, one per line."}]
    assert read["metadata"]["min_parser_version"] == "1.0.0"
    # the packed labels file changes nothing the runtime sees
    np.testing.assert_allclose(load_runner(path).run(tiny["inputs"]), tiny["reference"],
                               atol=TOLERANCE[precision] * np.abs(tiny["reference"]).max())


def test_tflite_nchw_layout_and_dynamic_range_int8(tiny):
    from ai_edge_litert.interpreter import Interpreter

    nchw = export(tiny, "tflite", "fp32", layout="nchw")
    assert list(Interpreter(model_path=str(nchw.path)).get_input_details()[0]["shape"]) == [1, 3, 32, 32]
    from ai_edge_litert.tools import flatbuffer_utils

    entries = [m.name.decode() if isinstance(m.name, bytes) else m.name
               for m in flatbuffer_utils.read_model(str(nchw.path)).metadata]
    assert "edgetl" in entries and "TFLITE_METADATA" not in entries  # its readers expect NHWC images
    np.testing.assert_allclose(load_runner(nchw.path).run(tiny["inputs"]), tiny["reference"], atol=1e-4)
    dynamic = export(tiny, "tflite", "int8", int8="dynamic")
    assert dynamic.details["int8"] == "dynamic"
    assert Interpreter(model_path=str(dynamic.path)).get_input_details()[0]["dtype"] == np.float32
    out = load_runner(dynamic.path).run(tiny["inputs"])
    assert np.abs(out - tiny["reference"]).max() <= TOLERANCE["int8"] * np.abs(tiny["reference"]).max()


def test_tflite_runs_with_the_fallback_runtime_when_the_first_is_missing(tiny, monkeypatch):
    table = formats.FORMATS["tflite"]
    # As on a device with only tflite_runtime: the preferred import fails, the next one in the table is used.
    monkeypatch.setitem(formats.FORMATS, "tflite", dataclasses.replace(
        table, runtime_imports=("edgetl_no_such_runtime", "ai_edge_litert.interpreter")))
    runner = load_runner(export(tiny, "tflite", "fp32").path)
    np.testing.assert_allclose(runner.run(tiny["inputs"][:2]), tiny["reference"][:2], atol=1e-4)


def test_a_missing_runtime_names_the_package_to_install(tiny, monkeypatch):
    monkeypatch.setitem(formats.FORMATS, "openvino", dataclasses.replace(
        formats.FORMATS["openvino"], runtime_imports=("edgetl_no_such_runtime",)))
    with pytest.raises(RuntimeMissingError, match=r"needs the Python package 'openvino'.*pip install openvino` "
                       r"\(or edgetl with it: `pip install 'edgetl\[openvino\]'`\)"):
        load_runner(export(tiny, "openvino", "fp32").path)


def test_broken_files_are_clear_errors(tmp_path, tiny):
    xml = tmp_path / "model.xml"
    xml.write_text((export(tiny, "openvino", "fp32").path).read_text())
    with pytest.raises(ModelFileError, match=r"model\.bin does not exist \(the openvino model model\.xml needs it\)"):
        load_runner(xml)
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelFileError, match=r"model\.tflite could not be loaded by the TFLite interpreter"):
        load_runner(bogus)


class Outlier(torch.nn.Module):
    """A conv whose output has one channel ~1000× larger than the rest (and unused downstream): per-tensor int8 of
    that activation rounds every other channel to zero, so plain post-training int8 fails whatever the calibration."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1), \
            torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(torch.relu(self.stem(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    torch.manual_seed(0)
    labels = np.arange(60) % 3
    images = np.random.default_rng(0).normal(size=(60, 3, 16, 16)).astype(np.float32)
    images[np.arange(60), labels] += 1.5  # class k: colour channel k is brighter
    model = Outlier()
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels)).backward()
        optimizer.step()
    with torch.no_grad():  # the outlier channel: huge, and ignored by the next layer (fp32 outputs unchanged)
        model.stem.weight[0] *= 1000
        model.stem.bias[0] = 0
        model.mix.weight[:, 0] = 0
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(images)).argmax(1).numpy() == labels).mean() * 100)
    out = tmp_path_factory.mktemp("outlier")
    onnx_fp32 = export_fp32(model, ExportRequest(out / "onnx_fp32", "fp32", images[:2], {})).path
    return {"model": model, "images": images, "labels": labels, "accuracy": accuracy, "out": out, "onnx": onnx_fp32}


@pytest.mark.parametrize(("fmt", "fixing_step"), [("onnx", "exclude_sensitive (1)"),
                                                  ("openvino", "exclude_sensitive (nncf accuracy control)")])
def test_accuracy_aware_retry_fixes_a_model_built_to_fail_plain_int8(outlier, fmt, fixing_step):
    from edgetl.evaluate import runner_logits, top1_accuracy
    from edgetl.export.accuracy import quantize_within_budget

    assert outlier["accuracy"] >= 95
    exporter = importlib.import_module(formats.FORMATS[fmt].exporter)
    images, labels = outlier["images"], outlier["labels"]
    fp32 = outlier["onnx"] if fmt == "onnx" else exporter.export(
        outlier["model"], ExportRequest(outlier["out"] / fmt, "fp32", images[:2], METADATA,
                                        onnx_file=outlier["onnx"])).path
    options = {"keep_fp32": []} if fmt == "onnx" else {"validation": (images, labels), "max_drop_pp": 5.0}
    request = ExportRequest(outlier["out"] / f"{fmt}_int8", "int8", images[:2], METADATA, calibration=images[:20],
                            options=options, fp32_file=fp32, onnx_file=outlier["onnx"])
    result = quantize_within_budget(exporter, outlier["model"], request,
                                    lambda path: top1_accuracy(runner_logits(load_runner(path), images), labels),
                                    outlier["accuracy"], 5.0, lambda: images)
    retry = result.details["accuracy_aware_retry"]
    steps = [a["step"] for a in retry["attempts"]]
    assert retry["attempts"][0]["step"] == "plain" and retry["attempts"][0]["drop_pp"] > 30  # plain int8 fails
    assert steps[1] == "more_calibration"  # the order of the issue: (per-channel,) calibration, bias correction, ...
    assert retry["within_budget"] and steps[-1] == fixing_step
    assert retry["attempts"][-1]["drop_pp"] <= 5.0
    assert retry["attempts"][-1]["kept_fp32_nodes"]  # which layers stayed in float is reported
    if fmt == "onnx":  # the most damaged tensor is the outlier conv's output, and its conv is kept in float
        assert retry["attempts"][-1]["excluded"][0]["tensor"] == "relu"
        assert "node_conv2d" in retry["attempts"][-1]["kept_fp32_nodes"]
    final = top1_accuracy(runner_logits(load_runner(result.path), images), labels)
    assert final == retry["attempts"][-1]["val_accuracy"]


@pytest.mark.parametrize("fmt", [f for f, row in formats.FORMATS.items() if "int8" in row.precisions])
def test_int8_keeps_the_stem_conv_and_classifier_in_float_when_asked(tiny, fmt):
    result = export(tiny, fmt, "int8", keep_fp32=("first_conv", "classifier"))
    assert len(result.details["kept_fp32_nodes"]) == 2
    out = load_runner(result.path).run(tiny["inputs"])
    assert np.abs(out - tiny["reference"]).max() <= TOLERANCE["int8"] * np.abs(tiny["reference"]).max()
    if fmt == "tflite":  # the stem conv and the classifier keep float weights; every other conv is int8
        from ai_edge_litert.tools import flatbuffer_utils as fb

        model = fb.read_model(str(result.path))
        graph = model.subgraphs[0]
        weights = [(fb.opcode_to_name(model, op.opcodeIndex), graph.tensors[op.inputs[1]].type)
                   for op in graph.operators if fb.opcode_to_name(model, op.opcodeIndex).endswith(("CONV_2D", "CONNECTED"))]
        float32, int8 = fb.schema_fb.TensorType.FLOAT32, fb.schema_fb.TensorType.INT8
        assert weights == [("CONV_2D", float32), ("DEPTHWISE_CONV_2D", int8), ("FULLY_CONNECTED", float32)]
