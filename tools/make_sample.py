"""Build edgetl/samples/trashnet5-mini/, the small real dataset the quickstart falls back to offline (data.fallback).

    python tools/make_sample.py [--source DIR] [--out DIR] [--train 30] [--val 20] [--seed 0] [--size 256x192]
                                [--budget 5000000]

From trashnet5 (../shared/cache/datasets/trashnet5, or $EDGETL_SHARED_CACHE/datasets/trashnet5; its README gives the
origin and the licence) it takes, per class, --train images of its train/ split and --val of its val/ split, chosen by
a seeded random draw (so the sample is class-balanced and keeps trashnet5's block split: no photo series is in both
splits), resizes each to --size (Lanczos; the default 256x192 also undoes the stretch of trashnet5's copy, whose
384x512 portrait files were squeezed from 4:3 landscape photos) and saves it as a baseline JPEG without metadata,
at the highest quality of 95, 90, ..., 50 at which the whole folder (images, LICENSE, README.md, MANIFEST.sha256)
fits in --budget bytes. The output is the same bytes on every run with the same Pillow/libjpeg; the
folder is replaced whole (written beside it first, so an interrupted run leaves the old sample intact).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, features

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED_CACHE", ROOT.parent / "shared" / "cache"))
CLASSES = ("cardboard", "glass", "metal", "paper", "plastic")
SPLITS = ("train", "val")
QUALITIES = tuple(range(95, 49, -5))
# sha256 of trashnet5's sorted file list, as its README states: the sample is made from exactly that dataset.
SOURCE_LIST_SHA256 = "6fabcd4b46a96063bf74a3f2e1dd809b5fa6eaa26de7d360058d7b3ddd9ad12c"

# The LICENSE of github.com/garythung/trashnet (commit aaccc3167697eed2bcb047664cfae4f7f7fbcd69), verbatim.
LICENSE = """MIT License

Copyright (c) 2017 Gary Thung

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def _number(path: Path) -> int:
    match = re.fullmatch(r"[a-z]+(\d+)\.jpg", path.name)
    if not match:
        sys.exit(f"unexpected file name {path} (trashnet5 names its files <class><N>.jpg)")
    return int(match.group(1))


def source_files(source: Path) -> dict[tuple[str, str], list[Path]]:
    """trashnet5's images per (split, class), in capture order; exits unless it is exactly the dataset README names."""
    listing = sorted(p.relative_to(source).as_posix() for split in SPLITS for p in (source / split).rglob("*")
                     if p.is_file())
    digest = hashlib.sha256("".join(f"{rel}\n" for rel in listing).encode()).hexdigest()
    if digest != SOURCE_LIST_SHA256:
        sys.exit(f"{source} is not trashnet5 as its README describes it (its sorted file list has sha256 {digest}, "
                 f"expected {SOURCE_LIST_SHA256})")
    return {(split, cls): sorted((source / split / cls).glob("*.jpg"), key=_number) for split in SPLITS
            for cls in CLASSES}


def pick(files: dict[tuple[str, str], list[Path]], counts: dict[str, int], seed: int) -> dict[str, Path]:
    """Relative path in the sample -> its source file: a seeded draw of counts[split] files per class and split."""
    chosen = {}
    for (split, cls), paths in files.items():
        rng = random.Random(f"trashnet5-mini:{seed}:{split}:{cls}")  # a str seed is hashed with sha512: stable
        for path in sorted(rng.sample(paths, counts[split]), key=_number):
            chosen[f"{split}/{cls}/{path.name}"] = path
    return chosen


