"""OpenVINO IR models (.xml + .bin) on the CPU plugin. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError
from edgetl.formats import FORMATS
from edgetl.runtime import require_runtime


class OpenVinoRunner:
    """A model compiled for the CPU with a fixed thread count, one stream, latency hint, and fp32 inference."""

    format = "openvino"

    def __init__(self, path: Path, threads: int = 1) -> None:
        ov = require_runtime(FORMATS["openvino"])
        core = ov.Core()
        # One stream and an explicit thread count make a synchronous call comparable to the other runtimes;
        # an f32 precision hint keeps CPUs with bf16 support from silently running in bf16.
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path} could not be loaded by OpenVINO: {first_line}.") from None
        self.request = self.compiled.create_infer_request()
        self.path, self.threads = path, threads
        shape = self.compiled.inputs[0].get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch (a synchronous infer request)."""
        self.request.infer({0: batch})
        return self.request.get_output_tensor(0).data.copy()

    def prepare(self, batch: np.ndarray):
        """The bare synchronous call (`infer()`) with `batch` bound as the input tensor, for timing."""
        ov = require_runtime(FORMATS["openvino"])
        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(batch)))
        return self.request.infer


def load(path: Path, threads: int = 1) -> OpenVinoRunner:
    """Load an OpenVINO .xml (with its .bin beside it)."""
    return OpenVinoRunner(path, threads)
