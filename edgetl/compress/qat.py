"""Quantization-aware training with torchao's PT2E API, exported to an ONNX QDQ model onnxruntime runs as int8.

torch.export → prepare_qat_pt2e (fake quantization where onnxruntime will run int8) → fine-tune → convert_pt2e →
torch.onnx (dynamo) → QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into QLinearConv/QLinearAdd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

_A = torch.ops.aten
_CONV_LINEAR = {_A.conv2d.default, _A.linear.default}
_BATCH_NORM = {_A.batch_norm.default, _A._native_batch_norm_legit.default,
               _A._native_batch_norm_legit_no_training.default}
_ACTIVATION = {_A.relu.default, _A.relu_.default, _A.hardtanh.default, _A.hardtanh_.default, _A.clamp.default}
_ADD = {_A.add.Tensor, _A.add_.Tensor}


def qat_config():
    """u8 per-tensor affine activations, s8 per-channel symmetric weights limited to 7 bits ([-63, 63]).

    u8 activations: s8 activations run ~3× slower in onnxruntime on CPUs without VNNI. 7-bit weights: u8×s8
    products are summed pairwise in int16 (VPMADDUBSW) on AVX2 without VNNI, which saturates with full-range
    weights; onnxruntime's own `reduce_range` avoids it the same way.

    Activation ranges are plain min/max (as the post-training int8 export calibrates), set by `calibrate` and then
    frozen. Weight ranges follow the current weights (a memoryless observer); torchao's default moving averages lag
    behind the weights and keep moving on every forward pass, validation included.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    config = get_default_x86_inductor_quantization_config(is_qat=True)
    activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=FakeQuantize.with_args(
        observer=MinMaxObserver, eps=2**-12))
    weight = dataclasses.replace(config.weight, quant_min=-63, quant_max=63,
                                 observer_or_fake_quant_ctr=FakeQuantize.with_args(
                                     observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0,
                                     eps=2**-12))
    return dataclasses.replace(config, input_activation=activation, output_activation=activation, weight=weight)


def _quantizer():
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer

    class OnnxRuntimeQDQQuantizer(Quantizer):
        """Annotates the graph (not module types, so timm's Conv2dSame/BatchNormAct2d match too) the way onnxruntime
        fuses QDQ: conv/linear inputs and weights; the output at the end of conv → [batch norm] → [relu/relu6]
        (batch norm folds into the conv, the Clip before a Q disappears); both inputs and the output of a residual
        add (→ QLinearAdd). The classifier's output stays float."""

        def __init__(self) -> None:
            super().__init__()
            self.config = qat_config()

        @staticmethod
        def _sole_user(node):
            users = list(node.users)
            return users[0] if len(users) == 1 else None

        @staticmethod
        def _annotation(node):
            annotation = node.meta.get("quantization_annotation")
            if annotation is None:
                node.meta["quantization_annotation"] = annotation = QuantizationAnnotation(_annotated=True)
            return annotation

        def annotate(self, graph_module):
            act, weight = self.config.input_activation, self.config.weight
            for node in graph_module.graph.nodes:
                if node.op != "call_function":
                    continue
                if node.target in _CONV_LINEAR:
                    self._annotation(node).input_qspec_map.update({node.args[0]: act, node.args[1]: weight})
                    if node.target == _A.linear.default:
                        continue
                    end, user = node, self._sole_user(node)
                    if user is not None and user.target in _BATCH_NORM:
                        end = user if user.target == _A.batch_norm.default else next(
                            g for g in user.users if g.args[1] == 0)  # (out, mean, invstd)[0]
                        user = self._sole_user(end)
                    if user is not None and user.target in _ACTIVATION:
                        end = user
                    self._annotation(end).output_qspec = act
                elif node.target in _ADD and all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
                    annotation = self._annotation(node)
                    annotation.input_qspec_map.update({node.args[0]: act, node.args[1]: act})
                    annotation.output_qspec = act
            return graph_module

        def validate(self, graph_module) -> None:
            pass

    return OnnxRuntimeQDQQuantizer()


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=1024)},)


