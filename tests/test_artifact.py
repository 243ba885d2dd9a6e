"""edgetl.artifact: model.json as a typed ArtifactInfo — round trip, errors naming the file and the field, and the
I/O tensor dtypes and quantization of real exports, as their own runtimes report them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from device_fixtures import LABELS, PREP

from edgetl.artifact import (
    BUILD_FIELDS,
    ArtifactInfo,
    TensorQuantization,
    decode_embedded,
    embedded_metadata,
    measured_io,
    read_model_json,
    write_model_json,
)
from edgetl.errors import BundleError, ModelFileError

INT8 = ArtifactInfo(name="tflite_int8", format="tflite", precision="int8", file="model.tflite", files=("model.tflite",),
                    labels=("ants", "bees"), layout="NHWC", input_shape=(None, 224, 224, 3), input_dtype="int8",
                    input_quantization=TensorQuantization(0.0186, -14), output_dtype="float32",
                    preprocessing={"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
                                   "std": [0.229, 0.224, 0.225], "interpolation": "bicubic"},
                    backbone="efficientnet_lite0", edgetl_version="0.1.0", recipe_sha256="ab" * 32, quantization="ptq")


def test_round_trip_through_json(tmp_path):
    document = INT8.to_json()
    assert list(document) == ["name", "format", "precision", "file", "files", "labels", "layout", "input_shape",
                              "input_dtype", "input_quantization", "output_dtype", "output_quantization",
                              "preprocessing", "backbone", "edgetl_version", "recipe_sha256", "quantization"]
    assert document["input_quantization"] == {"scale": 0.0186, "zero_point": -14}
    assert document["output_quantization"] is None and document["input_shape"] == [None, 224, 224, 3]
    (tmp_path / "model.json").write_text(json.dumps(document))
    assert read_model_json(tmp_path / "model.json") == INT8
    fp32 = replace(INT8, name="tflite_fp32", precision="fp32", input_dtype="float32", input_quantization=None,
                   quantization=None)
    assert "quantization" not in fp32.to_json()  # only int8 says how it was quantized
    assert ArtifactInfo.from_json(json.loads(json.dumps(fp32.to_json())), "x.json") == fp32


@pytest.mark.parametrize(("edit", "says"), [
    (lambda m: m.pop("labels"), "`labels` is missing"),
    (lambda m: m.pop("recipe_sha256"), "`recipe_sha256` is missing"),
    (lambda m: m.pop("quantization"), "`quantization` is missing"),  # int8
    (lambda m: m.update(labels=[1, 2]), "`labels` must be a non-empty list of strings, got [1, 2]"),
    (lambda m: m.update(precision="int4"), "`precision` must be one of fp32, fp16, int8, got 'int4'"),
    (lambda m: m.update(input_shape="224"), "`input_shape` must be a list of positive sizes"),
    (lambda m: m.update(input_dtype="int9"), "`input_dtype` must be a numpy dtype name"),
    (lambda m: m.update(output_dtype=32), "`output_dtype` must be a numpy dtype name"),
    (lambda m: m.update(input_quantization={"scale": 0, "zero_point": 1}), "`input_quantization.scale`"),
    (lambda m: m.update(input_quantization={"scale": 0.1, "zero_point": 1.5}), "`input_quantization.zero_point`"),
    (lambda m: m.update(output_quantization={"scale": 0.1, "zero_point": 0}),
     "`output_quantization` must be null for a float32 output tensor"),
    (lambda m: m.update(file="../secret.tflite"), "`file` must be the model file's name"),
    (lambda m: m.update(file="other.tflite"), "`file` ('other.tflite') must be one of `files`"),
    (lambda m: m["preprocessing"].pop("crop"), "`preprocessing` must be an object with resize, crop"),
    (lambda m: m["preprocessing"].update(crop="224"), "`preprocessing.crop` must be a positive integer"),
    (lambda m: m["preprocessing"].update(std=[0.2, 0, 0.2]), "`preprocessing.std` must be a list of 3 numbers"),
    (lambda m: m.update(layout="CHW"), "`layout` must be 'NCHW' or 'NHWC'"),
])
def test_a_bad_field_is_an_error_naming_the_file_and_the_field(tmp_path, edit, says):
    document = INT8.to_json()
    edit(document)
    path = tmp_path / "export" / "tflite_int8" / "model.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(document))
    with pytest.raises(ModelFileError) as caught:
        read_model_json(path)
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value), caught.value
    with pytest.raises(BundleError, match="model.json: "):  # the error type is the caller's
        read_model_json(path, BundleError)


def test_not_json_or_not_an_object(tmp_path):
    (tmp_path / "model.json").write_text("not json {")
    with pytest.raises(BundleError, match=r"model.json: cannot read it as JSON"):
        read_model_json(tmp_path / "model.json", BundleError)
    with pytest.raises(ModelFileError, match="a JSON object is expected, not list"):
        read_model_json(tmp_path / "model.json", text=b"[]")


def test_required_fields_are_the_callers(tmp_path):
    """A stub (a model file edgetl did not export, bundled for a remote bench) has only what it knows; the device's
    predict needs labels and preprocessing; a build's model.json has every field."""
    stub = ArtifactInfo.from_json({"name": "m", "format": "onnx", "file": "model.onnx"}, "stub.json", required=("file",))
    assert stub.labels is None and stub.input_dtype is None and stub.to_json()["labels"] is None
    with pytest.raises(ModelFileError, match="stub.json: `labels` is missing"):
        ArtifactInfo.from_json(stub.to_json(), "stub.json", required=("file", "labels", "preprocessing"))
    older = {k: v for k, v in INT8.to_json().items() if not k.startswith("output_") and k != "input_quantization"}
    assert ArtifactInfo.from_json(older, "older.json").output_dtype is None  # an earlier edgetl's model.json reads
    assert set(BUILD_FIELDS) | {"quantization"} <= set(INT8.to_json())


