"""The fine-tune the teacher, baseline and train stages share: one model (a ModelSpec) trained on the train split,
selected on val, saved with its val logits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.fsutil import sha256_json, write_json
from edgetl.pipeline.context import BuildContext
from edgetl.pipeline.models import (
    ModelSpec,
    create_recipe_model,
    distiller,
    kd_inputs,
    load_trained,
    renormalize,
    save_model,
    write_logits,
)
from edgetl.recipe import section_dict


@dataclass(frozen=True)
class FineTune:
    """What one fine-tuning stage trains: `spec`, with KD from the teacher stage when `kd`; `extra(ctx, folder,
    model)` adds outputs to its record (the teacher's precomputed train logits)."""

    spec: ModelSpec
    kd: bool = False
    extra: Callable | None = None

    def key(self, ctx: BuildContext) -> dict:
        recipe, spec = ctx.recipe, self.spec
        inputs = {"model": section_dict(recipe.model), "train": section_dict(spec.train),
                  "data": ctx.records["data"]["files"], "val": ctx.file_hash("inputs", "val"),
                  "weights": spec.identity()["weights"], "workers": recipe.data.workers}
        if spec.role == "teacher":
            inputs["model"] = spec.identity()
        if spec.train.probe_epochs and spec.train.mode in ("finetune", "gradual"):
            inputs["selection"] = "the probe's model unless an epoch beats it"  # since the probe takes part
        if self.kd:
            inputs |= kd_inputs(recipe, ctx.teacher)
        if self.extra is not None:
            inputs["extra"] = recipe.distill.teacher_logits
        return inputs

    def work(self, ctx: BuildContext, folder: Path) -> dict:
        from edgetl.distributed import world_size
        from edgetl.train import Checkpointer, fine_tune, predict, seed_everything

        recipe, spec, run, index = ctx.recipe, self.spec, ctx.run, ctx.index
        seed_everything(spec.train.seed)  # the new head's initialisation is part of the run
        created = create_recipe_model(recipe, len(index.classes), spec)
        created.preprocessing = spec.prep
        kd = " with KD from the teacher" if self.kd else ""
        ctx.reporter.info(f"  {spec.role} {spec.backbone}, mode {spec.train.mode}{kd}, weights "
                          f"{created.weights_file or spec.weights}")
        val_inputs = renormalize(ctx.load("inputs", "val", mmap=True), ctx.prep, spec.prep)
        val_labels = ctx.load("inputs", "val_labels")
        kd_loss = distiller(ctx, prep=spec.prep) if self.kd else None
        checkpointer = Checkpointer(folder / "checkpoint.pt", sha256_json(self.key(ctx)))
        result = fine_tune(created, index.train, val_inputs, val_labels, spec.train, recipe.data.workers,
                           checkpointer, ctx.reporter, kd_loss)
        model_path, logits_path, history_path = folder / "model.pt", folder / "val_logits.npy", folder / "history.json"
        save_model(model_path, created.model, spec.backbone, spec.dropout, index.classes, spec.prep)
        model = load_trained(model_path)
        write_logits(logits_path, predict(model, val_inputs))
        write_json(history_path, result.history)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        record = {"backbone": spec.backbone, "model": run.rel(model_path), "val_logits": run.rel(logits_path),
                  "history": run.rel(history_path), "val_accuracy": round(result.val_accuracy, 4),
                  "epochs_run": result.epochs_run,
                  "final_epoch_val_accuracy": round(result.history[-1]["val_accuracy"], 4) if result.history else None,
                  "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from_epoch,
                  "probe_val_accuracy": None if result.probe_val_accuracy is None else round(result.probe_val_accuracy, 4),
                  "world_size": world_size(),
                  "weights_file": created.weights_file, "weights_meta": created.weights_meta,
                  "params": sum(p.numel() for p in created.model.parameters()),
                  "files": run.files_record(model_path, logits_path, history_path)}
        if self.extra is not None:
            added = self.extra(ctx, folder, model)
            record["files"] |= added.pop("files")
            record |= added
        return record


def val_arrays(ctx: BuildContext) -> tuple[np.ndarray, np.ndarray]:
    """The preprocessed val images (in memory) and their labels."""
    return np.asarray(ctx.load("inputs", "val", mmap=True)), ctx.load("inputs", "val_labels")
