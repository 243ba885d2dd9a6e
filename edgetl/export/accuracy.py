"""Accuracy-aware int8: when post-training int8 loses more val accuracy than the budget, retry with stronger
settings in a fixed order — per-channel weights, more calibration images, bias correction, then excluding the
most sensitive layers — until the artifact is within budget. Each format says which of these steps it has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgetl.export import ExportRequest, ExportResult
from edgetl.progress import SILENT, Reporter


def quantize_within_budget(exporter, model: torch.nn.Module, request: ExportRequest,
                           accuracy: Callable[[Path], float], reference_accuracy: float, budget_pp: float,
                           more_calibration: Callable[[], np.ndarray], reporter: Reporter = SILENT) -> ExportResult:
    """`exporter.export` int8, then the format's retry steps (cumulative) until `reference_accuracy − accuracy(file)`
    is within `budget_pp`; the details record every attempt."""
    attempts = []

    def attempt(step: str, req: ExportRequest) -> tuple[ExportResult, float]:
        result = exporter.export(model, req, reporter)
        measured = accuracy(result.path)
        drop = reference_accuracy - measured
        attempts.append({"step": step, "val_accuracy": round(measured, 4), "drop_pp": round(drop, 4),
                         **{k: v for k, v in result.details.items() if k in ("excluded", "kept_fp32_nodes")}})
        reporter.info(f"  int8 {step}: val acc {measured:.2f}% (a drop of {drop:.2f} pp, budget {budget_pp:g})")
        return result, drop

    result, drop = attempt("plain", request)
    options = dict(request.options)
    for step, updates in exporter.retry_steps(options):
        if drop <= budget_pp:
            break
        options |= updates
        current = replace(request, options=dict(options))
        if options.get("more_calibration"):
            current = replace(current, calibration=more_calibration())
        result, drop = attempt(step, current)
    result.details["accuracy_aware_retry"] = {"budget_pp": budget_pp, "within_budget": drop <= budget_pp,
                                              "attempts": attempts,
                                              "steps_available": [s for s, _ in exporter.retry_steps(request.options)]}
    return result
