"""`edgetl init` → `edgetl build` with no edit, on datasets laid out flat (every image of a class in `<class>/`):
the chosen artifact, its test accuracy with its interval, the build's own linear-probe phase and the gain over it,
and the wall time.

    python benchmarks/init.py [--dataset hymenoptera|trashnet5|trashnet5-N ...] [--out benchmarks/results/init.json]

`hymenoptera`: hymenoptera_data's train and val images together (397, 2 classes); `trashnet5`: trashnet5's 2,000
(5 classes); `trashnet5-N`: N images per class of it, the first N by file name. Each is copied flat into a temp
folder, so edgetl splits it 60 / 20 / 20 itself. Needs the datasets in $EDGETL_CACHE/datasets (see the README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result

IMAGE = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def datasets_root() -> Path:
    return Path(os.environ.get("EDGETL_CACHE", Path.home() / ".cache" / "edgetl")) / "datasets"


def flat_copy(name: str, into: Path) -> Path:
    """The dataset `name` as <class>/ folders under `into`."""
    source = datasets_root() / ("hymenoptera_data" if name == "hymenoptera" else "trashnet5")
    per_class = int(name.split("-")[1]) if name.startswith("trashnet5-") else None
    images: dict[str, list[Path]] = {}
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() in IMAGE and path.is_file():
            images.setdefault(path.parent.name, []).append(path)
    for label, paths in images.items():
        (into / label).mkdir(parents=True)
        for i, path in enumerate(paths[:per_class]):
            shutil.copy2(path, into / label / f"{path.parent.parent.name}-{i:04d}{path.suffix.lower()}")
    return into


def run(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edgetl.cli", *argv], capture_output=True, text=True)
    return time.perf_counter() - started, result


def measure(name: str, scratch: Path) -> dict:
    data = flat_copy(name, scratch / name)
    recipe = scratch / f"{name}.yaml"
    _, made = run(["init", str(data), "--out", str(recipe)])
    if made.returncode:
        raise SystemExit(f"edgetl init {data} failed:\n{made.stdout}{made.stderr}")
    seconds, built = run(["build", str(recipe), "--out", str(scratch / f"run-{name}"), "--quiet"])
    if built.returncode:
        raise SystemExit(f"edgetl build {recipe} failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}")
    summary = json.loads((scratch / f"run-{name}" / "summary.json").read_text())
    chosen = next(a for a in summary["artifacts"] if a["name"] == summary["chosen"])
    model = summary["model"]
    row = {"dataset": name, "classes": len(summary["classes"]), "train_images": summary["data"]["train_images"],
           "val_images": summary["data"]["val_images"], "test_images": summary["data"]["test_images"],
           "epochs": made.stdout.split(": ", 1)[1].split(" epochs")[0], "epochs_run": model["epochs_run"],
           "best_epoch": model["best_epoch"], "probe_val_accuracy": model.get("probe_val_accuracy"),
           "val_accuracy": model["val_accuracy"], "chosen": summary["chosen"],
           "chosen_test_accuracy": chosen["test_accuracy"], "chosen_test_ci95": chosen["test_accuracy_ci95"],
           "chosen_test_correct": chosen["test_correct"], "chosen_val_accuracy": chosen["val_accuracy"],
           "torch_test_accuracy": summary["reference_model"]["test_accuracy"], "build_s": round(seconds, 1),
           "cli_output": built.stdout.splitlines()}
    probe = row["probe_val_accuracy"]
    row["val_gain_over_probe_pp"] = None if probe is None else round(model["val_accuracy"] - probe, 2)
    row["measured"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": summary["environment"].get("cpu"),
                       "cores": summary["environment"].get("cores")}
    print(f"  {name}: {row['chosen']} test {row['chosen_test_accuracy']:.2f} % {row['chosen_test_ci95']}, val "
          f"{row['val_accuracy']:.2f} % vs probe {probe}, {seconds:.0f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="hymenoptera, trashnet5 or trashnet5-N (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "init.json")
    parser.add_argument("--add", action="store_true", help="keep --out's rows of the other datasets (each row says "
                        "its date and machine)")
    args = parser.parse_args()
    names = args.dataset or ["hymenoptera"]
    with tempfile.TemporaryDirectory(prefix="edgetl-init-") as scratch:
        rows = [measure(name, Path(scratch)) for name in names]
    if args.add and args.out.is_file():
        kept = [r for r in json.loads(args.out.read_text())["rows"] if r["dataset"] not in names]
        rows = kept + rows
    lines = ["| dataset | classes | train / val / test | epochs (run, best) | probe val % | model val % | chosen | "
             "test % (95 % CI) | build |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = r["chosen_test_ci95"]
        lines.append(f"| {r['dataset']} | {r['classes']} | {r['train_images']} / {r['val_images']} / "
                     f"{r['test_images']} | {r['epochs']} ({r['epochs_run']}, {r['best_epoch']}) | "
                     f"{r['probe_val_accuracy']} | {r['val_accuracy']:.2f} | {r['chosen']} | "
                     f"{r['chosen_test_accuracy']:.2f} ({ci[0]:.1f}–{ci[1]:.1f}) | {r['build_s'] / 60:.1f} min |")
    from edgetl.pipeline.summary import environment

    write_result(args.out, {"rows": rows, "environment": environment(), "date": time.strftime("%Y-%m-%d")},
                 "\n".join(lines))


if __name__ == "__main__":
    main()
