"""Cold start and peak memory of one model, measured in a fresh process: `python -m edgetl.bench.probe MODEL THREADS
BATCH` prints one JSON line. Torch-free.

A fresh process is the only honest place for both: the runtime's import and first model load happen once per process,
and a process's peak RSS never goes down, so a model measured after another would inherit the other's peak.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    On Linux it is VmHWM of /proc/self/status, the high-water mark of this program's own memory: ru_maxrss survives
    fork and exec, so a probe started by a large process (a build, a test run) would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 2)  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 2)


def probe(path: str, threads: int, batch: int, runs: int = 10) -> dict:
    """Import the runtime, load `path`, run it once (cold start), then `runs` more times (for the peak RSS)."""
    started = time.perf_counter_ns()
    import numpy as np

    from edgetl.runtime import load_runner

    runner = load_runner(path, threads=threads)
    loaded = time.perf_counter_ns()
    shape = [batch if d is None or i == 0 else d for i, d in enumerate(runner.input_shape)]
    inputs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    before_first = time.perf_counter_ns()
    runner.run(inputs)
    first = time.perf_counter_ns()
    for _ in range(runs):
        runner.run(inputs)
    return {"load_ms": round((loaded - started) / 1e6, 3), "first_inference_ms": round((first - before_first) / 1e6, 3),
            "cold_start_ms": round((loaded - started + first - before_first) / 1e6, 3), "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str]) -> int:
    from edgetl.errors import EdgetlError

    path, threads, batch = argv[0], int(argv[1]), int(argv[2])
    try:
        print(json.dumps(probe(path, threads, batch)))
    except EdgetlError as exc:
        print(json.dumps({"error": str(exc), "kind": exc.kind, "exit_code": exc.exit_code}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
