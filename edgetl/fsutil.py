"""Atomic file writes and hashing: nothing half-written is ever left where a reader looks."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.errors import StorageError


@functools.cache
def _default_file_mode() -> int:
    # mkstemp creates 0600 files; deployable outputs should get the usual mode (0666 minus the umask).
    # Read once: os.umask can only be read by setting it, which must not race with other threads later.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def storage_reason(exc: OSError) -> str:
    """What an OSError from writing means, in words (a full disk, a read-only or forbidden location, ...)."""
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only location?)"
    return exc.strerror or str(exc)


def _storage_error(path: Path, exc: OSError) -> StorageError:
    return StorageError(f"Cannot write {path}: {storage_reason(exc)}. Nothing was left half-written; free space or "
                        "choose another output folder (--out) and run again.")


_TEMP_PREFIX = "edgetl-"


def process_temp_folder(purpose: str) -> Path:
    """A private temporary folder for this process, `edgetl-<purpose>-<pid>-…`, removed when it exits; one left by
    a process killed outright (SIGKILL, a power cut) is removed by `remove_orphaned_temp_folders`."""
    import atexit

    remove_orphaned_temp_folders()
    folder = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{purpose}-{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def remove_orphaned_temp_folders() -> None:
    """Remove the temporary folders of edgetl processes that no longer run (a folder is named after its process)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*-*-*"):
        pid = folder.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # a live process of another user
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed onto `path`, on failure removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, _default_file_mode())
        os.close(fd)
    except OSError as exc:
        raise _storage_error(target, exc) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _storage_error(target, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def swap_in(src: Path, dst: Path) -> None:
    """Move a complete folder `src` onto `dst`. An old `dst` (the caller has checked it is edgetl's own) is moved
    aside first and deleted only once `src` is in its place, so a failure leaves the old folder or the new one."""
    src, dst = Path(src).absolute(), Path(dst).absolute()
    aside = None
    try:
        if dst.exists() or dst.is_symlink():
            aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(dst, aside)
        os.replace(src, dst)
    except OSError as exc:
        if aside is not None and aside.exists() and not dst.exists():
            os.replace(aside, dst)  # put the old folder back
        raise _storage_error(dst, exc) from exc
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


# Marker files: edgetl writes only into folders that carry its marker (it created them, or took them empty).
RUN_MARKER = ".edgetl-run"
BUNDLE_MARKER = ".edgetl-bundle"


def is_marked(folder: Path, marker: str) -> bool:
    """Whether `folder` carries edgetl's `marker` file (it made the folder)."""
    return (Path(folder) / marker).is_file()


def mark(folder: Path, marker: str, **fields: Any) -> None:
    """Write `marker` (with `fields`) into `folder`: from now on the folder is edgetl's to replace and clean."""
    from edgetl import __version__

    write_json(Path(folder) / marker, {"made_by": "edgetl", "kind": marker.removeprefix(".edgetl-"),
                                       "edgetl_version": __version__, **fields})


def changed_files(root: Path, hashes: dict[str, str]) -> list[str]:
    """Which of `hashes` ({path relative to root: sha256}) are missing under `root` or have other content."""
    return [rel for rel, digest in hashes.items()
            if not (Path(root) / rel).is_file() or sha256_file(Path(root) / rel) != digest]


def refuse_unmarked(folder: Path, marker: str, what: str, option: str, adopt=None, mark_now: bool = True) -> None:
    """Raise OutputError unless `folder` may be written as edgetl's `what`: it does not exist, is empty, carries
    `marker`, or `adopt(folder)` recognises it as edgetl's own from before markers. `mark_now`: an empty or adopted
    folder gets the marker at once (a run directory, written in place; a bundle is marked when it is swapped in)."""
    from edgetl.errors import OutputError

    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise OutputError(f"{folder} ({option}) is a broken symbolic link; give a folder.")
    if not folder.exists() or is_marked(folder, marker):
        return
    if not folder.is_dir():
        raise OutputError(f"{folder} ({option}) is a file, not a folder; edgetl will not replace it. Give a new or "
                          "empty folder.")
    try:
        empty = next(folder.iterdir(), None) is None
    except OSError as exc:
        raise _storage_error(folder, exc) from exc
    if empty or (adopt is not None and adopt(folder)):
        if mark_now:
            mark(folder, marker)
        return
    raise OutputError(f"{folder} ({option}) already exists and is not {what} made by edgetl (it has no {marker} "
                      "marker file), so edgetl will not write into it: it could hold your own files. Give a new or "
                      f"empty folder as {option}, or move that folder away first.")


def check_apart(out: Path, other: Path, option: str, what: str) -> None:
    """Raise OutputError when the output folder `out` is `other`, lies inside it, or holds it (e.g. the dataset)."""
    from edgetl.errors import OutputError

    out_real, other_real = Path(out).resolve(), Path(other).resolve()
    if out_real == other_real or other_real in out_real.parents:
        raise OutputError(f"{out} ({option}) is inside {what} {other}; edgetl would write among those files. Give a "
                          f"folder outside it as {option}.")
    if out_real in other_real.parents:
        raise OutputError(f"{out} ({option}) holds {what} {other}; edgetl would write beside (and clean) those files. "
                          f"Give a folder outside it as {option}.")


def parent_must_exist(path: Path, option: str) -> None:
    """Raise OutputError when an output file's folder does not exist: a typo should not create folders."""
    from edgetl.errors import OutputError

    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{path} ({option}): the folder {parent} does not exist; create it first or give another "
                          "path.")
