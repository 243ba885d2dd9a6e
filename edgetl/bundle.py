"""Deploy bundles: one exported artifact of a run, its model.json, a torch-free runner package and the device's
requirements, in a folder (and optionally a zip) to copy to a Raspberry Pi or any device."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from edgetl import __version__
from edgetl.artifact import ArtifactInfo, read_model_json
from edgetl.errors import BundleError, OutputError, StorageError
from edgetl.formats import FORMATS
from edgetl.fsutil import BUNDLE_MARKER, mark, refuse_unmarked, sha256_file, swap_in
from edgetl.summary import read_summary

PACKAGE = "edgetl_runner"
EDGETL_ROOT = Path(__file__).resolve().parent
# The torch-free modules the device runs, copied from edgetl itself (imports renamed), so the device preprocesses,
# runs and times a model with the very code that verified it.
_VENDORED_CORE = ("errors.py", "formats.py", "images.py", "preprocess.py", "runtime/__init__.py", "bench/__init__.py",
                  "bench/stats.py", "bench/harness.py", "bench/probe.py", "bench/environment.py", "artifact.py",
                  "classifier.py")


def vendored_files() -> list[tuple[Path, str]]:
    """(source file, path inside the runner package): the torch-free core and every format's runtime module (named
    in the format table; a module outside edgetl goes to runtime/<its last name>.py)."""
    import importlib.util

    files = [(EDGETL_ROOT / relative, relative) for relative in _VENDORED_CORE]
    for fmt in FORMATS.values():
        if fmt.runtime.startswith("edgetl."):
            relative = fmt.runtime.removeprefix("edgetl.").replace(".", "/") + ".py"
            files.append((EDGETL_ROOT / relative, relative))
        else:
            files.append((Path(importlib.util.find_spec(fmt.runtime).origin), f"runtime/{fmt.runtime.rsplit('.', 1)[-1]}.py"))
    return files


@dataclass(frozen=True)
class Bundle:
    """A written bundle: its folder, the zip (if asked), and the artifact it holds."""

    folder: Path
    zip_file: Path | None
    artifact: str
    files: tuple[str, ...]


def _artifact(run_dir: Path, fmt: str, precision: str) -> tuple[dict, Path]:
    """The run's `fmt`_`precision` artifact entry (checked) and its summary.json's path."""
    summary = read_summary(run_dir, BundleError)
    summary_file = run_dir / "summary.json"
    status, wanted = summary.get("status"), f"{fmt}_{precision}"
    over_budget = status == "failed: accuracy budget"  # every file was verified; some lost too much accuracy
    if status != "ok" and not over_budget:
        raise BundleError(f"{summary_file}: the last build of this run did not finish (status: "
                          f"{str(status)[:100]!r}); its files may not be the ones it verified. Fix what its error says "
                          "and build again, then bundle.")
    for artifact in summary["artifacts"]:
        if artifact["name"] == wanted:
            budget = (summary.get("budget") or {}).get("max_accuracy_drop_pp")
            drop = artifact.get("accuracy_drop_pp")
            if over_budget and (budget is None or not isinstance(drop, int | float) or drop > budget):
                raise BundleError(f"{summary_file}: {wanted} lost {artifact.get('accuracy_drop_pp')} pp of val "
                                  f"accuracy, more than verify.max_accuracy_drop_pp ({budget}); the build failed on "
                                  "it. Bundle an artifact within the budget, or change the recipe and build again.")
            return artifact, summary_file
    available = ", ".join(a["name"] for a in summary["artifacts"]) or "none"
    raise BundleError(f"{run_dir} has no {wanted} artifact (it has: {available}). Add '{fmt}' to export.formats and "
                      f"'{precision}' to export.precisions in the recipe and build again.")


LEGACY_DEFAULT = ("tflite", "int8")  # what `edgetl bundle` took before builds recorded `chosen` (deprecated)


def pick_artifact(run_dir: Path, fmt: str | None, precision: str | None) -> tuple[str, str, str]:
    """(format, precision, how it was picked) of the artifact to bundle: the one asked for; a part left out is the
    build's chosen artifact's (summary.json `chosen`), or, for a run built before `chosen` existed, tflite int8."""
    if fmt is not None and precision is not None:
        return fmt, precision, "asked for"
    summary = read_summary(run_dir, BundleError)
    by_name = {a["name"]: a for a in summary["artifacts"]}
    chosen = by_name.get(summary.get("chosen"))
    if chosen is None and "choice" in summary:  # a build of this edgetl that chose nothing (it failed first)
        raise BundleError(f"{run_dir / 'summary.json'}: the build chose no artifact (status: "
                          f"{str(summary.get('status'))[:80]!r}); name one with --format and --precision (it has: "
                          f"{', '.join(by_name) or 'none'}).")
    if chosen is None:
        picked = (fmt or LEGACY_DEFAULT[0], precision or LEGACY_DEFAULT[1])
        return (*picked, "the default of runs without a chosen artifact (build again to have one chosen)")
    if fmt is None and precision is None:
        return chosen["format"], chosen["precision"], "the build's chosen artifact"
    how = "the chosen artifact's " + ("precision" if fmt else "format")
    fmt, precision = fmt or chosen["format"], precision or chosen["precision"]
    if f"{fmt}_{precision}" not in by_name:
        raise BundleError(f"{run_dir} has no {fmt}_{precision} artifact; give both --format and --precision (it has: "
                          f"{', '.join(by_name)}).")
    return fmt, precision, how


def _inside_run(run_dir: Path, relative: str, summary_file: Path, field: str) -> Path:
    """`run_dir / relative`, refused when it is absolute or resolves outside the run directory (a `../` or a link)."""
    path = run_dir / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(run_dir.resolve()):
        raise BundleError(f"{summary_file}: {field} '{relative[:200]}' points outside the run directory {run_dir}; "
                          "edgetl bundles only files its build wrote there.")
    return path


def _expected_hashes(run_dir: Path, artifact: dict, summary_file: Path) -> dict[Path, str]:
    """{file: sha256 the build recorded} for the artifact's files (every file since `files_sha256`; before it, the
    model file alone)."""
    recorded = artifact.get("files_sha256") or ({artifact["path"]: artifact["sha256"]} if artifact.get("sha256") else {})
    if not recorded:
        raise BundleError(f"{summary_file}: artifact {artifact['name']} records no sha256, so its files cannot be "
                          "checked against what the build verified. Build the recipe again.")
    return {_inside_run(run_dir, rel, summary_file, f"artifact {artifact['name']} file").absolute(): digest
            for rel, digest in recorded.items()}


def _check_hash(source: Path, actual: str, expected: dict[Path, str], summary_file: Path) -> None:
    """`actual` (the sha256 of what will ship from `source`) is the one the build recorded."""
    if expected.get(source.absolute()) not in (None, actual):
        raise BundleError(f"{source} is not the file the build verified: its sha256 differs from the one in "
                          f"{summary_file} (changed or truncated since). Build the recipe again; nothing was bundled.")


def vendor_runner(target: Path) -> list[str]:
    """Write the edgetl_runner package into `target` (a bundle folder); returns the files written."""
    written = []
    package = target / PACKAGE
    for source, relative in vendored_files():
        text = source.read_text(encoding="utf-8")
        text = re.sub(r"\bedgetl\.", f"{PACKAGE}.", text)
        text = re.sub(r"\bfrom edgetl import\b", f"from {PACKAGE} import", text)
        destination = package / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text, encoding="utf-8")
        written.append(f"{PACKAGE}/{relative}")
    (package / "__init__.py").write_text(f'"""edgetl\'s device runner (from edgetl {__version__})."""\n\n'
                                         f'__version__ = "{__version__}"\n', encoding="utf-8")
    shutil.copyfile(EDGETL_ROOT / "device_runner.py", package / "__main__.py")
    return [*written, f"{PACKAGE}/__init__.py", f"{PACKAGE}/__main__.py"]


