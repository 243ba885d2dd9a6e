"""Real exporters and onnxruntime on a tiny model: export -> load -> outputs match torch; int8; errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgetl.errors import ModelFileError
from edgetl.evaluate import confusion_matrix, runner_logits, top1_accuracy
from edgetl.export import ExportRequest
from edgetl.export.onnx import export_fp32, quantize_int8
from edgetl.runtime import load_runner


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU ×2, pooling, linear: enough to exercise conv/BN folding and quantization."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.classifier = torch.nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet().eval()
    for module in model.modules():  # non-trivial BN statistics so folding is really exercised
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(24, 3, 32, 32)).astype(np.float32)
    out = tmp_path_factory.mktemp("export")
    metadata = {"labels": json.dumps(["a", "b", "c"]), "edgetl_version": "test"}
    fp32 = export_fp32(model, ExportRequest(out / "fp32", "fp32", inputs[:2], metadata))
    int8 = quantize_int8(fp32.path, ExportRequest(out / "int8", "int8", inputs[:2], metadata, calibration=inputs[:16]))
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
    return {"model": model, "inputs": inputs, "fp32": fp32, "int8": int8, "reference": reference}


def test_a_model_exported_again_in_the_same_process_is_copied_not_re_exported(tiny, tmp_path, monkeypatch):
    """A build exports the pruned model for its latency, then for its artifact: the exporter runs once."""
    import copy

    from edgetl.export import onnx as onnx_export

    calls: list[str] = []
    real = onnx_export._export_dynamo
    monkeypatch.setattr(onnx_export, "_export_dynamo", lambda *a: calls.append("dynamo") or real(*a))
    first = export_fp32(tiny["model"], ExportRequest(tmp_path / "1", "fp32", tiny["inputs"][:2], {"run": "one"}))
    calls.clear()
    second = export_fp32(tiny["model"], ExportRequest(tmp_path / "2", "fp32", tiny["inputs"][:2], {"run": "two"}))
    assert calls == [] and second.details == first.details
    model = onnx.load(second.path)
    assert {p.key: p.value for p in model.metadata_props} == {"run": "two", "precision": "fp32", "exporter": "dynamo"}
    assert model.graph == onnx.load(first.path).graph  # the same graph and weights
    changed = copy.deepcopy(tiny["model"])
    with torch.no_grad():
        changed.classifier.bias += 1.0
    export_fp32(changed, ExportRequest(tmp_path / "3", "fp32", tiny["inputs"][:2], {}))
    export_fp32(tiny["model"], ExportRequest(tmp_path / "4", "fp32", tiny["inputs"][1:3], {}))  # another example
    assert calls == ["dynamo", "dynamo"]


def test_fp32_export_matches_torch_at_several_batch_sizes(tiny):
    runner = load_runner(tiny["fp32"].path, threads=1)
    assert runner.input_shape[1:] == (3, 32, 32) and runner.input_shape[0] is None
    for batch in (1, 5, 24):
        out = runner.run(tiny["inputs"][:batch])
        np.testing.assert_allclose(out, tiny["reference"][:batch], atol=1e-5)


def test_relu6_is_exported_as_clip_0_6_and_the_model_keeps_its_relu6(tiny):
    """The exporter traces a copy whose ReLU6 modules are torch.clamp (the same Clip node, exported faster): inputs
    large enough to saturate both ends give torch's outputs, and the user's model is not changed."""
    from onnx import numpy_helper

    model = onnx.load(tiny["fp32"].path)
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                  if n.op_type == "Constant"}
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) == 2 and all((float(constants[n.input[1]]), float(constants[n.input[2]])) == (0.0, 6.0)
                                   for n in clips)
    assert sum(isinstance(m, torch.nn.ReLU6) for m in tiny["model"].modules()) == 2
    loud = tiny["inputs"][:4] * 20
    with torch.no_grad():
        reference = tiny["model"](torch.from_numpy(loud)).numpy()
        saturated = tiny["model"].features[:3](torch.from_numpy(loud))
    assert (saturated == 6).any() and (saturated == 0).any()
    np.testing.assert_allclose(load_runner(tiny["fp32"].path, threads=1).run(loud), reference, atol=1e-4)


def test_fp32_export_uses_dynamo_opset_18_and_passes_the_checker(tiny):
    assert tiny["fp32"].details["exporter"] == "dynamo"
    assert tiny["fp32"].details["opset"] == 18
    onnx.checker.check_model(str(tiny["fp32"].path), full_check=True)


def test_legacy_exporter_also_works(tiny, tmp_path):
    result = export_fp32(tiny["model"], ExportRequest(tmp_path, "fp32", tiny["inputs"][:2], {}), exporter="legacy")
    assert result.details["exporter"] == "legacy"
    np.testing.assert_allclose(load_runner(result.path).run(tiny["inputs"]), tiny["reference"], atol=1e-5)


def test_metadata_is_stored_in_the_onnx_file(tiny):
    for artifact, precision in ((tiny["fp32"], "fp32"), (tiny["int8"], "int8")):
        props = {p.key: p.value for p in onnx.load(str(artifact.path)).metadata_props}
        assert json.loads(props["labels"]) == ["a", "b", "c"]
        assert props["precision"] == precision


def test_int8_is_quantized_close_to_torch_and_exclusions_stay_fp32(tiny):
    model = onnx.load(str(tiny["int8"].path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    out = load_runner(tiny["int8"].path).run(tiny["inputs"])
    scale = np.abs(tiny["reference"]).max()
    assert np.abs(out - tiny["reference"]).max() < 0.1 * scale
    assert not np.allclose(out, tiny["reference"], atol=1e-6)  # it really is quantized
    assert tiny["int8"].details["calibration_images"] == 16
    kept = tiny["int8"].details["kept_fp32_nodes"]
    assert len(kept) == 2
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    classifier = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in (first_conv, classifier):  # their weights are not dequantized from int8
        weight_producer = producers.get(node.input[1])
        assert weight_producer is None or weight_producer.op_type != "DequantizeLinear"
    quantized_convs = [n for n in model.graph.node if n.op_type == "Conv" and n is not first_conv
                       and producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert quantized_convs


def test_evaluation_helpers():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 1, 1, 1])
    assert top1_accuracy(logits, labels) == 75.0
    assert confusion_matrix(logits, labels, 2) == [[1, 0], [1, 2]]


def test_runner_logits_batches_cover_every_image(tiny):
    runner = load_runner(tiny["fp32"].path)
    seen = []
    logits = runner_logits(runner, tiny["inputs"][:10], batch_size=4, update=seen.append)
    assert logits.shape == (10, 3) and seen == [4, 4, 2]


def test_not_an_onnx_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelFileError, match=r"model\.onnx could not be loaded by onnxruntime"):
        load_runner(bogus)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"unknown model file type '\.pb'"):
        load_runner(tmp_path / "model.pb")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_runner(tmp_path / "missing.onnx")
