"""The latency gate on a device over SSH: `edgetl bench MODEL --device ssh://... --baseline B | --save-baseline B`.

The rules are the local gate's (edgetl.bench.baseline, edgetl.bench.gate): when the baseline's own model files are
available (a baseline file whose models are still beside it, unchanged, or an old model / run directory given as
`--baseline`), they are timed on the device in the same alternating rounds as the new models, in one process there,
so a change of the device's speed hits both alike and each round's ratio is paired; otherwise the new trials are
held against the saved ones. A regression is measured again before it counts. The device's machine state is not
tracked (no reference model is timed there), so against saved trials a slower device counts as a slower model.
"""

from __future__ import annotations

from pathlib import Path

from edgetl.bench.baseline import GateRun, compare, gate, resolve_baseline, split_roles
from edgetl.bench.measure import BenchOptions, ModelRef
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

    def measure(subset: list[ModelRef], first: bool) -> tuple[list[dict], list[dict]]:
        return split_roles(measure_on_device(subset, device, options, runs, warmup, install, reporter))

    def judge(subset: list[ModelRef], rows: list[dict], live: list[dict], reference: dict):
        return rows, compare(reference, rows, tolerance, confidence, live)

    reference, references = resolve_baseline(baseline)
    run = gate(models, baseline, references, reference, measure, judge, reporter, confirm, f" on {device.name}")
    return run, run.rows[0]["device_info"]
