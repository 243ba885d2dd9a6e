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
    runtime: str  # module in edgetl.runtime (torch-free)
    runtime_package: str  # pip name of the runtime
    runtime_import: str  # import name of the runtime


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("onnx", ".onnx", ("fp32", "int8"), "edgetl.export.onnx", "edgetl.runtime.onnx", "onnxruntime",
               "onnxruntime"),
    ]
}


def format_for_file(path: str | Path) -> Format:
    """The format of a model file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
    raise ModelFileError(f"{path}: unknown model file type '{suffix}'; edgetl runs {known}.")
