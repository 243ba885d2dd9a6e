"""Classify images with an exported model: `edgetl.load(path).predict(image)`, `edgetl predict` and a bundle's
`python -m edgetl_runner predict` are this module. Torch-free, and copied into deploy bundles (edgetl.bundle), so
it imports only numpy, Pillow and edgetl's torch-free core at module level, and keeps to Python 3.9 syntax.

A model is found from a model file (its model.json beside it, else the metadata edgetl embeds in every file it
exports), a model.json, a folder holding one (an export folder or a deploy bundle), or a run directory (its chosen
artifact). It preprocesses an image exactly as the build verified the file: the same code, the same parameters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from edgetl.artifact import PREDICT_FIELDS, ArtifactInfo, decode_embedded, read_model_json
from edgetl.bench.environment import usable_cores
from edgetl.errors import DataError, EdgetlError, ModelFileError
from edgetl.formats import format_for_file
from edgetl.images import load_rgb, to_rgb
from edgetl.preprocess import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top label, its probability (softmax of the logits), the top-k, and the logits."""

    label: str
    index: int
    probability: float
    top: tuple[tuple[str, int, float], ...]  # (label, index, probability), most probable first
    logits: tuple[float, ...]

    def to_json(self) -> dict:
        return {"label": self.label, "index": self.index, "probability": self.probability,
                "top": [{"label": label, "index": index, "probability": p} for label, index, p in self.top],
                "logits": list(self.logits)}


def _rgb(image: ImageLike) -> Image.Image:
    """An image given as a path, a Pillow image or an H×W×3 (RGB) / H×W (gray) / H×W×4 (RGBA) uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(image, advice="")
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        shape_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))
        if image.dtype != np.uint8 or not shape_ok or 0 in image.shape:
            raise DataError(f"An image array must be H×W×3 RGB uint8 (or H×W gray, H×W×4 RGBA), got shape "
                            f"{image.shape} of {image.dtype}. A camera frame from OpenCV is BGR: pass "
                            "frame[..., ::-1].")
        return to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    raise DataError(f"Cannot classify a {type(image).__name__}: give an image file path, a PIL.Image or an H×W×3 "
                    "uint8 numpy array.")


class Classifier:
    """An exported model loaded with its own runtime, with its labels and preprocessing."""

    def __init__(self, model_file: Path, info: ArtifactInfo | None = None, threads: int | None = None) -> None:
        """`info`: the file's model.json; None reads the metadata embedded in the file (from the loaded runtime's
        own copy of it where the runtime exposes it, so the file is not opened twice)."""
        from edgetl.runtime import load_runner

        self.path = Path(model_file)
        self.threads = threads or usable_cores()
        self._runner = load_runner(self.path, threads=self.threads)
        self.info = info or _embedded_info(self.path, getattr(self._runner, "embedded_metadata", None))
        self.labels: tuple[str, ...] = tuple(self.info.labels or ())
        self.preprocessing = Preprocessing.from_json(self.info.preprocessing)

    @property
    def name(self) -> str:
        return self.info.name or f"{self.info.format or format_for_file(self.path).name}_{self.info.precision or ''}"

    def __repr__(self) -> str:
        return f"Classifier({str(self.path)!r}, {len(self.labels)} labels, {self.threads} threads)"

    def logits(self, image: ImageLike) -> np.ndarray:
        """The model's raw logits (float64) for one image."""
        batch = self.preprocessing(_rgb(image))[None]
        logits = np.asarray(self._runner.run(np.ascontiguousarray(batch)), dtype=np.float64).reshape(-1)
        if logits.size != len(self.labels):
            raise ModelFileError(f"{self.path} outputs {logits.size} values but its metadata names "
                                 f"{len(self.labels)} labels; the model file and its model.json do not belong "
                                 "together.")
        return logits

    def predict(self, image: ImageLike, top_k: int = 3) -> Prediction:
        """Classify one image: a file path, a PIL image, or an H×W×3 RGB uint8 array (a camera frame)."""
        logits = self.logits(image)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")[:max(1, top_k)]
        top = tuple((self.labels[i], int(i), round(float(probabilities[i]), 6)) for i in order)
        return Prediction(top[0][0], top[0][1], top[0][2], top, tuple(round(float(v), 6) for v in logits))


