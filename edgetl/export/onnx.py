"""Torch -> ONNX (dynamo exporter, legacy fallback) and onnxruntime static int8 quantization."""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from edgetl.errors import ExportError, StorageError
from edgetl.export import ExportRequest, ExportResult
from edgetl.fsutil import atomic_path, process_temp_folder
from edgetl.progress import SILENT, Reporter

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class _Clip6(torch.nn.Module):
    """ReLU6 as torch.clamp: the same ONNX Clip(0, 6) node. The dynamo exporter decomposes an (in-place) ReLU6 with a
    symbolic batch size through torch's Python reference of hardtanh, about a third of a second per module on a
    2-core x86 CPU (EfficientNet-Lite0 and MobileNetV2 have 33-35 of them); clamp has a direct ONNX translation.
    litert-torch's conversion goes the same way, and fuses both into its convolutions alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


def relu6_as_clip(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself when it has no ReLU6, else a copy whose ReLU6 modules are `_Clip6` (the model is not changed)."""
    if not any(type(m) is torch.nn.ReLU6 for m in model.modules()):  # a subclass may have its own forward
        return model
    try:
        model = copy.deepcopy(model)
    except Exception:  # a model that cannot be copied is exported as it is (only more slowly)
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.ReLU6:
                setattr(parent, name, _Clip6())
    return model


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(relu6_as_clip(model), (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes={"x": {0: batch}}, optimize=True, verbose=False)


def _export_legacy(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=min(opset, 17),
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _quiet_export(fn, *args) -> None:
    # The exporters log and warn generously; a failure surfaces as an exception, which we report.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*args)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the ONNX file's metadata_props with `metadata`."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Exported:
    """The last few ONNX fp32 exports of this process, by what determines them (see `fingerprint`): a build that
    exports the same model twice (the prune stage measures the pruned model's latency from ONNX, the export stage then
    writes that model's artifact) runs the exporter once. The dynamo exporter takes 15-35 s a model on a 2-core x86
    CPU whatever the input size; a copy takes milliseconds. Files are kept in a private temporary folder of the
    process (`fsutil.process_temp_folder`)."""

    size = 4

    def __init__(self) -> None:
        self.files: OrderedDict[str, tuple[Path, dict]] = OrderedDict()
        self.folder: Path | None = None

    def get(self, key: str) -> tuple[Path, dict] | None:
        hit = self.files.get(key)
        if hit is None or not hit[0].is_file():
            return None
        self.files.move_to_end(key)
        return hit

    def put(self, key: str, path: Path, details: dict) -> None:
        try:
            if self.folder is None:
                self.folder = process_temp_folder("onnx")
            kept = self.folder / f"{key}.onnx"
            shutil.copyfile(path, kept)
        except OSError:  # a full temporary folder only costs a later export its reuse
            if self.folder is not None:
                (self.folder / f"{key}.onnx").unlink(missing_ok=True)
            return
        self.files[key] = (kept, details)
        while len(self.files) > self.size:
            self.files.popitem(last=False)[1][0].unlink(missing_ok=True)


_EXPORTED = _Exported()


def fingerprint(model: torch.nn.Module, example: torch.Tensor, exporter: str, opset: int) -> str:
    """What an ONNX export depends on: the module tree, every weight and buffer, the example, the exporter and opset,
    and the versions of torch and onnxscript."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for part in (type(model).__module__, type(model).__qualname__, repr(model), exporter, str(opset),
                 torch.__version__, version("onnxscript"), str(example.dtype), str(tuple(example.shape))):
        digest.update(part.encode() + b"\0")
    digest.update(example.detach().contiguous().numpy().tobytes())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_fp32(model: torch.nn.Module, request: ExportRequest, exporter: str = "auto", opset: int = 18) -> ExportResult:
    """Export `model` to ONNX fp32 with a dynamic batch dimension, checked by onnx.checker."""
    import onnx

    path = request.out_dir / "model.onnx"
    example = torch.from_numpy(np.array(request.example[:2], dtype=np.float32))
    model = model.eval()
    key = fingerprint(model, example, exporter, opset)
    if (hit := _EXPORTED.get(key)) is not None:
        with atomic_path(path) as tmp:
            shutil.copyfile(hit[0], tmp)
            set_metadata(tmp, {**request.metadata, "precision": "fp32", "exporter": hit[1]["exporter"]})
        return ExportResult(path, dict(hit[1]))
    used, errors = None, []
    for name in (["dynamo", "legacy"] if exporter == "auto" else [exporter]):
        try:
            with atomic_path(path) as tmp:
                _quiet_export(_export_dynamo if name == "dynamo" else _export_legacy, model, example, tmp, opset)
                set_metadata(tmp, {**request.metadata, "precision": "fp32", "exporter": name})
                onnx.checker.check_model(str(tmp), full_check=True)
        except StorageError:
            raise
        except Exception as exc:  # exporter failures come as many types; try the next exporter
            text = _ANSI.sub("", str(exc)).strip()  # torch.onnx colours its messages for a terminal
            errors.append(f"{name} exporter: {text.splitlines()[0] if text else repr(exc)}")
            continue
        used = name
        break
    if used is None:
        raise ExportError("ONNX export failed: " + "; ".join(errors))
    details = {"exporter": used, "opset": _opset(path), "fallback_reasons": errors}
    _EXPORTED.put(key, path, details)
    return ExportResult(path, dict(details))


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class _Calibration:
    """onnxruntime CalibrationDataReader over preprocessed images, one at a time, with progress."""

    def __init__(self, images: np.ndarray, update) -> None:
        self.images, self.index, self.update = images, 0, update

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.images):
            return None
        batch = np.ascontiguousarray(self.images[self.index:self.index + 1])
        self.index += 1
        self.update(1)
        return {INPUT_NAME: batch}

    def rewind(self) -> None:
        self.index = 0

    def __iter__(self):
        while (item := self.get_next()) is not None:
            yield item


def _edge_nodes(path: Path, keep_fp32: list[str]) -> list[str]:
    """Names of the first convolution and/or the final classifier layer (ONNX nodes are topologically sorted)."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    names = []
    if "first_conv" in keep_fp32:
        names += [n.name for n in nodes if n.op_type == "Conv"][:1]
    if "classifier" in keep_fp32:
        names += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")][-1:]
    return names


def quantize_int8(fp32_path: Path, request: ExportRequest, int8_format: str = "qdq", per_channel: bool = True,
                  keep_fp32: list[str] = ("first_conv", "classifier"), reporter: Reporter = SILENT,
                  filename: str = "model.onnx") -> ExportResult:
    """Static int8 quantization with onnxruntime (u8 activations, s8 per-channel weights), calibrated on train."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if request.calibration is None or not len(request.calibration):
        raise ExportError("int8 quantization needs calibration images, and none were given.")
    path = request.out_dir / filename
    with tempfile.TemporaryDirectory(prefix="edgetl-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception:  # pre-processing is an optimisation; quantize the plain model if it fails
            shutil.copyfile(fp32_path, prepared)
        excluded = _edge_nodes(prepared, list(keep_fp32))
        sensitive = []
        if request.options.get("exclude_sensitive"):
            ranking = _sensitive_tensors(prepared, request.calibration, excluded, Path(work))
            sensitive = ranking[:request.options["exclude_sensitive"]]
            excluded = list(dict.fromkeys(excluded + [n for item in sensitive for n in item["nodes"]]))
        with atomic_path(path) as tmp, reporter.task("calibrating int8", len(request.calibration)) as update:
            try:
                # u8 activations: s8s8 runs ~3x slower than fp32 on CPUs without VNNI (see the toolchain notes).
                quantize_static(str(prepared), str(tmp), _Calibration(request.calibration, update),
                                quant_format=QuantFormat.QDQ if int8_format == "qdq" else QuantFormat.QOperator,
                                per_channel=per_channel, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                                nodes_to_exclude=excluded,
                                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            except Exception as exc:
                raise ExportError(f"onnxruntime int8 quantization of {fp32_path} failed: {exc}") from None
            set_metadata(tmp, {**request.metadata, "precision": "int8"})
    return ExportResult(path, {"quantization": "ptq", "int8_format": int8_format, "per_channel": per_channel,
                               "calibration_images": int(len(request.calibration)),
                               "kept_fp32": list(keep_fp32), "kept_fp32_nodes": excluded,
                               **({"excluded": sensitive} if sensitive else {}),
                               "activations": "uint8", "weights": "int8"})


def _quantize_plain(prepared: Path, out: Path, calibration: np.ndarray, excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(prepared), str(out), _Calibration(calibration, lambda n: None), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _sensitive_tensors(prepared: Path, calibration: np.ndarray, excluded: list[str], work: Path) -> list[dict]:
    """Quantized activation tensors ranked by their signal-to-quantization-noise ratio (lowest, most damaged,
    first), with the nodes that produce and read each: onnxruntime's QDQ debugging tools on a plain int8 model."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    qdq, augmented = work / "plain_int8.onnx", work / "augmented.onnx"
    _quantize_plain(prepared, qdq, calibration, excluded)
    modify_model_output_intermediate_tensors(str(qdq), str(augmented))
    activations = collect_activations(str(augmented), _Calibration(calibration[:16], lambda n: None))
    errors = {name: compute_signal_to_quantization_noice_ratio(match["pre_qdq"], match["post_qdq"])
              for name, match in create_activation_matching(activations).items()}
    graph = onnx.load(str(prepared)).graph
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.name)

    def writers(name: str) -> list[str]:
        # An activation's quantized output is also its conv's output (onnxruntime fuses Conv+Relu/Clip), so the
        # conv that feeds the activation must stay in float too.
        node = producers.get(name)
        if node is None:
            return []
        upstream = writers(node.input[0]) if node.op_type in ("Relu", "Clip", "LeakyRelu", "HardSigmoid") else []
        return [node.name, *upstream]

    ranked = sorted((sqnr, name) for name, sqnr in errors.items() if name in producers or name in readers)
    return [{"tensor": name, "sqnr_db": round(float(sqnr), 2), "nodes": [*writers(name), *readers.get(name, [])]}
            for sqnr, name in ranked]


def retry_steps(options: dict) -> list[tuple[str, dict]]:
    """The accuracy-aware retry steps ONNX int8 has (see edgetl.export.accuracy); none that change nothing."""
    steps = [] if options.get("per_channel", True) else [("per_channel", {"per_channel": True})]
    steps.append(("more_calibration", {"more_calibration": True}))
    # onnxruntime's quantizer has no bias correction; the next step keeps the most damaged tensors in float.
    return steps + [(f"exclude_sensitive ({k})", {"exclude_sensitive": k}) for k in (1, 2, 4, 8)]


def convert_fp16(fp32_path: Path, request: ExportRequest) -> ExportResult:
    """fp16 weights and compute with fp32 inputs/outputs (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = request.out_dir / "model.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
        _sort_topologically(converted.graph)
    except Exception as exc:  # the converter raises whatever onnx raises
        raise ExportError(f"onnx fp16 conversion of {fp32_path} failed: {exc}") from None
    with atomic_path(path) as tmp:
        onnx.save(converted, str(tmp))
        set_metadata(tmp, request.metadata)
        onnx.checker.check_model(str(tmp), full_check=True)
    return ExportResult(path, {"converter": "onnxruntime.transformers.float16", "io": "fp32"})


def _sort_topologically(graph) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs (the fp16 converter appends the
    input casts at the end, which onnx.checker rejects)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ExportError("the fp16 ONNX graph has a cycle or an input nothing produces")
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def export(model: torch.nn.Module, request: ExportRequest, reporter: Reporter = SILENT) -> ExportResult:
    """The format's entry point (see edgetl.formats): fp32 from the torch model, fp16/int8 from the fp32 file."""
    options = request.options
    if request.precision == "fp32":
        return export_fp32(model, request, options.get("exporter", "auto"), options.get("opset", 18))
    if request.precision == "fp16":
        return convert_fp16(request.fp32_file, request)
    return quantize_int8(request.fp32_file, request, options.get("int8_format", "qdq"),
                         options.get("per_channel", True), options.get("keep_fp32", ("first_conv", "classifier")),
                         reporter)


def options(recipe) -> dict:
    """The recipe's settings this exporter reads (ExportRequest.options)."""
    e = recipe.export
    return {"exporter": e.exporter, "opset": e.opset, "int8_format": e.int8_format, "per_channel": e.per_channel,
            "keep_fp32": e.int8_keep_fp32}


def from_qdq(qdq_file: Path, request: ExportRequest) -> ExportResult:
    """The int8 artifact from a quantized (QDQ) ONNX model such as the QAT model's: that file with this artifact's
    metadata, checked."""
    import onnx

    path = request.out_dir / "model.onnx"
    request.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        shutil.copyfile(qdq_file, tmp)
        set_metadata(tmp, {**request.metadata, "quantization": "qat"})
        onnx.checker.check_model(str(tmp), full_check=True)
    return ExportResult(path, {"quantization": "qat"})
