"""Torch -> TFLite without TensorFlow: litert-torch converts the model (NHWC input by default, faster with
XNNPACK); ai-edge-quantizer makes fp16 weights, full-integer int8 (calibrated) or dynamic-range int8 from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgetl.errors import ExportError, StorageError, first_line
from edgetl.export import ExportRequest, ExportResult, silenced
from edgetl.export.onnx import relu6_as_clip
from edgetl.fsutil import atomic_path
from edgetl.progress import SILENT, Reporter
from edgetl.runtime.tflite import METADATA_NAME, embedded_metadata


def with_metadata(content: bytes, metadata: dict[str, str]) -> bytes:
    """The TFLite flatbuffer with `metadata` stored as a JSON metadata entry named 'edgetl', and — when it names the
    labels and preprocessing — the standard TFLITE_METADATA entry with labels.txt packed after the flatbuffer, which
    LiteRT's and MediaPipe's metadata readers understand (edgetl.export.tflite_metadata)."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from edgetl.export import tflite_metadata

    model = fb.read_model_from_bytearray(bytearray(content))  # resolves buffers stored after the flatbuffer
    entries = {METADATA_NAME: json.dumps(metadata, sort_keys=True).encode()}
    files = {}
    if tflite_metadata.wanted(metadata):
        entries[tflite_metadata.ENTRY_NAME], labels = tflite_metadata.from_edgetl(metadata)
        files[tflite_metadata.LABELS_FILE] = labels
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name.decode() if isinstance(m.name, bytes) else m.name) not in entries]
    for name, data in entries.items():
        buffer = fb.schema_fb.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = fb.schema_fb.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    written = bytes(fb.convert_object_to_bytearray(model))
    return tflite_metadata.pack_files(written, files) if files else written


def read_metadata(path: Path) -> dict[str, str]:
    """The 'edgetl' metadata entry of a .tflite file written by edgetl ({} when absent)."""
    return embedded_metadata(path)


