"""TFLite models with ai-edge-litert's Interpreter (or tflite_runtime's on devices that only have it). Torch-free."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, first_line
from edgetl.formats import FORMATS
from edgetl.runtime import check_image_input, require_runtime, run_failed


class TfliteRunner:
    """A TFLite Interpreter (XNNPACK on the CPU). Takes NCHW float batches like every runner: NHWC models get the
    batch transposed, full-integer models get it quantized with the input's scale and zero point (and their
    output dequantized), and the batch dimension is resized when a batch of another size comes."""

    format = "tflite"

    def __init__(self, path: Path, threads: int = 1) -> None:
        module = require_runtime(FORMATS["tflite"])
        try:
            self.interpreter = module.Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # the interpreter raises ValueError/RuntimeError with the runtime's message
            raise ModelFileError(f"{path} could not be loaded by the TFLite interpreter: {first_line(exc)}.") from None
        self.path, self.threads = path, threads
        check_image_input(path, "the TFLite interpreter", [(d["name"], np.dtype(d["dtype"]).name, len(d["shape"]))
                                                           for d in self.interpreter.get_input_details()])
        details = self.interpreter.get_input_details()[0]
        shape = [int(d) for d in details["shape"]]
        # NHWC when the last axis holds the 3 colour channels and the second does not.
        self.layout = "NHWC" if len(shape) == 4 and shape[-1] == 3 and shape[1] != 3 else "NCHW"
        nchw = [shape[0], shape[3], shape[1], shape[2]] if self.layout == "NHWC" else shape
        self.input_shape = (None, *nchw[1:])  # the batch dimension is resized to fit each call
        self._batch = shape[0]

    def _resize(self, batch: int) -> None:
        details = self.interpreter.get_input_details()[0]
        shape = list(details["shape"])
        shape[0] = batch
        self.interpreter.resize_tensor_input(details["index"], shape)
        self.interpreter.allocate_tensors()
        self._batch = batch

    def _set_input(self, batch: np.ndarray) -> None:
        if len(batch) != self._batch:
            self._resize(len(batch))
        if self.layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        source = self.interpreter.get_input_details()[0]
        if source["dtype"] != np.float32:
            scale, zero_point = source["quantization"]
            info = np.iinfo(source["dtype"])
            batch = np.clip(np.round(batch / scale) + zero_point, info.min, info.max)
        self.interpreter.set_tensor(source["index"], np.ascontiguousarray(batch, dtype=source["dtype"]))

    def prepare(self, batch: np.ndarray):
        """The bare synchronous call (`invoke()`) with `batch` already converted and set, for timing."""
        self._set_input(batch)
        return self.interpreter.invoke

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch."""
        try:
            self._set_input(batch)
            self.interpreter.invoke()
        except Exception as exc:  # the interpreter's RuntimeError/ValueError
            raise run_failed(self.path, "the TFLite interpreter", exc) from None
        output = self.interpreter.get_output_details()[0]
        logits = self.interpreter.get_tensor(output["index"])
        if output["dtype"] != np.float32:
            scale, zero_point = output["quantization"]
            logits = (logits.astype(np.float32) - zero_point) * scale
        return np.array(logits, dtype=np.float32)


def load(path: Path, threads: int = 1) -> TfliteRunner:
    """Load a .tflite file."""
    return TfliteRunner(path, threads)


def _tensor_details(details: dict) -> tuple[str, dict | None]:
    """A tensor's numpy dtype name, and its (scale, zero point) when it is quantized (else None)."""
    dtype = np.dtype(details["dtype"])
    scale, zero_point = details["quantization"]
    quantized = dtype.kind in "iu" and scale != 0
    return dtype.name, {"scale": float(scale), "zero_point": int(zero_point)} if quantized else None