def _readme(meta: ArtifactInfo, requirement: str) -> str:
    return f"""# {meta.name or 'model'} — an edgetl deploy bundle

Model: `{meta.file}` ({meta.format}, {meta.precision}), backbone {meta.backbone}, labels
{', '.join(meta.labels or ())}. Preprocessing, labels, layout and the input/output tensor types are in `model.json`.

On the device (Python 3.9–3.12):

    python3 -m venv ~/edgetl-venv && . ~/edgetl-venv/bin/activate
    pip install -r requirements.txt          # numpy, Pillow and {requirement.split('>')[0]}
    python -m edgetl_runner predict image.jpg          # top-3 labels
    python -m edgetl_runner predict --json image.jpg   # with probabilities and logits, as JSON
    python -m edgetl_runner bench --threads 4 --runs 50  # latency statistics as JSON
    python -m edgetl_runner info                       # the device and runtime versions

Run these from this folder (or pass `--bundle PATH`). Made by edgetl {__version__}.
"""


# What a bundle holds besides its model.* files (a bundle made before markers is recognised by these names).
BUNDLE_FILES = ("model.json", "requirements.txt", "README.md", PACKAGE)


def _is_bundle_file(name: str) -> bool:
    return name in BUNDLE_FILES or name.startswith("model.")


