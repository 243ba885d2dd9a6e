"""baseline: the student fine-tuned without KD, to measure what distillation gains (distill.compare_without_kd)."""

from __future__ import annotations

from pathlib import Path

from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.finetune import FineTune
from edgetl.pipeline.models import student_spec
from edgetl.recipe import Recipe


def runs(recipe: Recipe) -> bool:
    return recipe.distill is not None and recipe.distill.compare_without_kd


def key(ctx: BuildContext) -> dict:
    return FineTune(student_spec(ctx.recipe, ctx.prep)).key(ctx)


def work(ctx: BuildContext, folder: Path) -> dict:
    return FineTune(student_spec(ctx.recipe, ctx.prep)).work(ctx, folder)


STAGE = Stage("baseline", work, key, runs=runs, keep=("checkpoint.pt",))
