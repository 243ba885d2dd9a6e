"""Dataset discovery and image loading: scan an ImageFolder tree, validate every image, fetch datasets into the cache.

Torch-free on purpose (stdlib, numpy, Pillow only) so the CLI can check a dataset before any heavy import.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.archives import install_archive
from edgetl.errors import DataError
from edgetl.fsutil import atomic_path, sha256_file
from edgetl.images import check_image, load_rgb  # noqa: F401  (load_rgb: part of this module's API)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_MAX_LISTED_BAD = 20
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One image of the dataset: absolute path and class index."""

    path: str
    label: int


@dataclass
class DatasetIndex:
    """Result of scanning a dataset: classes, train/val samples and what was skipped or converted."""

    root: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    val_source: str
    bad_images: list[dict] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)
    ignored_files: list[str] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    test_source: str | None = None  # "folder", "split", or None: the data has no test split
    layout: str = "folders"  # "folders": train/ [val/ test/]; "flat": <class>/ folders, split by edgetl

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split: {"train": {cls: n}, "val": {cls: n}[, "test": {cls: n}]}."""
        splits = (("train", self.train), ("val", self.val)) + ((("test", self.test),) if self.test_source else ())
        return {name: _count(samples, self.classes) for name, samples in splits}

    def unmeasured_classes(self) -> list[str]:
        """Classes with no val image (a lone image stays in train): val accuracy says nothing about them."""
        counts = self.class_counts()["val"]
        return [cls for cls in self.classes if counts.get(cls, 0) == 0]

    def to_json(self) -> dict:
        """JSON-serialisable form (class_counts is included for reports and ignored by from_json)."""
        return {
            "root": self.root,
            "classes": list(self.classes),
            "train": [{"path": s.path, "label": s.label} for s in self.train],
            "val": [{"path": s.path, "label": s.label} for s in self.val],
            "val_source": self.val_source,
            "bad_images": [dict(b) for b in self.bad_images],
            "converted": dict(self.converted),
            "ignored_files": list(self.ignored_files),
            "class_counts": self.class_counts(),
            # left out when there is no test split and the layout is folders: index.json of such data stays what it
            # was before the test split existed, so the stages after it keep their cache keys
            **({"test": [{"path": s.path, "label": s.label} for s in self.test], "test_source": self.test_source}
               if self.test_source else {}),
            **({"layout": self.layout} if self.layout != "folders" else {}),
        }

    @classmethod
    def from_json(cls, obj: dict) -> DatasetIndex:
        """Rebuild an index written by to_json."""
        try:
            return cls(
                root=str(obj["root"]),
                classes=[str(c) for c in obj["classes"]],
                train=[Sample(str(s["path"]), int(s["label"])) for s in obj["train"]],
                val=[Sample(str(s["path"]), int(s["label"])) for s in obj["val"]],
                val_source=str(obj["val_source"]),
                test=[Sample(str(s["path"]), int(s["label"])) for s in obj.get("test", [])],
                test_source=None if obj.get("test_source") is None else str(obj["test_source"]),
                layout=str(obj.get("layout", "folders")),
                bad_images=[{"path": str(b["path"]), "reason": str(b["reason"])} for b in obj.get("bad_images", [])],
                converted={str(k): int(v) for k, v in obj.get("converted", {}).items()},
                ignored_files=[str(p) for p in obj.get("ignored_files", [])],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"The saved dataset index is malformed ({type(exc).__name__}: {exc}). Delete the "
                            "index file and run again so the dataset is rescanned.") from exc


def _count(samples: Iterable[Sample], classes: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for s in samples:
        counts[classes[s.label]] += 1
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Dataset scanning
# ----------------------------------------------------------------------------------------------------------------


def scan_dataset(root: str | Path, *, train_dir: str = "train", val_dir: str | None = "val",
                 val_fraction: float = 0.2, seed: int = 0, skip_bad_images: bool = False,
                 workers: int = 4, progress: Callable[[int, int], None] | None = None, test_dir: str | None = "test",
                 test_fraction: float | None = None) -> DatasetIndex:
    """Scan an ImageFolder dataset, validate every image and build the train/val[/test] index.

    Laid out as train/<class>/ (with val/<class>/ and test/<class>/ when they exist), the folders are the splits; a
    split with no folder is held out of train when asked for (val always: `val_fraction`; test: `test_fraction`).
    Laid out flat, as <class>/ folders, edgetl splits every class into train, val (`val_fraction`) and test
    (`test_fraction`, FLAT_TEST_FRACTION unless given), stratified and seeded (see _split)."""
    root_path = Path(os.path.abspath(os.path.expanduser(root)))
    if _is_flat(root_path, train_dir, val_dir, test_dir):
        return _scan_flat(root_path, val_fraction, FLAT_TEST_FRACTION if test_fraction is None else test_fraction,
                          seed, skip_bad_images, workers, progress)
    train_path = _require_layout(root_path, train_dir)
    classes = _list_classes(train_path)
    val_path = root_path / val_dir if val_dir and (root_path / val_dir).is_dir() else None
    test_path = root_path / test_dir if test_dir and (root_path / test_dir).is_dir() else None
    if val_path is None:
        _check_val_fraction(val_fraction, train_path)
    held_out = ({} if val_path else {"val": val_fraction}) | (
        {} if test_path or not test_fraction else {"test": test_fraction})
    _check_shares(held_out, train_path)
    split_dirs = ({"train": train_path} | ({"val": val_path} if val_path else {})
                  | ({"test": test_path} if test_path else {}))
    files, ignored = _find_images(split_dirs, classes)
    results = _check_all([p for by_class in files.values() for paths in by_class.values() for p in paths],
                         workers, progress)
    files, bad = _handle_bad_images(files, results, split_dirs, root_path, skip_bad_images)
    if held_out:
        files |= _split(files["train"], train_path, held_out, seed)
        for name in held_out:
            if not any(files[name].values()):
                raise DataError(f"No class of {train_path} has enough images to hold any out for {name} "
                                f"(data.{name}_fraction {held_out[name]}): a class needs at least "
                                f"{len(held_out) + 1} images. Add images, or a {name}/ folder.")
    return DatasetIndex(
        root=str(root_path),
        classes=classes,
        train=_samples(files["train"], classes),
        val=_samples(files["val"], classes),
        val_source="split" if val_path is None else "folder",
        bad_images=bad,
        converted=_count_converted(results),
        ignored_files=ignored,
        test=_samples(files["test"], classes) if "test" in files else [],
        test_source="folder" if test_path else "split" if "test" in files else None,
    )


FLAT_TEST_FRACTION = 0.2  # a flat dataset's test share unless data.test_fraction says otherwise


# Folder names that say "split", not "class" (compared lower-case): a root holding one of them is not flat.
_SPLIT_NAMES = re.compile(r"^(train|training|val|valid|validation|dev|test|testing|eval|evaluation)"
                          r"([-_ ]?(set|data|images|split))?$")


def _split_like(root: Path) -> list[str]:
    return [name for name in _class_dirs(root) if _SPLIT_NAMES.match(name.lower())]


def _check_shares(held_out: dict[str, float], base: Path) -> None:
    """The shares held out of `base` ({split: fraction}) must leave some images to train on."""
    if len(held_out) > 1 and sum(held_out.values()) >= 1.0:
        raise DataError(f"data.val_fraction ({held_out['val']}) + data.test_fraction ({held_out['test']}) leave no "
                        f"image of {base} to train on; their sum must be below 1.")


def _is_flat(root: Path, train_dir: str, val_dir: str | None, test_dir: str | None) -> bool:
    """<class>/ folders straight under the root: no train folder, no val or test folder, and no folder named like a
    split (Training/, Test/, train_set/: their sub-folders are the classes, and reading them as classes would train
    a "which folder" classifier). Those layouts are a mistake _require_layout names; so is a root with a train_dir
    other than `train` that is not there."""
    if not root.is_dir() or (root / train_dir).is_dir() or train_dir != "train":
        return False
    if any(d and (root / d).is_dir() for d in (val_dir, test_dir)) or _split_like(root):
        return False
    return bool(_class_dirs(root))


def _scan_flat(root: Path, val_fraction: float, test_fraction: float, seed: int, skip_bad_images: bool,
               workers: int, progress: Callable[[int, int], None] | None) -> DatasetIndex:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise DataError(f"data.{name} must be between 0 and 1 (exclusive), got {value}: {root} is laid out flat "
                            "(<class>/ folders), so edgetl holds out that share of each class.")
    _check_shares({"val": val_fraction, "test": test_fraction}, root)
    classes = _list_classes(root, flat=True)
    files, ignored = _find_images({"all": root}, classes)
    results = _check_all([p for paths in files["all"].values() for p in paths], workers, progress)
    files, bad = _handle_bad_images(files, results, {"all": root}, root, skip_bad_images)
    splits = _split(files["all"], root, {"val": val_fraction, "test": test_fraction}, seed, need_every_split=True)
    return DatasetIndex(root=str(root), classes=classes, train=_samples(splits["train"], classes),
                        val=_samples(splits["val"], classes), val_source="split", bad_images=bad,
                        converted=_count_converted(results), ignored_files=ignored,
                        test=_samples(splits["test"], classes), test_source="split", layout="flat")


def _check_val_fraction(val_fraction: float, train_path: Path) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1 (exclusive), got {val_fraction}: it is the "
                        f"share of each class in {train_path} held out for validation because no val folder exists.")


def _find_images(split_dirs: dict[str, Path], classes: list[str]) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """List every split's images per class (checking class folders match and are non-empty) and ignored files."""
    for split in ("val", "test"):
        if split in split_dirs:
            _check_same_classes(split_dirs["train"], classes, split_dirs[split], _class_dirs(split_dirs[split]))
    files: dict[str, dict[str, list[str]]] = {}
    ignored: list[str] = []
    for split, path in split_dirs.items():
        files[split], split_ignored = _scan_split(path, classes)
        ignored.extend(split_ignored)
    _check_no_empty_classes(files, split_dirs)
    return files, sorted(ignored)