def _is_old_bundle(folder: Path) -> bool:
    """A bundle an edgetl without markers wrote: nothing in it but a bundle's files."""
    names = {e.name for e in folder.iterdir()}
    return {"model.json", PACKAGE} <= names and all(_is_bundle_file(n) for n in names)


def _check_zip_target(archive: Path) -> None:
    """An existing OUT.zip is replaced only when it is an edgetl bundle's zip (it holds the bundle marker)."""
    if not archive.exists() and not archive.is_symlink():
        return
    try:
        with zipfile.ZipFile(archive) as zf:
            ours = BUNDLE_MARKER in zf.namelist()
    except (OSError, zipfile.BadZipFile):
        ours = False
    if not ours:
        raise OutputError(f"{archive} (--zip) already exists and is not an edgetl bundle's zip; edgetl will not "
                          "replace it. Move it away or give another --out.")


def _check_own_bundle(out: Path) -> None:
    """An earlier bundle at `out` is replaced whole: refuse when it holds anything edgetl did not write into it."""
    marker = out / BUNDLE_MARKER
    if not marker.is_file():
        return
    try:
        written = {str(name) for name in json.loads(marker.read_text(encoding="utf-8")).get("files") or ()}
    except (OSError, ValueError, AttributeError, TypeError):
        written = set()
    extra = sorted(e.name for e in out.iterdir() if e.name not in written | {BUNDLE_MARKER}
                   and not (not written and _is_bundle_file(e.name)))
    if extra:
        raise OutputError(f"{out} (--out) is an earlier bundle, but holds files edgetl did not write: "
                          f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}. Replacing the bundle would delete "
                          "them: move them out, or give another --out.")


def _write_bundle(scratch: Path, sources: list[Path], expected: dict[Path, str], summary_file: Path, meta: ArtifactInfo,
                  model_path: Path, fmt: str, zip_file: bool, out: Path) -> tuple[list[str], str | None]:
    """Write the bundle in `scratch`/bundle (its zip beside it when asked) and swap it in for `out`; returns the files
    written and the zip made."""
    try:
        staging = scratch / "bundle"
        staging.mkdir()
        files = []
        for source in sources:
            copy = staging / f"model{source.suffix}"
            shutil.copyfile(source, copy)
            _check_hash(source, sha256_file(copy), expected, summary_file)  # the copy is what ships: check it
            files.append(copy.name)
        meta = replace(meta, file=f"model{model_path.suffix}", files=tuple(files), edgetl_version=__version__)
        (staging / "model.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n", encoding="utf-8")
        requirement = FORMATS[fmt].device_requirement
        (staging / "requirements.txt").write_text(f"numpy>=1.21\nPillow>=9\n{requirement}\n", encoding="utf-8")
        (staging / "README.md").write_text(_readme(meta, requirement), encoding="utf-8")
        files += ["model.json", "requirements.txt", "README.md", *vendor_runner(staging)]
        mark(staging, BUNDLE_MARKER, files=sorted({f.split("/")[0] for f in files}))
        made = shutil.make_archive(str(scratch / out.name), "zip", root_dir=staging) if zip_file else None
        swap_in(staging, out)
    except OSError as exc:
        raise StorageError(f"Cannot write the bundle {out}: {exc.strerror or exc}. Nothing was replaced; free space "
                           "or choose another --out.") from None
    return files, made


