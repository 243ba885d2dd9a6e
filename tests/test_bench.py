"""The latency harness itself: statistics on known samples and the run plan."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.bench.harness import LatencyPlan, interleaved_trials, measure_latency, time_runs
from edgetl.bench.stats import summarize


def test_summary_statistics_on_known_samples():
    stats = summarize(list(range(1, 101)))  # 1..100 ms
    assert stats["p50"] == 50.5 and stats["min"] == 1 and stats["max"] == 100
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == 50.5 and stats["std"] == pytest.approx(29.0115, abs=1e-3)


def test_empty_samples_are_rejected():
    with pytest.raises(ValueError):
        summarize([])


class FakeClock:
    """A perf_counter_ns that only moves when a runner "runs": the harness's timing becomes exact and deterministic."""

    def __init__(self) -> None:
        self.now = 0

    def perf_counter_ns(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from edgetl.bench import harness

    fake = FakeClock()
    monkeypatch.setattr(harness, "time", fake)  # the harness's `time` module, and only the harness's
    return fake


class ClockRunner:
    """A runner with a known latency on the fake clock, counting its calls and the arrays it is given."""

    format = "fake"
    input_shape = (1, 3, 4, 4)

    def __init__(self, clock: FakeClock, milliseconds: float) -> None:
        self.clock, self.ns, self.calls, self.ids = clock, int(milliseconds * 1e6), 0, set()

    def run(self, batch):
        self.calls += 1
        self.ids.add(id(batch))
        self.clock.now += self.ns
        return batch


def test_harness_runs_warmup_then_at_least_min_runs_and_measures_the_call(clock):
    runner = ClockRunner(clock, 2.0)
    stats = measure_latency(runner, np.zeros((1, 3, 4, 4), np.float32), LatencyPlan(warmup=3, min_runs=20, min_time_s=0))
    assert stats["runs"] == 20 and runner.calls == 23
    assert stats["p50"] == stats["min"] == stats["max"] == 2.0  # the call itself, nothing of the loop around it
    assert len(runner.ids) == 1  # the input is allocated once, outside the timed loop


def test_harness_keeps_running_until_min_time_but_stops_at_max_runs(clock):
    runner = ClockRunner(clock, 1.0)
    samples = time_runs(runner, np.zeros(1), LatencyPlan(warmup=0, min_runs=1, min_time_s=0.05, max_runs=1000))
    assert samples.size == 50 and samples.sum() == 50.0  # runs until 50 ms have passed, not one call more
    capped = time_runs(runner, np.zeros(1), LatencyPlan(warmup=0, min_runs=1, min_time_s=10, max_runs=7))
    assert capped.size == 7
    counted = time_runs(runner, np.zeros(1), LatencyPlan(warmup=0, min_runs=30, min_time_s=0.005, max_runs=1000))
    assert counted.size == 30  # min_runs wins when it takes longer than min_time


def test_interleaved_measurement_alternates_rounds_and_keeps_each_runner_apart(clock):
    order = []

    class Logged(ClockRunner):
        def __init__(self, milliseconds: float, name: str) -> None:
            super().__init__(clock, milliseconds)
            self.name = name

        def run(self, batch):
            if not order or order[-1] != self.name:
                order.append(self.name)
            return super().run(batch)

    fast, slow = Logged(1.0, "fast"), Logged(3.0, "slow")
    looked = []
    batch = np.zeros((1, 3, 4, 4), np.float32)
    trials = interleaved_trials([fast, slow], [batch, batch], LatencyPlan(warmup=0, min_runs=2, min_time_s=0,
                                                                         max_runs=2), 5, look=looked.append)
    assert order == ["fast", "slow"] * 5  # five alternating rounds
    assert [len(t) for t in trials] == [5, 5] and fast.calls == slow.calls == 10  # 2 timed calls a round
    assert {float(x) for t in trials[0] for x in t} == {1.0} and {float(x) for t in trials[1] for x in t} == {3.0}
    assert looked == [0, 0, 1, 1] * 5  # the reference looked at just before and after each runner's every round


def test_auto_warm_up_stops_once_two_windows_agree_and_never_runs_past_its_cap(clock):
    from edgetl.bench.harness import warm_up

    class Settling(ClockRunner):  # 10 ms, 1 ms less each window of 10 calls, settling at 2 ms (caches warming up)
        def run(self, batch):
            self.ns = int(max(2.0, 10.0 - self.calls // 10) * 1e6)
            return super().run(batch)

    assert warm_up(Settling(clock, 0), np.zeros(1), "auto") == 100  # windows 10, 9, ..., 2, 2: the 10th agrees

    class Restless(ClockRunner):  # 1 ms and 2 ms windows in turn: never settles
        def run(self, batch):
            self.ns = int((1.0 + (self.calls // 10) % 2) * 1e6)
            return super().run(batch)

    assert warm_up(Restless(clock, 0), np.zeros(1), "auto") == 500  # max_runs
    assert warm_up(Restless(clock, 0), np.zeros(1), 7) == 7


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


def test_runtimes_default_to_the_usable_cores(monkeypatch):
    """A runtime opened without a thread count (verify, predict, the device runner) uses the cores this process may
    run on (OMP_NUM_THREADS, which the tests set for torch, is not theirs)."""
    import os

    from edgetl.bench.environment import machine_info, usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0)) == machine_info()["usable_cores"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cores() == len(os.sched_getaffinity(0))
    allowed = os.sched_getaffinity(0)
    try:  # a process held to one core (taskset, a container's cpuset) is given one thread
        os.sched_setaffinity(0, {min(allowed)})
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
