"""target: every artifact the target can run measured there (on this machine: the bench stage's rows at the target's
threads; on an ssh:// device: timed there in rounds), then the artifact to ship chosen by edgetl.target's rule —
`chosen` and `choice` in summary.json. A device that cannot be reached fails the build after the summary of
everything else is written (a rebuild re-runs only this stage)."""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import TargetBudgetError
from edgetl.fsutil import sha256_json
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.recipe import section_dict

RECORD = 1


def key(ctx: BuildContext) -> dict:
    from edgetl.target import resolve_target

    target = resolve_target(ctx.recipe)
    local = target.device is None
    return {"record": RECORD, "device": target.url, "threads": target.threads, "formats": target.formats,
            # what is measured, not the budget: a new budget is a new choice (`then`), not a new measurement
            "target": {k: v for k, v in section_dict(ctx.recipe.target).items() if k != "budget"}
            if ctx.recipe.target else None,
            "artifacts": ctx.records["export"]["files"],
            # on this machine, the bench stage's measurement is the target's
            "bench": sha256_json(ctx.records["bench"]["rows"]) if local else None}


def work(ctx: BuildContext, folder: Path) -> dict:
    from edgetl.target import allowed_formats, latency_record, resolve_target

    target, artifacts = resolve_target(ctx.recipe), ctx.records["export"]["artifacts"]
    info = target.machine_info()
    why = allowed_formats(target, info["machine"], [a["format"] for a in artifacts], ctx.source)
    runnable = [a for a in artifacts if why[a["format"]] is None]
    excluded = {a["name"]: why[a["format"]] for a in artifacts if why[a["format"]] is not None}
    latency, rows = {}, []
    if target.device is None:
        for row in ctx.records["bench"]["rows"]:
            if row["threads"] == target.threads and row["name"] in {a["name"] for a in runnable}:
                latency[row["name"]] = latency_record(row)
    elif runnable:
        from edgetl.bench.remote import bench_on_target
        from edgetl.target import model_refs

        cfg = ctx.recipe.target
        with ctx.reporter.task(f"benchmarking {len(runnable)} artifacts on {target.describe()}",
                               len(runnable)) as update:
            rows, missing = bench_on_target(model_refs(ctx.root, runnable, ctx.prep.to_json()), target.device,
                                            target.threads, cfg.rounds, cfg.runs, cfg.warmup, cfg.install, update)
        for name, reason in missing.items():
            if target.formats is not None:  # the recipe asked for this format there: it must run
                from edgetl.errors import DeviceRuntimeError

                raise DeviceRuntimeError(f"{ctx.source}: target.formats: {reason}")
            excluded[name] = reason
        for row in rows:
            row["model"] = ctx.run.rel(Path(row["model"]))
            latency[row["name"]] = latency_record(row)
            ctx.reporter.info(f"  {row['name']} on {target.name}: p50 {row['p50_ms']:.3f} ms, p90 "
                              f"{row['p90_ms']:.3f} ms ({row['runs']} runs in {row['repeats']} rounds)")
        if rows:
            info = {**info, **rows[0]["device_info"]}
    return {"name": target.name, "device": target.url, "declared": target.declared, "threads": target.threads,
            "device_info": info, "formats": [f for f, reason in why.items() if reason is None],
            "excluded": excluded, "latency_ms": latency, "rows": rows, "files": {}}


def then(ctx: BuildContext, record: dict) -> None:
    """Choose the artifact to ship (edgetl.target.RULE) from the val predictions and the target's latencies; no
    artifact within target.budget fails the build (after its summary is written)."""
    import numpy as np

    from edgetl.target import choose

    artifacts = [{"name": a["name"], "size_bytes": a["size_bytes"]} for a in ctx.records["export"]["artifacts"]]
    predictions = ctx.load("verify", "val_predictions")
    labels = ctx.load("inputs", "val_labels")
    right = {a["name"]: np.asarray(row == labels) for a, row in zip(artifacts, predictions, strict=True)}
    budget = section_dict(ctx.recipe.target.budget) if ctx.recipe.target else {}
    ctx.choice = choose(artifacts, right, record["latency_ms"], record["excluded"], budget)
    if ctx.choice["chosen"] is None:
        reasons = "; ".join(f"{a['name']}: {a['why']}" for a in ctx.choice["artifacts"])
        if all(a["status"] == "excluded" for a in ctx.choice["artifacts"]):
            from edgetl.errors import DeviceRuntimeError

            raise DeviceRuntimeError(f"the target {record['name']} ({ctx.source}: target) can run none of this "
                                     f"build's artifacts: {reasons}. Export a format it runs (export.formats), or "
                                     "install its runtime there.")
        raise TargetBudgetError(f"no artifact of this build can ship to the target {record['name']} under target.budget "
                          f"{budget} in {ctx.source}: {reasons}. Every figure is in {ctx.root / 'summary.json'}.")


def summarize(ctx: BuildContext, summary: dict) -> None:
    """`target` (where, what it runs, why the others not), each artifact's `target_latency_ms` (null where not
    measured there), `chosen` (an artifact name) and `choice` (the rule, the figures, why each other lost)."""
    record = ctx.records.get("target")
    for entry in summary.get("artifacts", []):
        entry["target_latency_ms"] = (record or {}).get("latency_ms", {}).get(entry["name"])
    summary["target"] = None if record is None else {key: record[key] for key in (
        "name", "device", "declared", "threads", "device_info", "formats", "excluded")}
    choice = ctx.choice
    summary["chosen"] = choice["chosen"] if choice else None
    summary["choice"] = choice


STAGE = Stage("target", work, key, then=then, summarize=summarize)
