"""ONNX models with onnxruntime (CPU). Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.formats import FORMATS
from edgetl.runtime import check_image_input, require_runtime, run_failed

_ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _onnx_dtype(onnx_type: str) -> str:
    """onnxruntime's 'tensor(float)' as numpy's 'float32' (other types by their ONNX name)."""
    return _ONNX_TYPES.get(onnx_type, onnx_type.removeprefix("tensor(").rstrip(")"))


class OnnxRunner:
    """An onnxruntime InferenceSession with fixed thread counts and sequential execution."""

    format = "onnx"

    def __init__(self, path: Path, threads: int = 1) -> None:
        ort = require_runtime(FORMATS["onnx"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(f"{path} could not be loaded by onnxruntime: {first_line(exc)}.") from None
        self.path, self.threads = path, threads
        check_image_input(path, "onnxruntime", [(i.name, _onnx_dtype(i.type), len(i.shape or ()))
                                                for i in self.session.get_inputs()])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in model_input.shape)
        self.output_name = self.session.get_outputs()[0].name

    def embedded_metadata(self) -> dict[str, str]:
        """The file's metadata_props, from this session (module-level `embedded_metadata` opens the file itself)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch."""
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # onnxruntime's own exception types
            raise run_failed(self.path, "onnxruntime", exc) from None

    def prepare(self, batch: np.ndarray):
        """The bare synchronous call with `batch` as input, for timing."""
        feed, outputs = {self.input_name: batch}, [self.output_name]
        return lambda: self.session.run(outputs, feed)


def load(path: Path, threads: int = 1) -> OnnxRunner:
    """Load an .onnx file."""
    return OnnxRunner(path, threads)


def _session(path: Path):
    """A plain CPU session of the file, for reading what it says about itself."""
    ort = require_runtime(FORMATS["onnx"])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ModelFileError(f"{path} could not be loaded by onnxruntime: {first_line(exc)}.") from None


def embedded_metadata(path: Path) -> dict[str, str]:
    """The file's metadata_props (edgetl writes its labels and preprocessing there), {} when it has none."""
    return dict(_session(path).get_modelmeta().custom_metadata_map)


def io_details(path: Path) -> dict:
    """The dtypes of the file's (first) input and output tensor as onnxruntime opens it: `input_dtype`,
    `output_dtype` (numpy names), and `input_quantization`/`output_quantization`, always None (an ONNX graph's
    quantization parameters live in its QuantizeLinear nodes, not on its input and output tensors)."""
    session = _session(path)
    return {"input_dtype": _onnx_dtype(session.get_inputs()[0].type), "input_quantization": None,
            "output_dtype": _onnx_dtype(session.get_outputs()[0].type), "output_quantization": None}
