"""Evaluation preprocessing in numpy + Pillow, shared by torch eval, exported-model eval and devices."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, center-crop, scale to [0, 1], normalise; the weights' own recipe."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_json(self) -> dict:
        """Plain-data form, as stored in summaries and model metadata."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, obj: dict) -> Preprocessing:
        """Inverse of to_json."""
        return cls(resize=int(obj["resize"]), crop=int(obj["crop"]), mean=tuple(obj["mean"]),
                   std=tuple(obj["std"]), interpolation=str(obj["interpolation"]))

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Shorter side to `resize`, then a centered `crop`×`crop` square (torchvision's semantics)."""
        width, height = image.size
        if width <= height:
            size = (self.resize, int(self.resize * height / width))
        else:
            size = (int(self.resize * width / height), self.resize)
        image = image.resize(size, _RESAMPLE[self.interpolation])
        left = int(round((image.width - self.crop) / 2.0))
        top = int(round((image.height - self.crop) / 2.0))
        return image.crop((left, top, left + self.crop, top + self.crop))

    def normalize(self, image: Image.Image) -> np.ndarray:
        """RGB image → float32 CHW array, normalised."""
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image → model input (float32, 3×crop×crop)."""
        return self.normalize(self.resize_and_crop(image))


def preprocess_files(paths: list[str], prep: Preprocessing, out: Path | None = None,
                     progress=None) -> np.ndarray:
    """Load and preprocess images into one N×3×H×W float32 array (memory-mapped at `out` when given)."""
    from edgetl.images import load_rgb

    shape = (len(paths), 3, prep.crop, prep.crop)
    if out is None:
        batch = np.empty(shape, np.float32)
    else:
        batch = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=shape)
    for i, path in enumerate(paths):
        batch[i] = prep(load_rgb(path))
        if progress:
            progress(i + 1, len(paths))
    if out is not None:
        batch.flush()
    return batch
