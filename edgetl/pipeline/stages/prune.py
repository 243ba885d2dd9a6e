"""prune: structured channel pruning of the trained model to prune.target_macs, then recovery fine-tuning (with KD
from the teacher or the unpruned model); the latency of both models measured in alternating rounds."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edgetl.fsutil import sha256_json, write_json
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.pipeline.finetune import val_arrays
from edgetl.pipeline.models import (
    distiller,
    kd_inputs,
    load_saved,
    load_trained,
    save_model,
    self_distiller,
    with_feature_kd,
    write_logits,
)
from edgetl.recipe import Recipe, section_dict

_KEEP = ("checkpoint.pt", "pruned.pt")  # the recovery's checkpoint, and the pruned model it starts from


def runs(recipe: Recipe) -> bool:
    return recipe.prune is not None


def _kd_from(ctx: BuildContext) -> str | None:
    """Who teaches the recovery: `unpruned` (the model before pruning), `teacher` (the teacher stage) or nobody."""
    recover = ctx.recipe.prune.recover
    if recover.distill and recover.teacher == "unpruned":
        return "unpruned"
    return "teacher" if ctx.teacher is not None and recover.distill else None


def key(ctx: BuildContext) -> dict:
    recipe = ctx.recipe
    inputs = {"prune": section_dict(recipe.prune), "model": ctx.file_hash("train", "model"),
              "train": section_dict(recipe.train), "data": ctx.records["data"]["files"],
              "val": ctx.file_hash("inputs", "val"), "calibration": ctx.file_hash("inputs", "calibration"),
              "workers": recipe.data.workers,
              "bench": section_dict(recipe.bench) | {"threads": recipe.bench.threads[0]},
              "exporter": [recipe.export.exporter, recipe.export.opset]}
    if _kd_from(ctx) == "teacher":
        inputs |= kd_inputs(recipe, ctx.teacher)
    return inputs


def _recovery(ctx: BuildContext, backbone: str):
    """The recovery's training settings and KD loss."""
    cfg = ctx.recipe.prune
    kd_from = _kd_from(ctx)
    kd = distiller(ctx, cfg.recover) if kd_from == "teacher" else None
    if kd_from == "unpruned":  # the unpruned model teaches its pruned self
        kd = self_distiller(ctx.recipe, ctx.path("train", "model"), ctx.prep, cfg.recover)
    teacher_backbone = ctx.teacher["backbone"] if kd_from == "teacher" else backbone
    kd = with_feature_kd(kd, cfg.recover.feature_weight, backbone, teacher_backbone)
    settings = ctx.recipe.train.model_copy(update={
        "lr": cfg.recover.lr, "backbone_lr_mult": 1.0, "probe_epochs": 0, "freeze_batchnorm": False,
        "mode": "finetune", "warmup_epochs": 0.0, "epochs": max(1, cfg.recover.epochs), "early_stop_patience": None})
    if cfg.recover.mixup is not None:
        settings = settings.model_copy(update={"augment": settings.augment.model_copy(
            update={"mixup": cfg.recover.mixup})})
    return settings, kd


