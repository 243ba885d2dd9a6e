"""The timed loop: inputs allocated once, warm-up, then runs until both a count and a time are reached."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np

from edgetl.bench.stats import summarize
from edgetl.runtime import Runner


@dataclass(frozen=True)
class LatencyPlan:
    """How long to measure."""

    warmup: int = 20
    min_runs: int = 100
    min_time_s: float = 3.0
    max_runs: int = 2000


def timed_call(runner: Runner, batch: np.ndarray):
    """The zero-argument call to time: the runtime's own synchronous call with `batch` already bound when the runner
    offers `prepare` (input conversion and output copies stay outside the loop), else `runner.run(batch)`."""
    prepare = getattr(runner, "prepare", None)
    return prepare(batch) if prepare else functools.partial(runner.run, batch)


def time_runs(runner: Runner, batch: np.ndarray, plan: LatencyPlan, update=None) -> np.ndarray:
    """Per-call latencies in ms of the runtime's synchronous call on `batch`."""
    call = timed_call(runner, batch)
    for _ in range(plan.warmup):
        call()
    samples: list[int] = []
    started = time.perf_counter_ns()
    deadline = started + int(plan.min_time_s * 1e9)
    while len(samples) < plan.max_runs and (len(samples) < plan.min_runs or time.perf_counter_ns() < deadline):
        t0 = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t0)
        if update:
            update(1)
    return np.asarray(samples, dtype=np.float64) / 1e6


def measure_latency(runner: Runner, batch: np.ndarray, plan: LatencyPlan, update=None) -> dict:
    """Latency statistics (ms) plus the run count for one runner and input batch."""
    samples = time_runs(runner, np.ascontiguousarray(batch, dtype=np.float32), plan, update)
    return {**summarize(samples), "runs": int(samples.size)}


def interleaved_trials(runners: list[Runner], batches: list[np.ndarray], plan: LatencyPlan, repeats: int,
                       update=None, look=None) -> list[list[np.ndarray]]:
    """Each runner timed in `repeats` alternating rounds (runner 0, 1, …, then again), so a change of machine load
    during the measurement hits them alike: per runner, one array of latencies (ms) per round. `look(i)`, when
    given, is called just before and just after runner i's every round (the machine-state reference)."""
    if len(runners) != len(batches):
        raise ValueError(f"{len(runners)} runners but {len(batches)} batches")
    trials: list[list[np.ndarray]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, (runner, batch) in enumerate(zip(runners, batches)):  # no strict=: the bundle runs it on Python 3.9
            if look:
                look(i)
            trials[i].append(time_runs(runner, batch, plan, update))
            if look:
                look(i)
    return trials


def warm_up(runner: Runner, batch: np.ndarray, warmup: int | str, window: int = 10, tolerance: float = 0.03,
            max_runs: int = 500, max_seconds: float = 20.0) -> int:
    """Warm `runner` up: `warmup` calls, or with "auto" windows of `window` calls until two successive windows'
    medians agree within `tolerance` (caches, lazy allocations and CPU frequency have settled). Returns the calls made."""
    if warmup != "auto":
        call = timed_call(runner, batch)
        for _ in range(int(warmup)):
            call()
        return int(warmup)
    previous, done = None, 0
    deadline = time.perf_counter_ns() + int(max_seconds * 1e9)
    while done < max_runs and time.perf_counter_ns() < deadline:
        current = float(np.median(time_runs(runner, batch, LatencyPlan(0, window, 0.0, window))))
        done += window
        if previous is not None and abs(current - previous) <= tolerance * previous:
            break
        previous = current
    return done