def resized(path: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit()) or max(int(width), int(height)) > 256 or min(int(width), int(height)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT with sides of 1 to 256 pixels")
    return int(width), int(height)


def encode(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)  # no exif/icc passed: none is written
    return out.getvalue()


def readme(command: str, counts: dict[str, int], images: dict[str, bytes], sizes: dict[str, tuple[int, int]],
           quality: int, total: int, seed: int, budget: int) -> str:
    n_train, n_val = counts["train"], counts["val"]
    shapes = sorted({f"{w}x{h}" for w, h in sizes.values()})
    image_bytes = sum(len(b) for b in images.values())
    rows = "\n".join(f"| {cls:<9} | {n_train:>5} | {n_val:>3} |" for cls in CLASSES)
    return f"""# trashnet5-mini: the embedded sample dataset

A small real dataset shipped inside edgetl, so that the quickstart runs on a fresh clone without the shared cache
and without internet: a recipe with `data.fallback: trashnet5-mini` builds on this folder (read in place, never
copied or written to) when its own dataset is neither in `$EDGETL_CACHE/datasets/` nor downloadable, and says so.
It is enough to see every stage work on real photos; it is not a benchmark (1 val image = {100 / (5 * n_val):.0f} pp).

## What it is
Photographs of single waste items (cardboard, glass, metal, paper, plastic) on a white poster board, from
TrashNet (Gary Thung and Mindy Yang, Stanford CS229, 2016, "Classification of Trash for Recyclability Status";
https://github.com/garythung/trashnet). Licence: MIT, "Copyright (c) 2017 Gary Thung": see LICENSE beside this
file, the LICENSE of garythung/trashnet (commit aaccc3167697eed2bcb047664cfae4f7f7fbcd69), verbatim.

## Origin
A class-balanced subset of trashnet5, the 5-class TrashNet development set of the shared offline cache
(`shared/cache/datasets/trashnet5/`, whose sorted file list has the sha256
{SOURCE_LIST_SHA256}; its README gives the origin of its bytes:
github.com/congduytran12/Trash-Classification- at 00212f2c18dcdb9045c74481eaae5baaf72537df, `dataset-resized/`,
384x512 RGB JPEGs). Each file here is the downscaled copy of the trashnet5 file with the same
relative path (`train/glass/glass17.jpg` comes from `trashnet5/train/glass/glass17.jpg`), so train and val keep
trashnet5's block split (no photo series in both).

## How it was made
    {command}

`tools/make_sample.py`: per class, {n_train} of the 200 trashnet5 train images and {n_val} of its 200 val images, drawn
with `random.Random("trashnet5-mini:{seed}:<split>:<class>").sample` from the files in capture order; each image
converted to RGB and resized with Lanczos to {", ".join(shapes)} px: trashnet5's files are 384x512 portraits squeezed
from 4:3 landscape photos (its README), so this also gives the photos their own aspect again; saved as a
baseline JPEG (no metadata, optimised Huffman tables) at quality {quality}: the highest of 95, 90, ..., 50 at which
the whole folder fits in {budget:,} bytes. Pillow {Image.__version__}, libjpeg-turbo {features.version("libjpeg_turbo")}.

## Counts and sizes
| class     | train | val |
|-----------|------:|----:|
{rows}
| total     | {5 * n_train:>5} | {5 * n_val:>3} |

{len(images)} images, {image_bytes:,} bytes of images; the folder (images, LICENSE, this README.md,
MANIFEST.sha256) is {total:,} bytes. MANIFEST.sha256 lists every image's sha256 (`sha256sum -c MANIFEST.sha256`
from this folder).
"""


def build(source: Path, out: Path, counts: dict[str, int], seed: int, size: tuple[int, int], budget: int,
          command: str) -> tuple[int, int, int]:
    """Write the sample to `out`; return (images, quality, total bytes)."""
    chosen = pick(source_files(source), counts, seed)
    pixels = {rel: resized(path, size) for rel, path in chosen.items()}
    sizes = {rel: image.size for rel, image in pixels.items()}
    for quality in QUALITIES:
        images = {rel: encode(image, quality) for rel, image in pixels.items()}
        manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n" for rel, data in sorted(images.items()))
        total = sum(len(b) for b in images.values()) + len(LICENSE.encode()) + len(manifest.encode())
        text, previous = "", None
        while previous != len(text.encode()):  # the README states the folder's size, its own bytes included
            previous = len(text.encode())
            text = readme(command, counts, images, sizes, quality, total + previous, seed, budget)
        total += len(text.encode())
        if total <= budget:
            break
    else:
        sys.exit(f"{len(images)} images do not fit in {budget:,} bytes even at JPEG quality {QUALITIES[-1]}; "
                 "ask for fewer images")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, data in images.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        (tmp / "LICENSE").write_text(LICENSE)
        (tmp / "README.md").write_text(text)
        (tmp / "MANIFEST.sha256").write_text(manifest)
        written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        assert written == total, (written, total)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(images), quality, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SHARED / "datasets" / "trashnet5")
    parser.add_argument("--out", type=Path, default=ROOT / "edgetl" / "samples" / "trashnet5-mini")
    parser.add_argument("--train", type=int, default=30, help="train images per class (of 200)")
    parser.add_argument("--val", type=int, default=20, help="val images per class (of 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_size, default=(256, 192), help="WIDTHxHEIGHT, sides of at most 256 px")
    parser.add_argument("--budget", type=int, default=5_000_000, help="bytes the whole folder may take")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shown_out = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    command = shlex.join(["python", "tools/make_sample.py", "--source", "../shared/cache/datasets/trashnet5",
                          "--out", str(shown_out), "--train", str(args.train), "--val", str(args.val),
                          "--seed", str(args.seed), "--size", "x".join(map(str, args.size)),
                          "--budget", str(args.budget)])
    n, quality, total = build(args.source, out, {"train": args.train, "val": args.val}, args.seed, args.size,
                              args.budget, command)
    print(f"{out}: {n} images, JPEG quality {quality}, {total:,} bytes in all")


if __name__ == "__main__":
    main()
