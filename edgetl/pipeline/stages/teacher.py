"""teacher: the model the student distills from — fine-tuned here (distill.teacher.backbone) or loaded from an edgetl
model.pt (distill.teacher.checkpoint); with its logits on every train image when distill.teacher_logits is
`precomputed`."""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import RecipeError, described
from edgetl.fsutil import sha256_file
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.finetune import FineTune
from edgetl.pipeline.models import load_saved, renormalize, save_model, teacher_prep, teacher_spec, write_logits
from edgetl.preprocess import Preprocessing
from edgetl.recipe import Recipe


def runs(recipe: Recipe) -> bool:
    return recipe.distill is not None


def _precomputed(ctx: BuildContext) -> bool:
    return ctx.recipe.distill.teacher_logits == "precomputed"


def _train_logits(ctx: BuildContext, folder: Path, model) -> dict:
    """The teacher's logits for every train image, augmentation-free (distill.teacher_logits: precomputed)."""
    from edgetl.preprocess import preprocess_files
    from edgetl.train import predict

    path, index = folder / "train_logits.npy", ctx.index
    prep = Preprocessing.from_json(_saved_prep(folder))
    with ctx.reporter.task("teacher logits for the train images", len(index.train)) as update:
        inputs = preprocess_files([s.path for s in index.train], prep, progress=lambda done, total: update(1))
    write_logits(path, predict(model, inputs))
    return {"train_logits": ctx.run.rel(path), "files": ctx.run.files_record(path)}


def _saved_prep(folder: Path) -> dict:
    """The preprocessing saved with the teacher's model.pt in `folder` (its own mean/std on the student's pixels)."""
    import torch

    return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)["preprocessing"]


def _fine_tune(ctx: BuildContext) -> FineTune:
    return FineTune(teacher_spec(ctx.recipe, ctx.prep), extra=_train_logits if _precomputed(ctx) else None)


def _checkpoint(ctx: BuildContext) -> Path:
    checkpoint = ctx.recipe.resolve_path(ctx.recipe.distill.teacher.checkpoint)
    if not checkpoint.is_file():
        raise RecipeError(f"{ctx.source}: distill.teacher.checkpoint {checkpoint} does not exist.")
    return checkpoint


def key(ctx: BuildContext) -> dict:
    if ctx.recipe.distill.teacher.backbone is not None:
        return _fine_tune(ctx).key(ctx)
    return {"checkpoint": sha256_file(_checkpoint(ctx)), "data": ctx.records["data"]["files"],
            "precomputed": _precomputed(ctx), "val": ctx.file_hash("inputs", "val")}


def work(ctx: BuildContext, folder: Path) -> dict:
    if ctx.recipe.distill.teacher.backbone is not None:
        return _fine_tune(ctx).work(ctx, folder)
    return _load_checkpoint(ctx, folder)


def _load_checkpoint(ctx: BuildContext, folder: Path) -> dict:
    from edgetl.evaluate import top1_accuracy
    from edgetl.train import predict

    checkpoint, index = _checkpoint(ctx), ctx.index
    try:
        model, saved = load_saved(checkpoint)
    except Exception as exc:
        raise RecipeError(f"{ctx.source}: distill.teacher.checkpoint {checkpoint} is not an edgetl "
                          f"model.pt ({described(exc)}).") from None
    if list(saved.get("classes", [])) != list(index.classes):
        raise RecipeError(f"{ctx.source}: distill.teacher.checkpoint {checkpoint} was trained on "
                          f"classes {saved.get('classes')}, this dataset has {index.classes}.")
    own = Preprocessing.from_json(saved["preprocessing"]) if "preprocessing" in saved else teacher_prep(
        saved["backbone"], ctx.prep)
    prep = Preprocessing.from_json({**ctx.prep.to_json(), "mean": list(own.mean), "std": list(own.std)})
    model_path, logits_path = folder / "model.pt", folder / "val_logits.npy"
    save_model(model_path, model, saved["backbone"], float(saved["dropout"]), index.classes, prep,
               saved.get("structure"))
    logits = predict(model, renormalize(ctx.load("inputs", "val", mmap=True), ctx.prep, prep))
    write_logits(logits_path, logits)
    record = {"backbone": saved["backbone"], "checkpoint": str(checkpoint), "model": ctx.run.rel(model_path),
              "val_logits": ctx.run.rel(logits_path),
              "val_accuracy": round(top1_accuracy(logits, ctx.load("inputs", "val_labels")), 4),
              "params": sum(p.numel() for p in model.parameters()),
              "files": ctx.run.files_record(model_path, logits_path)}
    if _precomputed(ctx):
        added = _train_logits(ctx, folder, model)
        record["files"] |= added.pop("files")
        record |= added
    return record


def summarize(ctx: BuildContext, summary: dict) -> None:
    """The `distill` block (null without distillation), with the baseline's accuracy when it ran."""
    teacher, train, baseline = ctx.teacher, ctx.records["train"], ctx.records.get("baseline")
    if teacher is None:
        summary["distill"] = None
        return
    d = ctx.recipe.distill
    summary["distill"] = {
        "teacher": {"backbone": teacher["backbone"], "val_accuracy": teacher["val_accuracy"],
                    "params": teacher["params"], "checkpoint": teacher.get("checkpoint"), "path": teacher["model"]},
        "student": {"backbone": train["backbone"], "val_accuracy": train["val_accuracy"], "params": train["params"]},
        "student_without_kd_val_accuracy": baseline["val_accuracy"] if baseline else None,
        "kd_gain_pp": round(train["val_accuracy"] - baseline["val_accuracy"], 4) if baseline else None,
        "kd_vs_without_kd": ctx.paired("train", "baseline", "kd", "without_kd") if baseline else None,
        "temperature": d.temperature, "alpha": d.alpha, "teacher_logits": d.teacher_logits}


STAGE = Stage("teacher", work, key, runs=runs, summarize=summarize, keep=("checkpoint.pt",))
