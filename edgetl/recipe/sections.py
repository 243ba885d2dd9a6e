"""The recipe's sections, one pydantic model each: the one place defaults live."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from edgetl.limits import MAX_THREADS
from edgetl.recipe.messages import ECHO


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(Section):
    """Where the images come from and how they are checked."""

    dataset: str | None = Field(None, description="Name of the dataset; looked up in $EDGETL_CACHE/datasets/<name>/.")
    path: str | None = Field(None, description="A dataset folder on disk (relative to the recipe file).")
    url: str | None = Field(None, description="Archive (.zip/.tar.*) to download when the dataset is not cached.")
    sha256: str | None = Field(None, description="Expected sha256 of the downloaded archive.")
    train_dir: str = "train"
    val_dir: str | None = "val"
    test_dir: str | None = Field("test", description="The test split's folder, used when it exists.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each class held out when there is no val dir.")
    test_fraction: float | None = Field(None, gt=0, lt=1, description="Share of each class held out for test when "
                                        "there is no test dir (a flat dataset of <class>/ folders: 0.2 unless set).")
    seed: int = 0
    skip_bad_images: bool = False
    workers: int = Field(2, ge=0, description="Data loader worker processes for training.")
    fallback: Literal["trashnet5-mini"] | None = Field(None, description="An embedded sample (edgetl/samples/<name>/) "
                                                       "built on, saying so, when `dataset` is not cached or downloadable.")

    @model_serializer(mode="wrap")
    def _unset_fallback_left_out(self, handler):  # so a recipe without them keeps its cache keys and recipe hash
        defaults = {"fallback": None, "test_dir": "test", "test_fraction": None}
        return {k: v for k, v in handler(self).items() if k not in defaults or v != defaults[k]}

    @model_validator(mode="after")
    def _needs_a_source(self) -> DataSection:
        if not (self.dataset or self.path):
            raise ValueError("give `dataset` (a name, found in the cache or downloaded from `url`) or `path`")
        return self

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
            raise ValueError("must be 64 hex characters")
        return value.lower() if value else value


class PreprocessingOverride(Section):
    """Override of the backbone's preprocessing (e.g. for weights given by path)."""

    resize: int | None = Field(None, gt=0)
    crop: int | None = Field(None, gt=0)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None


class ModelSection(Section):
    """The backbone and its starting weights."""

    backbone: str = "efficientnet_lite0"
    weights: str = Field("imagenet", description="`imagenet`, `none`, or a path to a state_dict file.")
    dropout: float = Field(0.2, ge=0, lt=1)
    preprocessing: PreprocessingOverride = PreprocessingOverride()

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return _check_backbone(value)


class AugmentSection(Section):
    """Training-time augmentations."""

    scale_min: float = Field(0.35, gt=0, le=1, description="RandomResizedCrop's smallest area share.")
    hflip: bool = True
    color_jitter: float = Field(0.2, ge=0, le=1)
    mixup: float = Field(0.0, ge=0, description="Mixup: each batch is blended with a shuffled copy of itself by "
                         "λ ~ Beta(mixup, mixup), labels and teacher targets alike; 0: off (1.0 is a usual value).")


class TrainSection(Section):
    """How the backbone is fine-tuned."""

    mode: Literal["linear_probe", "finetune", "gradual", "none"] = Field(
        "finetune", description="`none`: no training at all, the pretrained backbone with a fresh head (to measure "
        "an architecture's latency; the search's cheap filter uses it).")
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=0)
    probe_epochs: int = Field(10, ge=0, description="finetune/gradual: epochs of head-only training on cached "
                              "features first (LP-FT); 0 turns it off.")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="Learning rate of the head.")
    backbone_lr_mult: float = Field(0.1, gt=0, le=1, description="Backbone LR = lr × this (finetune, gradual).")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    early_stop_patience: int | None = Field(3, gt=0, description="Stop after this many epochs without a better val accuracy.")
    freeze_batchnorm: bool | None = Field(
        None, description="Keep BatchNorm statistics frozen; default: frozen for pretrained weights, not for `none`.")
    seed: int = 0
    threads: int | None = Field(None, gt=0, le=MAX_THREADS, description="torch intra-op threads (default: all cores).")
    augment: AugmentSection = AugmentSection()

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSection:
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class TfliteExportSection(Section):
    """TFLite-specific export settings."""

    layout: Literal["nhwc", "nchw"] = Field(
        "nhwc", description="Input/output layout of the .tflite model (NHWC runs faster with XNNPACK).")
    int8: Literal["full", "dynamic"] = Field(
        "full", description="`full`: int8 weights and activations (calibrated); `dynamic`: int8 weights, activations "
        "quantized at run time.")


