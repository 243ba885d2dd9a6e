"""Measure the quickstart: accuracy (pretrained vs `weights: none`), int8 vs fp32, build and rebuild time.

    python benchmarks/quickstart.py [--recipe recipes/quickstart.yaml] [--out benchmarks/results/quickstart.json]

Runs real builds into a temporary folder (nothing is faked or typed in), prints a markdown table and writes JSON.
Needs the dataset and weights offline: set EDGETL_CACHE / TORCH_HOME (see the README).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml
from common import REPO, timed_build


def row(label: str, summary: dict, build_s: float | None, rebuild_s: float | None) -> dict:
    artifacts = {a["precision"]: a for a in summary["artifacts"] if a["format"] == "onnx"}
    fp32, int8 = artifacts.get("fp32"), artifacts.get("int8")
    return {
        "variant": label, "backbone": summary["model"]["backbone"], "weights": summary["model"]["weights"],
        "mode": summary["model"]["mode"], "epochs_run": summary["model"]["epochs_run"],
        "torch_val_accuracy": summary["model"]["val_accuracy"],
        "onnx_fp32_val_accuracy": fp32 and fp32["val_accuracy"], "onnx_int8_val_accuracy": int8 and int8["val_accuracy"],
        "int8_drop_vs_fp32_pp": fp32 and int8 and round(fp32["val_accuracy"] - int8["val_accuracy"], 4),
        "onnx_fp32_p50_ms": fp32 and fp32["latency_ms"]["p50"], "onnx_int8_p50_ms": int8 and int8["latency_ms"]["p50"],
        "onnx_fp32_mb": fp32 and round(fp32["size_bytes"] / 1e6, 2),
        "onnx_int8_mb": int8 and round(int8["size_bytes"] / 1e6, 2),
        **{f"onnx_{name}_p50_ms_{t}_threads": art["latency_by_threads"][t]["p50"]
           for name, art in artifacts.items() for t in art["latency_by_threads"] if t != str(art["threads"])},
        "threads": (fp32 or int8)["threads"], "build_s": build_s and round(build_s, 1),
        "rebuild_s": rebuild_s and round(rebuild_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quickstart.json")
    parser.add_argument("--skip-scratch", action="store_true", help="Skip the `weights: none` comparison build.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        work = Path(tmp)
        build_s, summary = timed_build(args.recipe, work / "pretrained")
        rebuild_s, again = timed_build(args.recipe, work / "pretrained")
        assert all(s["cached"] for s in again["stages"].values()), "an unchanged rebuild re-ran a stage"
        rows.append(row("quickstart (pretrained)", summary, build_s, rebuild_s))
        if not args.skip_scratch:
            recipe = yaml.safe_load(args.recipe.read_text())
            recipe["model"]["weights"] = "none"
            recipe["name"] = recipe["name"] + "-scratch"
            scratch = work / "scratch.yaml"
            scratch.write_text(yaml.safe_dump(recipe))
            # keep the original dataset path semantics: relative paths were relative to the recipe's folder
            if "path" in recipe.get("data", {}):
                recipe["data"]["path"] = str((args.recipe.parent / recipe["data"]["path"]).resolve())
                scratch.write_text(yaml.safe_dump(recipe))
            build_s, summary = timed_build(scratch, work / "scratch")
            rows.append(row("same recipe, weights: none", summary, build_s, None))
        env = summary["environment"]
    result = {"recipe": str(args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe),
              "environment": env, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    columns = ["variant", "torch_val_accuracy", "onnx_fp32_val_accuracy", "onnx_int8_val_accuracy",
               "int8_drop_vs_fp32_pp", "onnx_fp32_p50_ms", "onnx_int8_p50_ms"]
    columns += sorted({k for r in rows for k in r if k.endswith("_threads")})
    columns += ["onnx_fp32_mb", "onnx_int8_mb", "epochs_run", "build_s", "rebuild_s"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join("—" if r.get(c) is None else str(r[c]) for c in columns) + " |")
    print(f"\n{env['cpu']}, {env['cores']} cores, onnxruntime {env['onnxruntime']}, torch {env['torch']}; "
          f"latency at batch 1, {rows[0]['threads']} thread(s). JSON: {args.out}")


if __name__ == "__main__":
    main()