def _handle_bad_images(files: dict[str, dict[str, list[str]]], results: dict[str, tuple[str | None, str | None]],
                       split_dirs: dict[str, Path], root: Path,
                       skip: bool) -> tuple[dict[str, dict[str, list[str]]], list[dict]]:
    """Raise on bad images, or (when skipping) drop them and return them for the index's bad_images."""
    bad = [{"path": p, "reason": reason} for p, (_, reason) in sorted(results.items()) if reason is not None]
    if bad and not skip:
        raise _bad_images_error(bad, root)
    kept = {split: {cls: [p for p in paths if results[p][1] is None] for cls, paths in by_class.items()}
            for split, by_class in files.items()}
    _check_no_empty_classes(kept, split_dirs, after_skipping=True)
    return kept, bad


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _require_layout(root: Path, train_dir: str) -> Path:
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist (or is not a folder). Point data.path in the recipe "
                        f"at a folder laid out as {train_dir}/<class>/<image> (optionally with val/<class>/<image>).")
    train_path = root / train_dir
    if not train_path.is_dir():
        split_like = _split_like(root)
        found = (f" It holds {', '.join(split_like)}, named like splits: set data.train_dir (and data.val_dir, "
                 "data.test_dir) to them." if split_like else "")
        raise DataError(f"Dataset folder {root} has no '{train_dir}' folder. Expected {root}/<class>/<image> (one "
                        f"sub-folder per class; edgetl splits it into train, val and test) or "
                        f"{root}/{train_dir}/<class>/<image> with optional val/ and test/ folders; or set "
                        f"data.train_dir in the recipe to the folder that holds the class folders.{found}")
    return train_path


