"""The run directory: one folder per stage with a stage.json marker written last, atomic swaps, the content-hashed
cache. It runs work under a name and a key; it knows no stage by name (the stages declare what they keep)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.errors import StorageError, described
from edgetl.fsutil import (
    RUN_MARKER,
    changed_files,
    is_marked,
    mark,
    read_json,
    refuse_unmarked,
    sha256_file,
    sha256_json,
    storage_reason,
    swap_in,
    write_json,
)
from edgetl.progress import Reporter

# What a run directory holds besides its stage folders (an older edgetl's run is recognised by these names).
RUN_FILES = {"summary.json", "report.md", "report.html", "report", "search", "search.json", "bundle", RUN_MARKER,
             "recipe.resolved.yaml"}


@dataclass
class RunDir:
    """runs/<name>/: one folder per stage, each with a stage.json marker written last.

    A stage that must run works in `.<name>.partial/` beside its folder; only once it has finished is that folder
    swapped in for the old one, so a stage that fails (bad weights, a full disk) leaves the last good outputs, and
    the records that point at them, as they were. `names`: the stages this build runs, in order (for progress)."""

    root: Path
    reporter: Reporter
    names: list[str] = field(default_factory=list)
    timings: dict[str, dict] = field(default_factory=dict)
    _working: dict[Path, Path] = field(default_factory=dict)  # partial folder -> the stage folder it becomes
    current: str | None = None  # the stage running now (named in a failed build's summary)

    def rel(self, path: Path) -> str:
        """A path inside the run directory, relative to it (as stored in records and the summary); a file written
        in a running stage's partial folder is named where it will be once the stage has finished."""
        path = Path(path)
        for partial, final in self._working.items():
            if path == partial or partial in path.parents:
                path = final / path.relative_to(partial)
        return os.path.relpath(path, self.root)

    def stage(self, name: str, inputs: dict[str, Any], work: Callable[[Path], dict],
              keep: Iterable[str] = ()) -> dict:
        """Run `work(folder)` unless a completed run with the same inputs is recorded; return its record. `keep`:
        files of a killed or changed run that carry their own key (resumable state), kept for the next run."""
        keep = frozenset(keep)
        key = sha256_json({"stage": name, "inputs": inputs, "edgetl": __version__})
        folder = self.root / name
        progress = f"[{self.names.index(name) + 1}/{len(self.names)}] {name}" if name in self.names else name
        _finish_swap(self.root, name)
        saved = read_marker(folder / "stage.json")
        if saved is not None and saved.get("key") == key and self._intact(saved):
            self.reporter.info(f"{progress}: unchanged, reused")
            self.timings[name] = {"cached": True, "seconds": saved.get("seconds", 0.0)}
            return saved["record"]
        self.reporter.info(progress)
        partial, self.current = self.root / f".{name}.partial", name
        try:
            _clear(partial, keep)
            partial.mkdir(parents=True, exist_ok=True)
            _keep_resumable(folder, partial, keep)
        except OSError as exc:
            raise _storage_error(exc, f"Cannot run the {name} stage in {self.root}") from None
        self._working[partial] = folder
        started = time.perf_counter()
        try:
            record = work(partial)
            seconds = round(time.perf_counter() - started, 2)
            write_json(partial / "stage.json", {"key": key, "stage": name, "seconds": seconds, "inputs": inputs,
                                                "record": record, "record_sha256": sha256_json(record)})
            swap_in(partial, folder)
        except Exception as exc:
            with contextlib.suppress(OSError):
                _clear(partial, keep, drop=True)  # keeps only resumable state (a training checkpoint)
            if isinstance(exc, StorageError) or not _out_of_space(exc):
                raise
            # Exporters and runtimes write files their own way and report a full disk in their own words.
            raise StorageError(f"Cannot write the {name} stage's outputs in {folder}: the disk is full "
                               f"({described(exc)}). Completed "
                               "stages are kept; free space or choose another output folder (--out) and run again.") from None
        finally:
            del self._working[partial]
        self.current = None
        self.timings[name] = {"cached": False, "seconds": seconds}
        return record

    def _intact(self, saved: dict) -> bool:
        """The record is the one written (its hash matches; an older edgetl's record has none) and every file it
        lists has the content recorded."""
        record, recorded = saved.get("record"), saved.get("record_sha256")
        if not isinstance(record, dict) or (recorded is not None and recorded != sha256_json(record)):
            return False
        files = record.get("files", {})
        return isinstance(files, dict) and not changed_files(self.root, files)

    def files_record(self, *paths: Path) -> dict[str, str]:
        """{relative path: sha256} for outputs, so reuse is checked against their content."""
        return {self.rel(p): sha256_file(p) for p in paths}


