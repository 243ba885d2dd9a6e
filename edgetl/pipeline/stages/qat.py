"""qat: quantization-aware fine-tuning (torchao PT2E, fake-quantized), written as an ONNX QDQ model that the export
stage turns into each format's int8 file where the format reads QDQ (`from_qdq` in its export module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.fsutil import atomic_path, sha256_json, write_json
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.finetune import val_arrays
from edgetl.pipeline.models import distiller, kd_inputs, kd_settings, load_trained, self_distiller
from edgetl.recipe import Recipe, section_dict


def runs(recipe: Recipe) -> bool:
    return recipe.quantize.mode == "qat"


def _kd_from(ctx: BuildContext) -> str | None:
    cfg = ctx.recipe.quantize
    if cfg.distill and cfg.teacher == "float":
        return "float"
    return "teacher" if ctx.teacher is not None and cfg.distill else None


def key(ctx: BuildContext) -> dict:
    recipe, model_stage = ctx.recipe, ctx.model_stage
    inputs = {"quantize": section_dict(recipe.quantize) | {"keep_ptq": None},
              "model": ctx.file_hash(model_stage, "model"), "train": section_dict(recipe.train),
              "data": ctx.records["data"]["files"], "val": ctx.file_hash("inputs", "val"),
              "workers": recipe.data.workers, "calibration": ctx.file_hash("inputs", "calibration")}
    if _kd_from(ctx) == "teacher":
        inputs |= kd_inputs(recipe, ctx.teacher)
    elif _kd_from(ctx) == "float":
        inputs["kd"] = kd_settings(recipe, recipe.quantize)
    return inputs


def work(ctx: BuildContext, folder: Path) -> dict:
    import torch

    from edgetl.compress.qat import calibrate, convert, export_onnx, prepare_qat
    from edgetl.train import AugmentedImages, Checkpointer, build_optimizer, start_run, train_loop

    recipe, cfg, model_stage = ctx.recipe, ctx.recipe.quantize, ctx.model_stage
    start_run(recipe.train)
    model = load_trained(ctx.path(model_stage, "model"))
    val, val_labels = val_arrays(ctx)
    kd_from = _kd_from(ctx)
    kd = {"teacher": " with KD from the teacher", "float": " with KD from the float model"}.get(kd_from, "")
    ctx.reporter.info(f"  fake-quantized fine-tune of {ctx.records[model_stage]['backbone']} (torchao PT2E, u8 "
                      f"activations, s8 per-channel weights){kd}")
    prepared = prepare_qat(model, torch.from_numpy(np.array(val[:2])))
    calibration = ctx.load("inputs", "calibration", mmap=True)
    with ctx.reporter.task(f"calibrating activation ranges on {len(calibration)} images", None):
        calibrate(prepared, (torch.from_numpy(np.array(calibration[i:i + 32])) for i in range(0, len(calibration), 32)))
    train_cfg = recipe.train.model_copy(update={
        "epochs": cfg.epochs, "lr": cfg.lr, "backbone_lr_mult": 1.0, "probe_epochs": 0, "warmup_epochs": 0.0,
        "freeze_batchnorm": False, "mode": "finetune", "early_stop_patience": None})
    optimizer = build_optimizer([{"params": list(prepared.parameters()), "lr": cfg.lr}], train_cfg)
    kd_loss = distiller(ctx, cfg) if kd_from == "teacher" else None
    if kd_from == "float":  # the float model teaches its fake-quantized copy
        kd_loss = self_distiller(recipe, ctx.path(model_stage, "model"), ctx.prep, cfg)
    result = train_loop(prepared, optimizer, AugmentedImages(ctx.index.train, ctx.prep, recipe.train), val, val_labels,
                        # Eval mode while training: batch norm keeps its running statistics (folded into the int8
                        # convolutions as they are) and dropout is off.
                        train_cfg, recipe.data.workers, lambda epoch: prepared.eval(),
                        Checkpointer(folder / "checkpoint.pt", sha256_json(key(ctx))), ctx.reporter, kd_loss)
    onnx_path, history_path = folder / "model_int8_qat.onnx", folder / "history.json"
    with ctx.reporter.task("exporting the QAT model to ONNX QDQ", None):
        converted = convert(prepared)
        with atomic_path(onnx_path) as tmp:
            details = export_onnx(converted, val[:2], tmp)
    write_json(history_path, result.history)
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    return {"onnx": ctx.run.rel(onnx_path), "history": result.history, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "fake_quant_val_accuracy": round(result.val_accuracy, 4),
            "kd_from": kd_from,
            "export": details | {"method": "torchao PT2E QAT", "activations": "uint8", "weights": "int8 (7-bit)",
                                 "activation_ranges": f"min/max on {len(calibration)} calibration images, frozen",
                                 "batchnorm": "running statistics, frozen", "epochs": cfg.epochs},
            "files": ctx.run.files_record(onnx_path, history_path)}


def summarize(ctx: BuildContext, summary: dict) -> None:
    qat = ctx.records.get("qat")
    summary["quantize"] = {"mode": ctx.recipe.quantize.mode, **({key: qat[key] for key in (
        "epochs_run", "best_epoch", "fake_quant_val_accuracy", "kd_from", "history") if key in qat} if qat else {})}


STAGE = Stage("qat", work, key, runs=runs, summarize=summarize, keep=("checkpoint.pt",))
