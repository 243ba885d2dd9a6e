"""ONNX fp32 -> OpenVINO IR (.xml + .bin): fp32, fp16-compressed weights, and int8 with NNCF post-training
quantization (optionally accuracy-aware: `nncf.quantize_with_accuracy_control` within the recipe's budget)."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from edgetl.errors import ExportError, first_line
from edgetl.export import ExportRequest, ExportResult, silenced
from edgetl.fsutil import _storage_error
from edgetl.progress import SILENT, Reporter


def _save(ov_model, request: ExportRequest, compress_to_fp16: bool) -> Path:
    """Write model.xml and model.bin into the request's folder; both appear only once both are complete."""
    import openvino as ov

    for key, value in request.metadata.items():
        ov_model.set_rt_info(str(value), ["edgetl", key])
    path = request.out_dir / "model.xml"
    try:
        request.out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".openvino-", dir=request.out_dir) as scratch:
            ov.save_model(ov_model, str(Path(scratch) / "model.xml"), compress_to_fp16=compress_to_fp16)
            for suffix in (".bin", ".xml"):  # the .xml last: a reader that finds it finds its weights too
                written = Path(scratch) / f"model{suffix}"
                os.chmod(written, 0o644)
                os.replace(written, path.with_suffix(suffix))
    except OSError as exc:
        raise _storage_error(path, exc) from exc
    return path


def _dataset(images: np.ndarray):
    return _import_nncf().Dataset([np.ascontiguousarray(images[i:i + 1], dtype=np.float32) for i in range(len(images))])


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("nncf", "openvino"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _import_nncf():
    # NNCF imports torch's C++ extension helpers, which log a CUDA warning on CPU-only machines.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nncf
    return nncf


def quantize(ov_model, request: ExportRequest, reporter: Reporter = SILENT):
    """NNCF post-training int8 of an OpenVINO model; returns (quantized model, details)."""
    nncf = _import_nncf()

    options = request.options
    if request.calibration is None or not len(request.calibration):
        raise ExportError("OpenVINO int8 quantization needs calibration images, and none were given.")
    calibration = _dataset(request.calibration)
    fast_bias_correction = not options.get("bias_correction", False)
    kept = edge_nodes(ov_model, list(options.get("keep_fp32", ())))
    common = {"subset_size": len(request.calibration), "fast_bias_correction": fast_bias_correction,
              **({"ignored_scope": nncf.IgnoredScope(names=kept)} if kept else {})}
    details = {"quantization": "ptq", "tool": f"nncf {nncf.__version__}", "calibration_images": len(request.calibration),
               "bias_correction": "full" if not fast_bias_correction else "fast",
               "kept_fp32": list(options.get("keep_fp32", ())), "kept_fp32_nodes": kept, "activations": "uint8/int8 (NNCF CPU "
               "preset: performance)", "weights": "int8 per-channel symmetric"}
    with warnings.catch_warnings():
        _quiet()
        try:
            if options.get("accuracy_aware"):
                val_inputs, val_labels = options["validation"]
                max_drop = options["max_drop_pp"] / 100.0

                def validate(compiled, items) -> float:
                    hits = [int(np.argmax(compiled(x)[0], axis=1)[0] == y) for x, y in items]
                    return float(np.mean(hits))

                validation = nncf.Dataset([(np.ascontiguousarray(val_inputs[i:i + 1], dtype=np.float32),
                                            int(val_labels[i])) for i in range(len(val_labels))],
                                          lambda item: item[0])
                with reporter.task("NNCF accuracy-aware int8 quantization", None), silenced("nncf", "openvino"):
                    quantized = nncf.quantize_with_accuracy_control(
                        ov_model, calibration, validation, validation_fn=lambda m, d: validate(m, d),
                        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, **common)
                details |= {"accuracy_aware": True, "max_drop_pp": options["max_drop_pp"],
                            "kept_fp32_nodes": _float_nodes(quantized)}
            else:
                with reporter.task(f"NNCF int8 quantization ({len(request.calibration)} calibration images)", None), \
                        silenced("nncf", "openvino"):
                    quantized = nncf.quantize(ov_model, calibration, **common)
        except Exception as exc:  # NNCF raises many types; the build reports one line
            raise ExportError(f"NNCF int8 quantization failed: {first_line(exc)}") from None
    return quantized, details


def edge_nodes(ov_model, keep_fp32: list[str]) -> list[str]:
    """Names of the first convolution and/or the last MatMul (the classifier) of an OpenVINO model."""
    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    names = []
    if "first_conv" in keep_fp32:
        names += [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"][:1]
    if "classifier" in keep_fp32:
        names += [op.get_friendly_name() for op in ops if op.get_type_name() == "MatMul"][-1:]
    return names


def _float_nodes(ov_model) -> list[str]:
    """Convolutions and MatMuls whose input is not quantized (left in float)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
            and op.input_value(0).get_node().get_type_name() != "FakeQuantize"]


def convert_onnx(onnx_file: Path):
    """An ONNX file as an OpenVINO model (QDQ ONNX becomes an int8 IR)."""
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_file))
    except Exception as exc:
        raise ExportError(f"OpenVINO could not convert {onnx_file}: {first_line(exc)}") from None


def export(model: torch.nn.Module, request: ExportRequest, reporter: Reporter = SILENT) -> ExportResult:
    """The format's entry point (see edgetl.formats): fp32 converted from the ONNX fp32 file, fp16 and int8 from it."""
    import openvino as ov

    details: dict = {"converter": f"openvino {ov.__version__} convert_model"}
    if request.precision == "fp32":
        ov_model = convert_onnx(request.onnx_file)
    else:
        ov_model = ov.Core().read_model(str(request.fp32_file))
    if request.precision == "int8":
        ov_model, quantized = quantize(ov_model, request, reporter)
        details |= quantized
    if request.precision == "fp16":
        details["weights"] = "fp16 (decompressed to fp32 at load on CPUs without fp16 compute)"
    return ExportResult(_save(ov_model, request, compress_to_fp16=request.precision == "fp16"), details)


def from_qdq_onnx(onnx_file: Path, request: ExportRequest) -> ExportResult:
    """An int8 IR from a quantized (QDQ) ONNX model, e.g. the QAT model, with its learned scales."""
    path = _save(convert_onnx(onnx_file), request, compress_to_fp16=False)
    return ExportResult(path, {"converter": "openvino convert_model of the QDQ ONNX", "quantization": "qat"})


def retry_steps(options: dict) -> list[tuple[str, dict]]:
    """The accuracy-aware retry steps OpenVINO int8 has (see edgetl.export.accuracy). NNCF weights are always
    per-channel; the last step is NNCF's accuracy control, which reverts the most sensitive layers to float."""
    return [("more_calibration", {"more_calibration": True}), ("bias_correction", {"bias_correction": True}),
            ("exclude_sensitive (nncf accuracy control)", {"accuracy_aware": True})]


def options(recipe) -> dict:
    """The recipe's settings this exporter reads (ExportRequest.options)."""
    return {"accuracy_aware": recipe.export.openvino.accuracy_control,
            "max_drop_pp": recipe.verify.max_accuracy_drop_pp, "keep_fp32": recipe.export.int8_keep_fp32}


def from_qdq(qdq_file: Path, request: ExportRequest) -> ExportResult:
    """The int8 artifact from a quantized (QDQ) ONNX model such as the QAT model's (see from_qdq_onnx)."""
    return from_qdq_onnx(qdq_file, request)