class _Flatbuffer:
    """Just enough of the FlatBuffers wire format to read tables, vectors and strings by field number (the TFLite
    schema's `Model.metadata` and `Model.buffers`), with no flatbuffer package: a device that has only tflite-runtime
    reads a bare .tflite file's labels too."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def u32(self, at: int) -> int:
        return struct.unpack_from("<I", self.data, at)[0]

    def field(self, table: int, index: int) -> int | None:
        """The position of field `index` of the table at `table`, None when the field is absent."""
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        size = struct.unpack_from("<H", self.data, vtable)[0]
        if 4 + 2 * index >= size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + 4 + 2 * index)[0]
        return table + offset if offset else None

    def ref(self, table: int, index: int) -> int | None:
        """Where the table, vector or string that field `index` points to starts."""
        at = self.field(table, index)
        return None if at is None else at + self.u32(at)

    def tables(self, table: int, index: int) -> list[int]:
        vector = self.ref(table, index)
        if vector is None:
            return []
        return [at + self.u32(at) for at in range(vector + 4, vector + 4 + 4 * self.u32(vector), 4)]

    def bytes(self, table: int, index: int) -> bytes:
        at = self.ref(table, index)
        return b"" if at is None else self.data[at + 4:at + 4 + self.u32(at)]


METADATA_NAME = "edgetl"  # the TFLite metadata entry edgetl writes its metadata into, as JSON (edgetl.export.tflite)
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6  # the TFLite schema's field numbers (Model), then Metadata and Buffer's own
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


def embedded_metadata(path: Path) -> dict[str, str]:
    """The file's 'edgetl' metadata entry (its labels and preprocessing), {} when it has none. Read from the
    flatbuffer directly, so it needs neither ai-edge-litert nor tflite-runtime."""
    import json

    try:
        data = Path(path).read_bytes()
        if data[4:8] != b"TFL3":  # the schema's file identifier
            raise ValueError("no TFL3 identifier")
        buffer = _Flatbuffer(data)
        model = buffer.u32(0)
        for entry in buffer.tables(model, _MODEL_METADATA):
            if buffer.bytes(entry, _METADATA_NAME) != METADATA_NAME.encode():
                continue
            at = buffer.field(entry, _METADATA_BUFFER)
            stored = buffer.tables(model, _MODEL_BUFFERS)[buffer.u32(at) if at is not None else 0]
            content = buffer.bytes(stored, _BUFFER_DATA)
            offset_at, size_at = buffer.field(stored, _BUFFER_OFFSET), buffer.field(stored, _BUFFER_SIZE)
            if not content and offset_at is not None and size_at is not None:  # a > 2 GB file keeps data outside
                offset, size = struct.unpack_from("<Q", data, offset_at)[0], struct.unpack_from("<Q", data, size_at)[0]
                content = data[offset:offset + size]
            return json.loads(content.decode())
    except OSError as exc:
        raise ModelFileError(f"{path} could not be read: {first_line(exc)}.") from None
    except (struct.error, IndexError, UnicodeDecodeError, ValueError):  # truncated or foreign bytes
        raise ModelFileError(f"{path} could not be read as a TFLite flatbuffer: it is truncated, damaged or another "
                             "kind of file.") from None
    return {}


def io_details(path: Path) -> dict:
    """The (first) input and output tensor of the file as the TFLite interpreter reports them: `input_dtype`,
    `output_dtype` (numpy names) and `input_quantization`/`output_quantization` ({"scale", "zero_point"} of an
    integer tensor, None for a float one)."""
    module = require_runtime(FORMATS["tflite"])
    try:
        interpreter = module.Interpreter(model_path=str(path))
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError with the runtime's message
        raise ModelFileError(f"{path} could not be loaded by the TFLite interpreter: {first_line(exc)}.") from None
    input_dtype, input_quantization = _tensor_details(inputs[0])
    output_dtype, output_quantization = _tensor_details(outputs[0])
    return {"input_dtype": input_dtype, "input_quantization": input_quantization,
            "output_dtype": output_dtype, "output_quantization": output_quantization}