class OpenvinoExportSection(Section):
    """OpenVINO-specific export settings."""

    accuracy_control: bool = Field(
        False, description="int8 with `nncf.quantize_with_accuracy_control`: layers are reverted to float until the "
        "val accuracy drop is within verify.max_accuracy_drop_pp.")


def _known(value: str, known: list[str], what: str) -> str:
    if value not in known:
        hint = difflib.get_close_matches(value, known, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown {what} '{value}'{did_you_mean}; known: {', '.join(known)}")
    return value


def _known_formats(value: list[str]) -> list[str]:
    from edgetl.formats import FORMATS

    return [_known(v, list(FORMATS), "format") for v in value]


def _known_precisions(value: list[str]) -> list[str]:
    from edgetl.formats import PRECISIONS

    return [_known(v, list(PRECISIONS), "precision") for v in value]


class ExportSection(Section):
    """Which files are exported and how int8 is calibrated."""

    formats: list[str] = ["onnx"]
    precisions: list[str] = ["fp32", "int8"]
    opset: int = Field(18, ge=13)
    exporter: Literal["auto", "dynamo", "legacy"] = "auto"
    calibration_images: int = Field(128, gt=0, description="Train images used to calibrate int8.")
    int8_format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    int8_keep_fp32: list[Literal["first_conv", "classifier"]] = Field(
        ["first_conv", "classifier"], description="Layers left in fp32 in int8 models (the most sensitive ones).")
    tflite: TfliteExportSection = TfliteExportSection()
    openvino: OpenvinoExportSection = OpenvinoExportSection()

    @field_validator("formats", "precisions")
    @classmethod
    def _nonempty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one")
        if len(set(value)) != len(value):
            raise ValueError("names a value twice")
        return value

    _formats_known = field_validator("formats")(_known_formats)
    _precisions_known = field_validator("precisions")(_known_precisions)

    @model_validator(mode="after")
    def _pairs_exist(self) -> ExportSection:
        from edgetl.formats import FORMATS

        missing = [f"{f} {p}" for f in self.formats for p in self.precisions if p not in FORMATS[f].precisions]
        if missing:
            valid = "; ".join(f"{f}: {', '.join(FORMATS[f].precisions)}" for f in self.formats)
            raise ValueError(f"export.formats × export.precisions asks for {', '.join(missing)}, which edgetl cannot "
                             f"make (valid precisions per format: {valid})")
        return self


def _check_backbone(value: str) -> str:
    from edgetl.backbones import BACKBONE_NAMES

    return _known(value, list(BACKBONE_NAMES), "backbone")


class TeacherSection(Section):
    """The teacher: a backbone the build fine-tunes first, or an edgetl model.pt from an earlier run."""

    backbone: str | None = Field(None, description="Backbone fine-tuned as the teacher (with `weights`).")
    weights: str = Field("imagenet", description="Starting weights of the teacher: `imagenet`, `none` or a path.")
    checkpoint: str | None = Field(None, description="A fine-tuned edgetl `model.pt` used as is (no teacher training).")
    dropout: float = Field(0.2, ge=0, lt=1)
    train: dict[str, Any] = Field({}, description="Overrides of `train` keys for the teacher's fine-tune.")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str | None) -> str | None:
        return value if value is None else _check_backbone(value)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.backbone is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of `backbone` (fine-tuned by this build) or `checkpoint` "
                             "(an edgetl model.pt)")
        return self


class DistillSection(Section):
    """Teacher→student knowledge distillation (Hinton et al.): the student is `model`."""

    teacher: TeacherSection
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the KD term.")
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the KD term; (1 − alpha) goes to the label loss.")
    teacher_logits: Literal["online", "precomputed"] = Field(
        "online", description="`online`: the teacher sees the student's augmented batch; `precomputed`: once per "
        "image on the augmentation-free view (faster, less faithful).")
    compare_without_kd: bool = Field(False, description="Also train the student without KD and record its accuracy.")


class RecoverSection(Section):
    """The fine-tune that recovers accuracy after pruning."""

    epochs: int = Field(6, ge=0)
    lr: float = Field(5e-4, gt=0, description="Learning rate of every layer during recovery.")
    distill: bool = Field(True, description="Recover with a KD loss (from `teacher`).")
    teacher: Literal["teacher", "unpruned"] = Field(
        "teacher", description="Whose logits the KD loss follows: `teacher`, the recipe's `distill` teacher (no KD "
        "without a `distill` section); `unpruned`, the model as it was before pruning (needs no `distill`).")
    temperature: float | None = Field(None, gt=0, description="KD temperature (default: `distill.temperature`, or 4).")
    alpha: float | None = Field(None, ge=0, le=1, description="Weight of the KD term (default: `distill.alpha`, or 0.7).")
    feature_weight: float = Field(0.0, ge=0, description="Weight of a similarity-preserving KD term on the "
                                  "classifier's input features (online teacher only); 0: off.")
    mixup: float | None = Field(None, ge=0, description="Mixup during recovery (default: `train.augment.mixup`); "
                                "with KD, the teacher labels the mixed images (\"function matching\").")


