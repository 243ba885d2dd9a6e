"""The latency harness itself: statistics on known samples and the run plan."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgetl.bench.harness import LatencyPlan, measure_interleaved, measure_latency, time_runs
from edgetl.bench.stats import summarize


def test_summary_statistics_on_known_samples():
    stats = summarize(list(range(1, 101)))  # 1..100 ms
    assert stats["p50"] == 50.5 and stats["min"] == 1 and stats["max"] == 100
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == 50.5 and stats["std"] == pytest.approx(29.0115, abs=1e-3)


def test_empty_samples_are_rejected():
    with pytest.raises(ValueError):
        summarize([])


class SleepRunner:
    """A runner with a known latency, counting its calls and the arrays it is given."""

    format = "fake"
    input_shape = (1, 3, 4, 4)

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls, self.ids = seconds, 0, set()

    def run(self, batch):
        self.calls += 1
        self.ids.add(id(batch))
        time.sleep(self.seconds)
        return batch


def test_harness_runs_warmup_then_at_least_min_runs_and_measures_the_call():
    runner = SleepRunner(0.002)
    stats = measure_latency(runner, np.zeros((1, 3, 4, 4), np.float32), LatencyPlan(warmup=3, min_runs=20, min_time_s=0))
    assert stats["runs"] == 20 and runner.calls == 23
    assert 2.0 <= stats["p50"] < 6.0
    assert len(runner.ids) == 1  # the input is allocated once, outside the timed loop


def test_harness_keeps_running_until_min_time_but_stops_at_max_runs():
    runner = SleepRunner(0.001)
    samples = time_runs(runner, np.zeros(1), LatencyPlan(warmup=0, min_runs=1, min_time_s=0.05, max_runs=1000))
    assert samples.size > 10 and samples.sum() >= 45.0
    capped = time_runs(runner, np.zeros(1), LatencyPlan(warmup=0, min_runs=1, min_time_s=10, max_runs=7))
    assert capped.size == 7


def test_interleaved_measurement_alternates_rounds_and_keeps_each_runner_apart():
    order = []

    class Logged(SleepRunner):
        def __init__(self, seconds: float, name: str) -> None:
            super().__init__(seconds)
            self.name = name

        def run(self, batch):
            if not order or order[-1] != self.name:
                order.append(self.name)
            return super().run(batch)

    fast, slow = Logged(0.001, "fast"), Logged(0.003, "slow")
    stats = measure_interleaved([fast, slow], np.zeros((1, 3, 4, 4), np.float32),
                                LatencyPlan(warmup=1, min_runs=10, min_time_s=0), rounds=5)
    assert order == ["fast", "slow"] * 5  # five alternating rounds
    assert [s["runs"] for s in stats] == [10, 10] and fast.calls == slow.calls == 15  # 2 timed + 1 warm-up a round
    assert 2.0 <= stats[1]["p50"] / stats[0]["p50"] <= 4.0


def test_the_probes_peak_rss_is_its_own_not_its_large_parents():
    # ru_maxrss survives fork and exec: a probe started by a 600 MB process (a build, this test run) reported 600 MB.
    import subprocess
    import sys

    ballast = np.ones(600_000_000 // 8)
    ballast += 1  # touched, so it is resident
    script = "from edgetl.bench.probe import peak_rss_mb; print(peak_rss_mb())"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert 5 < float(result.stdout) < 200, result.stdout  # a bare Python with edgetl.bench.probe imported
    del ballast