def _interpreter_io(path):
    """The TFLite interpreter's own view of the first input and output: (dtype name, (scale, zero_point))."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return [(np.dtype(d["dtype"]).name, d["quantization"])
            for d in (interpreter.get_input_details()[0], interpreter.get_output_details()[0])]


def test_tflite_int8_model_json_says_what_the_interpreter_reports(run_dir):
    """Full-integer TFLite int8 with every layer quantized (tests/device_fixtures.tiny_run): int8 input and int8
    output, each with its scale and zero point."""
    path = run_dir / "export" / "tflite_int8" / "model.tflite"
    info = read_model_json(path.parent / "model.json")
    (input_dtype, (in_scale, in_zero)), (output_dtype, (out_scale, out_zero)) = _interpreter_io(path)
    assert (input_dtype, output_dtype) == ("int8", "int8")
    assert (info.input_dtype, info.output_dtype) == ("int8", "int8")
    assert info.input_quantization == TensorQuantization(pytest.approx(in_scale), in_zero) and in_scale > 0
    assert info.output_quantization == TensorQuantization(pytest.approx(out_scale), out_zero) and out_scale > 0
    assert info.quantization == "ptq" and info.layout == "NHWC" and info.input_shape == (None, 32, 32, 3)
    assert info.labels == tuple(LABELS) and info.preprocessing == PREP


def test_tflite_int8_with_the_float_classifier_of_the_default_recipe_has_float32_logits(run_dir, tmp_path):
    """export.int8_keep_fp32 defaults to [first_conv, classifier]: the input stays an int8 tensor (quantized before
    the float first conv), but the output is the float classifier's float32 logits."""
    from device_fixtures import LABELS as labels

    from edgetl.export import ExportRequest
    from edgetl.export.tflite import export

    calibration = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    metadata = embedded_metadata(labels, PREP, "tiny", "0" * 64)
    result = export(None, ExportRequest(tmp_path / "tflite_int8", "int8", calibration[:2], metadata,
                                        calibration=calibration, options={"layout": "nhwc", "int8": "full",
                                                                          "keep_fp32": ["first_conv", "classifier"]},
                                        fp32_file=run_dir / "export" / "tflite_fp32" / "model.tflite"))
    info = read_model_json(write_model_json(result, "tflite_int8", "tflite", "int8", metadata))
    (input_dtype, (in_scale, in_zero)), (output_dtype, out_params) = _interpreter_io(result.path)
    assert (input_dtype, output_dtype) == ("int8", "float32") and out_params == (0.0, 0)
    assert (info.input_dtype, info.output_dtype, info.output_quantization) == ("int8", "float32", None)
    assert info.input_quantization == TensorQuantization(pytest.approx(in_scale), in_zero)
    assert (result.details["input_tensor"], result.details["output_tensor"]) == ("int8", "float32")


