"""Can `edgetl bench` and its regression gate be trusted? Fidelity against the runtimes' own tools, run-to-run
spread, and the gate's false alarms and misses — every invocation a fresh `edgetl bench` process, as in CI.

    python benchmarks/bench.py [--out benchmarks/results/bench.json] [--comparisons 20] [--workdir DIR]
                               [--parts fidelity,spread,gate]

`--parts` measures only some parts and keeps the others' results from an existing --out file.

Models: MobileNetV2 (2 classes; ImageNet weights from $TORCH_HOME when present, else random — latency does not
depend on the values) exported by edgetl to ONNX fp32 at 224×224 and 192×192 (1.36× fewer MACs, about 1.3× less
time), OpenVINO IR fp32 and TFLite fp32 at 224×224.

1. Fidelity: OpenVINO's `benchmark_app` (sync API, 1 stream, same threads, f32, `-hint none`) and a bare
   onnxruntime loop in a fresh process, alternating with `edgetl bench` on the same file, 3 rounds each; the ratio
   of the medians of their p50s.
2. Spread: 5 separate `edgetl bench` runs of each model (default settings); coefficient of variation of the p50.
3. The gate at 10 %: N comparisons of a model against its own saved baseline (false alarms), and N comparisons
   with a real slowdown: the 224 px model against the 192 px model's baseline, and 1 thread against 2 threads.
   Each in both of the gate's modes: "saved" (only the baseline file's trials: the baseline's model file is
   gone) and "interleaved" (the baseline's model file is still there, so it is re-measured in the same rounds).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import REPO, targets_table, write_result

EDGETL = [sys.executable, "-m", "edgetl.cli", "bench"]


def export_models(folder: Path) -> dict[str, Path]:
    """ONNX fp32 (224 and 192 px), OpenVINO IR fp32 and TFLite fp32 of MobileNetV2."""
    import numpy as np
    import torch

    from edgetl.backbones import create_model, get_backbone
    from edgetl.errors import WeightsError
    from edgetl.export import ExportRequest
    from edgetl.export.onnx import export_fp32
    from edgetl.export.openvino import export as export_openvino
    from edgetl.export.tflite import export as export_tflite

    try:
        model = create_model("mobilenet_v2", 2, weights="imagenet").model.eval()
    except WeightsError:
        model = create_model("mobilenet_v2", 2, weights="none").model.eval()
    assert get_backbone("mobilenet_v2")
    paths = {}
    for size in (224, 192):
        example = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        paths[f"onnx_{size}"] = export_fp32(model, ExportRequest(folder / f"onnx_{size}", "fp32", example, {})).path
    example = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    paths["openvino"] = export_openvino(model, ExportRequest(folder / "openvino", "fp32", example, {},
                                                             onnx_file=paths["onnx_224"])).path
    example_192 = np.random.default_rng(0).standard_normal((2, 3, 192, 192)).astype(np.float32)
    paths["openvino_192"] = export_openvino(model, ExportRequest(folder / "openvino_192", "fp32", example_192, {},
                                                                 onnx_file=paths["onnx_192"])).path
    with torch.no_grad():
        paths["tflite"] = export_tflite(model, ExportRequest(folder / "tflite", "fp32", example, {"layout": "NHWC"},
                                                             onnx_file=paths["onnx_224"])).path
    for name, path in paths.items():  # the sidecar edgetl writes beside its exports: names the rows
        (path.parent / "model.json").write_text(json.dumps({"name": name, "file": path.name, "precision": "fp32"}))
    return paths


def edgetl_bench(models: list[Path], threads: int, *args: str) -> tuple[int, list[dict], str]:
    """One `edgetl bench` process: (exit code, rows, output)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        result = subprocess.run([*EDGETL, *map(str, models), "-t", str(threads), "-q", "--json", out.name, *args],
                                capture_output=True, text=True)
        if result.returncode not in (0, 1):
            raise SystemExit(f"edgetl bench failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        rows = json.loads(Path(out.name).read_text()) if Path(out.name).stat().st_size else []
    return result.returncode, rows, result.stdout + result.stderr


def benchmark_app_p50(xml: Path, threads: int, seconds: int) -> float:
    """Median latency (ms) reported by OpenVINO's benchmark_app with settings matching edgetl's runner."""
    result = subprocess.run(["benchmark_app", "-m", str(xml), "-d", "CPU", "-api", "sync", "-nstreams", "1",
                             "-nthreads", str(threads), "-hint", "none", "-infer_precision", "f32", "-t",
                             str(seconds), "-shape", "[1,3,224,224]"], capture_output=True, text=True)
    match = re.search(r"Median:\s+([\d.]+) ms", result.stdout)
    if not match:
        raise SystemExit(f"benchmark_app failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return float(match.group(1))


BARE_ORT = textwrap.dedent("""
    import sys, time, numpy as np, onnxruntime as ort
    path, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(50):
        session.run(None, {name: x})
    samples, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns(); session.run(None, {name: x}); samples.append(time.perf_counter_ns() - t0)
    print(np.median(samples) / 1e6)
""")


def bare_ort_p50(path: Path, threads: int, seconds: int) -> float:
    result = subprocess.run([sys.executable, "-c", BARE_ORT, str(path), str(threads), str(seconds)],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


def fidelity(paths: dict[str, Path], rounds: int = 3, seconds: int = 5) -> list[dict]:
    rows = []
    for threads in (1, 2):
        for label, path, reference in (("openvino_fp32 vs benchmark_app", paths["openvino"], benchmark_app_p50),
                                       ("onnx_fp32 vs bare onnxruntime loop", paths["onnx_224"], bare_ort_p50)):
            theirs, ours = [], []
            for _ in range(rounds):  # alternating, so a change of machine load hits both
                theirs.append(reference(path, threads, seconds))
                ours.append(edgetl_bench([path], threads, "--time", str(seconds), "--no-cold-start")[1][0]["p50_ms"])
            ratio = statistics.median(ours) / statistics.median(theirs)
            rows.append({"comparison": label, "threads": threads, "reference_p50_ms": round(statistics.median(theirs), 4),
                         "edgetl_p50_ms": round(statistics.median(ours), 4), "ratio": round(ratio, 4),
                         "reference_runs": theirs, "edgetl_runs": ours})
            print(f"  {label} @ {threads}: {statistics.median(theirs):.3f} vs {statistics.median(ours):.3f} ms "
                  f"(×{ratio:.3f})", flush=True)
    return rows


def spread(paths: dict[str, Path], runs: int = 5, *args: str) -> list[dict]:
    models = [paths["onnx_224"], paths["openvino"], paths["tflite"]]
    rows = []
    for threads in (1, 2):
        p50s: dict[str, list[float]] = {}
        for _ in range(runs):
            for row in edgetl_bench(models, threads, *args)[1]:
                p50s.setdefault(row["name"], []).append(row["p50_ms"])
        for name, values in p50s.items():
            cv = statistics.stdev(values) / statistics.mean(values)
            rows.append({"model": name, "threads": threads, "p50_ms": values, "cv": round(cv, 4)})
            print(f"  {name} @ {threads}: p50 {', '.join(f'{v:.3f}' for v in values)} ms, CV {cv:.1%}", flush=True)
    return rows


def gate(paths: dict[str, Path], comparisons: int, folder: Path, modes: tuple[str, ...] = ("saved", "interleaved")
         ) -> list[dict]:
    cases = [  # (what, baseline model, baseline threads, current model, current threads, a real slowdown?)
        ("same model, onnx_fp32 1 thread", paths["onnx_224"], 1, paths["onnx_224"], 1, False),
        ("same model, openvino_fp32 2 threads", paths["openvino"], 2, paths["openvino"], 2, False),
        ("224 px vs 192 px baseline (1.36× MACs), onnx 1 thread", paths["onnx_192"], 1, paths["onnx_224"], 1, True),
        ("1 thread vs 2-thread baseline, openvino", paths["openvino"], 2, paths["openvino"], 1, True),
        ("224 px vs 192 px baseline (1.36× MACs), openvino 2 threads", paths["openvino_192"], 2, paths["openvino"], 2,
         True),  # the threads where this VM's speed states occur
    ]
    rows = []
    for (what, base_model, base_threads, model, threads, slower), mode in [
            (case, mode) for case in cases for mode in modes if mode == "saved" or case[2] == case[4]]:
        baseline = folder / f"baseline-{len(rows)}.json"
        edgetl_bench([base_model], base_threads, "--save-baseline", str(baseline), "--no-cold-start")
        if mode == "saved":  # as if the baseline's model file were gone: only its saved trials are compared
            saved = json.loads(baseline.read_text())
            for row in saved["rows"]:
                row.pop("model_sha256")
            baseline.write_text(json.dumps(saved))
        failures, ratios, statuses, modes, compared = 0, [], [], set(), []
        for _ in range(comparisons):
            code, measured, _ = edgetl_bench([model], threads, "--baseline", str(baseline), "--max-regression", "10%",
                                             "--no-cold-start")
            failures += code == 1
            ratios.append(measured[0]["gate"]["ratio"])
            statuses.append(measured[0]["gate"]["status"])
            modes.add(measured[0]["gate"]["mode"])
            state = measured[0]["gate"].get("machine_state")
            compared.append(state["compared"] if state else "all rounds")
        assert modes == {mode}, (mode, modes)
        what = f"{what} [{mode}]"
        rows.append({"case": what, "mode": mode, "real_slowdown": slower, "comparisons": comparisons, "failed": failures,
                     "ratio_median": round(statistics.median(ratios), 4), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
                     "compared": {c: compared.count(c) for c in sorted(set(compared))}})
        print(f"  {what}: {failures}/{comparisons} failed, ratio {min(ratios):.3f}–{max(ratios):.3f}, "
              f"{rows[-1]['statuses']}, {rows[-1]['compared']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench.json")
    parser.add_argument("--comparisons", type=int, default=20)
    parser.add_argument("--parts", default="fidelity,spread,gate", help="Which parts to measure (comma-separated).")
    parser.add_argument("--modes", default="saved,interleaved", help="The gate's modes to measure (with --parts gate, "
                        "the other mode's rows are kept from --out).")
    parser.add_argument("--quick", action="store_true", help="A smoke run of the script (1 s budgets, 1 round).")
    parser.add_argument("--workdir", type=Path, help="Keep the exported models here (default: a temp folder).")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.workdir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        print("exporting MobileNetV2 to ONNX (224, 192 px), OpenVINO and TFLite", flush=True)
        paths = export_models(folder)
        parts = set(args.parts.split(","))
        previous = json.loads(args.out.read_text()) if args.out.is_file() and parts != {"fidelity", "spread", "gate"} \
            else {}
        fid, cvs, gates = previous.get("fidelity", []), previous.get("spread", []), previous.get("gate", [])
        if "fidelity" in parts:
            print("fidelity", flush=True)
            fid = fidelity(paths, 1, 1) if args.quick else fidelity(paths)
        if "spread" in parts:
            print("spread over 5 runs", flush=True)
            cvs = spread(paths, 2, "--time", "1") if args.quick else spread(paths)
        if "gate" in parts:
            print(f"gate, {args.comparisons} comparisons per case", flush=True)
            modes = tuple(args.modes.split(","))
            kept = [g for g in gates if g.get("mode") not in modes and "mode" in g]
            measured = gate(paths, args.comparisons, folder, modes)
            order = {"saved": 0, "interleaved": 1}
            gates = sorted(kept + measured, key=lambda g: (g["case"].rsplit(" [", 1)[0], order[g["mode"]]))
    from edgetl.bench.environment import machine_info, runtime_versions

    targets = [{"figure": f"p50 ratio, {r['comparison']} @ {r['threads']} thread(s)", "measured": f"{r['ratio']:.3f}",
                "target": "0.95–1.05", "met": 0.95 <= r["ratio"] <= 1.05} for r in fid]
    targets += [{"figure": f"CV of p50 over 5 runs, {r['model']} @ {r['threads']} thread(s)",
                 "measured": f"{r['cv']:.1%}", "target": "≤ 3 %", "met": r["cv"] <= 0.03} for r in cvs]
    targets += [{"figure": f"gate at 10 %: {r['case']}", "measured": f"{r['failed']}/{r['comparisons']} failed "
                 f"(×{r['ratio_min']:.2f}–×{r['ratio_max']:.2f})",
                 "target": f"{r['comparisons']}/{r['comparisons']} failed" if r["real_slowdown"] else "0 failed",
                 "met": r["failed"] == (r["comparisons"] if r["real_slowdown"] else 0)} for r in gates]
    result = {"fidelity": fid, "spread": cvs, "gate": gates, "targets": targets, "machine": machine_info(),
              "runtimes": runtime_versions(), "seconds": round(time.perf_counter() - started, 1)}
    write_result(args.out, result, "\n".join(targets_table(targets)), f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
