"""Measure what compression buys: KD vs no KD, pruning (MACs, accuracy, ONNX latency), QAT vs PTQ int8.

    python benchmarks/compress.py [--recipe recipes/compress.yaml] [--run-dir DIR] [--out benchmarks/results/compress.json]

Runs the real `edgetl build` of the recipe (teacher → KD student and its no-KD twin → prune → recover → QAT and
PTQ int8 → verify → bench), then prints a markdown table of the issue's figures against their targets and writes
JSON. Every number is read from the build's summary.json: nothing is typed in. `--run-dir` keeps the run
directory (a second call reuses its cached stages); by default a temporary one is used and removed.
Needs the dataset and weights offline: set EDGETL_CACHE / TORCH_HOME (see the README).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import REPO, targets_table, timed_build, write_result


def figures(summary: dict) -> dict:
    """The issue's figures from one summary (None where the recipe did not ask for that stage)."""
    artifacts = {a["name"]: a for a in summary["artifacts"]}
    result: dict = {}
    distill = summary.get("distill")
    if distill:
        student, baseline = distill["student"]["val_accuracy"], distill["student_without_kd_val_accuracy"]
        result["distill"] = {
            "teacher": distill["teacher"]["backbone"], "teacher_val_accuracy": distill["teacher"]["val_accuracy"],
            "student": distill["student"]["backbone"], "student_kd_val_accuracy": student,
            "student_without_kd_val_accuracy": baseline,
            "kd_gain_pp": None if baseline is None else round(student - baseline, 4),
            "temperature": distill["temperature"], "alpha": distill["alpha"], "teacher_logits": distill["teacher_logits"]}
    prune = summary.get("prune")
    if prune:
        result["prune"] = {
            "macs_before": prune["macs_before"], "macs_after": prune["macs_after"], "macs_ratio": prune["macs_ratio"],
            "params_before": prune["params_before"], "params_after": prune["params_after"],
            "val_accuracy_before": prune["val_accuracy_before"], "val_accuracy_pruned": prune["val_accuracy_pruned"],
            "val_accuracy_after": prune["val_accuracy_after"],
            "accuracy_drop_pp": round(prune["val_accuracy_before"] - prune["val_accuracy_after"], 4),
            "onnx_fp32_p50_ms_before": prune["onnx_fp32_latency_ms_before"]["p50"],
            "onnx_fp32_p50_ms_after": prune["onnx_fp32_latency_ms_after"]["p50"],
            "onnx_fp32_latency_ratio": prune["onnx_fp32_latency_ratio"],
            "threads": prune["onnx_fp32_latency_ms_after"]["threads"]}
    quantize = {}
    for fmt in ("onnx", "openvino", "tflite"):  # per format: its fp32 file and its int8 file(s), QAT and/or PTQ
        fp32 = artifacts.get(f"{fmt}_fp32")
        int8 = {a["quantization"]: a for a in summary["artifacts"] if a["format"] == fmt and a["precision"] == "int8"}
        if not fp32 or not int8:
            continue
        quantize[fmt] = {"fp32_val_accuracy": fp32["val_accuracy"], "fp32_p50_ms": fp32["latency_ms"]["p50"],
                         "fp32_mb": round(fp32["size_bytes"] / 1e6, 2)}
        for kind, artifact in int8.items():
            quantize[fmt] |= {
                f"{kind}_artifact": artifact["name"], f"{kind}_val_accuracy": artifact["val_accuracy"],
                f"{kind}_drop_pp": round(fp32["val_accuracy"] - artifact["val_accuracy"], 4),
                f"{kind}_p50_ms": artifact["latency_ms"]["p50"], f"{kind}_mb": round(artifact["size_bytes"] / 1e6, 2)}
    if quantize:
        result["quantize"] = quantize
    return result