def _pruned(ctx: BuildContext, folder: Path, recovery):
    """The pruned model: the interrupted run's (pruned.pt with this key) or pruned now (and saved as pruned.pt)."""
    import torch

    from edgetl.backbones import CreatedModel, get_backbone
    from edgetl.compress.prune import PrunePlan, apply_structure, prune_to_macs, structure_of
    from edgetl.train import AugmentedImages, fine_tune, save_torch

    cfg, recipe, index = ctx.recipe.prune, ctx.recipe, ctx.index
    model, saved = load_saved(ctx.path("train", "model"))
    pruned_path, stage_key = folder / "pruned.pt", sha256_json(key(ctx))
    resumable = torch.load(pruned_path, map_location="cpu", weights_only=True) if pruned_path.is_file() else None
    if resumable and resumable.get("key") == stage_key:
        pruned = apply_structure(copy.deepcopy(model), resumable["structure"])
        pruned.load_state_dict(resumable["state_dict"])
        ctx.reporter.info("  reusing the pruned model of the interrupted run")
        return pruned
    settings, kd = recovery
    backbone = get_backbone(saved["backbone"])
    val, val_labels = val_arrays(ctx)
    images = AugmentedImages(index.train, ctx.prep, recipe.train)

    def gradients(module) -> None:
        # Taylor importance: |weight × gradient| of the training loss over a few augmented batches.
        loader = torch.utils.data.DataLoader(images, batch_size=recipe.train.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(recipe.train.seed))
        module.eval()
        for number, (batch, labels, _) in enumerate(loader):
            if number >= cfg.taylor_batches:
                break
            torch.nn.functional.cross_entropy(module(batch), labels).backward()

    def between_steps(module, step: int) -> None:
        if cfg.step_epochs:
            step_cfg = settings.model_copy(update={"epochs": cfg.step_epochs, "early_stop_patience": None})
            fine_tune(CreatedModel(module, backbone, ctx.prep, None, {}), index.train, val, val_labels, step_cfg,
                      recipe.data.workers, None, ctx.reporter, kd)

    plan = PrunePlan(cfg.target_macs, cfg.importance, cfg.scope, cfg.steps, cfg.round_to, cfg.max_layer_ratio,
                     cfg.residual)
    example = torch.from_numpy(np.array(val[:1]))
    pruned = prune_to_macs(model, example, backbone.head, plan, gradients, between_steps, ctx.reporter,
                           torch.from_numpy(ctx.load("inputs", "calibration")))
    save_torch(pruned_path, {"key": stage_key, "structure": structure_of(pruned), "state_dict": pruned.state_dict()})
    return pruned


def _latencies(ctx: BuildContext, models: dict, folder: Path) -> dict:
    """Each of `models` ({name: torch model}) exported to a scratch ONNX fp32 file and measured by edgetl bench's
    harness in alternating rounds (first thread count, batch 1): {name: {p50, p90, …, runs, threads}}."""
    import tempfile

    from edgetl.bench.measure import BenchOptions, ModelRef, benchmark
    from edgetl.bench.stats import row_stats
    from edgetl.export import ExportRequest
    from edgetl.export.onnx import export_fp32

    cfg, threads = ctx.recipe.bench, ctx.recipe.bench.threads[0]
    example = np.asarray(ctx.load("inputs", "val", mmap=True)[:2])
    options = BenchOptions(threads=(threads,), batch=1, warmup=cfg.warmup, time_s=cfg.min_time_s,
                           min_runs=cfg.min_runs, max_runs=cfg.max_runs, repeats=5, cold_start=False)
    with tempfile.TemporaryDirectory(prefix="edgetl-prune-", dir=folder) as scratch:
        refs = []
        for name, model in models.items():
            exported = export_fp32(model, ExportRequest(Path(scratch) / name, "fp32", example, {}),
                                   exporter=ctx.recipe.export.exporter, opset=ctx.recipe.export.opset)
            refs.append(ModelRef(exported.path, name, "onnx", "fp32"))
        with ctx.reporter.task(f"benchmarking the {' and '.join(models)} models (onnx fp32, {threads} thread(s), "
                               "alternating rounds)", None):
            rows = benchmark(refs, options)
    return {row["name"]: {**row_stats(row), "threads": threads} for row in rows}


