"""The build: the declared stages (edgetl/pipeline/stages/, in the order of STAGES) run into one run directory,
each cached by the hash of its inputs, ending in summary.json + report.md.

Layout: rundir.py (run directory, cache, markers: knows no stage), context.py (BuildContext and the Stage
declaration), models.py and finetune.py (the torch models the stages share), stages/ (one module per stage),
summary.py (summary.json and the report)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

from edgetl import __version__
from edgetl.errors import AccuracyBudgetError, BudgetError, DeviceError, EdgetlError, StorageError
from edgetl.fsutil import changed_files, check_apart, read_json, remove_orphaned_temp_folders, sha256_json, write_text
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.models import create_recipe_model, load_trained, preprocessing
from edgetl.pipeline.rundir import Layout, RunDir
from edgetl.pipeline.stages import STAGES
from edgetl.pipeline.stages.data import resolve_data_root, scan_recipe_dataset
from edgetl.pipeline.summary import summary as build_summary
from edgetl.pipeline.summary import write_outputs
from edgetl.progress import Reporter
from edgetl.recipe import Recipe, load_recipe

__all__ = ["STAGES", "BuildContext", "RunDir", "Stage", "build", "claim_run_dir", "create_recipe_model",
           "load_trained", "resolve_data_root", "scan_recipe_dataset", "stage_names", "stages_before"]

# Failures after which every file is verified and the summary says the rest: it is written with the failure's status
# (an artifact over the accuracy budget, a target that cannot be reached or met). Bundles refuse such a run.
_SUMMARIZED = (AccuracyBudgetError, DeviceError, BudgetError)

LAYOUT = Layout(STAGES[0].name, frozenset(s.name for s in STAGES), frozenset(f for s in STAGES for f in s.keep))


def stages_of(recipe: Recipe) -> list[Stage]:
    """The stages `recipe` runs, in order."""
    return [stage for stage in STAGES if stage.runs(recipe)]


def stages_before(name: str) -> tuple[str, ...]:
    """The names of the stages that run before stage `name` (what a build that differs from `name` on can share)."""
    names = [stage.name for stage in STAGES]
    return tuple(names[:names.index(name)])


def stage_names(recipe: Recipe) -> list[str]:
    """The names of the stages `recipe` runs, in order."""
    return [stage.name for stage in stages_of(recipe)]


def claim_run_dir(root: Path) -> None:
    """Make `root` a run directory: refuse a folder of other files; create it and write the marker otherwise."""
    LAYOUT.claim(root)


def _dataset_folder(recipe: Recipe) -> Path:
    """Where the recipe's images are (or will be extracted to), without downloading anything."""
    from edgetl.data import default_cache_dir

    data = recipe.data
    return recipe.resolve_path(data.path) if data.path else default_cache_dir() / "datasets" / str(data.dataset)


def build(recipe: str | Path | Recipe, out: str | Path | None = None, reporter: Reporter | None = None,
          body: Callable[[Recipe, RunDir], dict] | None = None) -> dict:
    """Run every stage of `recipe` into its run directory; return the summary. `body(recipe, run)` replaces the
    stages with other work in the same run directory, under the same rules (a search: edgetl.api.build passes it)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    reporter = reporter or Reporter()
    root = Path(out) if out else Path("runs") / recipe.name
    check_apart(root, _dataset_folder(recipe), "--out", "the dataset")
    if recipe.target is not None:
        from edgetl.target import resolve_target

        resolve_target(recipe)  # a device name not in target.devices is found now, not after training (no connection)
    first_created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    claim_run_dir(root)
    remove_orphaned_temp_folders()  # those of earlier builds killed outright
    reporter.info(f"edgetl {__version__}: building '{recipe.name}' into {root}")
    if body is None and recipe.search is not None:
        raise ValueError("a recipe with `search:` is built by edgetl.build (edgetl.api.build), not the pipeline")
    run = RunDir(root.resolve(), reporter, stage_names(recipe) if body is None else [])
    _mark_building(run.root / "summary.json")
    with contextlib.suppress(StorageError):  # as for summary.json: a stage that must write says so, by name
        write_text(run.root / "recipe.resolved.yaml", recipe.resolved_yaml())
    try:
        if body is not None:
            summary = body(recipe, run)
            write_outputs(run, summary)
            reporter.info(f"done: {root / 'summary.json'}, {root / 'report.html'}")
            return summary
        return _run(recipe, run)
    except BaseException as exc:
        # A build that failed before any stage completed leaves no empty run directory behind.
        if first_created is not None and not any(first_created.glob("**/stage.json")):
            shutil.rmtree(first_created, ignore_errors=True)
        elif not getattr(exc, "summary_written", False):
            _record_failure(recipe, run, exc)
        raise


def _run(recipe: Recipe, run: RunDir) -> dict:
    ctx = BuildContext(recipe, run, preprocessing(recipe))
    for stage in stages_of(recipe):
        try:
            stage.run(ctx)
        except _SUMMARIZED as exc:
            if "verify" not in ctx.records:
                raise  # nothing verified yet: recorded as any other failure
            status = "failed: accuracy budget" if isinstance(exc, AccuracyBudgetError) else f"failed: {exc.kind}"
            summary = build_summary(ctx, STAGES, status)
            if not isinstance(exc, AccuracyBudgetError):
                summary |= {"error": str(exc)[:4000], "failed_stage": stage.name, "figures_from_this_build": True}
            write_outputs(run, summary)
            exc.summary_written = True
            raise
    summary = build_summary(ctx, STAGES, "ok")
    write_outputs(run, summary)
    run.reporter.info(f"done: {run.root / 'summary.json'}, {run.root / 'report.md'}")
    return summary


def _mark_building(summary_path: Path) -> None:
    """Say in the last build's summary that a build is under way: a stage it swaps in may replace files that summary
    lists, and a build killed outright (SIGKILL) cannot say so afterwards. Bundles refuse a run in this state."""
    try:
        summary = read_json(summary_path)
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(summary, dict) and summary.get("status") != "building":
        from edgetl.fsutil import write_json

        with contextlib.suppress(StorageError):  # a read-only run: the stage that must write says so, by name
            write_json(summary_path, {**summary, "status": "building"})


def _record_failure(recipe: Recipe, run: RunDir, exc: BaseException) -> None:
    """Rewrite summary.json with the build's real status: the last summary's fields, `status: failed: …` and the
    error, and only the artifacts whose files are still there as recorded. Bundles refuse such a run."""
    from edgetl.summary import check_summary

    summary_path = run.root / "summary.json"
    try:
        if not summary_path.is_file() and not any(run.root.glob("*/stage.json")):
            return
        try:
            previous = check_summary(read_json(summary_path), summary_path) if summary_path.is_file() else {}
        except (OSError, ValueError, RecursionError, EdgetlError):
            previous = {}  # a damaged summary is replaced, not a reason to hide the build's own error
        kept = [a for a in previous.get("artifacts", []) if a.get("files_sha256")
                and not changed_files(run.root, a["files_sha256"])]
        kind = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else getattr(exc, "kind", "internal error")
        summary = {**previous, "edgetl_version": __version__, "status": f"failed: {kind}",
                   "error": str(exc)[:4000] or type(exc).__name__, "failed_stage": run.current,
                   "recipe": recipe.source or "<recipe>", "recipe_name": recipe.name,
                   "recipe_sha256": sha256_json(recipe.model_dump(mode="json")), "artifacts": kept,
                   "stages": {**(previous.get("stages") or {}), **run.timings}}
        write_outputs(run, summary, plots=False)
    except Exception:
        pass  # the build's own error is the one to report
