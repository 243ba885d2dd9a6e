"""The latency-budget search on real data: does it pick a model that meets the budget, how close is it to the best
model without a budget, and how much of the grid did it train?

    python benchmarks/search.py [--recipe recipes/search.yaml] [--run-dir DIR] [--out benchmarks/results/search.json]

Runs `edgetl build` of the recipe (the search), then the same grid without a latency budget into the same run
directory (every sub-run already built is reused) to find the best unconstrained model, and prints the issue's
figures against their targets. Numbers are read from the builds' summary.json files. Needs the dataset and weights
offline: set EDGETL_CACHE / TORCH_HOME (see the README).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import yaml
from common import REPO, targets_table, timed_build, write_result


def unconstrained(recipe: Path, folder: Path) -> Path:
    """The same recipe with no latency or size budget (every accuracy counts), written into `folder`."""
    data = yaml.safe_load(recipe.read_text())
    budget = data["search"]["budget"]
    data["search"]["budget"] = {"accuracy_min": 0.0, "device": budget.get("device", "local"),
                                "threads": budget.get("threads", 1)}
    data["name"] = f"{data['name']}-unconstrained"
    path = folder / "unconstrained.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "search.yaml")
    parser.add_argument("--run-dir", type=Path, help="Run directory to build into and keep (reused if it exists).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-search-") as tmp:
        run = args.run_dir or Path(tmp) / "run"
        seconds, summary = timed_build(args.recipe, run)
        # The grid again without a budget, into a copy of the sub-runs: what was built is reused, not retrained.
        free_run = Path(tmp) / "unconstrained"
        shutil.copytree(run / "search", free_run / "search")
        free_seconds, free = timed_build(unconstrained(args.recipe, Path(tmp)), free_run)
    search, budget = summary["search"], summary["search"]["budget"]
    chosen = next(c for c in search["candidates"] if c["status"] == "chosen")
    measured = {c["name"]: c for c in search["candidates"] + free["search"]["candidates"]
                if c.get("val_accuracy") is not None}
    best = max(measured.values(), key=lambda c: c["val_accuracy"])
    fastest_fp32 = min((c for c in search["candidates"] if c["precision"] == "fp32" and c["prune"] == 0.0),
                       key=lambda c: c["untrained_latency_ms_p90"])
    targets = [
        {"figure": f"fastest unpruned fp32 candidate ({fastest_fp32['name']}) misses the budget",
         "measured": f"p90 {fastest_fp32['untrained_latency_ms_p90']:.2f} ms untrained vs {budget['latency_ms_p90']} ms",
         "target": "misses", "met": fastest_fp32["untrained_latency_ms_p90"] > budget["latency_ms_p90"]},
        {"figure": "chosen model meets the budget",
         "measured": f"{chosen['name']}: p90 {chosen['latency_ms_p90']:.2f} ms, {chosen['val_accuracy']:.2f} %",
         "target": f"p90 ≤ {budget['latency_ms_p90']} ms", "met": chosen["latency_ms_p90"] <= budget["latency_ms_p90"]},
        {"figure": "chosen vs best unconstrained model (accuracy)",
         "measured": f"{chosen['val_accuracy']:.2f} % vs {best['val_accuracy']:.2f} % ({best['name']}): "
                     f"{best['val_accuracy'] - chosen['val_accuracy']:.2f} pp",
         "target": "≤ 1 pp", "met": best["val_accuracy"] - chosen["val_accuracy"] <= 1.0},
        {"figure": "share of the grid trained",
         "measured": f"{search['trained_count']} of {search['grid_size']} candidates ({search['models_trained']} of "
                     f"{search['models_in_grid']} models)",
         "target": "≤ half", "met": search["trained_count"] <= search["grid_size"] / 2}]
    recipe = args.recipe.resolve()
    result = {"recipe": str(recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe),
              "seconds": round(seconds, 1), "unconstrained_seconds": round(free_seconds, 1),
              "search": search, "unconstrained_best": best, "targets": targets}
    write_result(args.out, result, "\n".join(targets_table(targets)),
                 f"search {seconds:.0f} s, unconstrained {free_seconds:.0f} s")


if __name__ == "__main__":
    main()
