"""Latency assertions for a user's test suite (a pytest plugin; torch-free).

    from edgetl.testing import assert_latency, assert_no_regression

    def test_fast_enough():
        assert_latency("model.tflite", p90_ms=20, threads=4)

    def test_not_slower_than_last_release():
        assert_no_regression("model.onnx", "tests/latency-baseline.json", max_regression=0.10)

The `edgetl_bench` fixture gives `benchmark(model, **options) -> row` with a shorter default time budget. Both
measure like `edgetl bench` (same harness, interleaved repeats, same gate).
"""

from __future__ import annotations

from pathlib import Path

from edgetl.bench.baseline import bench_against, is_baseline_file, load_baseline
from edgetl.bench.gate import fewest_rounds
from edgetl.bench.measure import BenchOptions, benchmark, find_models

STAT_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "peak_rss_mb", "cold_start_ms")


def _options(threads: int, batch: int, time_s: float, repeats: int, cold_start: bool, **extra) -> BenchOptions:
    return BenchOptions(threads=(threads,), batch=batch, time_s=time_s, repeats=repeats, cold_start=cold_start, **extra)


def measure(model: str | Path, threads: int = 1, batch: int = 1, time_s: float = 2.0, repeats: int = 10,
            cold_start: bool = False, **extra) -> dict:
    """One benchmark row for `model` (see edgetl.bench.measure.benchmark)."""
    return benchmark(find_models([model]), _options(threads, batch, time_s, repeats, cold_start, **extra))[0]


def assert_latency(model: str | Path, *, threads: int = 1, batch: int = 1, time_s: float = 2.0, repeats: int = 10,
                   **budgets: float) -> dict:
    """Fail unless every budget holds, e.g. `assert_latency("m.onnx", p90_ms=20, peak_rss_mb=200)`."""
    unknown = sorted(set(budgets) - set(STAT_FIELDS))
    if unknown or not budgets:
        raise TypeError(f"budgets must be some of {', '.join(STAT_FIELDS)}; got {', '.join(unknown) or 'none'}")
    cold = any(k in budgets for k in ("peak_rss_mb", "cold_start_ms"))
    row = measure(model, threads, batch, time_s, repeats, cold_start=cold)
    over = [f"{key} {row[key]:.3f} > {limit}" for key, limit in budgets.items() if row[key] > limit]
    assert not over, (f"{model} ({threads} thread(s), batch {batch}) is over its latency budget: {'; '.join(over)} "
                      f"(p50 {row['p50_ms']:.3f} ms over {row['runs']} runs)")
    return row


def assert_no_regression(model: str | Path, baseline: str | Path, *, max_regression: float = 0.10,
                         confidence: float = 0.95, time_s: float = 2.0, repeats: int = 10) -> dict:
    """Fail when `model` is significantly slower than the matching row of `baseline` by more than
    `max_regression`. `baseline` is an `edgetl bench --save-baseline` file (measured at its row's threads and
    batch; its model file is re-measured beside `model` when still there) or the old model file itself."""
    if repeats < fewest_rounds(confidence):
        raise ValueError(f"assert_no_regression needs repeats >= {fewest_rounds(confidence)} at {confidence:.0%} "
                         "confidence: with fewer paired rounds no slowdown can be significant")
    target = find_models([model])
    if is_baseline_file(Path(baseline)):
        reference = load_baseline(Path(baseline))
        wanted = next((r for r in reference["rows"] if r["name"] == target[0].name), reference["rows"][0])
        threads, batch = int(wanted["threads"]), int(wanted["batch"])
    else:
        reference, threads, batch = Path(baseline), 1, 1
    run = bench_against(target, reference, _options(threads, batch, time_s, repeats, False), max_regression, confidence)
    row, comparison = run.rows[0], run.comparisons[0]
    decision = comparison.decision
    assert decision is not None and decision.status != "regression", (
        f"{model} is slower than {baseline}: p50 {comparison.baseline_row['p50_ms']:.3f} → {row['p50_ms']:.3f} ms "
        f"(×{decision.ratio:.3f}, at least ×{decision.low:.3f} at {confidence:.0%} confidence; tolerance "
        f"+{max_regression:.0%})")
    return {**row, "gate": comparison.as_dict()}


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "latency: a test that measures latency (deselect with -m 'not latency')")


try:
    import pytest
except ImportError:  # the assertions work without pytest; only the fixture needs it
    pass
else:
    @pytest.fixture
    def edgetl_bench():
        """`edgetl_bench(model, threads=1, batch=1, time_s=2.0, ...)` → one benchmark row (a dict)."""
        return measure
