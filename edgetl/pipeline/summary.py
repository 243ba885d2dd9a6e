"""summary.json and report.md of a run: the build's own fields, then each stage's block."""

from __future__ import annotations

from edgetl import __version__
from edgetl.fsutil import sha256_json, write_json
from edgetl.pipeline.context import BuildContext
from edgetl.pipeline.rundir import RunDir


def package_versions() -> dict[str, str | None]:
    """The versions of every package a build uses (torch's, torchvision's and the format table's; None: absent)."""
    from edgetl.bench.environment import package_version
    from edgetl.formats import FORMATS

    packages = ("torch", "torchvision", *(p for f in FORMATS.values() for p in f.packages))
    return {name: package_version(name) for name in dict.fromkeys(packages)}


def environment() -> dict:
    """The machine and the versions of every package the build used."""
    from edgetl.bench.environment import machine_info

    return {**machine_info(), **package_versions()}


def summary(ctx: BuildContext, stages, status: str) -> dict:
    """The summary of a build's `stages`: each adds its block from its record (a stage that did not run writes its
    empty block)."""
    recipe = ctx.recipe
    out = {"edgetl_version": __version__, "status": status, "recipe": recipe.source or "<recipe>",
           "recipe_name": recipe.name, "recipe_sha256": sha256_json(recipe.model_dump(mode="json"))}
    for stage in stages:
        if stage.summarize is not None:
            stage.summarize(ctx, out)
    out["stages"] = ctx.run.timings
    out["environment"] = environment()
    return out


def write_outputs(run: RunDir, summary: dict, plots: bool = True) -> None:
    from edgetl.report import write_report

    write_json(run.root / "summary.json", summary)
    write_report(run.root, summary, plots=plots)
