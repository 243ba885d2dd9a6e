"""edgetl: fine-tune a vision backbone on your images, compress, export, verify and benchmark it for the edge."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from edgetl.classifier import Classifier
    from edgetl.progress import Reporter
    from edgetl.recipe import Recipe


def build(recipe: str | Path | Recipe, out: str | Path | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a whole recipe (cached per stage) and return the summary written to <run dir>/summary.json."""
    try:
        from edgetl.api import build as _build
    except ModuleNotFoundError as exc:
        from edgetl.errors import training_stack_missing

        missing = training_stack_missing(exc, "edgetl.build")
        if missing is None:
            raise
        raise missing from None
    return _build(recipe, out=out, reporter=reporter)


def load(path: str | Path, threads: int | None = None) -> Classifier:
    """A classifier for an exported model — a model file, its export folder, a deploy bundle or a run directory (its
    chosen artifact) — run by its own runtime with `threads` threads (default: every core). Torch-free:
    `edgetl.load("runs/quickstart").predict("photo.jpg").label`; `.predict` also takes a PIL image or an H×W×3 RGB
    uint8 numpy array (a camera frame)."""
    from edgetl.classifier import load as _load

    return _load(path, threads)
