"""Embedded sample datasets: small real ImageFolder datasets inside the package (edgetl/samples/<name>/, each with
its LICENSE and a README.md saying where it comes from and how it was made; tools/make_sample.py makes them).

A recipe names one as `data.fallback`: it is built on, read in place (never copied or written to), when the recipe's
own dataset is neither cached nor downloadable, and the build says so (see edgetl.data.resolve_dataset).
Stdlib only, so that parsing a recipe can check the name cheaply.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from edgetl.errors import DataError

SAMPLES_DIR = Path(__file__).resolve().parent
_SPLITS = ("train", "val")


def known_samples() -> list[str]:
    """The names of the embedded samples (the folders here that hold a train/ folder)."""
    return sorted(e.name for e in os.scandir(SAMPLES_DIR)
                  if e.is_dir() and not e.name.startswith((".", "_")) and os.path.isdir(os.path.join(e.path, "train")))


def check_name(name: str) -> str:
    """`name` if it is an embedded sample; else a ValueError listing the known ones (for the recipe's validation)."""
    known = known_samples()
    if name not in known:
        hint = difflib.get_close_matches(name, known, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown embedded sample '{name}'{did_you_mean}; the samples in {SAMPLES_DIR} are: "
                         f"{', '.join(known) or 'none'}")
    return name


def sample_folder(name: str, recipe_file: str = "recipe") -> Path:
    """The folder of the embedded sample `name`."""
    try:
        return SAMPLES_DIR / check_name(name)
    except ValueError as exc:
        raise DataError(f"data.fallback in {recipe_file}: {exc}.") from None


def describe(folder: Path) -> str:
    """E.g. "5 classes, 300 images, MIT licence": the class folders of train/, the files of every split's class
    folders, and the first line of LICENSE."""
    classes = sorted(e.name for e in os.scandir(folder / "train") if e.is_dir() and not e.name.startswith("."))
    images = sum(1 for split in _SPLITS for cls in classes if (folder / split / cls).is_dir()
                 for e in os.scandir(folder / split / cls) if e.is_file() and not e.name.startswith("."))
    try:
        licence = (folder / "LICENSE").read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError):
        licence = "no LICENSE file"
    if licence.endswith((" License", " Licence")):  # "MIT License" -> "MIT licence"
        licence = licence[: -len(" License")] + " licence"
    return f"{len(classes)} classes, {images} images, {licence}"


def substitute(sample: str, dataset: str, datasets: Path, why: str, recipe_file: str,
               say: Callable[[str], None] | None) -> Path:
    """The folder of `sample`, used in place of the unavailable `dataset`, after one line saying so and why (to
    `say`, or to stderr when it is None: the substitution is never silent)."""
    folder = sample_folder(sample, recipe_file)
    line = (f"{dataset} is not in {datasets} and {why}: using the embedded sample {sample} ({describe(folder)}, "
            f"{folder}) instead (data.fallback)")
    if say is None:
        print(line, file=sys.stderr)
    else:
        say(line)
    return folder