def _class_dirs(split_path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_path) if e.is_dir() and not _is_hidden(e.name))


def _list_classes(train_path: Path, flat: bool = False) -> list[str]:
    classes = _class_dirs(train_path)
    if len(classes) == 1 and flat:
        raise DataError(f"Dataset folder {train_path} has only one class folder ({classes[0]}); a classifier needs "
                        "at least 2 classes. Add a sub-folder with images for each other class.")
    if not classes:
        loose = sum(1 for e in os.scandir(train_path) if e.is_file() and _is_image_name(e.name))
        hint = f" It holds {loose} image(s) directly; move them into the class sub-folders." if loose else ""
        raise DataError(f"Training folder {train_path} has no class folders: it must contain one sub-folder per "
                        f"class (e.g. {train_path}/cat/, {train_path}/dog/) holding that class's images.{hint}")
    if len(classes) < 2:
        raise DataError(f"Training folder {train_path} has only one class folder ({classes[0]}); a classifier needs "
                        "at least 2 classes. Add a sub-folder with images for each other class.")
    return classes


def _scan_split(split_path: Path, classes: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Return ({class: sorted image paths}, ignored files) for one split folder."""
    by_class: dict[str, list[str]] = {}
    ignored = [str(split_path / e.name) for e in os.scandir(split_path) if e.is_file() and not _is_hidden(e.name)]
    for cls in classes:
        images, other = _walk_images(split_path / cls)
        by_class[cls] = images
        ignored.extend(other)
    return by_class, ignored


def _walk_images(folder: Path) -> tuple[list[str], list[str]]:
    """Recursively list (image files, non-image files) under `folder`, skipping hidden entries and symlink loops."""
    images: list[str] = []
    other: list[str] = []
    for dirpath, dirnames, filenames in _walk_unique(folder):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if not _is_hidden(name):
                path = os.path.join(dirpath, name)
                (images if _is_image_name(name) else other).append(path)
    # sorted here rather than relying on the filesystem's listing order, which differs between machines
    return sorted(images), sorted(other)


def _check_same_classes(train_path: Path, classes: list[str], val_path: Path, val_classes: list[str]) -> None:
    missing_in_val = sorted(set(classes) - set(val_classes))
    extra_in_val = sorted(set(val_classes) - set(classes))
    if not missing_in_val and not extra_in_val:
        return
    parts = []
    if missing_in_val:
        parts.append(f"missing from {val_path}: {', '.join(missing_in_val)}")
    if extra_in_val:
        parts.append(f"missing from {train_path}: {', '.join(extra_in_val)}")
    raise DataError(f"The class folders of {train_path} and {val_path} differ ({'; '.join(parts)}). Both splits must "
                    "have the same class sub-folders: add or rename folders so they match, or remove that folder (a "
                    "val split is then held out of train; a test split only with data.test_fraction).")


def _check_no_empty_classes(files: dict[str, dict[str, list[str]]], paths: dict[str, Path],
                            after_skipping: bool = False) -> None:
    empty = [f"{paths[split] / cls}" for split, by_class in files.items() for cls, imgs in by_class.items() if not imgs]
    if not empty:
        return
    if after_skipping:
        raise DataError(f"Every image in these class folders was unreadable and skipped, leaving them empty: "
                        f"{', '.join(empty)}. Replace the bad images with readable ones (set data.skip_bad_images: "
                        "false to get the list of unreadable files) or remove the class.")
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise DataError(f"These class folders contain no images: {', '.join(empty)}. Add images ({exts}) to them or "
                    "delete the empty folders (a class must exist in every split).")


def _check_all(paths: list[str], workers: int,
               progress: Callable[[int, int], None] | None) -> dict[str, tuple[str | None, str | None]]:
    """Decode every image on a thread pool (Pillow releases the GIL while decoding); report progress as they finish."""
    results: dict[str, tuple[str | None, str | None]] = {}
    total = len(paths)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="edgetl-check")
    try:
        futures = {pool.submit(check_image, p): p for p in paths}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(done, total)
    finally:
        # cancel_futures keeps Ctrl-C (or a failing progress callback) from waiting for thousands of queued images
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _bad_images_error(bad: list[dict], root: Path) -> DataError:
    listed = "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:_MAX_LISTED_BAD])
    more = f"; and {len(bad) - _MAX_LISTED_BAD} more" if len(bad) > _MAX_LISTED_BAD else ""
    return DataError(f"{len(bad)} image(s) in {root} cannot be decoded: {listed}{more}. Fix or remove these files, "
                     "or set `data.skip_bad_images: true` in the recipe to skip them (skipped files are recorded in "
                     "the dataset index's bad_images).")


def _count_converted(results: dict[str, tuple[str | None, str | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for mode, _ in results.values():
        if mode is not None and mode != "RGB":
            counts[mode] = counts.get(mode, 0) + 1
    return dict(sorted(counts.items()))


def _split(by_class: dict[str, list[str]], base: Path, fractions: dict[str, float], seed: int,
           need_every_split: bool = False) -> dict[str, dict[str, list[str]]]:
    """Hold out each of `fractions` ({split: share}, in that order) of every class's images, the rest staying
    train: {"train": …, split: …}. Images are ranked by a seeded hash of their path relative to `base`, so the split
    is independent of listing order and of where the dataset lives, and adding one image moves at most one other.
    A split gets at least one image of a class that has two or more; a lone image stays in train (a class must be
    learnable), unless `need_every_split`, where a class too small for one image in every split is an error."""
    out: dict[str, dict[str, list[str]]] = {"train": {}, **{name: {} for name in fractions}}
    for cls, paths in by_class.items():
        if need_every_split and len(paths) < len(fractions) + 1:
            raise DataError(f"{base / cls} has {len(paths)} image(s); splitting it into train, "
                            f"{' and '.join(fractions)} needs at least {len(fractions) + 1} (one in each). Add images "
                            f"of {cls}, or lay the dataset out as train/<class>/ and val/<class>/ folders yourself.")
        ranked = sorted(paths, key=lambda p: _split_key(seed, Path(p).relative_to(base).as_posix()))
        start = 0
        for number, (name, fraction) in enumerate(fractions.items()):
            # what must be left: one train image, and with need_every_split one for each split still to come
            reserve = 1 + (len(fractions) - number - 1 if need_every_split else 0)
            count = 0 if len(paths) < 2 else max(0, min(max(1, math.floor(len(paths) * fraction + 0.5)),
                                                        len(paths) - start - reserve))
            out[name][cls] = sorted(ranked[start:start + count])
            start += count
        out["train"][cls] = sorted(ranked[start:])
    return out


def _split_key(seed: int, rel_path: str) -> str:
    return hashlib.sha256(f"{seed}\0{rel_path}".encode()).hexdigest()


def _samples(by_class: dict[str, list[str]], classes: list[str]) -> list[Sample]:
    return [Sample(path=p, label=label) for label, cls in enumerate(classes) for p in by_class[cls]]


def fingerprint_tree(root: str | Path) -> str:
    """Cheap content fingerprint of a folder: sha256 over sorted (relative path, size, mtime_ns) of all files."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"Cannot fingerprint {root_path}: the folder does not exist. Check data.path in the recipe.")
    entries = []
    for dirpath, dirnames, filenames in _walk_unique(root_path):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if _is_hidden(name):  # hidden files (.DS_Store, editor swap files) are never read by scan_dataset
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue  # a broken symlink has no content to fingerprint; scan_dataset reports it
            entries.append(f"{path.relative_to(root_path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n")
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _walk_unique(root: Path) -> Iterable[tuple[str, list[str], list[str]]]:
    """os.walk following symlinks, but never into a real folder twice (so symlink loops terminate)."""
    seen: set[str] = set()
    top = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # A link back up to `root` or above it would walk the other classes' folders as if they were this one's.
        dirnames[:] = [d for d in dirnames if not _is_ancestor(os.path.realpath(os.path.join(dirpath, d)), top)]
        yield dirpath, dirnames, filenames


def _is_ancestor(folder: str, of: str) -> bool:
    return of == folder or of.startswith(folder.rstrip(os.sep) + os.sep)


# ----------------------------------------------------------------------------------------------------------------
# Dataset resolution: local path, cache, or download
# ----------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$EDGETL_CACHE, else ~/.cache/edgetl."""
    env = os.environ.get("EDGETL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgetl"


def resolve_recipe_data(recipe, say=None) -> Path:
    """The folder of `recipe`'s dataset (see resolve_dataset); `say(text)` reports how it was found when that is worth
    a line of output (with say=None, a line saying that data.fallback replaces the dataset goes to stderr)."""
    data = recipe.data
    path = str(recipe.resolve_path(data.path)) if data.path else None
    return resolve_dataset(data.dataset, path, data.url, data.sha256, default_cache_dir(),
                           recipe_file=recipe.source or "recipe", fallback=data.fallback, say=say)


class DatasetUnavailable(DataError):
    """The named dataset is not cached and cannot be fetched; `why` says so in a few words."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def resolve_dataset(name: str | None, path: str | None, url: str | None, sha256: str | None, cache_dir: Path,
                    recipe_file: str = "recipe", *, fallback: str | None = None, say=None) -> Path:
    """Find a dataset folder: `path`, else cache_dir/datasets/name, else download `url` and extract it there; when
    that is impossible (no url, downloads off, the download failed) and `fallback` names an embedded sample, that
    sample's folder, used in place (edgetl.samples.substitute: it says so)."""
    if path:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataError(f"Dataset folder {folder} (data.path in {recipe_file}) does not exist or is not a folder. "
                            "Fix data.path, or remove it and set data.dataset/data.url to use a downloadable dataset.")
        return Path(os.path.abspath(folder))
    if not name:
        raise DataError(f"{recipe_file} names no dataset: set data.path to a local folder, or data.dataset (and "
                        "data.url to download it) for a dataset kept in the edgetl cache.")
    _check_dataset_name(name, recipe_file)
    target = Path(cache_dir) / "datasets" / name
    if target.is_dir():
        return target
    try:
        archive = _download(url, Path(cache_dir) / "downloads", name, target, recipe_file)
    except DatasetUnavailable as exc:
        if not fallback:
            raise
        from edgetl.samples import substitute

        return substitute(fallback, name, target.parent, exc.why, recipe_file, say)
    try:
        _verify_sha256(archive, sha256, url, recipe_file)
        install_archive(archive, target)
    finally:
        # On success the extracted folder is the cache (keeping the archive would double disk use); on failure a
        # bad or unsafe archive must not linger where a later run could pick it up.
        archive.unlink(missing_ok=True)
    return target


def downloads_off() -> bool:
    """Whether $EDGETL_OFFLINE turns dataset downloads off (1, true, yes or on): data.url is then never fetched."""
    return os.environ.get("EDGETL_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _check_dataset_name(name: str, recipe_file: str) -> None:
    # The name becomes a folder under the cache, so it must not be able to point anywhere else.
    if name in (".", "..") or "/" in name or "\\" in name or _is_hidden(name):
        raise DataError(f"data.dataset '{name}' in {recipe_file} is not a valid dataset name: use a plain folder name "
                        "without slashes or a leading dot (e.g. hymenoptera).")


def _download(url: str | None, downloads: Path, name: str, target: Path, recipe_file: str) -> Path:
    """Fetch `url` into `downloads` via a temp file, so an interrupted download never looks complete; a
    DatasetUnavailable when there is no url, downloads are off or the network fails."""
    if not url:
        raise DatasetUnavailable(
            f"Dataset '{name}' was not found in {target} and {recipe_file} gives no data.url to download it from. "
            f"Place the dataset there (so that {target}/[train/]<class>/<image> exists), set data.path to where it "
            "is, or set data.url. The cache folder can be moved with the EDGETL_CACHE environment variable.",
            f"{recipe_file} gives no data.url to download it from")
    if downloads_off():
        off = f"downloads are off: EDGETL_OFFLINE={os.environ['EDGETL_OFFLINE']}"
        raise DatasetUnavailable(f"Dataset '{name}' was not found in {target} and was not downloaded from {url} "
                                 f"({off}). Unset EDGETL_OFFLINE to download it, place the dataset there (so that "
                                 f"{target}/[train/]<class>/<image> exists), or set data.path to where it is.",
                                 f"could not be downloaded ({off})")
    filename = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path)) or f"{name}.archive"
    if _is_hidden(filename):
        filename = f"{name}.archive"
    dest = downloads / filename

    def fail(reason: str) -> DatasetUnavailable:
        return DatasetUnavailable(f"Dataset '{name}' was not found in {target} and could not be downloaded from {url} "
                                  f"({reason}). Check the network connection and the URL, or work offline: download "
                                  f"the archive elsewhere and extract it so that {target}/[train/]<class>/<image> "
                                  "exists.", f"could not be downloaded ({reason})")

    try:
        response = urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise fail(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise fail(str(exc.reason)) from exc
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from exc
    with response, atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while True:
            try:
                block = response.read(_CHUNK)
            except Exception as exc:  # timeouts, resets and bad chunking all mean the network failed
                raise fail(f"{type(exc).__name__}: {exc}") from exc
            if not block:
                break
            out.write(block)  # an OSError here is a disk problem: atomic_path turns it into a StorageError
    return dest


def _verify_sha256(archive: Path, expected: str | None, url: str, recipe_file: str) -> None:
    if not expected:
        return
    actual = sha256_file(archive)
    wanted = expected.strip().lower().removeprefix("sha256:")
    if actual != wanted:
        archive.unlink(missing_ok=True)
        raise DataError(f"The archive downloaded from {url} has sha256 {actual}, but data.sha256 in {recipe_file} "
                        f"expects {expected}. The download was deleted. The file is corrupt or has changed on the "
                        "server: try again, or update data.sha256 if you trust the new file.")
