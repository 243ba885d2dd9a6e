"""Distributed fine-tuning on this machine: the quickstart trained by 1 process and by 2 gloo processes.

    python benchmarks/ddp.py [--recipe recipes/quickstart.yaml] [--out benchmarks/results/ddp.json]

Three real builds of the recipe's fine-tune (exporting ONNX fp32 only, to check the file's accuracy too) into a
temporary folder: 1 process with `data.workers: 0`, 1 process with the default 2 loader workers, and
`edgetl build --nproc 2` (each process with 1 loader worker). Prints a table and writes JSON.
Needs the dataset and weights offline: set EDGETL_CACHE / TORCH_HOME (see the README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import REPO, targets_table, write_result

VARIANTS = [("1 process, 0 loader workers", 1, 0), ("1 process, 2 loader workers", 1, 2),
            ("2 processes (gloo), 1 loader worker each", 2, 1)]


def build(recipe: Path, out: Path, nproc: int) -> tuple[float, dict]:
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "edgetl.cli", "build", str(recipe), "--out", str(out), "--quiet", "--nproc", str(nproc)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ddp.json")
    args = parser.parse_args()
    base = yaml.safe_load(args.recipe.read_text())
    base["export"] = {"formats": ["onnx"], "precisions": ["fp32"]}
    base["bench"] = {"threads": [1], "min_time_s": 0.5}
    base.setdefault("verify", {}).pop("accuracy_aware_retry", None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetl-ddp-") as tmp:
        for label, nproc, workers in VARIANTS:
            recipe = {**base, "data": {**base["data"], "workers": workers}}
            path = Path(tmp) / f"{nproc}-{workers}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            seconds, summary = build(path, Path(tmp) / f"run-{nproc}-{workers}", nproc)
            history = json.loads((Path(tmp) / f"run-{nproc}-{workers}" / "train" / "history.json").read_text())
            rows.append({"variant": label, "processes": summary["model"]["world_size"], "loader_workers": workers,
                         "val_accuracy": summary["model"]["val_accuracy"],
                         "onnx_fp32_val_accuracy": summary["artifacts"][0]["val_accuracy"],
                         "epochs_run": summary["model"]["epochs_run"], "best_epoch": summary["model"]["best_epoch"],
                         "train_stage_s": summary["stages"]["train"]["seconds"],
                         "epoch_s_median": sorted(h["seconds"] for h in history)[len(history) // 2],
                         "build_s": round(seconds, 1)})
    single = next(r for r in rows if r["processes"] == 1 and r["loader_workers"] == 2)
    ddp = next(r for r in rows if r["processes"] == 2)
    gap = round(abs(ddp["val_accuracy"] - single["val_accuracy"]), 4)
    targets = [{"figure": "2-process DDP vs 1 process, val accuracy", "measured": f"{gap:.2f} pp apart "
                f"({ddp['val_accuracy']:.2f} % vs {single['val_accuracy']:.2f} %)", "target": "≤ 1 pp", "met": gap <= 1.0}]
    lines = ["| variant | processes | loader workers | val acc % | ONNX fp32 acc % | epochs | epoch s (median) | "
             "train stage s | build s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['processes']} | {r['loader_workers']} | {r['val_accuracy']:.2f} | "
              f"{r['onnx_fp32_val_accuracy']:.2f} | {r['epochs_run']} | {r['epoch_s_median']:.1f} | "
              f"{r['train_stage_s']:.1f} | {r['build_s']:.1f} |" for r in rows]
    result = {"recipe": str(args.recipe.relative_to(REPO) if args.recipe.is_relative_to(REPO) else args.recipe),
              "command": "python benchmarks/ddp.py", "rows": rows, "targets": targets}
    write_result(args.out, result, "\n".join(lines + [""] + targets_table(targets)))


if __name__ == "__main__":
    main()
