"""The device-side runner of an edgetl bundle: `python -m edgetl_runner predict IMAGE...` prints the top-k labels,
`python -m edgetl_runner bench` prints latency statistics as JSON, `python -m edgetl_runner info` the device and
runtime. Needs only numpy, Pillow and the model's runtime; Python 3.9+.

Everything in this package except this file is copied from edgetl itself when the bundle is made (imports renamed),
so the device preprocesses, runs and times the model exactly as the build verified it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent


def _metadata(bundle: Path, required: tuple = ("file",)):
    """The bundle's model.json (an ArtifactInfo), checked; `required`: the fields the command needs."""
    from edgetl_runner.artifact import read_model_json

    return read_model_json(bundle / "model.json", required=required)


def _model_path(bundle: Path, meta) -> Path:
    return bundle / meta.file


def device_info() -> dict:
    """What the device is: machine type, CPU model, cores, Python, numpy and runtime versions."""
    from edgetl_runner.bench.environment import machine_info, runtime_versions

    return {**machine_info(), "runtimes": runtime_versions()}


def predict(bundle: Path, images: list[str], top_k: int, threads: int) -> list[dict]:
    """One row per image (the files given and the images under the folders given): its top-k labels and
    probabilities, its logits, or the reason it could not be read (`error`)."""
    from edgetl_runner.artifact import PREDICT_FIELDS
    from edgetl_runner.classifier import Classifier, classify_files, image_files

    meta = _metadata(bundle, PREDICT_FIELDS)
    classifier = Classifier(_model_path(bundle, meta), meta, threads)
    return list(classify_files(classifier, image_files(images), top_k))


def bench(bundle: Path, threads: int, batch: int, runs: int, warmup: int, rounds: int = 1,
          others: tuple = ()) -> list[dict]:
    """Cold start, then latency statistics of `rounds` × `runs` synchronous calls (each round warmed up again), as
    one JSON-able row per model plus the device; `trial_p50_ms` is each round's median. `others`: more model folders
    (a model file and its model.json), timed in the same alternating rounds as the bundle's model."""
    import numpy as np
    from edgetl_runner.bench.harness import LatencyPlan, interleaved_trials
    from edgetl_runner.bench.probe import peak_rss_mb
    from edgetl_runner.bench.stats import summarize
    from edgetl_runner.runtime import load_runner

    folders = [bundle, *others]
    loaded, metas = [], []
    for folder in folders:
        started = time.perf_counter_ns()
        meta = _metadata(folder)
        runner = load_runner(_model_path(folder, meta), threads=threads)
        done = time.perf_counter_ns()
        shape = [batch if i == 0 or d is None else d for i, d in enumerate(runner.input_shape)]
        inputs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        first_start = time.perf_counter_ns()
        runner.run(inputs)
        first = time.perf_counter_ns()
        loaded.append((runner, inputs, (done - started) / 1e6, (first - first_start) / 1e6))
        metas.append(meta)
    plan = LatencyPlan(warmup=warmup, min_runs=runs, min_time_s=0.0, max_runs=runs)
    trials = interleaved_trials([r for r, *_ in loaded], [x for _, x, *_ in loaded], plan, max(1, rounds))
    rows, device = [], device_info()
    for folder, meta, (_, _, load_ms, first_ms), model_trials in zip(folders, metas, loaded, trials):
        samples = np.concatenate(model_trials)
        stats = summarize(samples)
        rows.append({"model": meta.file, "name": meta.name, "format": meta.format, "precision": meta.precision,
                     "threads": threads, "batch": batch,
                     **{f"{k}_ms": v for k, v in stats.items()},
                     "throughput_ips": round(batch * 1000.0 / stats["mean"], 2),
                     "cold_start_ms": round(load_ms + first_ms, 3), "load_ms": round(load_ms, 3),
                     "first_inference_ms": round(first_ms, 3), "peak_rss_mb": peak_rss_mb(),
                     "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.stem == "model"
                                       and p.suffix != ".json"),
                     "runs": int(samples.size), "repeats": len(model_trials), "warmup_runs": warmup, "input": "random",
                     "trial_p50_ms": [round(float(np.median(t)), 4) for t in model_trials], "device": device})
    return rows


def main(argv: list[str] | None = None) -> int:
    from edgetl_runner.bench.environment import usable_cores

    parser = argparse.ArgumentParser(prog="python -m edgetl_runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the bundle folder (default: this one)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="print the top-k labels of images (files or folders of them); exit 1 "
                                            "when an image cannot be read (the others are still classified)")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", "-k", type=int, default=3)
    p.add_argument("--threads", "-t", type=int, default=usable_cores())
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    b = commands.add_parser("bench", help="print latency statistics as JSON")
    b.add_argument("--threads", "-t", type=int, default=1)
    b.add_argument("--batch", "-b", type=int, default=1)
    b.add_argument("--runs", "-n", type=int, default=50)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--rounds", type=int, default=1, help="rounds of --runs calls, each warmed up again")
    b.add_argument("--with", dest="others", type=Path, action="append", default=[],
                   help="another model folder (model file + model.json) timed in the same alternating rounds; the "
                        "output is then a JSON list of rows")
    commands.add_parser("info", help="print the device, runtimes and model as JSON")
    args = parser.parse_args(argv)
    from edgetl_runner.errors import EdgetlError

    try:
        if args.command == "predict":
            results = predict(args.bundle, args.images, args.top_k, args.threads)
            if args.json:
                print(json.dumps(results))
            for result in results:
                if result["error"]:
                    print(f"edgetl_runner: data error: {result['error']}", file=sys.stderr)
                elif not args.json:
                    print(result["image"] + ": " + ", ".join(f"{t['label']} {t['probability']:.3f}"
                                                             for t in result["top"]))
            if any(result["error"] for result in results):
                return 1
        elif args.command == "bench":
            rows = bench(args.bundle, args.threads, args.batch, args.runs, args.warmup, args.rounds, tuple(args.others))
            print(json.dumps(rows if args.others else rows[0]))
        else:
            print(json.dumps({"model": _metadata(args.bundle).to_json(), "device": device_info()}))
    except EdgetlError as exc:
        print(f"edgetl_runner: {exc.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
