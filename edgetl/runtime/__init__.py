"""Runners: load an exported model file with its own runtime and run batches. Torch-free."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from edgetl.errors import ModelFileError, RuntimeMissingError, first_line
from edgetl.formats import FORMATS, Format, format_for_file


class Runner(Protocol):
    """A loaded model: `run` takes a float32 N×C×H×W batch and returns N×classes logits."""

    path: Path
    format: str
    input_shape: tuple[int | None, ...]

    def run(self, batch: np.ndarray) -> np.ndarray: ...


_IMAGE_DTYPES = ("float32", "float16", "uint8", "int8")


def check_image_input(path: Path, runtime: str, inputs: list[tuple[str, str, int]]) -> None:
    """Refuse a model edgetl cannot feed: it runs image classifiers with one N×C×H×W (or N×H×W×C) input of float or
    quantized integer pixels. `inputs`: (name, numpy dtype name, rank) of each model input."""
    if len(inputs) != 1:
        names = ", ".join(name for name, _, _ in inputs[:5]) or "none"
        raise ModelFileError(f"{path} has {len(inputs)} inputs ({names}); edgetl runs image classifiers with one image "
                             f"input (N×3×H×W), so {runtime} cannot be fed by it.")
    name, dtype, rank = inputs[0]
    if dtype not in _IMAGE_DTYPES or rank != 4:
        raise ModelFileError(f"{path}: its input '{name}' is a rank-{rank} {dtype} tensor; edgetl runs image "
                             "classifiers whose one input is a 4-d batch of images (float32, float16, uint8 or int8).")


def run_failed(path: Path, runtime: str, exc: Exception) -> ModelFileError:
    """The error for a model that loads but fails when it runs (the runtime's own first line kept)."""
    return ModelFileError(f"{path} loads but fails to run in {runtime}: {first_line(exc)}.")


def require_runtime(fmt: Format):
    """Import a format's runtime package (or its fallback), or say clearly how to install it."""
    problems = []
    for name in fmt.runtime_imports:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
    raise RuntimeMissingError(f"Running {fmt.name} models needs the Python package '{fmt.runtime_package}', "
                              f"which is not importable here ({'; '.join(problems)}). Install it with "
                              f"`pip install {fmt.runtime_package}`"
                              + (f" (or edgetl with it: `pip install 'edgetl[{fmt.extra}]'`)." if fmt.extra else "."))


def load_runner(path: str | Path, threads: int = 1) -> Runner:
    """Load a model file with its format's runtime, using `threads` intra-op threads."""
    path = Path(path)
    fmt = format_for_file(path)
    for needed in fmt.files(path):
        if not needed.is_file():
            raise ModelFileError(f"Model file {needed} does not exist"
                                 f"{'' if needed == path else f' (the {fmt.name} model {path.name} needs it)'}.")
    module = importlib.import_module(fmt.runtime)
    return module.load(path, threads=threads)


def known_formats() -> list[str]:
    """Names of the formats edgetl can run."""
    return list(FORMATS)
