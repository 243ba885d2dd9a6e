"""Exporters: torch model -> model file, one module per format (see edgetl.formats)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ExportRequest:
    """Everything an exporter needs besides the model: where, what precision, metadata, calibration data."""

    out_dir: Path
    precision: str
    example: np.ndarray  # one preprocessed batch (N×3×H×W float32), for tracing
    metadata: dict[str, str]
    calibration: np.ndarray | None = None  # preprocessed train images for int8
    options: dict = field(default_factory=dict)  # format-specific settings from the recipe's `export` section
    fp32_file: Path | None = None  # the same format's fp32 file, which fp16 and int8 are made from
    onnx_file: Path | None = None  # the ONNX fp32 file (OpenVINO converts from it)


@dataclass
class ExportResult:
    """A written artifact and how it was made."""

    path: Path
    details: dict = field(default_factory=dict)


@contextlib.contextmanager
def silenced(*loggers: str) -> Iterator[None]:
    """Silence a converter or quantizer: Python warnings, the named loggers, stdout, and what C++ code (absl, XNNPACK,
    progress bars) writes straight to file descriptor 2. Failures still surface as exceptions."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved_fd = os.dup(2)
    levels = {name: logging.getLogger(name).level for name in loggers}
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            os.dup2(devnull.fileno(), 2)
            warnings.simplefilter("ignore")
            for name in loggers:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
