"""The one table of model formats: it drives export, verification and benchmarking alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import ModelFileError


@dataclass(frozen=True)
class Format:
    """A deployable model format: every fact about it that code outside its two modules needs.

    Its export module (`exporter`, needs torch) has `export(model, request, reporter)`, `options(recipe)` (the recipe
    settings it reads), `retry_steps(options)` (its accuracy-aware int8 steps) and, when it can make int8 from a QDQ
    ONNX model such as the QAT model, `from_qdq(qdq_file, request)`. Its runtime module (`runtime`, torch-free) has
    `load(path, threads)` returning a Runner and, optionally, `io_details(path)` (its input/output dtypes and
    quantization parameters, recorded in model.json; null where the module has none) and `embedded_metadata(path)`
    (the edgetl metadata inside the file, which `edgetl predict` reads from a model file without its model.json)."""

    name: str
    suffix: str
    precisions: tuple[str, ...]
    exporter: str  # module of the exporter (needs torch)
    export_package: str  # pip names of what the exporter uses (comma-separated)
    runtime: str  # module of the runtime (torch-free)
    runtime_package: str  # pip name of the runtime
    runtime_imports: tuple[str, ...]  # import names of the runtime, tried in order (a device may have only a fallback)
    device_requirement: str  # what a device pip-installs to run it (a bundle's requirements.txt)
    sidecar_suffixes: tuple[str, ...] = ()  # files that belong to the model file (OpenVINO's weights)
    converts_from: str | None = None  # the format whose fp32 file its exporter converts (ExportRequest.onnx_file)
    reference_file: str | None = None  # the machine-state reference it runs (in edgetl/bench/reference/)
    runtime_alternatives: tuple[str, ...] = ()  # other pip packages that provide `runtime_imports`
    # The machines (platform.machine(), arm64/AMD64 read as aarch64/x86_64) its runtime installs on from PyPI: the
    # formats a target allows by default.
    architectures: tuple[str, ...] = ("x86_64", "aarch64")
    extra: str | None = None  # the edgetl extra that installs the runtime (none: the base install has it)

    @property
    def packages(self) -> tuple[str, ...]:
        """Every pip package the format uses, exporter and runtimes, as recorded in an environment."""
        return (*(p.strip() for p in self.export_package.split(",")), self.runtime_package, *self.runtime_alternatives)

    def files(self, path: Path) -> list[Path]:
        """The model file and the files that go with it."""
        return [path, *(path.with_suffix(s) for s in self.sidecar_suffixes)]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("onnx", ".onnx", ("fp32", "fp16", "int8"), "edgetl.export.onnx", "onnx, onnxscript", "edgetl.runtime.onnx",
               "onnxruntime", ("onnxruntime",), "onnxruntime>=1.17", reference_file="reference.onnx"),
        Format("openvino", ".xml", ("fp32", "fp16", "int8"), "edgetl.export.openvino", "openvino, nncf",
               "edgetl.runtime.openvino", "openvino", ("openvino",), "openvino>=2024.0", (".bin",),
               converts_from="onnx", reference_file="reference.onnx", extra="openvino"),
        Format("tflite", ".tflite", ("fp32", "fp16", "int8"), "edgetl.export.tflite", "litert-torch, ai-edge-quantizer",
               "edgetl.runtime.tflite", "ai-edge-litert", ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
               "ai-edge-litert>=1.0", reference_file="reference.tflite", runtime_alternatives=("tflite-runtime",),
               extra="tflite"),
    ]
}
PRECISIONS = ("fp32", "fp16", "int8")


def register(fmt: Format) -> None:
    """Add a format to the table (a plug-in's, or a test's): recipes, export, verify, bench and bundle then know it."""
    if fmt.name in FORMATS:
        raise ValueError(f"format '{fmt.name}' is already in the table")
    if fmt.converts_from is not None and fmt.converts_from not in FORMATS:
        raise ValueError(f"format '{fmt.name}' converts from '{fmt.converts_from}', which is not in the table")
    FORMATS[fmt.name] = fmt


def runtime_packages() -> tuple[str, ...]:
    """The pip names of every runtime in the table (what an environment record lists)."""
    return tuple(dict.fromkeys(p for f in FORMATS.values() for p in (f.runtime_package, *f.runtime_alternatives)))


def formats_for_machine(machine: str) -> tuple[str, ...]:
    """The formats whose runtime installs on a `machine` (platform.machine(): x86_64, aarch64, armv7l, ...)."""
    machine = _MACHINE_ALIASES.get(machine.lower(), machine)
    return tuple(name for name, fmt in FORMATS.items() if machine in fmt.architectures)


_MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}


def format_for_file(path: str | Path) -> Format:
    """The format of a model file, by its suffix."""
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if fmt.suffix == suffix:
            return fmt
    known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
    raise ModelFileError(f"{path}: unknown model file type '{suffix}'; edgetl runs {known}.")
