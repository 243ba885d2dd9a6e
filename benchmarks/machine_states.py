"""Does this machine run in speed states, and does the gate's machine-state reference see them?

    python benchmarks/machine_states.py [--processes 30] [--threads 2] [--workdir DIR] [--out FILE]

Each of N fresh processes loads MobileNetV2 (OpenVINO IR fp32, exported as in benchmarks/bench.py) and the
reference network `edgetl bench` times beside baselines (edgetl/bench/reference), warms both up, then times them in
10 alternating rounds of 0.4 s each: the model's p50 and the reference's p50 per round. Printed: how far each
moves (max / min of the per-round p50s, relative to the median), their correlation across all rounds, the levels
of the two states when the rounds split into two clusters, and how often a process saw both states.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from common import REPO, write_result

CHILD = textwrap.dedent("""
    import json, sys, numpy as np
    from edgetl.bench.harness import LatencyPlan, time_runs, warm_up
    from edgetl.bench.reference import load_reference, reference_input
    from edgetl.runtime import load_runner
    threads = int(sys.argv[2])
    model = load_runner(sys.argv[1], threads=threads)
    reference = load_reference("openvino", threads)
    pairs = [(model, np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)),
             (reference, reference_input(reference))]
    for runner, batch in pairs:
        warm_up(runner, batch, "auto")
    plan = LatencyPlan(warmup=0, min_runs=5, min_time_s=0.4, max_runs=100000)
    rounds = [[float(np.median(time_runs(r, b, plan))) for r, b in pairs] for _ in range(10)]
    print(json.dumps(rounds))
""")


def two_levels(values: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Split values (relative to their median) at the largest gap: (low level, high level, is-low mask)."""
    order = np.sort(values)
    cut = order[int(np.argmax(np.diff(order)))]
    low = values <= cut
    return float(np.median(values[low])), float(np.median(values[~low])), low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="Exported models (reused when there; default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "machine_states.json")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench import export_models

    started = time.perf_counter()
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="edgetl-states-"))
    xml = folder / "openvino" / "model.xml"
    if not xml.is_file():
        xml = export_models(folder)["openvino"]
    runs = []
    for number in range(args.processes):
        result = subprocess.run([sys.executable, "-c", CHILD, str(xml), str(args.threads)], capture_output=True,
                                text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        model, reference = (np.array(runs[-1])[:, k] for k in (0, 1))
        print(f"  process {number + 1}/{args.processes}: model p50 {np.median(model):.3f} ms, "
              f"reference {np.median(reference):.3f} ms", flush=True)
    rounds = np.array(runs)  # process × round × (model, reference)
    model, reference = rounds[..., 0] / np.median(rounds[..., 0]), rounds[..., 1] / np.median(rounds[..., 1])
    correlation = float(np.corrcoef(np.log(model.ravel()), np.log(reference.ravel()))[0, 1])
    ref_low, ref_high, low = two_levels(reference.ravel())
    levels = {"reference_fast_over_slow": round(ref_low / ref_high, 3),
              "model_fast_over_slow": round(float(np.median(model.ravel()[low]) / np.median(model.ravel()[~low])), 3),
              "fast_rounds": int(low.sum()), "slow_rounds": int((~low).sum())}
    both = int(sum(1 for p in low.reshape(model.shape) if p.any() and not p.all()))
    result = {"threads": args.threads, "processes": args.processes, "rounds_per_process": 10,
              "model_max_over_min": round(float(model.max() / model.min()), 3),
              "reference_max_over_min": round(float(reference.max() / reference.min()), 3),
              "correlation_log": round(correlation, 3), "levels": levels, "processes_with_both_states": both,
              "seconds": round(time.perf_counter() - started), "raw_ms": rounds.round(4).tolist()}
    table = "\n".join([
        f"MobileNetV2 OpenVINO fp32 and the reference, {args.threads} threads, {args.processes} processes × 10 rounds:",
        f"  per-round p50 max/min: model ×{result['model_max_over_min']}, reference ×{result['reference_max_over_min']}",
        f"  correlation of the log p50s: {result['correlation_log']}",
        f"  two states split at the reference's largest gap: fast/slow = reference ×{levels['reference_fast_over_slow']}"
        f", model ×{levels['model_fast_over_slow']} ({levels['fast_rounds']} fast rounds, {levels['slow_rounds']} slow)",
        f"  processes that saw both states: {both} of {args.processes}"])
    write_result(args.out, result, table, f"{result['seconds']} s")


if __name__ == "__main__":
    main()