def read_marker(marker: Path) -> dict | None:
    """A stage.json as a dict, or None when it is missing, unreadable or not an object (then the stage reruns)."""
    try:
        saved = read_json(marker)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _storage_error(exc: OSError, what: str) -> StorageError:
    return StorageError(f"{what}: {storage_reason(exc)}. Completed stages are kept; fix that or choose another output "
                        "folder (--out) and run again.")


def _finish_swap(root: Path, name: str) -> None:
    """Complete a swap a kill interrupted (the stage folder gone, its finished partial folder there) and remove old
    folders that a swap moved aside."""
    folder, partial = root / name, root / f".{name}.partial"
    if not folder.exists() and (read_marker(partial / "stage.json") or {}).get("stage") == name:
        try:
            os.replace(partial, folder)
        except OSError as exc:
            raise _storage_error(exc, f"Cannot finish the {name} stage in {root}") from None
    for aside in root.glob(f".{name}.old-*"):
        shutil.rmtree(aside, ignore_errors=True)


def _keep_resumable(folder: Path, partial: Path, keep: frozenset[str]) -> None:
    """An older edgetl kept a killed stage's checkpoint in the stage folder itself: move it to where it resumes."""
    if folder.is_dir() and not (folder / "stage.json").exists():
        for name in keep:
            if (folder / name).is_file() and not (partial / name).exists():
                os.replace(folder / name, partial / name)


def _clear(partial: Path, keep: frozenset[str], drop: bool = False) -> None:
    """Empty a stage's partial folder (edgetl's own) but for resumable state; `drop`: remove it when nothing is
    left to resume from."""
    if not partial.is_dir():
        return
    for child in partial.iterdir():
        if child.name not in keep:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    if drop and next(partial.iterdir(), None) is None:
        partial.rmdir()


def _out_of_space(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it came from, is a full disk."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@dataclass(frozen=True)
class Layout:
    """What a run directory of this edgetl may hold: the stage folder names and the files a stage keeps."""

    first_stage: str  # the stage every build completes first
    stage_names: frozenset[str]
    kept_files: frozenset[str]

    def is_old_run(self, folder: Path) -> bool:
        """A run directory an edgetl without markers wrote: only edgetl's names; each stage folder with its
        stage.json (or, for a stage killed mid-way, only its resumable state); or a search's folder of sub-runs."""
        entries = list(folder.iterdir())
        if any(e.name not in self.stage_names and e.name not in RUN_FILES and not e.name.startswith(".")
               for e in entries):
            return False
        stage_dirs = [e for e in entries if e.name in self.stage_names]

        def finished(stage: Path) -> bool:
            return stage.is_dir() and (read_marker(stage / "stage.json") or {}).get("stage") == stage.name

        def killed(stage: Path) -> bool:  # only a checkpoint (and temp files) of a stage killed mid-way
            names = {c.name for c in stage.iterdir()} if stage.is_dir() else set()
            return bool(names & self.kept_files) and all(n in self.kept_files or n.endswith(".tmp") for n in names)

        if stage_dirs:  # the first stage always completes first: a folder without it is nobody's old run
            return finished(folder / self.first_stage) and all(finished(e) or killed(e) for e in stage_dirs)
        search = folder / "search"
        subs = [sub for sub in search.iterdir() if sub.is_dir()] if search.is_dir() else []
        runs = [run for sub in subs for run in ([*sub.iterdir()] if sub.name == "untrained" else [sub]) if run.is_dir()]
        return (folder / "search.json").is_file() and bool(runs) and all(self.is_old_run(run) for run in runs)

    def claim(self, root: Path) -> None:
        """Make `root` a run directory: refuse a folder of other files; create it and write the marker otherwise."""
        refuse_unmarked(root, RUN_MARKER, "a run directory", "--out", adopt=self.is_old_run)
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not is_marked(root, RUN_MARKER):
                mark(root, RUN_MARKER)
        except OSError as exc:
            raise StorageError(f"Cannot create the run directory {root}: {exc.strerror}. "
                               "Choose another with --out.") from None
