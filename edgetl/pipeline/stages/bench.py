"""bench: every artifact timed by `edgetl bench`'s harness (alternating rounds over all artifacts, per thread count
of the recipe); its rows are the public `edgetl bench --json` rows."""

from __future__ import annotations

from pathlib import Path

from edgetl.pipeline.context import BuildContext, Stage
from edgetl.recipe import section_dict

_ROUNDS = 5  # interleaved rounds over all artifacts: a change of machine load hits them alike


def _threads(ctx: BuildContext) -> tuple[int, ...]:
    """bench.threads, and a local target's thread count after them when it is not one of them."""
    target = ctx.recipe.target
    extra = (target.threads,) if target is not None and target.device == "local" else ()
    return tuple(dict.fromkeys((*ctx.recipe.bench.threads, *extra)))


def key(ctx: BuildContext) -> dict:
    return {"bench": section_dict(ctx.recipe.bench), "artifacts": ctx.records["export"]["files"],
            "val": ctx.file_hash("inputs", "val"), "method": "edgetl bench rows",
            **({"threads": _threads(ctx)} if _threads(ctx) != tuple(ctx.recipe.bench.threads) else {})}


def work(ctx: BuildContext, folder: Path) -> dict:
    from edgetl.bench.measure import BenchOptions, ModelRef, benchmark
    from edgetl.bench.stats import row_stats

    cfg, artifacts = ctx.recipe.bench, ctx.records["export"]["artifacts"]
    images = tuple(Path(s.path) for s in ctx.index.val[:cfg.batch])  # the batch: val images, preprocessed as verified
    options = BenchOptions(threads=_threads(ctx), batch=cfg.batch, warmup=cfg.warmup, time_s=cfg.min_time_s,
                           min_runs=cfg.min_runs, max_runs=cfg.max_runs, repeats=_ROUNDS, images=images,
                           cold_start=False)
    models = [ModelRef(ctx.root / a["path"], a["name"], a["format"], a["precision"], ctx.prep.to_json())
              for a in artifacts]
    rows = benchmark(models, options, ctx.reporter)
    for row in rows:
        row["model"] = ctx.run.rel(Path(row["model"]))
    latency: dict[str, dict[str, dict]] = {a["name"]: {} for a in artifacts}
    for row in rows:
        latency[row["name"]][str(row["threads"])] = row_stats(row)
    return {"batch": cfg.batch, "latency_ms": latency, "rows": rows, "method": "alternating rounds (edgetl bench)",
            "files": {}}


def summarize(ctx: BuildContext, summary: dict) -> None:
    """Each artifact's latency at the first thread count (`latency_ms`) and at each (`latency_by_threads`), and the
    bench rows themselves (`bench_rows`, their `model` relative to the run directory)."""
    record, cfg = ctx.records.get("bench") or {}, ctx.recipe.bench
    first = str(cfg.threads[0])
    from edgetl.significance import p50_ci95

    rounds = {(row["name"], str(row["threads"])): row.get("trial_p50_ms") or [] for row in record.get("rows", [])}
    for entry in summary["artifacts"]:
        latency = {threads: {**stats, "p50_ci95": p50_ci95(rounds.get((entry["name"], threads), []))}
                   for threads, stats in record.get("latency_ms", {}).get(entry["name"], {}).items()}
        entry["latency_ms"] = dict(latency[first]) if latency else None
        entry["threads"], entry["batch"] = int(first), cfg.batch
        entry["latency_by_threads"] = latency
    summary["bench_rows"] = record.get("rows", [])


STAGE = Stage("bench", work, key, summarize=summarize)
