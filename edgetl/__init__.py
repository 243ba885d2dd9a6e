"""edgetl: fine-tune a vision backbone on your images, compress, export, verify and benchmark it for the edge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from edgetl.progress import Reporter
    from edgetl.recipe import Recipe


def build(recipe: str | Path | Recipe, out: str | Path | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a whole recipe (cached per stage) and return the summary written to <run dir>/summary.json."""
    from edgetl.api import build as _build

    return _build(recipe, out=out, reporter=reporter)
