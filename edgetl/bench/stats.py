"""Summary statistics of latency samples."""

from __future__ import annotations

import numpy as np


def summarize(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean/std/min/max (ms) of latency samples (linear-interpolated percentiles)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latency samples to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(values.mean()), 4), "std": round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 4),
            "min": round(float(values.min()), 4), "max": round(float(values.max()), 4)}


def row_stats(row: dict) -> dict:
    """An `edgetl bench` row's statistics in summary.json's `latency_ms` shape: {p50, p90, …, max, runs} in ms."""
    return {**{k: row[f"{k}_ms"] for k in ("p50", "p90", "p99", "mean", "std", "min", "max")}, "runs": row["runs"]}
