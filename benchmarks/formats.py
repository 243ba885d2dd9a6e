"""Every format × precision of the quickstart model: accuracy with its own runtime, logit parity, size, latency.

    python benchmarks/formats.py [--recipe recipes/quickstart.yaml] [--run-dir DIR] [--out benchmarks/results/formats.json]

Builds the recipe with `export: {formats: [onnx, openvino, tflite], precisions: [fp32, fp16, int8]}` and
`bench: {threads: [1, 2]}` (the real `edgetl build`, in a fresh process), measures the torch eager fp32 model at
batch 1 with the same harness, then prints the issue's figures against their targets and writes JSON. Every
number is measured here or read from the build's summary.json. `--run-dir` keeps the run directory, so a second
call reuses the trained model. Needs the dataset and weights offline: set EDGETL_CACHE / TORCH_HOME (README).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml
from common import REPO, targets_table, timed_build, write_result

FORMATS, PRECISIONS, THREADS = ["onnx", "openvino", "tflite"], ["fp32", "fp16", "int8"], [1, 2]


def build(recipe_path: Path, out: Path) -> dict:
    """The recipe with every format and precision, built like a user would; returns the summary."""
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["export"] = {**recipe.get("export", {}), "formats": FORMATS, "precisions": PRECISIONS}
    recipe["bench"] = {**recipe.get("bench", {}), "threads": THREADS}
    if "path" in recipe.get("data", {}):  # relative paths were relative to the original recipe's folder
        recipe["data"]["path"] = str((recipe_path.parent / recipe["data"]["path"]).resolve())
    derived = out.parent / f"{out.name}.yaml"
    derived.write_text(yaml.safe_dump(recipe))
    return timed_build(derived, out)[1]


class TorchRunner:
    """The trained torch model behind the Runner interface, so the same harness times it."""

    format = "torch"

    def __init__(self, model_path: Path, threads: int) -> None:
        import torch

        from edgetl.pipeline import load_trained

        torch.set_num_threads(threads)
        self.torch, self.model = torch, load_trained(model_path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(batch)).numpy()


def torch_eager_latency(run_dir: Path, summary: dict) -> dict:
    """p50 etc. of the torch eager fp32 model at batch 1 per thread count, with the bench stage's harness."""
    from edgetl.bench.harness import LatencyPlan, measure_latency

    batch = np.ascontiguousarray(np.load(run_dir / "inputs" / "val.npy", mmap_mode="r")[:1])
    plan = LatencyPlan(warmup=20, min_runs=100, min_time_s=3.0)
    return {str(t): measure_latency(TorchRunner(run_dir / summary["reference_model"]["path"], t), batch, plan)
            for t in THREADS}


def figures(summary: dict, torch_latency: dict) -> dict:
    artifacts = {(a["format"], a["precision"]): a for a in summary["artifacts"]}
    torch_accuracy = summary["reference_model"]["val_accuracy"]
    rows = []
    for (fmt, precision), a in artifacts.items():
        fp32 = artifacts[(fmt, "fp32")]
        lat = {t: a["latency_by_threads"][t]["p50"] for t in a["latency_by_threads"]}
        fp32_lat = {t: fp32["latency_by_threads"][t]["p50"] for t in fp32["latency_by_threads"]}
        rows.append({"artifact": a["name"], "format": fmt, "precision": precision,
                     "quantization": a.get("quantization"), "val_accuracy": a["val_accuracy"],
                     "drop_vs_torch_pp": a["accuracy_drop_pp"],
                     "drop_vs_fp32_pp": round(fp32["val_accuracy"] - a["val_accuracy"], 4),
                     "max_abs_logit_diff": a["max_abs_logit_diff"], "size_mb": round(a["size_bytes"] / 1e6, 3),
                     "size_vs_fp32": round(a["size_bytes"] / fp32["size_bytes"], 3),
                     **{f"p50_ms_{t}t": lat[t] for t in lat},
                     **{f"latency_vs_fp32_{t}t": round(lat[t] / fp32_lat[t], 3) for t in lat}})
    fastest = min(rows, key=lambda r: r["p50_ms_1t"])
    torch_p50 = {t: s["p50"] for t, s in torch_latency.items()}
    return {"torch_val_accuracy": torch_accuracy, "torch_eager_p50_ms": torch_p50, "rows": rows,
            "fastest": {"artifact": fastest["artifact"], "p50_ms_1t": fastest["p50_ms_1t"],
                        "speedup_vs_torch_eager_1t": round(torch_p50["1"] / fastest["p50_ms_1t"], 2),
                        "speedup_vs_torch_eager_2t": round(torch_p50["2"] / fastest["p50_ms_2t"], 2)}}


