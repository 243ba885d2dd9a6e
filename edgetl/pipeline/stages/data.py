"""data: find the dataset, check every image, split train/val; writes index.json."""

from __future__ import annotations

from pathlib import Path

from edgetl.fsutil import read_json, write_json
from edgetl.pipeline.context import BuildContext, Stage
from edgetl.recipe import Recipe, section_dict


def resolve_data_root(recipe: Recipe, say=None) -> Path:
    """The folder of the recipe's dataset (see edgetl.data.resolve_recipe_data)."""
    from edgetl.data import resolve_recipe_data

    return resolve_recipe_data(recipe, say)


def scan_recipe_dataset(recipe: Recipe, root: Path, progress=None):
    """Scan and check every image of the recipe's dataset at `root` (see edgetl.data.scan_dataset)."""
    from edgetl.data import scan_dataset

    data = recipe.data
    return scan_dataset(root, train_dir=data.train_dir, val_dir=data.val_dir, val_fraction=data.val_fraction,
                        seed=data.seed, skip_bad_images=data.skip_bad_images, progress=progress,
                        test_dir=data.test_dir, test_fraction=data.test_fraction)


RECORD = 2  # what index.json holds; 2: the test split and the layout


def key(ctx: BuildContext) -> dict:
    from edgetl.data import fingerprint_tree

    root = ctx.data_root = resolve_data_root(ctx.recipe, ctx.reporter.info)
    return {"record": RECORD, "data": section_dict(ctx.recipe.data) | {"workers": None}, "root": str(root),
            "fingerprint": fingerprint_tree(root)}


def work(ctx: BuildContext, folder: Path) -> dict:
    with ctx.reporter.task("checking images", None) as update:
        index = scan_recipe_dataset(ctx.recipe, ctx.data_root, progress=lambda done, total: update(1))
    index_path = folder / "index.json"
    write_json(index_path, index.to_json())
    if index.bad_images:
        ctx.reporter.info(f"  skipped {len(index.bad_images)} unreadable images (data.skip_bad_images)")
    return {"index": ctx.run.rel(index_path), "files": ctx.run.files_record(index_path)}


def then(ctx: BuildContext, record: dict) -> None:
    from edgetl.data import DatasetIndex

    ctx.index = index = DatasetIndex.from_json(read_json(ctx.root / record["index"]))
    test = (f" / {len(index.test)} test" if index.test_source else "")
    sources = (f"split by edgetl: {_shares(index)}" if index.layout == "flat" else f"val from {index.val_source}"
               + (f", test from {index.test_source}" if index.test_source else ", no test split"))
    ctx.reporter.info(f"  {len(index.classes)} classes, {len(index.train)} train / {len(index.val)} val{test} images "
                      f"({sources}) in {ctx.data_root}")
    if unmeasured := index.unmeasured_classes():
        ctx.reporter.info(f"  warning: no val image of {', '.join(unmeasured)} (too few images to hold one out): "
                          "val accuracy does not measure it; add images or a val/ folder")


def _shares(index) -> str:
    total = len(index.train) + len(index.val) + len(index.test)
    return ", ".join(f"{name} {100 * len(samples) / total:.0f} %" for name, samples in
                     (("train", index.train), ("val", index.val), ("test", index.test)))


def summarize(ctx: BuildContext, summary: dict) -> None:
    index = ctx.index
    summary["classes"] = index.classes
    summary["data"] = {"root": index.root, "layout": index.layout, "train_images": len(index.train),
                       "val_images": len(index.val), "test_images": len(index.test), "test_source": index.test_source,
                       "index": ctx.records["data"]["index"],
                       "val_source": index.val_source, "class_counts": index.class_counts(),
                       "bad_images": index.bad_images, "converted_to_rgb": index.converted,
                       "ignored_files": len(index.ignored_files)}


STAGE = Stage("data", work, key, then=then, summarize=summarize)
