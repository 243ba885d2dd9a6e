"""The machine-state reference: a small fixed network timed for a moment just before and just after every model
trial of a baseline measurement, with the same runtime and threads. Torch-free.

Why: a saved baseline holds trials from one moment of the machine, and some machines run in distinct speed states
for seconds to minutes. On this project's 2-core CI VM, 2-thread inference switches between two levels about
1.4× apart (likely the host sharing the second vCPU or not), often several times within one `edgetl bench` run. A model measured
in the slow state against a baseline saved in the fast one looks 1.4× slower, though nothing changed. The
reference shows the state of each round; the gate then compares rounds of the same state (see
`edgetl.bench.baseline`). It does not rescale latencies: how much a state slows a model depends on the model
(the reference's own ratio is larger than a MobileNetV2's), so it only tells which rounds are comparable.

The files are made by `python -m edgetl.bench.reference.build` (torch needed) and never change within a schema
version: a baseline records the reference's sha256, and states are only compared between identical references.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def reference_file(fmt: str) -> Path:
    """The reference model file that `fmt`'s runtime runs (its row's reference_file; OpenVINO reads the ONNX one)."""
    from edgetl.errors import BenchUsageError
    from edgetl.formats import FORMATS

    name = FORMATS[fmt].reference_file
    if name is None:
        raise BenchUsageError(f"the {fmt} format has no machine-state reference (its row in edgetl.formats names "
                              "none), so a baseline cannot be saved or judged for it.")
    return HERE / name


def load_reference(fmt: str, threads: int):
    """A runner of the reference model on `fmt`'s runtime with `threads` threads (the file may be another
    format's, which this runtime reads: the format's own runtime module loads it)."""
    import importlib

    from edgetl.formats import FORMATS

    return importlib.import_module(FORMATS[fmt].runtime).load(reference_file(fmt), threads=threads)


def reference_input(runner) -> np.ndarray:
    """A seeded random batch of 1 for the reference's input shape."""
    shape = [1 if d is None else d for d in runner.input_shape]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


@functools.cache
def reference_id(fmt: str) -> str:
    """What identifies the reference a row's states were measured with: the runtime, its version and the file's
    sha256 (another runtime version runs the reference at another speed: its looks are not comparable)."""
    from edgetl.bench.environment import package_version
    from edgetl.formats import FORMATS
    from edgetl.fsutil import sha256_file

    package = FORMATS[fmt].runtime_package
    return f"{fmt}:{package}=={package_version(package)}:{sha256_file(reference_file(fmt))}"
