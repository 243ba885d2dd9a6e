"""Unpacking a downloaded dataset archive (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) into the edgetl cache, safely:
members that are absolute, escape with `..`, link outside the folder or are devices are refused before anything is
written, and the archive is extracted into a temp folder that is renamed into place (nothing half-extracted remains).

Stdlib only (moved out of edgetl/data.py, which resolves datasets and calls install_archive).
"""

from __future__ import annotations

import errno
import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from edgetl.errors import DataError, StorageError
from edgetl.fsutil import swap_in

# Archive entries that are packaging noise, not dataset content (macOS Finder zips add __MACOSX/).
_ARCHIVE_JUNK = frozenset({"__MACOSX"})
# A single top-level folder with one of these names is a split, not a wrapper folder, so it must not be stripped.
_SPLIT_NAMES = frozenset({"train", "val"})


def install_archive(archive: Path, target: Path) -> None:
    """Extract into a temp folder beside `target`, then rename it into place; nothing is left behind on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        _extract(archive, tmp)
        swap_in(_dataset_root(tmp), target)
    except OSError as exc:
        raise _extract_os_error(archive, target, exc) from exc
    except StorageError as exc:  # swap_in's words name an output folder; this one is the dataset cache
        raise StorageError(f"Cannot put the dataset extracted from {archive} in {target}: {exc}. Point EDGETL_CACHE "
                           "at a writable folder with room and run again.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone unless the archive had a wrapper folder or failed


def _extract_os_error(archive: Path, target: Path, exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"Cannot extract {archive} into {target}: {exc.strerror or exc}. Nothing was left "
                            "half-extracted; free disk space or point EDGETL_CACHE at a writable folder.")
    # gzip/bz2 report corrupt streams as plain OSError
    return DataError(f"Cannot extract {archive}: {exc}. The archive is corrupt or not a supported format (.zip, .tar, "
                     ".tar.gz/.tgz, .tar.bz2, .tar.xz); the download was deleted. Check data.url and try again.")


# A link chain that escapes only once resolved (a/b -> .. where a -> ..) passes a name-by-name check; the "data"
# filter resolves it and raises one of these, which say "may be malicious", not "corrupt".
_TAR_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def _extract(archive: Path, dest: Path) -> None:
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        else:
            raise DataError(f"{archive} is not a supported archive (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz). "
                            "Check data.url in the recipe points at the dataset archive itself, not a web page.")
    except _TAR_FILTER_ERRORS as exc:  # the stdlib's "data" filter caught what our own checks let through
        member = getattr(getattr(exc, "tarinfo", None), "name", "?")
        raise _unsafe_member(archive, member, f"was refused by the tar safety filter ({exc})") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"Cannot extract {archive}: {exc}. The archive is corrupt and the download was deleted; "
                        "check data.url (and set data.sha256 to catch corrupt downloads) and try again.") from exc


def _unsafe_member(archive: Path, member: str, why: str) -> DataError:
    return DataError(f"Refusing to extract {archive}: member '{member}' {why}. The archive may be malicious; nothing "
                     "was extracted. Use a trusted archive or extract it yourself and set data.path.")


def _check_member_path(archive: Path, name: str) -> None:
    """Reject absolute paths and `..` escapes (checked before anything is written)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise _unsafe_member(archive, name, "has an absolute path")
    if ".." in PurePosixPath(posix).parts:
        raise _unsafe_member(archive, name, "escapes the target folder via '..'")


def _check_link_target(archive: Path, name: str, link: str, relative_to_member: bool) -> None:
    """Reject a link whose target is absolute or resolves outside the extraction folder."""
    posix = link.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise _unsafe_member(archive, name, f"links to the absolute path '{link}'")
    base = PurePosixPath(name.replace("\\", "/")).parent if relative_to_member else PurePosixPath()
    depth = 0
    for part in (*base.parts, *PurePosixPath(posix).parts):  # PurePosixPath drops "." and empty parts
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise _unsafe_member(archive, name, f"links outside the target folder ('{link}')")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_path(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile writes links as small regular files, but refuse escaping ones anyway: other tools follow them
                _check_link_target(archive, info.filename, zf.read(info).decode("utf-8", "replace"), True)
        zf.extractall(dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for member in tf.getmembers():
            _check_member_path(archive, member.name)
            if member.issym() or member.islnk():
                # symlink targets are relative to the link's folder; hardlink targets to the archive root
                _check_link_target(archive, member.name, member.linkname, relative_to_member=member.issym())
            elif not (member.isfile() or member.isdir()):
                raise _unsafe_member(archive, member.name, "is a device file or FIFO, which no dataset needs")
        if hasattr(tarfile, "data_filter"):
            # filter="data" is the stdlib's own guard (also strips setuid bits) on top of ours
            tf.extractall(dest, filter="data")
        else:  # Python 3.11.0-3.11.3 predate extraction filters, and a chain of links can escape a name-by-name check
            if any(m.issym() or m.islnk() for m in tf.getmembers()):
                raise _unsafe_member(archive, next(m.name for m in tf.getmembers() if m.issym() or m.islnk()),
                                     "is a link, which this Python (before 3.11.4) cannot extract safely")
            tf.extractall(dest)


def _dataset_root(extracted: Path) -> Path:
    """The single top-level folder of an archive is a wrapper (e.g. hymenoptera_data/) and becomes the root."""
    entries = [e for e in extracted.iterdir() if not e.name.startswith(".") and e.name not in _ARCHIVE_JUNK]
    if len(entries) != 1:
        return extracted
    only = entries[0]
    is_wrapper = only.is_dir() and not only.is_symlink() and only.name not in _SPLIT_NAMES
    return only if is_wrapper else extracted
