"""verify: every artifact run by its own runtime on the whole val split — accuracy, agreement and logit parity with
the torch model — and the build's accuracy budget (verify.max_accuracy_drop_pp) checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.bench.environment import usable_cores
from edgetl.errors import AccuracyBudgetError, ExportError, ModelFileError, ParityError
from edgetl.fsutil import atomic_path
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.recipe import section_dict

RECORD = 4  # what the stage records; 2: every accuracy with its n and interval, the paired test against torch;
# 3: the same on the test split, when the data has one; 4: every artifact's val predictions (the choice's paired tests)


def key(ctx: BuildContext) -> dict:
    has_test = "test" in ctx.records["inputs"]
    return {"record": RECORD, "verify": section_dict(ctx.recipe.verify), "artifacts": ctx.records["export"]["files"],
            "inputs": ctx.records["inputs"]["files"],  # images and labels of every split
            "torch_logits": ctx.file_hash(ctx.model_stage, "val_logits"),
            "torch_model": ctx.file_hash(ctx.model_stage, "model") if has_test else None}


def _logits(ctx: BuildContext, artifact: dict, split: str = "val") -> np.ndarray:
    from edgetl.evaluate import runner_logits
    from edgetl.runtime import load_runner

    images = ctx.load("inputs", split, mmap=True)
    try:
        runner = load_runner(ctx.root / artifact["path"], threads=usable_cores())
        with ctx.reporter.task(f"evaluating {artifact['name']} on {len(images)} {split} images",
                               len(images)) as update:
            return runner_logits(runner, images, update=update)
    except ModelFileError as exc:  # a file the build itself wrote: its export is at fault, not the input
        raise ExportError(f"{artifact['name']} was exported but its runtime cannot run it: {exc} Try "
                          "another export.exporter, export.opset or export.int8_format, or leave that "
                          "precision out.") from None


def _check_parity(ctx: BuildContext, artifact: dict, result: dict) -> None:
    """fp32 and fp16 files must give the torch model's logits within verify.parity_atol(_fp16)."""
    verify = ctx.recipe.verify
    tolerance = {"fp32": ("parity_atol", verify.parity_atol),
                 "fp16": ("parity_atol_fp16", verify.parity_atol_fp16)}.get(artifact["precision"])
    diff = result["max_abs_logit_diff"]
    if tolerance and diff > tolerance[1]:
        raise ParityError(f"{ctx.root / artifact['path']} disagrees with the torch model: max |logit diff| "
                          f"{diff:.3g} on {result['parity_images']} val images exceeds verify.{tolerance[0]} "
                          f"({tolerance[1]:g}). The export is wrong"
                          f"{'; try `export.exporter: legacy`' if artifact['format'] == 'onnx' else ''}.")


def work(ctx: BuildContext, folder: Path) -> dict:
    from edgetl.evaluate import confusion_matrix, top1_accuracy
    from edgetl.significance import Accuracy

    val, labels = ctx.load("inputs", "val", mmap=True), ctx.load("inputs", "val_labels")
    torch_logits = ctx.load(ctx.model_stage, "val_logits")
    torch_accuracy = top1_accuracy(torch_logits, labels)
    torch_right = torch_logits.argmax(1) == labels
    results, predictions = {}, []
    for artifact in ctx.records["export"]["artifacts"]:
        logits = _logits(ctx, artifact)
        predictions.append(logits.argmax(1))
        parity_n = min(ctx.recipe.verify.parity_images, len(val))
        diff = float(np.abs(logits[:parity_n] - torch_logits[:parity_n]).max())
        acc = top1_accuracy(logits, labels)
        scores, said = _scored(logits.argmax(1) == labels, torch_right, "val")
        results[artifact["name"]] = result = {
            "val_accuracy": round(acc, 4), **scores, "accuracy_drop_pp": round(torch_accuracy - acc, 4),
            "max_abs_logit_diff": diff, "parity_images": parity_n,
            "prediction_agreement": round(float((logits.argmax(1) == torch_logits.argmax(1)).mean() * 100), 4),
            "confusion_matrix": confusion_matrix(logits, labels, len(ctx.index.classes))}
        ctx.reporter.info(f"  {artifact['name']}: {said}; max |logit diff| {diff:.2e}")
        _check_parity(ctx, artifact, result)
    saved = folder / "val_predictions.npy"  # one row per artifact, in `results` order: the class each image got
    with atomic_path(saved) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(predictions, dtype=np.int32).reshape(len(predictions), len(labels)))
    record = {"torch_val_accuracy": round(torch_accuracy, 4), "torch_val": Accuracy.of(torch_right).record(),
              "artifacts": results, "val_predictions": ctx.run.rel(saved), "files": ctx.run.files_record(saved)}
    if "test" in ctx.records["inputs"]:
        record |= _on_test(ctx, results)
    return record


