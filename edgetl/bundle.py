"""Deploy bundles: one exported artifact of a run, its model.json, a torch-free runner package and the device's
requirements, in a folder (and optionally a zip) to copy to a Raspberry Pi or any device."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgetl import __version__
from edgetl.errors import BundleError
from edgetl.formats import FORMATS
from edgetl.fsutil import replace_dir

PACKAGE = "edgetl_runner"
EDGETL_ROOT = Path(__file__).resolve().parent
# The torch-free modules the device runs, copied from edgetl itself (imports renamed), so the device preprocesses,
# runs and times a model with the very code that verified it.
VENDORED = ("errors.py", "formats.py", "images.py", "preprocess.py", "runtime/__init__.py", "runtime/onnx.py",
            "runtime/openvino.py", "runtime/tflite.py", "bench/__init__.py", "bench/stats.py", "bench/harness.py",
            "bench/probe.py", "bench/environment.py")
# What a device pip-installs for each format's runtime (tflite-runtime also works; see the bundle's README).
DEVICE_RUNTIME = {"onnx": "onnxruntime>=1.17", "openvino": "openvino>=2024.0", "tflite": "ai-edge-litert>=1.0"}


@dataclass(frozen=True)
class Bundle:
    """A written bundle: its folder, the zip (if asked), and the artifact it holds."""

    folder: Path
    zip_file: Path | None
    artifact: str
    files: tuple[str, ...]


def _artifact(run_dir: Path, fmt: str, precision: str) -> dict:
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise BundleError(f"{run_dir} is not an edgetl run directory (no summary.json). Build a recipe first.")
    try:
        artifacts = json.loads(summary_file.read_text(encoding="utf-8"))["artifacts"]
    except (ValueError, KeyError) as exc:
        raise BundleError(f"{summary_file}: not an edgetl summary (field 'artifacts': {exc}).") from None
    wanted = f"{fmt}_{precision}"
    for artifact in artifacts:
        if artifact.get("name") == wanted:
            return artifact
    available = ", ".join(a.get("name", "?") for a in artifacts) or "none"
    raise BundleError(f"{run_dir} has no {wanted} artifact (it has: {available}). Add '{fmt}' to export.formats and "
                      f"'{precision}' to export.precisions in the recipe and build again.")


def vendor_runner(target: Path) -> list[str]:
    """Write the edgetl_runner package into `target` (a bundle folder); returns the files written."""
    written = []
    package = target / PACKAGE
    for relative in VENDORED:
        text = (EDGETL_ROOT / relative).read_text(encoding="utf-8")
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


def _readme(meta: dict, requirement: str) -> str:
    return f"""# {meta.get('name', 'model')} — an edgetl deploy bundle

Model: `{meta['file']}` ({meta.get('format')}, {meta.get('precision')}), backbone {meta.get('backbone')}, labels
{', '.join(meta.get('labels', []))}. Preprocessing, labels and layout are in `model.json`.

On the device (Python 3.9–3.12):

    python3 -m venv ~/edgetl-venv && . ~/edgetl-venv/bin/activate
    pip install -r requirements.txt          # numpy, Pillow and {requirement.split('>')[0]}
    python -m edgetl_runner predict image.jpg          # top-3 labels
    python -m edgetl_runner predict --json image.jpg   # with probabilities and logits, as JSON
    python -m edgetl_runner bench --threads 4 --runs 50  # latency statistics as JSON
    python -m edgetl_runner info                       # the device and runtime versions

Run these from this folder (or pass `--bundle PATH`). Made by edgetl {__version__}.
"""


def make_bundle(run_dir: Path, fmt: str, precision: str, out: Path, zip_file: bool = False) -> Bundle:
    """Write the `fmt`/`precision` artifact of `run_dir` as a deploy bundle folder `out` (replaced atomically)."""
    run_dir, out = Path(run_dir), Path(out)
    if fmt not in FORMATS:
        raise BundleError(f"unknown format '{fmt}'; edgetl bundles {', '.join(FORMATS)}.")
    artifact = _artifact(run_dir, fmt, precision)
    model_path = run_dir / artifact["path"]
    sources = FORMATS[fmt].files(model_path)
    meta_path = model_path.parent / "model.json"
    for source in [*sources, meta_path]:
        if not source.is_file():
            raise BundleError(f"{source} is missing from the run directory; build the recipe again.")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgetl-bundle-", dir=out.parent) as scratch:
        staging = Path(scratch) / "bundle"
        staging.mkdir()
        files = []
        for source in sources:
            shutil.copyfile(source, staging / f"model{source.suffix}")
            files.append(f"model{source.suffix}")
        meta |= {"file": f"model{model_path.suffix}", "files": files, "edgetl_version": __version__}
        (staging / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        requirement = DEVICE_RUNTIME[fmt]
        (staging / "requirements.txt").write_text(f"numpy>=1.21\nPillow>=9\n{requirement}\n", encoding="utf-8")
        (staging / "README.md").write_text(_readme(meta, requirement), encoding="utf-8")
        files += ["model.json", "requirements.txt", "README.md", *vendor_runner(staging)]
        archive = None
        if zip_file:
            made = shutil.make_archive(str(Path(scratch) / out.name), "zip", root_dir=staging)
            archive = out.with_suffix(".zip")
            Path(made).replace(archive)
        replace_dir(staging, out)
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
    meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    meta |= {"name": name or meta.get("name") or model_path.stem, "format": fmt.name,
             "precision": precision or meta.get("precision"), "file": f"model{model_path.suffix}", "files": files}
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    vendor_runner(out)
    return out
