"""Exporters: torch model -> model file, one module per format (see edgetl.formats)."""

from __future__ import annotations

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
