"""Reading a run's summary.json: checked field by field, so a damaged or hand-edited file is one clear error naming
the field, never a traceback in `report`, `compare` or `bundle`. Torch-free."""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path

from edgetl.errors import EdgetlError, ReportError

_TEXT = ("name", "format", "precision", "path")
_NUMBERS = ("val_accuracy", "accuracy_drop_pp", "max_abs_logit_diff", "prediction_agreement")
_LATENCY = ("p50", "p90", "p99", "mean", "min", "max", "std")
_OBJECTS = ("model", "data", "budget", "search", "stages", "environment", "distill", "prune", "quantize",
            "reference_model", "target", "choice")


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_latency(latency, where: str, error: type[EdgetlError]) -> None:
    if latency is None:
        return
    if not isinstance(latency, dict):
        raise error(f"{where} must be an object of latency figures (ms), got {type(latency).__name__}.")
    for key in _LATENCY:
        if latency.get(key) is not None and not _is_number(latency[key]):
            raise error(f"{where}.{key} must be a number of milliseconds, got {str(latency[key])[:60]!r}.")


def check_artifact(artifact, where: str, error: type[EdgetlError]) -> dict:
    """One entry of `artifacts`, checked; returns it."""
    if not isinstance(artifact, dict):
        raise error(f"{where} must be an object, got {type(artifact).__name__}.")
    for key in _TEXT:
        if not isinstance(artifact.get(key), str):
            raise error(f"{where}.{key} must be a string, got {str(artifact.get(key))[:60]!r}.")
    for key in _NUMBERS:
        if artifact.get(key) is not None and not _is_number(artifact[key]):
            raise error(f"{where}.{key} must be a number, got {str(artifact[key])[:60]!r}.")
    if not _is_number(artifact.get("size_bytes")) or artifact["size_bytes"] < 0:
        raise error(f"{where}.size_bytes must be a number of bytes, got {str(artifact.get('size_bytes'))[:60]!r}.")
    _check_latency(artifact.get("latency_ms"), f"{where}.latency_ms", error)
    by_threads = artifact.get("latency_by_threads")
    if by_threads is not None:
        if not isinstance(by_threads, dict):
            raise error(f"{where}.latency_by_threads must be an object keyed by thread count.")
        for threads, latency in by_threads.items():
            _check_latency(latency, f"{where}.latency_by_threads.{threads}", error)
    hashes = artifact.get("files_sha256")
    if hashes is not None and not (isinstance(hashes, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in hashes.items())):
        raise error(f"{where}.files_sha256 must map file paths to sha256 strings.")
    if artifact.get("sha256") is not None and not isinstance(artifact["sha256"], str):
        raise error(f"{where}.sha256 must be a string.")
    return artifact


def check_summary(summary, path: Path | str, error: type[EdgetlError] = ReportError) -> dict:
    """`summary` (parsed summary.json at `path`) if it has the shape readers rely on; else `error` naming the field."""
    if not isinstance(summary, dict):
        raise error(f"{path}: not an edgetl summary (a JSON object is expected, not {type(summary).__name__}).")
    if not isinstance(summary.get("artifacts"), list):
        raise error(f"{path}: not an edgetl summary (no `artifacts` list).")
    for number, artifact in enumerate(summary["artifacts"]):
        check_artifact(artifact, f"{path}: artifacts[{number}]", error)
    for key in _OBJECTS:
        if summary.get(key) is not None and not isinstance(summary[key], dict):
            raise error(f"{path}: `{key}` must be an object, got {type(summary[key]).__name__}.")
    model = summary.get("model") or {}
    if model.get("val_accuracy") is not None and not _is_number(model["val_accuracy"]):
        raise error(f"{path}: model.val_accuracy must be a number, got {str(model['val_accuracy'])[:60]!r}.")
    if summary.get("chosen") is not None and not isinstance(summary["chosen"], str):
        raise error(f"{path}: `chosen` must be an artifact name, got {str(summary['chosen'])[:60]!r}.")
    classes = summary.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise error(f"{path}: `classes` must be a list of label strings.")
    return summary


def read_summary(run_dir: Path | str, error: type[EdgetlError] = ReportError) -> dict:
    """The run's summary.json, checked (see check_summary), or `error` saying what is wrong."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise error(f"{run_dir}: not an edgetl run directory (no summary.json; build one with `edgetl build`).")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise error(f"{path}: cannot read it as JSON ({str(exc)[:200]}).") from None
    return check_summary(summary, path, error)
