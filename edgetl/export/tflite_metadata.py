"""The standard TFLite model metadata (the `TFLITE_METADATA` entry and a packed labels.txt) that the LiteRT /
MediaPipe / TFLite Support metadata readers understand: the input is an RGB image with its normalization, the output
holds one logit per label, and the labels file is associated with the output's class axis.

Written with the `flatbuffers` runtime against metadata_schema.fbs (schema 1.5.0; what is written here needs a parser
of 1.0.0). The tflite-support package, whose writer makes the same flatbuffer, cannot be installed beside edgetl's
exporters: it pins protobuf < 4, which onnx and openvino do not accept.
"""

from __future__ import annotations

import io
import json
import zipfile

ENTRY_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
_IDENTIFIER = b"M001"
_MIN_PARSER_VERSION = "1.0.0"  # nothing newer than schema 1.0.0 is used
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_RGB = 1  # ColorSpaceType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # ContentProperties union members
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union member


class _Writer:
    """Just enough of a flatbuffers object builder: tables of (slot, kind, value) fields, vectors, strings."""

    def __init__(self) -> None:
        import flatbuffers

        self.builder = flatbuffers.Builder(1024)

    def string(self, text: str) -> int:
        return self.builder.CreateString(text)

    def offsets(self, items: list[int]) -> int:
        self.builder.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.builder.PrependUOffsetTRelative(item)
        return self.builder.EndVector()

    def floats(self, values: list[float]) -> int:
        self.builder.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.builder.PrependFloat32(float(value))
        return self.builder.EndVector()

    def table(self, slots: int, **fields: tuple[int, str, int]) -> int:
        """A table with `slots` fields; each keyword is (slot, "offset" | "byte" | "ubyte", value)."""
        b = self.builder
        b.StartObject(slots)
        for slot, kind, value in fields.values():
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                b.PrependInt8Slot(slot, value, 0)
            else:
                b.PrependUint8Slot(slot, value, 0)
        return b.EndObject()


def model_metadata(labels: list[str], preprocessing: dict, name: str, description: str) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier: RGB input normalized as edgetl does ((pixel / 255 - mean)
    / std, i.e. mean × 255 and std × 255 on 0-255 pixels), one output logit per label in labels.txt."""
    w = _Writer()
    mean = [255.0 * m for m in preprocessing["mean"]]
    std = [255.0 * s for s in preprocessing["std"]]
    # AssociatedFile {name 0, description 1, type 2}
    labels_file = w.table(3, name=(0, "offset", w.string(LABELS_FILE)),
                          description=(1, "offset", w.string("The class of each output logit, one per line.")),
                          type=(2, "byte", _TENSOR_AXIS_LABELS))
    # NormalizationOptions {mean 0, std 1}; ProcessUnit {options_type 0, options 1}
    normalization = w.table(2, mean=(0, "offset", w.floats(mean)), std=(1, "offset", w.floats(std)))
    unit = w.table(2, kind=(0, "ubyte", _NORMALIZATION_OPTIONS), options=(1, "offset", normalization))
    # ImageProperties {color_space 0, default_size 1}; Content {content_properties_type 0, content_properties 1, range 2}
    image = w.table(2, color_space=(0, "byte", _RGB))
    image_content = w.table(3, kind=(0, "ubyte", _IMAGE_PROPERTIES), properties=(1, "offset", image))
    # Stats {max 0, min 1}: the normalized range of a 0-255 pixel
    stats = w.table(2, max=(0, "offset", w.floats([(255.0 - m) / s for m, s in zip(mean, std, strict=True)])),
                    min=(1, "offset", w.floats([-m / s for m, s in zip(mean, std, strict=True)])))
    crop = int(preprocessing["crop"])
    # TensorMetadata {name 0, description 1, dimension_names 2, content 3, process_units 4, stats 5, associated_files 6}
    tensor_in = w.table(7, name=(0, "offset", w.string("image")),
                        description=(1, "offset", w.string(
                            f"An RGB image: the shorter side resized to {preprocessing['resize']} "
                            f"({preprocessing['interpolation']}), center-cropped to {crop}x{crop}, then normalized.")),
                        content=(3, "offset", image_content), units=(4, "offset", w.offsets([unit])),
                        stats=(5, "offset", stats))
    feature = w.table(0)
    feature_content = w.table(3, kind=(0, "ubyte", _FEATURE_PROPERTIES), properties=(1, "offset", feature))
    tensor_out = w.table(7, name=(0, "offset", w.string("logits")),
                         description=(1, "offset", w.string("One logit per label (softmax gives probabilities).")),
                         content=(3, "offset", feature_content), files=(6, "offset", w.offsets([labels_file])))
    # SubGraphMetadata {name 0, description 1, input_tensor_metadata 2, output_tensor_metadata 3, ...10 fields}
    subgraph = w.table(10, name=(0, "offset", w.string(name)), inputs=(2, "offset", w.offsets([tensor_in])),
                       outputs=(3, "offset", w.offsets([tensor_out])))
    # ModelMetadata {name 0, description 1, version 2, subgraph_metadata 3, author 4, license 5, associated_files 6,
    # min_parser_version 7}
    root = w.table(8, name=(0, "offset", w.string(name)), description=(1, "offset", w.string(description)),
                   subgraphs=(3, "offset", w.offsets([subgraph])), author=(4, "offset", w.string("edgetl")),
                   min_parser_version=(7, "offset", w.string(_MIN_PARSER_VERSION)))
    w.builder.Finish(root, file_identifier=_IDENTIFIER)
    return bytes(w.builder.Output())


def wanted(metadata: dict[str, str]) -> bool:
    """Whether edgetl's metadata says enough (labels and preprocessing) to write the standard metadata, for a file
    whose input is an NHWC image (the readers expect one; an `export.tflite.layout: nchw` file gets none)."""
    return "labels" in metadata and "preprocessing" in metadata and metadata.get("layout", "NHWC").upper() == "NHWC"


def from_edgetl(metadata: dict[str, str]) -> tuple[bytes, bytes]:
    """(ModelMetadata flatbuffer, labels.txt) from the metadata edgetl embeds (its labels and preprocessing JSON)."""
    labels = json.loads(metadata["labels"])
    preprocessing = json.loads(metadata["preprocessing"])
    backbone = metadata.get("backbone", "model")
    text = f"An image classifier ({backbone}, {len(labels)} classes) exported by edgetl."
    return model_metadata(labels, preprocessing, backbone, text), "".join(f"{label}\n" for label in labels).encode()


def pack_files(content: bytes, files: dict[str, bytes]) -> bytes:
    """The model bytes with `files` appended as a zip archive, as the metadata readers expect associated files."""
    out = io.BytesIO(content)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)  # reproducible bytes
    return out.getvalue()