class PruneSection(Section):
    """Structured channel pruning with Torch-Pruning, then a recovery fine-tune."""

    target_macs: float = Field(0.5, gt=0, lt=1, description="MACs of the pruned model as a share of the unpruned one.")
    importance: Literal["magnitude", "taylor"] = "magnitude"
    scope: Literal["uniform", "global"] = Field(
        "uniform", description="`uniform`: every layer loses the same share; `global`: ranked across layers.")
    steps: int = Field(4, gt=0, description="Iterative pruning steps (Taylor scores are re-estimated each step).")
    step_epochs: int = Field(0, ge=0, description="Fine-tune epochs between pruning steps (0: prune all steps, then recover).")
    round_to: int = Field(8, gt=0, description="Kept channel counts are multiples of this (SIMD-friendly).")
    max_layer_ratio: float = Field(0.8, gt=0, lt=1, description="Largest share of one layer's channels removed.")
    residual: Literal["keep", "prune"] = Field(
        "keep", description="`keep`: channels that pass through a residual add (shared by every block of a stage) "
        "are not pruned, only the blocks' inner channels; `prune`: they are pruned too.")
    taylor_batches: int = Field(4, gt=0, description="Train batches used to estimate Taylor importance per step.")
    recover: RecoverSection = RecoverSection()


class QuantizeSection(Section):
    """How int8 models are made: post-training calibration (`ptq`) or quantization-aware training (`qat`)."""

    mode: Literal["ptq", "qat"] = "ptq"
    epochs: int = Field(3, gt=0, description="qat: fake-quantized fine-tune epochs.")
    lr: float = Field(1e-4, gt=0, description="qat: learning rate of every layer.")
    distill: bool = Field(True, description="qat: fine-tune with a KD loss (from `teacher`).")
    teacher: Literal["teacher", "float"] = Field(
        "teacher", description="qat: whose logits the KD loss follows: `teacher`, the recipe's `distill` teacher (no KD "
        "without a `distill` section); `float`, the model being quantized, in float (needs no `distill`).")
    temperature: float | None = Field(None, gt=0, description="qat: KD temperature (default: `distill.temperature`, or 4).")
    alpha: float | None = Field(None, ge=0, le=1, description="qat: weight of the KD term (default: `distill.alpha`, "
                                "or 0.7).")
    keep_ptq: bool = Field(False, description="qat: also export the PTQ int8 model (`onnx_int8_ptq`) to compare.")


class VerifySection(Section):
    """Checks every artifact must pass."""

    max_accuracy_drop_pp: float = Field(1.0, ge=0, description="Largest val accuracy drop vs torch, in points.")
    parity_atol: float = Field(1e-3, gt=0, description="Largest |logit diff| allowed for fp32 artifacts.")
    parity_atol_fp16: float = Field(0.05, gt=0, description="Largest |logit diff| allowed for fp16 artifacts.")
    accuracy_aware_retry: bool = Field(
        False, description="An int8 artifact over the budget is made again with stronger settings (per-channel, more "
        "calibration images, bias correction, sensitive layers kept in float) until it is within budget.")
    parity_images: int = Field(16, gt=0)


class BenchSection(Section):
    """How latency is measured."""

    threads: list[int] = Field([1], min_length=1)
    batch: int = Field(1, gt=0)
    warmup: int = Field(20, ge=0)
    min_runs: int = Field(100, gt=0)
    min_time_s: float = Field(3.0, ge=0, description="Keep running until both min_runs and min_time_s are reached.")
    max_runs: int = Field(2000, gt=0)

    @field_validator("threads")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(t <= 0 or t > MAX_THREADS for t in value):
            raise ValueError(f"every thread count must be from 1 to {MAX_THREADS}")
        return value


class Limits(Section):
    """What a shipped model must meet on its device; a limit left out is no limit."""

    latency_ms_p90: float | None = Field(None, gt=0, description="p90 latency limit (ms) on the device.")
    size_mb: float | None = Field(None, gt=0, description="Model file size limit (MB).")
    accuracy_min: float | None = Field(None, ge=0, le=100, description="Lowest acceptable val accuracy (%).")


