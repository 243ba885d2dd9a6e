"""The latency gate on a device over SSH: `edgetl bench MODEL --device ssh://... --baseline B | --save-baseline B`.

The rules are the local gate's (edgetl.bench.baseline, edgetl.bench.gate): when the baseline's own model files are
available (a baseline file whose models are still beside it, unchanged, or an old model / run directory given as
`--baseline`), they are timed on the device in the same alternating rounds as the new models, in one process there,
so a change of the device's speed hits both alike and each round's ratio is paired; otherwise the new trials are
held against the saved ones. A regression is measured again before it counts. The device's machine state is not
tracked (no reference model is timed there), so against saved trials a slower device counts as a slower model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgetl.bench.baseline import (
    GateRun,
    _key,
    baseline_from_rows,
    compare,
    is_baseline_file,
    live_references,
    load_baseline,
)
from edgetl.bench.measure import BenchOptions, ModelRef, find_models
from edgetl.bench.remote import Device, bench_interleaved_on_device
from edgetl.progress import SILENT, Reporter


def measure_on_device(models: list[ModelRef], device: Device, options: BenchOptions, runs: int, warmup: int,
                      install: bool, reporter: Reporter = SILENT) -> list[dict]:
    """Rows of every model at every thread count of `options`, `options.repeats` alternating rounds of `runs` calls."""
    rows = []
    for threads in options.threads:
        with reporter.task(f"benchmarking {len(models)} model(s) on {device.name} ({threads} thread(s), "
                           f"{options.repeats} interleaved rounds of {runs} runs)", None):
            rows += bench_interleaved_on_device(models, device, threads, options.repeats, runs, warmup, install,
                                                options.batch)
    return rows


def bench_against_on_device(models: list[ModelRef], baseline: Path, device: Device, options: BenchOptions,
                            runs: int, warmup: int, tolerance: float, confidence: float = 0.95, install: bool = False,
                            reporter: Reporter = SILENT, confirm: bool = True) -> tuple[GateRun, dict]:
    """`models` measured on `device` and held against `baseline` (a baseline file, or old model files / a run
    directory measured now beside them); also returns the device's `edgetl_runner info` record."""
    if is_baseline_file(baseline):
        reference = load_baseline(baseline)
        references = live_references(reference)
    else:
        reference, references = None, [replace(m, role="baseline") for m in find_models([baseline])]
    measured = measure_on_device(models + references, device, options, runs, warmup, install, reporter)
    where = measured[0]["device_info"]
    rows = [r for r in measured if r["role"] == "model"]
    live = [r for r in measured if r["role"] == "baseline"]
    if reference is None:
        reference = baseline_from_rows(live, Path(baseline), where)
    comparisons = compare(reference, rows, tolerance, confidence, live)
    suspects = {c.row["model"] for c in comparisons if c.status == "regression"}
    if confirm and suspects:
        reporter.info(f"{len(suspects)} model(s) measured slower than allowed on {device.name}: measuring again "
                      "to confirm")
        wanted = {c.baseline_row.get("model") for c in comparisons if c.row["model"] in suspects}
        again = measure_on_device([m for m in models if str(m.path) in suspects]
                                  + [r for r in references if str(r.path) in wanted],
                                  device, options, runs, warmup, install, reporter)
        second = {_key(c.row): c for c in compare(reference, [r for r in again if r["role"] == "model"], tolerance,
                                                  confidence, [r for r in again if r["role"] == "baseline"])}
        comparisons = [replace(second[_key(c.row)], first=c.decision) if c.status == "regression" else c
                       for c in comparisons]
        remeasured = {_key(c.row): c.row for c in comparisons}
        rows = [remeasured.get(_key(r), r) for r in rows]  # the rows shown are the ones the verdict rests on
    return GateRun(rows, comparisons, reference), where