def test_onnx_and_openvino_int8_and_fp32_artifacts_have_float32_io(run_dir, tmp_path):
    """ONNX int8 (static QDQ) and OpenVINO int8 (NNCF) quantize inside the graph: float32 in, float32 out, and no
    tensor quantization parameters; so do the fp32 artifacts."""
    import onnxruntime as ort
    import openvino as ov

    from edgetl.export import ExportRequest
    from edgetl.export.openvino import export

    calibration = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    metadata = embedded_metadata(LABELS, PREP, "tiny", "0" * 64)
    ov_int8 = export(None, ExportRequest(tmp_path / "openvino_int8", "int8", calibration[:2], metadata,
                                         calibration=calibration, options={"keep_fp32": []},
                                         fp32_file=run_dir / "export" / "openvino_fp32" / "model.xml"))
    written = write_model_json(ov_int8, "openvino_int8", "openvino", "int8", metadata)
    for name, model_json in [("onnx_int8", None), ("onnx_fp32", None), ("openvino_fp32", None),
                             ("openvino_int8", written)]:
        info = read_model_json(model_json or run_dir / "export" / name / "model.json")
        path = (model_json or run_dir / "export" / name / "model.json").parent / info.file
        if info.format == "onnx":
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            runtime = [session.get_inputs()[0].type, session.get_outputs()[0].type]
            assert runtime == ["tensor(float)", "tensor(float)"], name
        else:
            compiled = ov.Core().compile_model(str(path), "CPU")
            runtime = [compiled.inputs[0].get_element_type().get_type_name(),
                       compiled.outputs[0].get_element_type().get_type_name()]
            assert runtime == ["f32", "f32"], name
        assert (info.input_dtype, info.output_dtype) == ("float32", "float32"), name
        assert info.input_quantization is None and info.output_quantization is None, name
        assert (info.quantization is not None) == name.endswith("int8"), name


def test_a_format_whose_runtime_has_no_io_details_records_null(monkeypatch, tmp_path):
    from edgetl.formats import FORMATS

    monkeypatch.setitem(FORMATS, "npz", replace(FORMATS["onnx"], name="npz", suffix=".npz", runtime="edgetl.bench.stats"))
    assert measured_io(tmp_path / "model.npz", "npz") == dict.fromkeys(
        ("input_dtype", "input_quantization", "output_dtype", "output_quantization"))


def test_tflite_metadata_is_read_without_any_flatbuffer_package(run_dir, tmp_path):
    """A device with only tflite-runtime reads a bare .tflite file's labels too: edgetl's own reader, checked against
    ai-edge-litert's flatbuffer tools, with those tools (and flatbuffers) made unimportable."""
    import subprocess
    import sys

    from ai_edge_litert.tools import flatbuffer_utils

    path = run_dir / "export" / "tflite_int8" / "model.tflite"
    model = flatbuffer_utils.read_model(str(path))
    entry = next(e for e in model.metadata if e.name == b"edgetl")
    expected = json.loads(bytes(model.buffers[entry.buffer].data).decode())
    blocked = ("import sys, json; sys.modules.update({m: None for m in ('ai_edge_litert', 'ai_edge_litert.tools', "
               "'flatbuffers', 'tflite_runtime')}); from edgetl.runtime.tflite import embedded_metadata; "
               f"print(json.dumps(embedded_metadata({str(path)!r})))")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == expected and expected["labels"]
    from edgetl.runtime.tflite import embedded_metadata

    data = path.read_bytes()
    for name, content in (("cut.tflite", data[:len(data) // 3]), ("foreign.tflite", b"PK\x03\x04" + data[4:])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=f"{name} could not be read as a TFLite flatbuffer: it is truncated"):
            embedded_metadata(tmp_path / name)


def test_embedded_metadata_decodes_from_the_files(run_dir):
    """The copy inside the file (what edgetl reads back today: the TFLite entry; and ONNX metadata_props) decodes to
    the same labels, preprocessing and layout as model.json."""
    import onnx

    from edgetl.export.tflite import read_metadata

    tflite = decode_embedded(read_metadata(run_dir / "export" / "tflite_int8" / "model.tflite"), "model.tflite")
    assert tflite["labels"] == tuple(LABELS) and tflite["preprocessing"] == PREP and tflite["layout"] == "NHWC"
    assert tflite["input_shape"] == (1, 32, 32, 3)  # the converted file's own input (NHWC, batch 1)
    props = {p.key: p.value for p in onnx.load(str(run_dir / "export" / "onnx_fp32" / "model.onnx")).metadata_props}
    decoded = decode_embedded(props, "model.onnx")
    assert decoded["precision"] == "fp32" and "exporter" not in decoded  # keys edgetl does not embed are left out
    assert decoded["layout"] == "NCHW" and decoded["input_shape"] == (None, 3, 32, 32) and decoded["backbone"] == "tiny"
    made = embedded_metadata(LABELS, PREP, "tiny", "0" * 64)
    assert all(isinstance(v, str) for v in made.values())
    assert decode_embedded(made, "x")["labels"] == tuple(LABELS)
    with pytest.raises(ModelFileError, match="model.onnx: the embedded `labels` is not JSON"):
        decode_embedded({**props, "labels": "ants, bees"}, "model.onnx")
    with pytest.raises(ModelFileError, match="model.onnx: the embedded metadata has no `backbone`"):
        decode_embedded({k: v for k, v in props.items() if k != "backbone"}, "model.onnx")
