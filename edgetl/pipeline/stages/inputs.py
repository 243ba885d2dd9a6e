"""inputs: the val images, the int8 calibration images and the test images (when the data has a test split),
preprocessed once (val.npy, calibration.npy, test.npy, with val_labels.npy and test_labels.npy)."""

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
    splits = [("val", [s.path for s in index.val]), ("calibration", calibration)]
    splits += [("test", [s.path for s in index.test])] if index.test_source else []
    record, outputs = {}, []
    for name, paths in splits:
        target = folder / f"{name}.npy"
        with atomic_path(target) as tmp, ctx.reporter.task(f"preprocessing {name} images", len(paths)) as update:
            preprocess_files(paths, ctx.prep, out=tmp, progress=lambda done, total: update(1))
        outputs.append(target)
        record[name] = run.rel(target)
    for name, samples in (("val", index.val), ("test", index.test if index.test_source else None)):
        if samples is None:
            continue
        labels = folder / f"{name}_labels.npy"
        with atomic_path(labels) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray([s.label for s in samples], dtype=np.int64))
        outputs.append(labels)
        record[f"{name}_labels"] = run.rel(labels)
    return record | {"files": run.files_record(*outputs)}


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