def _info_beside(path: Path) -> ArtifactInfo | None:
    """The model.json beside a model file when it describes that file."""
    beside = path.parent / "model.json"
    if beside.is_file():
        info = read_model_json(beside, required=PREDICT_FIELDS)
        if info.file == path.name:
            return info
    return None


def _embedded_info(path: Path, read=None) -> ArtifactInfo:
    """The metadata edgetl embedded in a model file: `read()` (the loaded runner's reader), else its format's."""
    import importlib

    fmt = format_for_file(path)
    if read is None:
        reader = getattr(importlib.import_module(fmt.runtime), "embedded_metadata", None)
        embedded = reader(path) if reader else {}
    else:
        embedded = read()
    if not embedded:
        raise ModelFileError(f"{path} has no model.json beside it and no edgetl metadata inside it, so its labels and "
                             "preprocessing are unknown. Classify a file edgetl exported (its export folder, a deploy "
                             "bundle or the run directory).")
    fields = decode_embedded(embedded, path)
    return ArtifactInfo(name=path.stem, format=fmt.name, file=path.name, labels=tuple(fields["labels"]),
                        preprocessing=fields["preprocessing"], precision=fields.get("precision"),
                        backbone=fields.get("backbone"))


def _run_artifact(run_dir: Path) -> Path:
    """The model.json of a run directory's chosen artifact (the one `edgetl bundle RUN` ships)."""
    try:
        from edgetl.bundle import _artifact, pick_artifact
    except ImportError:  # inside a deploy bundle's runner: no run directories there
        raise ModelFileError(f"{run_dir} is an edgetl run directory; classify with edgetl itself, or give a bundle or "
                             "a model file.") from None
    fmt, precision, _ = pick_artifact(run_dir, None, None)
    artifact, _ = _artifact(run_dir, fmt, precision)
    return run_dir / (artifact.get("model_json") or Path(artifact["path"]).with_name("model.json"))


def locate(path: str | Path) -> tuple[Path, ArtifactInfo | None]:
    """(model file, its model.json) of what `path` names: a model file, a model.json, a folder holding a model.json
    (an export folder or a deploy bundle), or a run directory (its chosen artifact). None: a bare model file, whose
    metadata is the one embedded in it (read when it is loaded)."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.json").is_file():
            path = path / "model.json"
        elif (path / "summary.json").is_file():
            path = _run_artifact(path)
        else:
            raise ModelFileError(f"{path} is a folder with no model.json or summary.json: give a model file, an "
                                 "export folder or deploy bundle (it holds model.json), or a run directory.")
    if not path.exists():
        raise ModelFileError(f"{path} does not exist: give a model file, a bundle or a run directory.")
    if path.suffix == ".json":
        info = read_model_json(path, required=PREDICT_FIELDS)
        return path.parent / info.file, info
    return path, _info_beside(path)


def load(path: str | Path, threads: int | None = None) -> Classifier:
    """A Classifier for a model file, a model.json, an export folder, a deploy bundle or a run directory (its chosen
    artifact); `threads`: the runtime's intra-op threads (default: every core)."""
    model_file, info = locate(path)
    return Classifier(model_file, info, threads)


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The images to classify: each file given, and the image files anywhere under each folder given (sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))  # ._x.jpg
            if not inside:
                raise DataError(f"{item} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
            found.extend(inside)
        elif item.exists():
            found.append(item)
        else:
            raise DataError(f"{item} does not exist (an image file or a folder of images was expected).")
    return found


def classify_files(classifier: Classifier, paths: Sequence[Path], top_k: int = 3) -> Iterator[dict]:
    """One JSON-able row per image, in order: {"image", "label", "probability", "top", "logits", "error"}; an image
    that cannot be read gets its reason in "error" (the label fields null) and the others are still classified."""
    for path in paths:
        try:
            row = {"image": str(path), **classifier.predict(path, top_k).to_json(), "error": None}
        except DataError as exc:
            row = {"image": str(path), "label": None, "index": None, "probability": None, "top": [], "logits": [],
                   "error": str(exc)}
        yield row


__all__ = ["Classifier", "EdgetlError", "Prediction", "classify_files", "image_files", "load", "locate"]