def verdicts(result: dict) -> list[dict]:
    """One row per target of the issue: measured value, target, met."""
    rows = []
    if "distill" in result and result["distill"]["kd_gain_pp"] is not None:
        d = result["distill"]
        rows.append({"figure": f"KD gain ({d['teacher']} → {d['student']})", "measured": f"{d['kd_gain_pp']:+.2f} pp",
                     "target": "≥ +1 pp", "met": d["kd_gain_pp"] >= 1.0})
    if "prune" in result:
        p = result["prune"]
        rows.append({"figure": "pruned MACs / unpruned", "measured": f"{p['macs_ratio']:.3f}", "target": "≤ 0.50",
                     "met": p["macs_ratio"] <= 0.5})
        rows.append({"figure": "accuracy drop after recovery", "measured": f"{p['accuracy_drop_pp']:.2f} pp",
                     "target": "≤ 1 pp", "met": p["accuracy_drop_pp"] <= 1.0})
        rows.append({"figure": f"ORT fp32 latency pruned / unpruned (batch 1, {p['threads']} thread)",
                     "measured": f"{p['onnx_fp32_latency_ratio']:.3f}", "target": "≤ 0.65",
                     "met": p["onnx_fp32_latency_ratio"] <= 0.65})
    for fmt, q in result.get("quantize", {}).items():
        if "qat_drop_pp" in q and "ptq_drop_pp" in q:
            rows.append({"figure": f"{fmt} int8 drop from fp32: QAT vs PTQ",
                         "measured": f"QAT {q['qat_drop_pp']:.2f} pp, PTQ {q['ptq_drop_pp']:.2f} pp",
                         "target": "QAT ≤ PTQ", "met": q["qat_drop_pp"] <= q["ptq_drop_pp"]})
    return rows


def markdown(result: dict, rows: list[dict]) -> str:
    lines = targets_table(rows)
    d, p, q = result.get("distill"), result.get("prune"), result.get("quantize")
    if d:
        lines += ["", f"Teacher {d['teacher']} {d['teacher_val_accuracy']:.2f} %; student {d['student']} with KD "
                  f"{d['student_kd_val_accuracy']:.2f} %, without KD {d['student_without_kd_val_accuracy']:.2f} % "
                  f"(T={d['temperature']}, alpha={d['alpha']}, {d['teacher_logits']} teacher logits)."]
    if p:
        lines += [f"Pruning: MACs {p['macs_before'] / 1e6:.1f} M → {p['macs_after'] / 1e6:.1f} M, params "
                  f"{p['params_before'] / 1e6:.2f} M → {p['params_after'] / 1e6:.2f} M; val accuracy "
                  f"{p['val_accuracy_before']:.2f} % → {p['val_accuracy_pruned']:.2f} % right after pruning → "
                  f"{p['val_accuracy_after']:.2f} % after recovery; ONNX fp32 p50 {p['onnx_fp32_p50_ms_before']:.2f} → "
                  f"{p['onnx_fp32_p50_ms_after']:.2f} ms."]
    for fmt, f in (q or {}).items():
        parts = [f"{kind.upper()} int8 {f[f'{kind}_val_accuracy']:.2f} % ({f[f'{kind}_p50_ms']:.2f} ms, {f[f'{kind}_mb']} MB)"
                 for kind in ("qat", "ptq") if f"{kind}_val_accuracy" in f]
        lines += [f"{fmt}: fp32 {f['fp32_val_accuracy']:.2f} % ({f['fp32_p50_ms']:.2f} ms, {f['fp32_mb']} MB); "
                  + "; ".join(parts) + " (p50 at 1 thread)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "compress.yaml")
    parser.add_argument("--run-dir", type=Path, help="Run directory to build into and keep (reused if it exists).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compress.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "compress"
        seconds, summary = timed_build(args.recipe, run_dir)
    result = figures(summary)
    rows = verdicts(result)
    recipe = args.recipe.resolve()
    output = {"recipe": str(recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe),
              "command": "python benchmarks/compress.py", "build_s": round(seconds, 1),
              "stages_cached": sorted(name for name, s in summary["stages"].items() if s["cached"]),
              "stage_seconds": {name: s["seconds"] for name, s in summary["stages"].items()},
              "figures": result, "targets": rows, "environment": summary["environment"]}
    write_result(args.out, output, markdown(result, rows))


if __name__ == "__main__":
    main()
