"""A throwaway model format for tests/test_format_contract.py: an .npz file holding an ONNX graph's bytes and the
artifact's metadata, exported from the torch model and run by onnxruntime. It lives outside edgetl on purpose: a
format is one row of edgetl.formats plus an export and a runtime module, and nothing else in edgetl knows it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edgetl.export import ExportRequest, ExportResult
from edgetl.fsutil import atomic_path
from edgetl.progress import SILENT, Reporter

# ---- the export module's side (needs torch) ----


def export(model, request: ExportRequest, reporter: Reporter = SILENT) -> ExportResult:
    """fp32 only: the model's ONNX graph, its bytes stored in model.npz with the metadata."""
    from edgetl.export.onnx import export_fp32

    request.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=request.out_dir) as scratch:
        exported = export_fp32(model, ExportRequest(Path(scratch), "fp32", request.example, request.metadata))
        graph = np.frombuffer(exported.path.read_bytes(), dtype=np.uint8)
    path = request.out_dir / "model.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, graph=graph, metadata=np.array(json.dumps(request.metadata)))
    return ExportResult(path, {"converter": "onnx graph in an npz container", "graph_bytes": int(graph.size)})


def options(recipe) -> dict:
    return {}


def retry_steps(options: dict) -> list:
    return []


# ---- the runtime module's side (torch-free) ----


class NpzRunner:
    format = "npz"

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        with np.load(path) as saved:
            graph = saved["graph"].tobytes()
        settings = ort.SessionOptions()
        settings.intra_op_num_threads, settings.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(graph, settings, providers=["CPUExecutionProvider"])
        self.path, self.threads = Path(path), threads
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in model_input.shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def load(path: Path, threads: int = 1) -> NpzRunner:
    return NpzRunner(path, threads)