def make_bundle(run_dir: Path, fmt: str, precision: str, out: Path, zip_file: bool = False) -> Bundle:
    """Write the `fmt`/`precision` artifact of `run_dir` as a deploy bundle folder `out`.

    `out` may be new, empty, or an earlier bundle (it carries the bundle marker, and nothing else was put in it); it
    is replaced only once the new bundle is complete. Every file is checked against the sha256 the build recorded."""
    run_dir, out = Path(run_dir), Path(out).resolve()
    if fmt not in FORMATS:
        raise BundleError(f"unknown format '{fmt}'; edgetl bundles {', '.join(FORMATS)}.")
    artifact, summary_file = _artifact(run_dir, fmt, precision)
    if out == run_dir.resolve() or out in run_dir.resolve().parents:
        raise OutputError(f"{out} (--out) is or holds the run directory {run_dir}; the bundle would replace the run. "
                          "Give a new folder, e.g. --out pi-bundle.")
    refuse_unmarked(out, BUNDLE_MARKER, "a deploy bundle", "--out", adopt=_is_old_bundle, mark_now=False)
    _check_own_bundle(out)
    archive = out.with_suffix(".zip") if zip_file else None
    if archive is not None:
        _check_zip_target(archive)
    model_path = _inside_run(run_dir, artifact["path"], summary_file, f"artifact {artifact['name']} path")
    expected = _expected_hashes(run_dir, artifact, summary_file)
    sources = FORMATS[fmt].files(model_path)
    meta_path = model_path.parent / "model.json"
    for source in [*sources, meta_path]:
        _inside_run(run_dir, str(source.relative_to(run_dir)), summary_file, f"artifact {artifact['name']} file")
        if not source.is_file():
            raise BundleError(f"{source} is missing from the run directory; build the recipe again.")
        if artifact.get("files_sha256") and source.absolute() not in expected:
            raise BundleError(f"{summary_file}: artifact {artifact['name']} records no sha256 for {source}; build "
                              "the recipe again.")
    meta_bytes = meta_path.read_bytes()
    _check_hash(meta_path, hashlib.sha256(meta_bytes).hexdigest(), expected, summary_file)
    meta = read_model_json(meta_path, BundleError, text=meta_bytes)  # the very bytes whose hash was checked
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch_dir = tempfile.mkdtemp(prefix=".edgetl-bundle-", dir=out.parent)
    except OSError as exc:
        raise StorageError(f"Cannot write the bundle beside {out}: {exc.strerror or exc}. Choose another --out.") from None
    try:
        files, made = _write_bundle(Path(scratch_dir), sources, expected, summary_file, meta, model_path, fmt,
                                    archive is not None, out)
        if made:
            try:
                Path(made).replace(archive)  # after the folder: a failure before leaves the old zip and old folder
            except OSError as exc:
                raise StorageError(f"The bundle {out} was written, but not its zip {archive}: "
                                   f"{exc.strerror or exc}.") from None
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return Bundle(out, archive, artifact["name"], tuple(files))


def bundle_model_file(model_path: Path, out: Path, name: str | None = None, precision: str | None = None) -> Path:
    """A minimal bundle of one model file (its model.json when edgetl wrote one, else a stub) for remote benchmarks."""
    from edgetl.formats import format_for_file

    model_path = Path(model_path)
    fmt = format_for_file(model_path)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for source in fmt.files(model_path):
        if not source.is_file():
            raise BundleError(f"{source} does not exist.")
        shutil.copyfile(source, out / f"model{source.suffix}")
        files.append(f"model{source.suffix}")
    sidecar = model_path.parent / "model.json"
    meta = read_model_json(sidecar, BundleError, required=()) if sidecar.is_file() else ArtifactInfo()
    meta = replace(meta, name=name or meta.name or model_path.stem, format=fmt.name,
                   precision=precision or meta.precision, file=f"model{model_path.suffix}", files=tuple(files))
    (out / "model.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n", encoding="utf-8")
    vendor_runner(out)
    return out
