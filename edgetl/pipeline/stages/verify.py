"""verify: every artifact run by its own runtime on the whole val split — accuracy, agreement and logit parity with
the torch model — and the build's accuracy budget (verify.max_accuracy_drop_pp) checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgetl.errors import AccuracyBudgetError, ExportError, ModelFileError, ParityError
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.recipe import section_dict


def key(ctx: BuildContext) -> dict:
    return {"verify": section_dict(ctx.recipe.verify), "artifacts": ctx.records["export"]["files"],
            "val": ctx.file_hash("inputs", "val"), "torch_logits": ctx.file_hash(ctx.model_stage, "val_logits")}


def _logits(ctx: BuildContext, artifact: dict, val: np.ndarray) -> np.ndarray:
    from edgetl.evaluate import runner_logits
    from edgetl.runtime import load_runner

    try:
        runner = load_runner(ctx.root / artifact["path"], threads=os.cpu_count() or 1)
        with ctx.reporter.task(f"evaluating {artifact['name']} on {len(val)} val images", len(val)) as update:
            return runner_logits(runner, val, update=update)
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

    val, labels = ctx.load("inputs", "val", mmap=True), ctx.load("inputs", "val_labels")
    torch_logits = ctx.load(ctx.model_stage, "val_logits")
    torch_accuracy = top1_accuracy(torch_logits, labels)
    results = {}
    for artifact in ctx.records["export"]["artifacts"]:
        logits = _logits(ctx, artifact, val)
        parity_n = min(ctx.recipe.verify.parity_images, len(val))
        diff = float(np.abs(logits[:parity_n] - torch_logits[:parity_n]).max())
        acc = top1_accuracy(logits, labels)
        results[artifact["name"]] = result = {
            "val_accuracy": round(acc, 4), "accuracy_drop_pp": round(torch_accuracy - acc, 4),
            "max_abs_logit_diff": diff, "parity_images": parity_n,
            "prediction_agreement": round(float((logits.argmax(1) == torch_logits.argmax(1)).mean() * 100), 4),
            "confusion_matrix": confusion_matrix(logits, labels, len(ctx.index.classes))}
        ctx.reporter.info(f"  {artifact['name']}: val acc {acc:.2f}% (torch {torch_accuracy:.2f}%), "
                          f"max |logit diff| {diff:.2e}")
        _check_parity(ctx, artifact, result)
    return {"torch_val_accuracy": round(torch_accuracy, 4), "artifacts": results, "files": {}}


def then(ctx: BuildContext, record: dict) -> None:
    """The accuracy budget: an artifact more than verify.max_accuracy_drop_pp below the torch model fails the build
    (the runner writes summary.json with status `failed: accuracy budget` first)."""
    budget = ctx.recipe.verify.max_accuracy_drop_pp
    over = {name: r for name, r in record["artifacts"].items() if r["accuracy_drop_pp"] > budget}
    if over:
        table = "; ".join(f"{name}: {r['val_accuracy']:.2f}% (a drop of {r['accuracy_drop_pp']:.2f} pp)"
                          for name, r in over.items())
        raise AccuracyBudgetError(f"{table} — more than verify.max_accuracy_drop_pp = {budget} pp below the torch "
                                  f"model ({record['torch_val_accuracy']:.2f}%). Details in "
                                  f"{ctx.root / 'summary.json'}. Raise the budget, calibrate with more images "
                                  "(export.calibration_images) or drop that precision.")


def summarize(ctx: BuildContext, summary: dict) -> None:
    verify, reference = ctx.records["verify"], ctx.records[ctx.model_stage]
    for entry in summary["artifacts"]:
        verified = verify["artifacts"][entry["name"]]
        entry.update({key: verified[key] for key in ("val_accuracy", "accuracy_drop_pp", "max_abs_logit_diff",
                                                     "prediction_agreement", "confusion_matrix")})
    # The torch model every artifact was exported from and is compared with (pruned when the recipe prunes).
    summary["reference_model"] = {"stage": ctx.model_stage, "path": reference["model"],
                                  "backbone": reference["backbone"], "params": reference["params"],
                                  "val_accuracy": verify["torch_val_accuracy"]}
    summary["budget"] = {"max_accuracy_drop_pp": ctx.recipe.verify.max_accuracy_drop_pp}


STAGE = Stage("verify", work, key, then=then, summarize=summarize)