def verdicts(result: dict) -> list[dict]:
    """One row per target of the issue."""
    checks = []
    for r in result["rows"]:
        if r["precision"] == "fp32":
            checks.append({"figure": f"{r['artifact']} accuracy vs torch", "measured": f"{-r['drop_vs_torch_pp']:+.2f} pp "
                           f"(max logit diff {r['max_abs_logit_diff']:.1e})", "target": "±0.3 pp",
                           "met": abs(r["drop_vs_torch_pp"]) <= 0.3})
        if r["precision"] == "int8":
            checks += [
                {"figure": f"{r['artifact']} drop vs fp32", "measured": f"{r['drop_vs_fp32_pp']:.2f} pp",
                 "target": "≤ 0.5 pp", "met": r["drop_vs_fp32_pp"] <= 0.5},
                {"figure": f"{r['artifact']} size vs fp32", "measured": f"{r['size_vs_fp32']:.2f}×", "target": "≤ 0.3×",
                 "met": r["size_vs_fp32"] <= 0.3},
                {"figure": f"{r['artifact']} latency vs fp32 (1 thread; 2 threads)",
                 "measured": f"{r['latency_vs_fp32_1t']:.2f}× ({r['latency_vs_fp32_2t']:.2f}×)", "target": "≤ 0.6×",
                 "met": r["latency_vs_fp32_1t"] <= 0.6}]
    f = result["fastest"]
    checks.append({"figure": f"fastest artifact ({f['artifact']}) vs torch eager fp32, batch 1",
                   "measured": f"{f['speedup_vs_torch_eager_1t']:.1f}× faster "
                               f"(2 threads: {f['speedup_vs_torch_eager_2t']:.1f}×)",
                   "target": "≥ 5×", "met": f["speedup_vs_torch_eager_1t"] >= 5})
    return checks


def markdown(result: dict, checks: list[dict]) -> str:
    columns = ["artifact", "val_accuracy", "drop_vs_fp32_pp", "max_abs_logit_diff", "size_mb", "size_vs_fp32",
               "p50_ms_1t", "latency_vs_fp32_1t", "p50_ms_2t", "latency_vs_fp32_2t"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in result["rows"]:
        lines.append("| " + " | ".join(f"{r[c]:.2e}" if c == "max_abs_logit_diff" else str(r[c]) for c in columns) + " |")
    t = result["torch_eager_p50_ms"]
    lines += ["", f"torch eager fp32: val accuracy {result['torch_val_accuracy']:.2f} %, p50 {t['1']:.2f} ms "
              f"(1 thread), {t['2']:.2f} ms (2 threads).", "",
              *targets_table(checks)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--run-dir", type=Path, help="Run directory to build into and keep (reused if it exists).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "formats.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "formats"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        summary = build(args.recipe.resolve(), run_dir.resolve())
        torch_latency = torch_eager_latency(run_dir, summary)
    result = figures(summary, torch_latency)
    checks = verdicts(result)
    recipe = args.recipe.resolve()
    output = {"recipe": str(recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe),
              "command": "python benchmarks/formats.py", "figures": result, "targets": checks,
              "environment": summary["environment"]}
    write_result(args.out, output, markdown(result, checks))


if __name__ == "__main__":
    main()