def _quiet():
    warnings.filterwarnings("ignore")
    for name in ("torch.export", "torch._dynamo", "torch.onnx", "onnxscript", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _conv_bn_patterns_of_this_graph():
    """torchao's conv + batch-norm fusion (prepare) and folding (convert) try the patterns of four kinds of
    convolution, conv1d, conv2d, conv_transpose1d and conv_transpose2d, whatever the graph holds; each kind costs a
    torch.export of every pattern variant (24 of them for the folding: about 20 s a kind on a 2-core x86 CPU, whatever
    the model's size). A kind with no node in the graph matches nothing, so its pass is skipped here: the graph and
    the model come out the same (tests/test_compress.py checks it), in about a quarter of the time. A graph with a
    generic aten.convolution node, whose kind this cannot tell, gets every pass."""
    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils

    kinds = {F.conv1d: _A.conv1d, F.conv2d: _A.conv2d, F.conv_transpose1d: _A.conv_transpose1d,
             F.conv_transpose2d: _A.conv_transpose2d}

    def only_present(helper):
        def run(m, conv_fn, *args, **kwargs):
            packets = {getattr(n.target, "overloadpacket", n.target) for n in m.graph.nodes if n.op == "call_function"}
            if conv_fn in kinds and kinds[conv_fn] not in packets and _A.convolution not in packets:
                return m
            return helper(m, conv_fn, *args, **kwargs)
        return run

    names = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")
    originals = {name: getattr(qat_utils, name) for name in names}
    for name, helper in originals.items():
        setattr(qat_utils, name, only_present(helper))
    try:
        yield
    finally:
        for name, helper in originals.items():
            setattr(qat_utils, name, helper)


def prepare_qat(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The model with fake quantization inserted, trainable; `.train()`/`.eval()` work on it."""
    import torchao.quantization.pt2e as pt2e
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    if example.shape[0] < 2:  # a batch-1 example would specialise the batch dimension
        example = example.repeat(2, 1, 1, 1)
    model = model.train()
    with warnings.catch_warnings():
        _quiet()
        exported = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
        with _conv_bn_patterns_of_this_graph():
            prepared = prepare_qat_pt2e(exported.module(), _quantizer())
    pt2e.allow_exported_model_train_eval(prepared)
    return prepared


def calibrate(prepared: torch.fx.GraphModule, batches) -> int:
    """Set the activation ranges from `batches` (min/max over all of them, batch norm on its running statistics),
    then freeze them: QAT trains the weights to these ranges, and evaluation never moves them. Returns how many
    activation quantizers were calibrated."""
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    prepared.eval()
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    frozen = 0
    for module in prepared.modules():
        if isinstance(module, FakeQuantizeBase) and not module.is_per_channel:
            module.disable_observer()
            frozen += 1
    return frozen


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The trained fake-quant model as a quantize/dequantize graph with the learned scales (eval mode)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    prepared.eval()
    with warnings.catch_warnings():
        _quiet()
        with _conv_bn_patterns_of_this_graph():
            return convert_pt2e(prepared)


def export_onnx(converted: torch.fx.GraphModule, example: np.ndarray, path: Path) -> dict:
    """Write the converted model as ONNX QDQ (opset 18, dynamic batch); returns export details."""
    import onnx

    batch = torch.from_numpy(np.array(example[:2], dtype=np.float32))  # a copy: the val inputs are a read-only memmap
    if batch.shape[0] < 2:
        batch = batch.repeat(2, 1, 1, 1)
    with warnings.catch_warnings():
        _quiet()
        exported = torch.export.export(converted, (batch,), dynamic_shapes=_dynamic_batch())
        program = torch.onnx.export(exported, dynamo=True, external_data=False, input_names=["input"],
                                    output_names=["logits"], verbose=False)
    model = program.model_proto
    folded = fold_pad_into_qdq_conv(model)
    onnx.save(model, str(path))
    return {"exporter": "dynamo (torch.export of the torchao PT2E converted graph)", "pads_folded": folded}


def fold_pad_into_qdq_conv(model) -> int:
    """Pad(constant 0, spatial) → Q → DQ → Conv becomes Q → DQ → Conv(pads += pad); returns how many were folded.

    Exact (0 quantizes to the zero point and QLinearConv pads with it), and lets onnxruntime fuse what it fuses for
    float models: timm's TF-"same" padding exports a Pad before every stride-2 conv.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def value(name: str):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    def attribute(node, name: str):
        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)

    folded = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        if attribute(pad, "mode") not in (None, b"constant", "constant") or (len(pad.input) > 3 and pad.input[3]):
            continue
        pads = value(pad.input[1])
        fill = value(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        if pads is None or fill is None or float(fill) != 0.0 or len(pads) != 8:
            continue
        if any(pads[[0, 1, 4, 5]]) or (pads < 0).any():
            continue
        quantize = consumers.get(pad.output[0], [])
        if len(quantize) != 1 or quantize[0].op_type != "QuantizeLinear":
            continue
        dequantize = consumers.get(quantize[0].output[0], [])
        if len(dequantize) != 1 or dequantize[0].op_type != "DequantizeLinear":
            continue
        convs = consumers.get(dequantize[0].output[0], [])
        if not convs or any(c.op_type != "Conv" or c.input[0] != dequantize[0].output[0]
                            or attribute(c, "auto_pad") not in (None, b"NOTSET", "NOTSET") for c in convs):
            continue
        for conv in convs:
            old = [a for a in conv.attribute if a.name == "pads"]
            current = list(helper.get_attribute_value(old[0])) if old else [0, 0, 0, 0]
            for a in old:
                conv.attribute.remove(a)
            conv.attribute.append(helper.make_attribute("pads", [current[0] + int(pads[2]), current[1] + int(pads[3]),
                                                                 current[2] + int(pads[6]), current[3] + int(pads[7])]))
        quantize[0].input[0] = pad.input[0]
        graph.node.remove(pad)
        stale = {quantize[0].output[0], dequantize[0].output[0]}
        for info in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(info)
        folded += 1
    return folded
