"""The Python entry points above the pipeline: `edgetl.build` (what `edgetl build` runs).

A recipe with `search:` runs the search (edgetl.search_build), which builds its candidates through the pipeline; any
other recipe runs the pipeline's stages. Dispatching here keeps the pipeline free of the search that uses it.
"""

from __future__ import annotations

from pathlib import Path

from edgetl.pipeline import build as build_pipeline
from edgetl.progress import Reporter
from edgetl.recipe import Recipe, load_recipe


def build(recipe: str | Path | Recipe, out: str | Path | None = None, reporter: Reporter | None = None) -> dict:
    """Run a whole recipe (cached per stage) and return the summary written to <run dir>/summary.json."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.search is None:
        return build_pipeline(recipe, out=out, reporter=reporter)
    from edgetl.search_build import search_body

    return build_pipeline(recipe, out=out, reporter=reporter, body=search_body)
