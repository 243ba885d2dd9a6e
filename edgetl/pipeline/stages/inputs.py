"""inputs: the val images and the int8 calibration images, preprocessed once (val.npy, calibration.npy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.fsutil import atomic_path
from edgetl.pipeline.context import BuildContext, Stage


def _calibration_count(ctx: BuildContext) -> int:
    return min(ctx.recipe.export.calibration_images, len(ctx.index.train))


def key(ctx: BuildContext) -> dict:
    return {"data": ctx.records["data"]["files"], "preprocessing": ctx.prep.to_json(),
            "calibration_images": _calibration_count(ctx), "seed": ctx.recipe.data.seed}


def work(ctx: BuildContext, folder: Path) -> dict:
    from edgetl.preprocess import preprocess_files

    index, run = ctx.index, ctx.run
    rng = np.random.default_rng(ctx.recipe.data.seed)
    chosen = sorted(rng.choice(len(index.train), _calibration_count(ctx), replace=False))
    calibration = [index.train[i].path for i in chosen]
    outputs = []
    for name, paths in (("val", [s.path for s in index.val]), ("calibration", calibration)):
        target = folder / f"{name}.npy"
        with atomic_path(target) as tmp, ctx.reporter.task(f"preprocessing {name} images", len(paths)) as update:
            preprocess_files(paths, ctx.prep, out=tmp, progress=lambda done, total: update(1))
        outputs.append(target)
    labels = folder / "val_labels.npy"
    with atomic_path(labels) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray([s.label for s in index.val], dtype=np.int64))
    outputs.append(labels)
    return {"val": run.rel(outputs[0]), "calibration": run.rel(outputs[1]), "val_labels": run.rel(labels),
            "files": run.files_record(*outputs)}


def more_calibration(ctx: BuildContext, current: int) -> np.ndarray:
    """Four times as many calibration images as this stage chose (up to every train image), same seed."""
    from edgetl.preprocess import preprocess_files

    index = ctx.index
    count = min(4 * current, len(index.train))
    chosen = np.random.default_rng(ctx.recipe.data.seed).choice(len(index.train), count, replace=False)
    paths = [index.train[i].path for i in sorted(chosen)]
    with ctx.reporter.task(f"preprocessing {count} calibration images", count) as update:
        return preprocess_files(paths, ctx.prep, progress=lambda done, total: update(1))


STAGE = Stage("inputs", work, key)
