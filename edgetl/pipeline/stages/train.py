"""train: fine-tune the recipe's model (the student, with KD from the teacher stage when the recipe distills)."""

from __future__ import annotations

from pathlib import Path

from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.finetune import FineTune
from edgetl.pipeline.models import student_spec


def _fine_tune(ctx: BuildContext) -> FineTune:
    return FineTune(student_spec(ctx.recipe, ctx.prep), kd=ctx.teacher is not None)


def key(ctx: BuildContext) -> dict:
    return _fine_tune(ctx).key(ctx)


def work(ctx: BuildContext, folder: Path) -> dict:
    return _fine_tune(ctx).work(ctx, folder)


def summarize(ctx: BuildContext, summary: dict) -> None:
    recipe, train = ctx.recipe, ctx.records["train"]
    summary["model"] = {
        "backbone": recipe.model.backbone, "weights": recipe.model.weights, "weights_file": train["weights_file"],
        "mode": recipe.train.mode, "val_accuracy": train["val_accuracy"], "epochs_run": train["epochs_run"],
        "final_epoch_val_accuracy": train["final_epoch_val_accuracy"], "best_epoch": train["best_epoch"],
        # the linear-probe phase's val accuracy (best_epoch 0: no fine-tune epoch beat it, its model is shipped)
        "probe_val_accuracy": train.get("probe_val_accuracy"),
        "params": train["params"],
        # processes that fine-tuned it (edgetl build --nproc/--nnodes); 1 for stages cached before
        "world_size": train.get("world_size", 1), "preprocessing": ctx.prep.to_json(), "path": train["model"]}


STAGE = Stage("train", work, key, summarize=summarize, keep=("checkpoint.pt",))
