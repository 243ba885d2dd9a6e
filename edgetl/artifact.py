"""Artifact metadata: model.json beside every exported model file (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

from edgetl.formats import FORMATS
from edgetl.fsutil import write_json


def write_model_json(result, name: str, fmt: str, precision: str, metadata: dict[str, str]) -> Path:
    """model.json beside the model file: everything a device needs to feed it and read its output."""
    layout = result.details.get("layout", metadata["layout"])
    crop = json.loads(metadata["preprocessing"])["crop"]
    files = [p.name for p in FORMATS[fmt].files(result.path)]
    path = result.path.parent / "model.json"
    write_json(path, {"name": name, "format": fmt, "precision": precision, "file": files[0], "files": files,
                      "labels": json.loads(metadata["labels"]), "layout": layout,
                      "input_shape": [None, crop, crop, 3] if layout == "NHWC" else [None, 3, crop, crop],
                      "input_dtype": "float32", "preprocessing": json.loads(metadata["preprocessing"]),
                      "backbone": metadata["backbone"], "edgetl_version": metadata["edgetl_version"],
                      "recipe_sha256": metadata["recipe_sha256"],
                      **({"quantization": result.details["quantization"]} if precision == "int8" else {})})
    return path


def embedded_metadata(classes: list[str], prep_json: dict, backbone: str, recipe_sha256: str) -> dict[str, str]:
    """What every exported file carries (in the file where the format allows, and in model.json beside it)."""
    from edgetl import __version__

    return {"edgetl_version": __version__, "labels": json.dumps(classes), "preprocessing": json.dumps(prep_json),
            "layout": "NCHW", "input_shape": json.dumps([None, 3, prep_json["crop"], prep_json["crop"]]),
            "backbone": backbone, "recipe_sha256": recipe_sha256}