def _write(path: Path, content: bytes, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(with_metadata(content, metadata))


def convert_fp32(model: torch.nn.Module, request: ExportRequest) -> ExportResult:
    """litert-torch conversion at batch 1; NHWC input and output layout unless `options.layout` is `nchw`."""
    layout = request.options.get("layout", "nhwc")
    example = torch.from_numpy(np.array(request.example[:1], dtype=np.float32))
    try:
        with silenced("absl", "litert_torch", "torch.export", "torch._dynamo", "ai_edge_quantizer"):
            import litert_torch  # its import logs (absl, oneDNN) are silenced too

            module = relu6_as_clip(model.eval())  # the same graph, converted faster
            if layout == "nhwc":
                module, example = litert_torch.to_channel_last_io(module, args=[0]).eval(), example.permute(0, 2, 3, 1)
            content = litert_torch.convert(module, (example.contiguous(),)).model_content()
    except StorageError:
        raise
    except Exception as exc:  # the converter raises many types
        raise ExportError(f"TFLite conversion (litert-torch) failed: {first_line(exc)}") from None
    path = request.out_dir / "model.tflite"
    _write(path, bytes(content), request.metadata | {"layout": layout.upper(),
                                                      "input_shape": json.dumps(list(example.shape))})
    return ExportResult(path, {"converter": "litert-torch", "layout": layout.upper()})


def edge_scopes(path: Path, keep_fp32: list[str]) -> list[str]:
    """The op scopes (output tensor names) of the first convolution and/or the last fully-connected layer."""
    import re

    from ai_edge_litert.tools import flatbuffer_utils as fb
    from ai_edge_quantizer.utils.tfl_flatbuffer_utils import get_op_scope

    model = fb.read_model(str(path))
    graph = model.subgraphs[0]
    ops = [(fb.opcode_to_name(model, op.opcodeIndex), op) for op in graph.operators]

    def scope(op) -> str:  # exactly the scope string ai-edge-quantizer matches recipes against
        return "^" + re.escape(get_op_scope(op, graph.tensors)) + "$"

    scopes = []
    if "first_conv" in keep_fp32:
        scopes += [scope(op) for name, op in ops if name == "CONV_2D"][:1]
    if "classifier" in keep_fp32:
        scopes += [scope(op) for name, op in ops if name == "FULLY_CONNECTED"][-1:]
    return scopes


def _quantizer_recipe(precision: str, int8: str, keep_scopes: list[str]):
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    every = qtyping.TFLOperationName.ALL_SUPPORTED
    if precision == "fp16":
        manager.add_weight_only_config(".*", every, 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        return manager.get_quantization_recipe()
    if int8 == "full":
        manager.add_static_config(".*", every, activation_num_bits=8, weight_num_bits=8)
    else:
        manager.add_dynamic_config(".*", every, num_bits=8)
    for regex in keep_scopes:  # a later, narrower scope wins: these ops stay in float
        manager.add_quantization_config(regex, every, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


def quantize(request: ExportRequest, reporter: Reporter = SILENT) -> ExportResult:
    """fp16 weights, or int8 (`options.int8`: `full` integer with calibration, or `dynamic` range) of the fp32 file."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    int8 = request.options.get("int8", "full")
    source = request.fp32_file
    metadata = read_metadata(source)
    layout = metadata.get("layout", "NHWC")
    keep_fp32 = list(request.options.get("keep_fp32", ())) if request.precision == "int8" else []
    keep_scopes = edge_scopes(source, keep_fp32)
    try:
        with silenced("absl", "litert_torch", "torch.export", "torch._dynamo", "ai_edge_quantizer"):
            engine = quantizer.Quantizer(str(source), _quantizer_recipe(request.precision, int8, keep_scopes))
            calibration_result = None
            if engine.need_calibration:
                if request.calibration is None or not len(request.calibration):
                    raise ExportError("TFLite full-integer int8 needs calibration images, and none were given.")
                signature = Interpreter(model_path=str(source))
                key, spec = next(iter(signature.get_signature_list().items()))
                images = np.asarray(request.calibration, dtype=np.float32)
                if layout == "NHWC":
                    images = images.transpose(0, 2, 3, 1)
                samples = [{spec["inputs"][0]: np.ascontiguousarray(images[i:i + 1])} for i in range(len(images))]
                with reporter.task(f"TFLite int8 calibration ({len(samples)} images)", None):
                    calibration_result = engine.calibrate({key: samples})
            content = engine.quantize(calibration_result, enable_progress_report=False).quantized_model
    except (ExportError, StorageError):
        raise
    except Exception as exc:
        raise ExportError(f"ai-edge-quantizer could not quantize {source}: {first_line(exc)}") from None
    path = request.out_dir / "model.tflite"
    # The fp32 file's layout and input shape are this file's too (the request's metadata says the torch model's NCHW).
    _write(path, bytes(content), {**metadata, **request.metadata, "layout": layout,
                                  **({"input_shape": metadata["input_shape"]} if "input_shape" in metadata else {})})
    details = {"tool": "ai-edge-quantizer", "layout": layout}
    if request.precision == "int8":
        from edgetl.runtime.tflite import io_details

        io = io_details(path)  # what the quantizer made of the I/O tensors (with a float classifier: float32 logits)
        details |= {"quantization": "ptq", "int8": int8,
                    "activations": "int8" if int8 == "full" else "float32 (quantized at run time)",
                    "weights": "int8 per-channel", "kept_fp32": keep_fp32, "kept_fp32_nodes": keep_scopes,
                    "input_tensor": io["input_dtype"], "output_tensor": io["output_dtype"],
                    **({"calibration_images": len(request.calibration)} if int8 == "full" else {})}
    else:
        details["weights"] = "fp16 (dequantized to fp32 at load)"
    return ExportResult(path, details)


def export(model: torch.nn.Module, request: ExportRequest, reporter: Reporter = SILENT) -> ExportResult:
    """The format's entry point (see edgetl.formats): fp32 from the torch model, fp16/int8 from the fp32 file."""
    if request.precision == "fp32":
        return convert_fp32(model, request)
    return quantize(request, reporter)


def retry_steps(options: dict) -> list[tuple[str, dict]]:
    """The accuracy-aware retry steps TFLite int8 has (see edgetl.export.accuracy): ai-edge-quantizer's weights are
    always per-channel and it has no bias correction or layer exclusion by sensitivity here, so only more
    calibration images."""
    return [("more_calibration", {"more_calibration": True})] if options.get("int8", "full") == "full" else []


def options(recipe) -> dict:
    """The recipe's settings this exporter reads (ExportRequest.options)."""
    return {"layout": recipe.export.tflite.layout, "int8": recipe.export.tflite.int8,
            "keep_fp32": recipe.export.int8_keep_fp32}
