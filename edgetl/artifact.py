"""Artifact metadata: the model.json beside every exported model file, and the copy embedded in the file itself
(ONNX metadata_props, OpenVINO rt_info, the TFLite metadata entry 'edgetl'). The one place that knows their fields.

Torch-free, and copied into a deploy bundle's runner package (edgetl.bundle), so it imports only the standard
library and edgetl's errors and formats at module level, and keeps to Python 3.9 syntax."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgetl.errors import EdgetlError, ModelFileError

# The fields every model.json an edgetl build writes has (`quantization` too when the precision is int8). The I/O
# tensor fields are not among them: a model.json of an earlier edgetl has no `output_dtype`, and a format whose
# runtime module has no `io_details` records them as null (not measured).
BUILD_FIELDS = ("name", "format", "precision", "file", "files", "labels", "layout", "input_shape", "preprocessing",
                "backbone", "edgetl_version", "recipe_sha256")
# What a device needs to classify images with the model (the runner's `predict`); its `bench` needs only `file`.
PREDICT_FIELDS = ("file", "labels", "preprocessing")

_PRECISIONS = ("fp32", "fp16", "int8")
_LAYOUTS = ("NCHW", "NHWC")
_FLOAT_DTYPES = ("float32", "float16", "float64", "bfloat16")
_INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool")
_PREPROCESSING_KEYS = ("resize", "crop", "mean", "std", "interpolation")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TensorQuantization:
    """The affine quantization of an integer tensor: real value = (stored value - zero_point) * scale."""

    scale: float
    zero_point: int

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class ArtifactInfo:
    """What a model.json says about one exported model file. An edgetl build fills every field (`quantization` only
    for int8); None is what a model.json leaves out or sets to null — e.g. the stub model.json of a model file edgetl
    did not export, bundled for a remote benchmark, or the I/O fields of a model.json from an earlier edgetl."""

    name: str | None = None  # the artifact, e.g. "tflite_int8"
    format: str | None = None  # its row of edgetl.formats
    precision: str | None = None  # fp32, fp16 or int8
    file: str | None = None  # the model file, beside model.json
    files: tuple[str, ...] | None = None  # the model file and its sidecars (OpenVINO's .bin)
    labels: tuple[str, ...] | None = None  # class names, in the order of the model's logits
    layout: str | None = None  # NCHW or NHWC: the layout of the model's own input tensor
    input_shape: tuple[int | None, ...] | None = None  # that tensor's shape, None for the batch
    input_dtype: str | None = None  # numpy name of the input tensor's dtype, read from the file by its runtime
    input_quantization: TensorQuantization | None = None  # an integer input tensor's scale and zero point
    output_dtype: str | None = None  # numpy name of the output (logits) tensor's dtype, read from the file
    output_quantization: TensorQuantization | None = None  # an integer output tensor's scale and zero point
    preprocessing: dict | None = None  # resize, crop, mean, std, interpolation (edgetl.preprocess.Preprocessing)
    backbone: str | None = None
    edgetl_version: str | None = None
    recipe_sha256: str | None = None
    quantization: str | None = None  # int8 only: how it was quantized ("ptq", "qat")

    def to_json(self) -> dict:
        """The model.json object: every field (null when unknown), `quantization` only when there is one."""
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "quantization" and value is None:
                continue
            if isinstance(value, TensorQuantization):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))  # a copy: the caller may change it
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, obj: object, source: str | Path, error: type[EdgetlError] = ModelFileError,
                  required: tuple[str, ...] = BUILD_FIELDS) -> ArtifactInfo:
        """The model.json object `obj` read from `source` (a file name, for messages), checked: every field present
        is of its type, and the `required` ones are present (`quantization` too, for int8, when `precision` is
        required). Anything wrong is an `error` naming the file and the field. Unknown keys are ignored."""
        if not isinstance(obj, dict):
            raise error(f"{source}: not an edgetl model.json (a JSON object is expected, not {type(obj).__name__}).")
        values = {}
        for f in fields(cls):
            value = obj.get(f.name)
            if value is None:
                if f.name in required or (f.name == "quantization" and "precision" in required
                                          and obj.get("precision") == "int8"):
                    raise error(f"{source}: `{f.name}` is missing; it must be {_CHECKS[f.name][1]}. An edgetl build "
                                "writes it in every model.json: build the recipe again.")
                continue
            values[f.name] = _checked(f.name, value, source, error)
        info = cls(**values)
        info._check_consistent(source, error)
        return info

    def _check_consistent(self, source: str | Path, error: type[EdgetlError]) -> None:
        if self.file is not None and self.files is not None and self.file not in self.files:
            raise error(f"{source}: `file` ({self.file!r}) must be one of `files` ({list(self.files)}).")
        for side in ("input", "output"):
            dtype, params = getattr(self, f"{side}_dtype"), getattr(self, f"{side}_quantization")
            if params is not None and dtype in _FLOAT_DTYPES:
                raise error(f"{source}: `{side}_quantization` must be null for a {dtype} {side} tensor (only integer "
                            "tensors have a scale and zero point).")


def _text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _file_name(value: object) -> bool:  # a bare name in the model's folder: no folders, no way out of it
    return _text(value) and "/" not in value and "\\" not in value and value not in (".", "..")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_CHECKS = {
    "name": (_text, "a non-empty string"),
    "format": (_text, "a format name such as 'onnx'"),
    "precision": (lambda v: v in _PRECISIONS, f"one of {', '.join(_PRECISIONS)}"),
    "file": (_file_name, "the model file's name (in the folder of model.json)"),
    "files": (lambda v: isinstance(v, list) and bool(v) and all(_file_name(x) for x in v),
              "a non-empty list of file names"),
    "labels": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
               "a non-empty list of strings"),
    "layout": (lambda v: v in _LAYOUTS, "'NCHW' or 'NHWC'"),
    "input_shape": (lambda v: isinstance(v, list) and bool(v) and all(x is None or _size(x) for x in v),
                    "a list of positive sizes (null for the batch)"),
    "input_dtype": (lambda v: v in _FLOAT_DTYPES + _INT_DTYPES, "a numpy dtype name such as 'float32' or 'int8'"),
    "output_dtype": (lambda v: v in _FLOAT_DTYPES + _INT_DTYPES, "a numpy dtype name such as 'float32' or 'int8'"),
    "input_quantization": (None, 'null or {"scale": a positive number, "zero_point": an integer}'),
    "output_quantization": (None, 'null or {"scale": a positive number, "zero_point": an integer}'),
    "preprocessing": (None, "an object with resize, crop, mean, std and interpolation"),
    "backbone": (_text, "a non-empty string"),
    "edgetl_version": (_text, "a non-empty string"),
    "recipe_sha256": (lambda v: isinstance(v, str) and bool(_SHA256.match(v)), "a sha256 hex digest"),
    "quantization": (_text, "how the int8 model was quantized, such as 'ptq' or 'qat'"),
}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _checked(name: str, value: object, source: str | Path, error: type[EdgetlError]):
    """`value` of field `name` as ArtifactInfo holds it, or `error` naming the field."""
    check, description = _CHECKS[name]
    if name.endswith("_quantization"):
        return _quantization(name, value, source, error)
    if name == "preprocessing":
        return _preprocessing(value, source, error)
    if not check(value):
        raise error(f"{source}: `{name}` must be {description}, got {_short(value)}.")
    return tuple(value) if isinstance(value, list) else value


def _quantization(name: str, value: object, source: str | Path, error: type[EdgetlError]) -> TensorQuantization:
    if not isinstance(value, dict):
        raise error(f"{source}: `{name}` must be {_CHECKS[name][1]}, got {_short(value)}.")
    scale, zero_point = value.get("scale"), value.get("zero_point")
    if not (_number(scale) and scale > 0):
        raise error(f"{source}: `{name}.scale` must be a positive number, got {_short(scale)}.")
    if not (isinstance(zero_point, int) and not isinstance(zero_point, bool)):
        raise error(f"{source}: `{name}.zero_point` must be an integer, got {_short(zero_point)}.")
    return TensorQuantization(float(scale), zero_point)


def _preprocessing(value: object, source: str | Path, error: type[EdgetlError]) -> dict:
    if not isinstance(value, dict) or any(key not in value for key in _PREPROCESSING_KEYS):
        raise error(f"{source}: `preprocessing` must be {_CHECKS['preprocessing'][1]}, got {_short(value)}.")
    for key in ("resize", "crop"):
        if not _size(value[key]):
            raise error(f"{source}: `preprocessing.{key}` must be a positive integer (pixels), got "
                        f"{_short(value[key])}.")
    for key in ("mean", "std"):
        numbers = value[key]
        if not (isinstance(numbers, list) and len(numbers) == 3 and all(_number(x) for x in numbers)
                and (key == "mean" or all(x > 0 for x in numbers))):
            raise error(f"{source}: `preprocessing.{key}` must be a list of 3 numbers (one per colour channel"
                        f"{', each above 0' if key == 'std' else ''}), got {_short(numbers)}.")
    if not _text(value["interpolation"]):
        raise error(f"{source}: `preprocessing.interpolation` must be a resampling filter name such as 'bilinear', "
                    f"got {_short(value['interpolation'])}.")
    return dict(value)


def read_model_json(path: str | Path, error: type[EdgetlError] = ModelFileError, text: bytes | None = None,
                    required: tuple[str, ...] = BUILD_FIELDS) -> ArtifactInfo:
    """The model.json at `path` (its bytes `text` when already read), checked (ArtifactInfo.from_json), or `error`
    naming the file and what is wrong with it."""
    try:
        obj = json.loads(text if text is not None else Path(path).read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise error(f"{path}: cannot read it as JSON ({str(exc)[:200]}).") from None
    return ArtifactInfo.from_json(obj, path, error, required)


_IO_FIELDS = ("input_dtype", "input_quantization", "output_dtype", "output_quantization")


def with_io(info: ArtifactInfo, io: dict, source: str | Path = "the runtime's io_details") -> ArtifactInfo:
    """`info` with the I/O tensor fields of `io` (as measured_io returns them, quantization as dicts), checked."""
    return replace(info, **{k: None if io.get(k) is None else _checked(k, io[k], source, ModelFileError)
                            for k in _IO_FIELDS})


def measured_io(path: Path, fmt: str) -> dict:
    """The model file's input/output tensor dtypes and quantization, read from the file by its format's runtime (its
    runtime module's `io_details(path)`); all None when that module has none (a plug-in format's may not)."""
    import importlib

    from edgetl.formats import FORMATS

    module = importlib.import_module(FORMATS[fmt].runtime)
    if not hasattr(module, "io_details"):
        return dict.fromkeys(_IO_FIELDS)
    return module.io_details(path)


def write_model_json(result, name: str, fmt: str, precision: str, metadata: dict[str, str]) -> Path:
    """model.json beside the exported file `result.path` (an edgetl.export.ExportResult): everything a device needs
    to feed it and read its output. `metadata` is what the file embeds (embedded_metadata, plus `precision`); the
    I/O tensor dtypes and quantization are read from the written file by its own runtime."""
    from edgetl.formats import FORMATS
    from edgetl.fsutil import write_json

    embedded = decode_embedded(metadata, "the export's metadata")
    layout = result.details.get("layout", embedded["layout"])
    crop = embedded["preprocessing"]["crop"]
    files = [p.name for p in FORMATS[fmt].files(result.path)]
    path = result.path.parent / "model.json"
    info = ArtifactInfo(
        name=name, format=fmt, precision=precision, file=files[0], files=tuple(files), labels=embedded["labels"],
        layout=layout, input_shape=(None, crop, crop, 3) if layout == "NHWC" else (None, 3, crop, crop),
        preprocessing=embedded["preprocessing"], backbone=embedded["backbone"],
        edgetl_version=embedded["edgetl_version"], recipe_sha256=embedded["recipe_sha256"],
        quantization=result.details["quantization"] if precision == "int8" else None)
    info = with_io(info, measured_io(result.path, fmt), f"{result.path} (its runtime's io_details)")
    document = info.to_json()
    ArtifactInfo.from_json(document, path, ModelFileError)  # what is written is what readers accept
    write_json(path, document)
    return path


# The metadata embedded in every exported file: string values (ONNX metadata_props and OpenVINO rt_info hold
# strings), the lists and objects as JSON. An exporter adds `precision` (and may add more, e.g. `exporter`).
EMBEDDED_FIELDS = ("edgetl_version", "labels", "preprocessing", "layout", "input_shape", "backbone", "recipe_sha256")
_EMBEDDED_JSON = ("labels", "preprocessing", "input_shape")


def embedded_metadata(classes: list[str], prep_json: dict, backbone: str, recipe_sha256: str) -> dict[str, str]:
    """What every exported file carries (in the file where the format allows, and in model.json beside it)."""
    from edgetl import __version__

    return {"edgetl_version": __version__, "labels": json.dumps(classes), "preprocessing": json.dumps(prep_json),
            "layout": "NCHW", "input_shape": json.dumps([None, 3, prep_json["crop"], prep_json["crop"]]),
            "backbone": backbone, "recipe_sha256": recipe_sha256}


def decode_embedded(metadata: dict[str, str], source: str | Path, error: type[EdgetlError] = ModelFileError) -> dict:
    """The inverse of embedded_metadata: a file's embedded metadata (e.g. edgetl.export.tflite.read_metadata(path),
    or an ONNX file's metadata_props as a dict) as typed values — labels, preprocessing and input_shape decoded
    from JSON, `precision` and `quantization` when the file says them — each checked as model.json's field is
    (`error` names `source` and the field). Keys edgetl does not embed are left out."""
    if not isinstance(metadata, dict):
        raise error(f"{source}: its edgetl metadata is not a set of key/value strings.")
    out = {}
    for key in (*EMBEDDED_FIELDS, "precision", "quantization"):
        value = metadata.get(key)
        if value is None:
            if key in EMBEDDED_FIELDS:
                raise error(f"{source}: the embedded metadata has no `{key}`; edgetl writes it into every file it "
                            "exports.")
            continue
        if key in _EMBEDDED_JSON:
            try:
                value = json.loads(value)
            except (TypeError, ValueError, RecursionError):
                raise error(f"{source}: the embedded `{key}` is not JSON, got {_short(value)}.") from None
        out[key] = _checked(key, value, source, error)
    return out
