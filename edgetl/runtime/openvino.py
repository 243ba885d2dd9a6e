"""OpenVINO IR models (.xml + .bin) on the CPU plugin. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.formats import FORMATS
from edgetl.runtime import check_image_input, require_runtime, run_failed

_OV_TYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8"}


class OpenVinoRunner:
    """A model compiled for the CPU with a fixed thread count, one stream, latency hint, and fp32 inference.

    A model whose batch dimension is dynamic is compiled with a static shape per batch size it is given (batch 1
    at load): the CPU plugin runs static shapes faster, and a deployed model and `benchmark_app -shape` use them.
    """

    format = "openvino"

    def __init__(self, path: Path, threads: int = 1) -> None:
        ov = require_runtime(FORMATS["openvino"])
        self.core = ov.Core()
        # One stream and an explicit thread count make a synchronous call comparable to the other runtimes;
        # an f32 precision hint keeps CPUs with bf16 support from silently running in bf16.
        self.config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": "f32"}
        self.path, self.threads = path, threads
        try:
            self.model = self.core.read_model(str(path))
            inputs = [(i.get_any_name() if i.get_names() else "?", _OV_TYPES.get(i.get_element_type().get_type_name(),
                       i.get_element_type().get_type_name()), i.get_partial_shape().rank.get_length()
                       if i.get_partial_shape().rank.is_static else -1) for i in self.model.inputs]
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            raise ModelFileError(f"{path} could not be loaded by OpenVINO: {first_line(exc)}.") from None
        check_image_input(path, "OpenVINO", inputs)
        try:
            shape = self.model.inputs[0].get_partial_shape()
            self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)
            self._requests: dict[int, object] = {}
            self._batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else 1
            self.request = self._request(self._batch)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            raise ModelFileError(f"{path} could not be loaded by OpenVINO: {first_line(exc)}.") from None

    def _request(self, batch: int):
        """The infer request of the model compiled for `batch` (compiled on first use)."""
        if batch not in self._requests:
            if self.input_shape[0] is None:
                shape = self.model.inputs[0].get_partial_shape()
                shape[0] = batch
                self.model.reshape({self.model.inputs[0]: shape})
            self._requests[batch] = self.core.compile_model(self.model, "CPU", self.config).create_infer_request()
        return self._requests[batch]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch (a synchronous infer request)."""
        try:
            request = self._request(len(batch))
            request.infer({0: batch})
            return request.get_output_tensor(0).data.copy()
        except Exception as exc:  # OpenVINO's RuntimeError subclasses
            raise run_failed(self.path, "OpenVINO", exc) from None

    def prepare(self, batch: np.ndarray):
        """The bare synchronous call (`infer()`) with `batch` bound as the input tensor, for timing."""
        ov = require_runtime(FORMATS["openvino"])
        request = self._request(len(batch))
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(batch)))
        return request.infer


def load(path: Path, threads: int = 1) -> OpenVinoRunner:
    """Load an OpenVINO .xml (with its .bin beside it)."""
    return OpenVinoRunner(path, threads)


def embedded_metadata(path: Path) -> dict[str, str]:
    """The model's rt_info under "edgetl" (edgetl writes its labels and preprocessing there), {} when it has none."""
    from edgetl.artifact import EMBEDDED_FIELDS

    ov = require_runtime(FORMATS["openvino"])
    try:
        model = ov.Core().read_model(str(path))
        return {key: model.get_rt_info(["edgetl", key]).astype(str)
                for key in (*EMBEDDED_FIELDS, "precision", "quantization") if model.has_rt_info(["edgetl", key])}
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for bad files
        raise ModelFileError(f"{path} could not be loaded by OpenVINO: {first_line(exc)}.") from None


def io_details(path: Path) -> dict:
    """The element types of the (first) input and output of the model compiled for the CPU, as numpy names
    (`input_dtype`, `output_dtype`); `input_quantization`/`output_quantization` are None (OpenVINO IR tensors
    carry no scale: an int8 IR quantizes inside the graph, its FakeQuantize nodes)."""
    ov = require_runtime(FORMATS["openvino"])
    try:
        compiled = ov.Core().compile_model(str(path), "CPU")
        types = [port.get_element_type().get_type_name() for port in (compiled.inputs[0], compiled.outputs[0])]
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for bad files
        raise ModelFileError(f"{path} could not be loaded by OpenVINO: {first_line(exc)}.") from None
    return {"input_dtype": _OV_TYPES.get(types[0], types[0]), "input_quantization": None,
            "output_dtype": _OV_TYPES.get(types[1], types[1]), "output_quantization": None}
