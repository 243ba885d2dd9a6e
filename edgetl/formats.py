"""The one table of model formats: it drives export, verification and benchmarking alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import ModelFileError


@dataclass(frozen=True)
class Format:
    """A deployable model format."""

    name: str
    suffix: str
    precisions: tuple[str, ...]
    exporter: str  # module in edgetl.export (needs torch)
    export_package: str  # pip name of what the exporter uses
    runtime: str  # module in edgetl.runtime (torch-free)
    runtime_package: str  # pip name of the runtime
    runtime_imports: tuple[str, ...]  # import names of the runtime, tried in order (a device may have only a fallback)
    sidecar_suffixes: tuple[str, ...] = ()  # files that belong to the model file (OpenVINO's weights)

    def files(self, path: Path) -> list[Path]:
        """The model file and the files that go with it."""
        return [path, *(path.with_suffix(s) for s in self.sidecar_suffixes)]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("onnx", ".onnx", ("fp32", "fp16", "int8"), "edgetl.export.onnx", "onnx", "edgetl.runtime.onnx",
               "onnxruntime", ("onnxruntime",)),
        Format("openvino", ".xml", ("fp32", "fp16", "int8"), "edgetl.export.openvino", "openvino, nncf",
               "edgetl.runtime.openvino", "openvino", ("openvino",), (".bin",)),
        Format("tflite", ".tflite", ("fp32", "fp16", "int8"), "edgetl.export.tflite", "litert-torch, ai-edge-quantizer",
               "edgetl.runtime.tflite", "ai-edge-litert", ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")),
    ]
}
PRECISIONS = ("fp32", "fp16", "int8")


def format_for_file(path: str | Path) -> Format:
    """The format of a model file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
    raise ModelFileError(f"{path}: unknown model file type '{suffix}'; edgetl runs {known}.")