class DeviceFields(Section):
    """Where latency is measured: this machine or a device over SSH, at a number of threads."""

    device: str = Field("local", description="`local`, or ssh://[user@]host[:port] (see `edgetl deploy`).")
    threads: int = Field(1, gt=0, le=MAX_THREADS)
    ssh_config: str | None = Field(None, description="With an ssh:// device: an ssh_config file to use instead of "
                                   "~/.ssh/config (relative to the recipe file), like `edgetl bench --ssh-config`.")
    python: str = Field("python3", min_length=1, description="With an ssh:// device: the Python interpreter there.")

    def _check_device(self, names_allowed: bool) -> None:
        if self.device == "local" or (names_allowed and "://" not in self.device):
            return
        from edgetl.bench.remote import Device
        from edgetl.errors import DeviceAddressError

        try:
            Device.parse(self.device)  # a malformed address is found now, not after training
        except DeviceAddressError:
            names = ", or a name in target.devices" if names_allowed else ""
            raise ValueError(f"device must be `local`{names} or ssh://[user@]host[:port], not "
                             f"{ECHO.repr(self.device)}") from None


class SearchBudget(DeviceFields, Limits):
    """What the chosen model must meet, measured on `device` at `threads` (batch 1)."""

    @model_validator(mode="after")
    def _something_to_meet(self) -> SearchBudget:
        if self.latency_ms_p90 is None and self.size_mb is None and self.accuracy_min is None:
            raise ValueError("give at least one of latency_ms_p90, size_mb, accuracy_min")
        self._check_device(names_allowed=False)
        return self


class TargetSection(DeviceFields):
    """Where the model will run. Every artifact the target can run is measured there, and `chosen` is, among those
    within `budget` whose val accuracy is not significantly worse than the most accurate one's, the fastest p50
    (a p50 whose 95 % interval overlaps the fastest's ties with it; a tie goes to the smallest file)."""

    devices: str | None = Field(None, description="A devices.yaml (relative to the recipe file) in which `device` "
                                "may be a name.")
    formats: list[str] | None = Field(None, min_length=1, description="The formats allowed there (default: those "
                                      "whose runtime installs on the device's architecture).")
    budget: Limits = Limits()
    rounds: int = Field(5, ge=2, le=50, description="Rounds of timed runs per artifact on an ssh:// device (a "
                        "p50's interval is a bootstrap over rounds); locally, the bench stage's rounds.")
    runs: int = Field(50, gt=0, description="Timed runs per round on an ssh:// device.")
    warmup: int = Field(10, ge=0, description="Warm-up runs per round on an ssh:// device.")
    install: bool = Field(False, description="pip-install a missing runtime on the device (its bundle's "
                          "requirements.txt), like `edgetl deploy --install`.")

    @field_validator("formats")
    @classmethod
    def _formats_known(cls, value: list[str] | None) -> list[str] | None:
        return value if value is None else _known_formats(value)

    @model_validator(mode="after")
    def _device(self) -> TargetSection:
        self._check_device(names_allowed=True)
        if self.device != "local" and "://" not in self.device and self.devices is None:
            raise ValueError(f"device {ECHO.repr(self.device)} is a name: give the devices.yaml that lists it as "
                             "target.devices, or an ssh://[user@]host[:port] address")
        return self


class SearchSection(Section):
    """Pick the most accurate model under a budget, measured on the target: a grid of backbone × prune ratio ×
    format × precision, the cheap filter (untrained architectures measured first), then training only what can
    still win."""

    budget: SearchBudget
    backbones: list[str] = Field(..., min_length=1)
    prune: list[float] = Field([0.0], min_length=1, description="Shares of the MACs removed (0.5: half of them).")
    formats: list[str] = Field(["onnx"], min_length=1, description="Formats to try (any of edgetl.formats' table).")
    precisions: list[str] = Field(["fp32", "int8"], min_length=1)
    models: dict[str, dict[str, Any]] = Field({}, description="Per-backbone overrides of the `model` section "
                                              "(e.g. its weights file and preprocessing).")
    slack_pp: float = Field(0.0, ge=0, description="A pruned model is still trained when its unpruned parent is "
                            "at most this far below the best candidate found.")
    min_gain_pp: float = Field(0.0, ge=0, description="A pruned model is trained only when it could beat the best "
                               "candidate found so far by more than this many points; the choice is then at most this "
                               "far below the best model of the grid (as far as pruning never adds accuracy).")

    _formats_known = field_validator("formats")(_known_formats)
    _precisions_known = field_validator("precisions")(_known_precisions)

    @field_validator("prune")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if any(not 0 <= r < 1 for r in value):
            raise ValueError("every prune ratio must be in [0, 1)")
        return sorted(set(value))