def work(ctx: BuildContext, folder: Path) -> dict:
    import torch

    from edgetl.backbones import CreatedModel, get_backbone
    from edgetl.compress.prune import count_macs_params, structure_of
    from edgetl.evaluate import top1_accuracy
    from edgetl.train import Checkpointer, fine_tune, predict, start_run

    recipe, train = ctx.recipe, ctx.records["train"]
    start_run(recipe.train)
    model, saved = load_saved(ctx.path("train", "model"))
    val, val_labels = val_arrays(ctx)
    example = torch.from_numpy(np.array(val[:1]))
    macs_before, params_before = count_macs_params(model, example)
    recovery = _recovery(ctx, saved["backbone"])
    pruned = _pruned(ctx, folder, recovery).eval()
    accuracy_pruned = top1_accuracy(predict(pruned, val), val_labels)
    ctx.reporter.info(f"  pruned: val acc {accuracy_pruned:.2f}% before recovery")
    history: list[dict] = []
    if recipe.prune.recover.epochs:
        created = CreatedModel(pruned, get_backbone(saved["backbone"]), ctx.prep, None, {})
        result = fine_tune(created, ctx.index.train, val, val_labels, recovery[0], recipe.data.workers,
                           Checkpointer(folder / "checkpoint.pt", sha256_json(key(ctx))), ctx.reporter, recovery[1])
        history = result.history
    pruned.eval()
    macs_after, params_after = count_macs_params(pruned, example)
    model_path, logits_path, history_path = folder / "model.pt", folder / "val_logits.npy", folder / "history.json"
    save_model(model_path, pruned, saved["backbone"], float(saved["dropout"]), ctx.index.classes, ctx.prep,
               structure_of(pruned))
    pruned = load_trained(model_path)
    logits = predict(pruned, val)
    write_logits(logits_path, logits)
    write_json(history_path, history)
    latencies = _latencies(ctx, {"unpruned": load_trained(ctx.path("train", "model")), "pruned": pruned}, folder)
    before, after = latencies["unpruned"], latencies["pruned"]
    (folder / "checkpoint.pt").unlink(missing_ok=True)
    (folder / "pruned.pt").unlink(missing_ok=True)
    accuracy_after = top1_accuracy(logits, val_labels)
    ratio = after["p50"] / before["p50"]
    from edgetl.significance import Paired

    paired = Paired.of(logits.argmax(1) == val_labels, ctx.load("train", "val_logits").argmax(1) == val_labels)
    ctx.reporter.info(f"  MACs {macs_before / 1e6:.1f}M → {macs_after / 1e6:.1f}M, val acc "
                      f"{train['val_accuracy']:.2f}% → {accuracy_after:.2f}% (pruned against unpruned: "
                      f"{paired.said()}), onnx fp32 p50 "
                      f"{before['p50']:.2f} → {after['p50']:.2f} ms ({ratio:.2f}×)")
    return {"backbone": saved["backbone"], "model": ctx.run.rel(model_path), "val_logits": ctx.run.rel(logits_path),
            "history": ctx.run.rel(history_path), "macs_before": macs_before, "macs_after": macs_after,
            "params_before": params_before, "params_after": params_after, "params": params_after,
            "macs_ratio": round(macs_after / macs_before, 4), "val_accuracy_before": train["val_accuracy"],
            "val_accuracy_pruned": round(accuracy_pruned, 4), "val_accuracy_after": round(accuracy_after, 4),
            "val_accuracy": round(accuracy_after, 4), "recover_epochs_run": len(history),
            "recover_kd_from": _kd_from(ctx), "onnx_fp32_latency_ms_before": before,
            "onnx_fp32_latency_ms_after": after, "onnx_fp32_latency_ratio": round(ratio, 4),
            "files": ctx.run.files_record(model_path, logits_path, history_path)}


def summarize(ctx: BuildContext, summary: dict) -> None:
    pruned, cfg = ctx.records.get("prune"), ctx.recipe.prune
    if pruned is None:
        summary["prune"] = None
        return
    keys = ("macs_before", "macs_after", "params_before", "params_after", "macs_ratio", "val_accuracy_before",
            "val_accuracy_pruned", "val_accuracy_after", "onnx_fp32_latency_ratio", "onnx_fp32_latency_ms_before",
            "onnx_fp32_latency_ms_after", "recover_epochs_run")
    summary["prune"] = {key: pruned[key] for key in keys} | {
        "recover_kd_from": pruned.get("recover_kd_from"), "target_macs": cfg.target_macs,
        "pruned_vs_unpruned": ctx.paired("prune", "train", "pruned", "unpruned"),
        "importance": cfg.importance, "scope": cfg.scope, "residual": cfg.residual, "steps": cfg.steps,
        "path": pruned["model"]}


STAGE = Stage("prune", work, key, runs=runs, summarize=summarize, keep=_KEEP)
