"""Every format of the table with its real exporter and runtime on a tiny model: export -> load -> outputs match
torch within a tolerance per precision; metadata in the file; layouts; the runtime fallback; errors."""

from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch
from test_export_runtime import TinyNet

from edgetl import formats
from edgetl.errors import ModelFileError, RuntimeMissingError
from edgetl.export import ExportRequest
from edgetl.export.onnx import export_fp32
from edgetl.runtime import load_runner

# Largest |logit diff| vs torch, as a share of the largest |logit|: fp32 is exact up to float rounding, fp16 weights
# lose ~3 decimal digits, int8 is a real approximation.
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.15}
METADATA = {"labels": json.dumps(["a", "b", "c"]), "edgetl_version": "test", "layout": "NCHW"}


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


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
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


def test_tflite_nchw_layout_and_dynamic_range_int8(tiny):
    from ai_edge_litert.interpreter import Interpreter

    nchw = export(tiny, "tflite", "fp32", layout="nchw")
    assert list(Interpreter(model_path=str(nchw.path)).get_input_details()[0]["shape"]) == [1, 3, 32, 32]
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
    with pytest.raises(RuntimeMissingError, match=r"needs the Python package 'openvino'.*pip install openvino"):
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