def _on_test(ctx: BuildContext, results: dict) -> dict:
    """Every artifact and its torch model on the test split: reported, never used to choose anything."""
    from edgetl.pipeline.models import load_trained
    from edgetl.significance import Accuracy
    from edgetl.train import predict

    test, labels = ctx.load("inputs", "test", mmap=True), ctx.load("inputs", "test_labels")
    with ctx.reporter.task(f"evaluating the torch model on {len(test)} test images", None):
        torch_right = predict(load_trained(ctx.path(ctx.model_stage, "model")), test).argmax(1) == labels
    torch_test = Accuracy.of(torch_right)
    for artifact in ctx.records["export"]["artifacts"]:
        right = _logits(ctx, artifact, "test").argmax(1) == labels
        scores, said = _scored(right, torch_right, "test")
        results[artifact["name"]] |= {"test_accuracy": round(100.0 * scores["test_correct"] / scores["test_images"], 4),
                                       **scores}
        ctx.reporter.info(f"  {artifact['name']}: {said}")
    return {"torch_test_accuracy": round(torch_test.percent, 4), "torch_test": torch_test.record()}


def _scored(right: np.ndarray, torch_right: np.ndarray, split: str) -> tuple[dict, str]:
    """An artifact's result on one split against its torch model's, from which images each got right: the
    {split}_correct, {split}_images and {split}_accuracy_ci95 fields and the paired test (`vs_torch` on val,
    `test_vs_torch` on test), and the words that say them."""
    from edgetl.significance import Accuracy, Paired

    accuracy, paired = Accuracy.of(right), Paired.of(right, torch_right)
    fields = {f"{split}_correct": accuracy.correct, f"{split}_images": accuracy.n,
              f"{split}_accuracy_ci95": accuracy.record()["ci95"],
              ("vs_torch" if split == "val" else f"{split}_vs_torch"): paired.record("artifact", "torch")}
    torch_percent = 100.0 * np.asarray(torch_right).mean()
    return fields, f"{split} acc {accuracy.text()}; against the torch model's {torch_percent:.2f} %: {paired.said()}"


def then(ctx: BuildContext, record: dict) -> None:
    """The accuracy budget: an artifact more than verify.max_accuracy_drop_pp below the torch model fails the build
    (the runner writes summary.json with status `failed: accuracy budget` first)."""
    budget = ctx.recipe.verify.max_accuracy_drop_pp
    over = {name: r for name, r in record["artifacts"].items() if r["accuracy_drop_pp"] > budget}
    if over:
        from edgetl.significance import said

        table = "; ".join(f"{name}: {r['val_accuracy']:.2f}% (a drop of {r['accuracy_drop_pp']:.2f} pp, "
                          f"{r['val_correct']} of {r['val_images']} val images right; against the torch model: "
                          f"{said(r.get('vs_torch'))})" for name, r in over.items())
        raise AccuracyBudgetError(f"{table} — more than verify.max_accuracy_drop_pp = {budget} pp below the torch "
                                  f"model ({record['torch_val_accuracy']:.2f}%). Details in "
                                  f"{ctx.root / 'summary.json'}. Raise the budget, calibrate with more images "
                                  "(export.calibration_images) or drop that precision.")


def summarize(ctx: BuildContext, summary: dict) -> None:
    verify, reference = ctx.records["verify"], ctx.records[ctx.model_stage]
    for entry in summary["artifacts"]:
        verified = verify["artifacts"][entry["name"]]
        entry.update({key: verified[key] for key in (
            "val_accuracy", "val_correct", "val_images", "val_accuracy_ci95", "accuracy_drop_pp", "vs_torch",
            "max_abs_logit_diff", "prediction_agreement", "confusion_matrix")})
        entry.update({key: verified.get(key) for key in (
            "test_accuracy", "test_correct", "test_images", "test_accuracy_ci95", "test_vs_torch")})
    # The torch model every artifact was exported from and is compared with (pruned when the recipe prunes).
    torch_val, torch_test = verify["torch_val"], verify.get("torch_test") or {}
    summary["reference_model"] = {"stage": ctx.model_stage, "path": reference["model"],
                                  "backbone": reference["backbone"], "params": reference["params"],
                                  "val_accuracy": verify["torch_val_accuracy"], "val_correct": torch_val["correct"],
                                  "val_images": torch_val["n"], "val_accuracy_ci95": torch_val["ci95"],
                                  "test_accuracy": verify.get("torch_test_accuracy"),
                                  "test_correct": torch_test.get("correct"), "test_images": torch_test.get("n"),
                                  "test_accuracy_ci95": torch_test.get("ci95")}
    summary["accuracy_reported_on"] = "test" if torch_test else "val"
    summary["budget"] = {"max_accuracy_drop_pp": ctx.recipe.verify.max_accuracy_drop_pp}


STAGE = Stage("verify", work, key, then=then, summarize=summarize)
