"""The build: a list of cached stages writing into one run directory, ending in summary.json + report.md."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import __version__
from edgetl.errors import (
    AccuracyBudgetError,
    EdgetlError,
    ExportError,
    ModelFileError,
    ParityError,
    RecipeError,
    StorageError,
    first_line,
)
from edgetl.fsutil import (
    RUN_MARKER,
    atomic_path,
    changed_files,
    check_apart,
    is_marked,
    mark,
    read_json,
    refuse_unmarked,
    sha256_file,
    sha256_json,
    storage_reason,
    swap_in,
    write_json,
)
from edgetl.preprocess import Preprocessing
from edgetl.progress import Reporter
from edgetl.recipe import QuantizeSection, Recipe, RecoverSection, load_recipe, section_dict

STAGES = ("data", "inputs", "teacher", "baseline", "train", "prune", "qat", "export", "verify", "bench")
# Files a stage keeps across a changed key because they carry their own key (resumable state).
_KEEP_ON_RERUN = {"checkpoint.pt", "pruned.pt"}


def stage_names(recipe: Recipe) -> list[str]:
    """The stages `recipe` runs, in order."""
    skip = set()
    if recipe.distill is None:
        skip |= {"teacher", "baseline"}
    elif not recipe.distill.compare_without_kd:
        skip.add("baseline")
    if recipe.prune is None:
        skip.add("prune")
    if recipe.quantize.mode != "qat":
        skip.add("qat")
    return [name for name in STAGES if name not in skip]


@dataclass
class RunDir:
    """runs/<name>/: one folder per stage, each with a stage.json marker written last.

    A stage that must run works in `.<name>.partial/` beside its folder; only once it has finished is that folder
    swapped in for the old one, so a stage that fails (bad weights, a full disk) leaves the last good outputs, and
    the records that point at them, as they were."""

    root: Path
    reporter: Reporter
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    timings: dict[str, dict] = field(default_factory=dict)
    _working: dict[Path, Path] = field(default_factory=dict)  # partial folder -> the stage folder it becomes
    current: str | None = None  # the stage running now (named in a failed build's summary)

    def rel(self, path: Path) -> str:
        """A path inside the run directory, relative to it (as stored in records and the summary); a file written
        in a running stage's partial folder is named where it will be once the stage has finished."""
        path = Path(path)
        for partial, final in self._working.items():
            if path == partial or partial in path.parents:
                path = final / path.relative_to(partial)
        return os.path.relpath(path, self.root)

    def stage(self, name: str, inputs: dict[str, Any], work: Callable[[Path], dict]) -> dict:
        """Run `work(folder)` unless a completed run with the same inputs is recorded; return its record."""
        key = sha256_json({"stage": name, "inputs": inputs, "edgetl": __version__})
        folder = self.root / name
        number = self.stages.index(name) + 1
        _finish_swap(self.root, name)
        saved = _read_marker(folder / "stage.json")
        if saved is not None and saved.get("key") == key and self._intact(saved):
            self.reporter.info(f"[{number}/{len(self.stages)}] {name}: unchanged, reused")
            self.timings[name] = {"cached": True, "seconds": saved.get("seconds", 0.0)}
            return saved["record"]
        self.reporter.info(f"[{number}/{len(self.stages)}] {name}")
        partial, self.current = self.root / f".{name}.partial", name
        try:
            _clear(partial)
            partial.mkdir(parents=True, exist_ok=True)
            _keep_resumable(folder, partial)
        except OSError as exc:
            raise _storage_error(exc, f"Cannot run the {name} stage in {self.root}") from None
        self._working[partial] = folder
        started = time.perf_counter()
        try:
            record = work(partial)
            seconds = round(time.perf_counter() - started, 2)
            write_json(partial / "stage.json", {"key": key, "stage": name, "seconds": seconds, "inputs": inputs,
                                                "record": record, "record_sha256": sha256_json(record)})
            swap_in(partial, folder)
        except Exception as exc:
            with contextlib.suppress(OSError):
                _clear(partial, drop=True)  # keeps only resumable state (a training checkpoint)
            if isinstance(exc, StorageError) or not _out_of_space(exc):
                raise
            # Exporters and runtimes write files their own way and report a full disk in their own words.
            raise StorageError(f"Cannot write the {name} stage's outputs in {folder}: the disk is full "
                               f"({type(exc).__name__}: {first_line(exc)}). Completed "
                               "stages are kept; free space or choose another output folder (--out) and run again.") from None
        finally:
            del self._working[partial]
        self.current = None
        self.timings[name] = {"cached": False, "seconds": seconds}
        return record

    def _intact(self, saved: dict) -> bool:
        """The record is the one written (its hash matches; an older edgetl's record has none) and every file it
        lists has the content recorded."""
        record, recorded = saved.get("record"), saved.get("record_sha256")
        if not isinstance(record, dict) or (recorded is not None and recorded != sha256_json(record)):
            return False
        files = record.get("files", {})
        return isinstance(files, dict) and not changed_files(self.root, files)

    def files_record(self, *paths: Path) -> dict[str, str]:
        """{relative path: sha256} for outputs, so reuse is checked against their content."""
        return {self.rel(p): sha256_file(p) for p in paths}


def _read_marker(marker: Path) -> dict | None:
    """A stage.json as a dict, or None when it is missing, unreadable or not an object (then the stage reruns)."""
    try:
        saved = read_json(marker)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _storage_error(exc: OSError, what: str) -> StorageError:
    return StorageError(f"{what}: {storage_reason(exc)}. Completed stages are kept; fix that or choose another output "
                        "folder (--out) and run again.")


def _finish_swap(root: Path, name: str) -> None:
    """Complete a swap a kill interrupted (the stage folder gone, its finished partial folder there) and remove old
    folders that a swap moved aside."""
    folder, partial = root / name, root / f".{name}.partial"
    if not folder.exists() and (_read_marker(partial / "stage.json") or {}).get("stage") == name:
        try:
            os.replace(partial, folder)
        except OSError as exc:
            raise _storage_error(exc, f"Cannot finish the {name} stage in {root}") from None
    for aside in root.glob(f".{name}.old-*"):
        shutil.rmtree(aside, ignore_errors=True)


def _keep_resumable(folder: Path, partial: Path) -> None:
    """An older edgetl kept a killed stage's checkpoint in the stage folder itself: move it to where it resumes."""
    if folder.is_dir() and not (folder / "stage.json").exists():
        for name in _KEEP_ON_RERUN:
            if (folder / name).is_file() and not (partial / name).exists():
                os.replace(folder / name, partial / name)


def _clear(partial: Path, drop: bool = False) -> None:
    """Empty a stage's partial folder (edgetl's own) but for resumable state; `drop`: remove it when nothing is
    left to resume from."""
    if not partial.is_dir():
        return
    for child in partial.iterdir():
        if child.name not in _KEEP_ON_RERUN:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    if drop and next(partial.iterdir(), None) is None:
        partial.rmdir()


def _out_of_space(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it came from, is a full disk."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def resolve_data_root(recipe: Recipe, say=None) -> Path:
    from edgetl.data import resolve_recipe_data

    return resolve_recipe_data(recipe, say)


def _data_stage(run: RunDir, recipe: Recipe):
    from edgetl.data import DatasetIndex, fingerprint_tree

    root = resolve_data_root(recipe, run.reporter.info)
    inputs = {"data": section_dict(recipe.data) | {"workers": None}, "root": str(root),
              "fingerprint": fingerprint_tree(root)}

    def work(folder: Path) -> dict:
        with run.reporter.task("checking images", None) as update:
            index = scan_recipe_dataset(recipe, root, progress=lambda done, total: update(1))
        index_path = folder / "index.json"
        write_json(index_path, index.to_json())
        if index.bad_images:
            run.reporter.info(f"  skipped {len(index.bad_images)} unreadable images (data.skip_bad_images)")
        return {"index": run.rel(index_path), "files": run.files_record(index_path)}

    record = run.stage("data", inputs, work)
    index = DatasetIndex.from_json(read_json(run.root / record["index"]))
    run.reporter.info(f"  {len(index.classes)} classes, {len(index.train)} train / {len(index.val)} val images "
                      f"(val from {index.val_source}) in {root}")
    if unmeasured := index.unmeasured_classes():
        run.reporter.info(f"  warning: no val image of {', '.join(unmeasured)} (too few images to hold one out): "
                          "val accuracy does not measure it; add images or a val/ folder")
    return index, record


def scan_recipe_dataset(recipe: Recipe, root: Path, progress=None):
    """Scan and check every image of the recipe's dataset at `root` (see edgetl.data.scan_dataset)."""
    from edgetl.data import scan_dataset

    data = recipe.data
    return scan_dataset(root, train_dir=data.train_dir, val_dir=data.val_dir, val_fraction=data.val_fraction,
                        seed=data.seed, skip_bad_images=data.skip_bad_images, progress=progress)


def _preprocessing(recipe: Recipe) -> Preprocessing:
    from edgetl.backbones import get_backbone

    default = get_backbone(recipe.model.backbone).default_weights().preprocessing
    override = {k: v for k, v in recipe.model.preprocessing.model_dump().items() if v is not None}
    prep = Preprocessing.from_json({**default.to_json(), **override})
    if prep.resize < prep.crop:
        raise RecipeError(f"{recipe.source or 'recipe'}: model.preprocessing.resize ({prep.resize}) must be at least "
                          f"model.preprocessing.crop ({prep.crop}): images are resized, then center-cropped.")
    return prep


def _inputs_stage(run: RunDir, recipe: Recipe, index, data_record: dict, prep: Preprocessing) -> dict:
    from edgetl.preprocess import preprocess_files

    count = min(recipe.export.calibration_images, len(index.train))
    inputs = {"data": data_record["files"], "preprocessing": prep.to_json(), "calibration_images": count,
              "seed": recipe.data.seed}

    def work(folder: Path) -> dict:
        rng = np.random.default_rng(recipe.data.seed)
        calibration = [index.train[i].path for i in sorted(rng.choice(len(index.train), count, replace=False))]
        outputs = []
        for name, paths in (("val", [s.path for s in index.val]), ("calibration", calibration)):
            target = folder / f"{name}.npy"
            with atomic_path(target) as tmp, run.reporter.task(f"preprocessing {name} images", len(paths)) as update:
                preprocess_files(paths, prep, out=tmp, progress=lambda done, total: update(1))
            outputs.append(target)
        labels = folder / "val_labels.npy"
        with atomic_path(labels) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray([s.label for s in index.val], dtype=np.int64))
        outputs.append(labels)
        return {"val": run.rel(outputs[0]), "calibration": run.rel(outputs[1]), "val_labels": run.rel(labels),
                "files": run.files_record(*outputs)}

    return run.stage("inputs", inputs, work)


@dataclass(frozen=True)
class ModelSpec:
    """A model the build fine-tunes: the student (`model` + `train`) or the teacher (`distill.teacher`)."""

    role: str
    backbone: str
    weights: str  # `imagenet`, `none`, or a path resolved against the recipe's folder
    dropout: float
    train: Any  # TrainSection
    prep: Preprocessing

    def identity(self) -> dict:
        """What decides the trained weights (for cache keys): a weights file by its content."""
        is_file = self.weights not in ("imagenet", "none") and Path(self.weights).is_file()
        return {"backbone": self.backbone, "dropout": self.dropout, "preprocessing": self.prep.to_json(),
                "weights": sha256_file(Path(self.weights)) if is_file else self.weights}


def _resolve_weights(recipe: Recipe, weights: str) -> str:
    """`imagenet`, `none`, or the weights path resolved against the recipe's folder."""
    return weights if weights in ("imagenet", "none") else str(recipe.resolve_path(weights))


def student_spec(recipe: Recipe, prep: Preprocessing) -> ModelSpec:
    """The recipe's `model` (the student when distilling) and its `train` settings."""
    m = recipe.model
    return ModelSpec("student", m.backbone, _resolve_weights(recipe, m.weights), m.dropout, recipe.train, prep)


def _teacher_prep(backbone: str, student_prep: Preprocessing) -> Preprocessing:
    # The teacher sees the student's pixels (same resize, crop, interpolation) with its own normalisation, so the
    # online teacher can take the student's augmented batch after a per-channel affine map.
    from edgetl.backbones import get_backbone

    own = get_backbone(backbone).default_weights().preprocessing
    return Preprocessing.from_json({**student_prep.to_json(), "mean": list(own.mean), "std": list(own.std)})


def teacher_spec(recipe: Recipe, prep: Preprocessing) -> ModelSpec:
    """The teacher the build fine-tunes (`distill.teacher.backbone`)."""
    t = recipe.distill.teacher
    return ModelSpec("teacher", t.backbone, _resolve_weights(recipe, t.weights), t.dropout, recipe.teacher_train(),
                     _teacher_prep(t.backbone, prep))


def create_recipe_model(recipe: Recipe, num_classes: int, spec: ModelSpec | None = None):
    """The recipe's backbone (or `spec`'s) with its starting weights; weight errors name the recipe file."""
    from edgetl.backbones import create_model
    from edgetl.errors import WeightsError

    spec = spec or student_spec(recipe, _preprocessing(recipe))
    try:
        return create_model(spec.backbone, num_classes, spec.weights, spec.dropout)
    except WeightsError as exc:
        where = "distill.teacher" if spec.role == "teacher" else "model"
        raise WeightsError(f"{recipe.source or 'recipe'} ({where}): {exc}") from None


def _save_model(path: Path, model, backbone: str, dropout: float, classes: list[str], prep: Preprocessing,
                structure: dict | None = None) -> None:
    from edgetl.train import save_torch

    saved = {"backbone": backbone, "num_classes": len(classes), "dropout": dropout, "classes": classes,
             "preprocessing": prep.to_json(), "state_dict": model.state_dict()}
    if structure is not None:
        saved["structure"] = structure  # pruned channel counts: rebuilt by compress.prune.apply_structure
    save_torch(path, saved)


def _load_saved(model_path: Path):
    """An edgetl model.pt (loaded with weights_only) as (eval-mode model, its saved fields)."""
    import torch

    from edgetl.backbones import create_model

    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    created = create_model(saved["backbone"], int(saved["num_classes"]), weights="none", dropout=float(saved["dropout"]))
    if "structure" in saved:
        from edgetl.compress.prune import apply_structure

        apply_structure(created.model, saved["structure"])
    created.model.load_state_dict(saved["state_dict"])
    return created.model.eval(), saved


def _load_trained(model_path: Path):
    return _load_saved(model_path)[0]


def _renormalize(inputs: np.ndarray, source: Preprocessing, target: Preprocessing) -> np.ndarray:
    """Preprocessed images re-normalised from `source`'s mean/std to `target`'s (same pixels)."""
    if tuple(source.mean) == tuple(target.mean) and tuple(source.std) == tuple(target.std):
        return np.asarray(inputs, dtype=np.float32)
    s_mean, s_std = np.float32(source.mean).reshape(1, 3, 1, 1), np.float32(source.std).reshape(1, 3, 1, 1)
    t_mean, t_std = np.float32(target.mean).reshape(1, 3, 1, 1), np.float32(target.std).reshape(1, 3, 1, 1)
    return ((np.asarray(inputs, dtype=np.float32) * s_std + s_mean - t_mean) / t_std).astype(np.float32)


def _write_logits(path: Path, logits: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(logits, dtype=np.float32))


def _distiller(run: RunDir, recipe: Recipe, teacher_record: dict, prep: Preprocessing,
               section: RecoverSection | QuantizeSection | None = None):
    """The KD loss of `recipe.distill` against the teacher stage's model or precomputed logits (with the temperature
    and alpha of `section`, the pruning recovery's or the QAT's, where it sets them)."""
    from edgetl.compress.distill import Distiller

    d = recipe.distill
    temperature, alpha = _kd_settings(recipe, section) if section is not None else (d.temperature, d.alpha)
    if d.teacher_logits == "precomputed":
        return Distiller.from_logits(np.load(run.root / teacher_record["train_logits"]), temperature, alpha)
    teacher, saved = _load_saved(run.root / teacher_record["model"])
    return Distiller.online(teacher, prep, Preprocessing.from_json(saved["preprocessing"]), temperature, alpha)


def _with_feature_kd(distiller, weight: float, student_backbone: str, teacher_backbone: str):
    """`distiller` plus the similarity-preserving feature term of the recovery (prune.recover.feature_weight; the
    recipe's schema made sure there is an online teacher when it is set)."""
    from edgetl.backbones import get_backbone

    if not weight:
        return distiller
    distiller.feature_weight = weight
    distiller.student_head, distiller.teacher_head = get_backbone(student_backbone).head, get_backbone(teacher_backbone).head
    return distiller


def _kd_settings(recipe: Recipe, section: RecoverSection | QuantizeSection) -> tuple[float, float]:
    """Temperature and alpha of a later stage's KD loss (`section`: prune.recover or quantize): its own, else the
    distill section's, else 4 / 0.7."""
    d = recipe.distill
    return (section.temperature or (d.temperature if d else 4.0),
            section.alpha if section.alpha is not None else (d.alpha if d else 0.7))


def _self_distiller(recipe: Recipe, model_path: Path, prep: Preprocessing,
                    section: RecoverSection | QuantizeSection):
    """KD from the model at `model_path`, in float, to the copy made from it (pruned or fake-quantized), which sees
    the same preprocessing."""
    from edgetl.compress.distill import Distiller

    return Distiller.online(_load_trained(model_path), prep, prep, *_kd_settings(recipe, section))


def _kd_inputs(recipe: Recipe, teacher_record: dict) -> dict:
    return {"distill": section_dict(recipe.distill) | {"teacher": None, "compare_without_kd": None},
            "teacher": teacher_record["files"][teacher_record["model"]]}


def _fine_tune_stage(run: RunDir, stage: str, recipe: Recipe, spec: ModelSpec, index, data_record: dict,
                     inputs_record: dict, prep: Preprocessing, teacher_record: dict | None = None,
                     extra=None) -> dict:
    """Fine-tune `spec` (with KD from `teacher_record` when given); `extra(folder, model)` adds outputs."""
    inputs = {"model": section_dict(recipe.model), "train": section_dict(spec.train), "data": data_record["files"],
              "val": inputs_record["files"][inputs_record["val"]], "weights": spec.identity()["weights"],
              "workers": recipe.data.workers}
    if spec.role == "teacher":
        inputs["model"] = spec.identity()
    if teacher_record is not None:
        inputs |= _kd_inputs(recipe, teacher_record)
    if extra is not None:
        inputs["extra"] = recipe.distill.teacher_logits

    def work(folder: Path) -> dict:
        from edgetl.distributed import world_size
        from edgetl.train import Checkpointer, fine_tune, predict, seed_everything

        seed_everything(spec.train.seed)  # the new head's initialisation is part of the run
        created = create_recipe_model(recipe, len(index.classes), spec)
        created.preprocessing = spec.prep
        kd = " with KD from the teacher" if teacher_record is not None else ""
        run.reporter.info(f"  {spec.role} {spec.backbone}, mode {spec.train.mode}{kd}, weights "
                          f"{created.weights_file or spec.weights}")
        val_inputs = _renormalize(np.load(run.root / inputs_record["val"], mmap_mode="r"), prep, spec.prep)
        val_labels = np.load(run.root / inputs_record["val_labels"])
        distiller = _distiller(run, recipe, teacher_record, spec.prep) if teacher_record is not None else None
        checkpointer = Checkpointer(folder / "checkpoint.pt", sha256_json(inputs))
        result = fine_tune(created, index.train, val_inputs, val_labels, spec.train, recipe.data.workers,
                           checkpointer, run.reporter, distiller)
        model_path, logits_path, history_path = folder / "model.pt", folder / "val_logits.npy", folder / "history.json"
        _save_model(model_path, created.model, spec.backbone, spec.dropout, index.classes, spec.prep)
        model = _load_trained(model_path)
        _write_logits(logits_path, predict(model, val_inputs))
        write_json(history_path, result.history)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        params = sum(p.numel() for p in created.model.parameters())
        record = {"backbone": spec.backbone, "model": run.rel(model_path), "val_logits": run.rel(logits_path),
                  "history": run.rel(history_path), "val_accuracy": round(result.val_accuracy, 4),
                  "epochs_run": result.epochs_run,
                  "final_epoch_val_accuracy": round(result.history[-1]["val_accuracy"], 4) if result.history else None,
                  "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from_epoch,
                  "world_size": world_size(),
                  "weights_file": created.weights_file, "weights_meta": created.weights_meta, "params": params,
                  "files": run.files_record(model_path, logits_path, history_path)}
        if extra is not None:
            added = extra(folder, model)
            record["files"] |= added.pop("files")
            record |= added
        return record

    return run.stage(stage, inputs, work)


def _train_stage(run: RunDir, recipe: Recipe, index, data_record: dict, inputs_record: dict,
                 prep: Preprocessing, teacher_record: dict | None = None, stage: str = "train") -> dict:
    return _fine_tune_stage(run, stage, recipe, student_spec(recipe, prep), index, data_record, inputs_record, prep,
                            teacher_record)


def _teacher_train_logits(run: RunDir, folder: Path, index, model, teacher_prep: Preprocessing) -> dict:
    """The teacher's logits for every train image, augmentation-free (distill.teacher_logits: precomputed)."""
    from edgetl.preprocess import preprocess_files
    from edgetl.train import predict

    path = folder / "train_logits.npy"
    with run.reporter.task("teacher logits for the train images", len(index.train)) as update:
        inputs = preprocess_files([s.path for s in index.train], teacher_prep, progress=lambda done, total: update(1))
    _write_logits(path, predict(model, inputs))
    return {"train_logits": run.rel(path), "files": run.files_record(path)}


def _teacher_stage(run: RunDir, recipe: Recipe, index, data_record: dict, inputs_record: dict,
                   prep: Preprocessing) -> dict:
    teacher = recipe.distill.teacher
    precomputed = recipe.distill.teacher_logits == "precomputed"
    if teacher.backbone is not None:
        spec = teacher_spec(recipe, prep)
        extra = (lambda folder, model: _teacher_train_logits(run, folder, index, model, spec.prep)) if precomputed else None
        return _fine_tune_stage(run, "teacher", recipe, spec, index, data_record, inputs_record, prep, extra=extra)
    checkpoint = recipe.resolve_path(teacher.checkpoint)
    if not checkpoint.is_file():
        raise RecipeError(f"{recipe.source or 'recipe'}: distill.teacher.checkpoint {checkpoint} does not exist.")
    inputs = {"checkpoint": sha256_file(checkpoint), "data": data_record["files"], "precomputed": precomputed,
              "val": inputs_record["files"][inputs_record["val"]]}

    def work(folder: Path) -> dict:
        from edgetl.train import predict

        try:
            model, saved = _load_saved(checkpoint)
        except Exception as exc:
            raise RecipeError(f"{recipe.source or 'recipe'}: distill.teacher.checkpoint {checkpoint} is not an edgetl "
                              f"model.pt ({type(exc).__name__}: {first_line(exc)}).") from None
        if list(saved.get("classes", [])) != list(index.classes):
            raise RecipeError(f"{recipe.source or 'recipe'}: distill.teacher.checkpoint {checkpoint} was trained on "
                              f"classes {saved.get('classes')}, this dataset has {index.classes}.")
        own = Preprocessing.from_json(saved["preprocessing"]) if "preprocessing" in saved else _teacher_prep(
            saved["backbone"], prep)
        teacher_prep = Preprocessing.from_json({**prep.to_json(), "mean": list(own.mean), "std": list(own.std)})
        model_path, logits_path = folder / "model.pt", folder / "val_logits.npy"
        _save_model(model_path, model, saved["backbone"], float(saved["dropout"]), index.classes, teacher_prep,
                    saved.get("structure"))
        val_inputs = _renormalize(np.load(run.root / inputs_record["val"], mmap_mode="r"), prep, teacher_prep)
        logits = predict(model, val_inputs)
        _write_logits(logits_path, logits)
        from edgetl.evaluate import top1_accuracy

        record = {"backbone": saved["backbone"], "checkpoint": str(checkpoint), "model": run.rel(model_path),
                  "val_logits": run.rel(logits_path),
                  "val_accuracy": round(top1_accuracy(logits, np.load(run.root / inputs_record["val_labels"])), 4),
                  "params": sum(p.numel() for p in model.parameters()),
                  "files": run.files_record(model_path, logits_path)}
        if precomputed:
            added = _teacher_train_logits(run, folder, index, model, teacher_prep)
            record["files"] |= added.pop("files")
            record |= added
        return record

    return run.stage("teacher", inputs, work)


def _onnx_fp32_latencies(run: RunDir, recipe: Recipe, models: dict, example: np.ndarray, folder: Path) -> dict:
    """Export each of `models` ({name: torch model}) to a scratch ONNX fp32 file and measure them in alternating
    rounds (first thread count, batch 1), so a change in machine load during the measurement hits them alike."""
    import tempfile

    from edgetl.bench.harness import LatencyPlan, measure_interleaved
    from edgetl.export import ExportRequest
    from edgetl.export.onnx import export_fp32
    from edgetl.runtime import load_runner

    cfg, threads = recipe.bench, recipe.bench.threads[0]
    plan = LatencyPlan(warmup=cfg.warmup, min_runs=cfg.min_runs, min_time_s=cfg.min_time_s, max_runs=cfg.max_runs)
    with tempfile.TemporaryDirectory(prefix="edgetl-prune-", dir=folder) as scratch:
        runners = []
        for name, model in models.items():
            exported = export_fp32(model, ExportRequest(Path(scratch) / name, "fp32", example, {}),
                                   exporter=recipe.export.exporter, opset=recipe.export.opset)
            runners.append(load_runner(exported.path, threads=threads))
        with run.reporter.task(f"benchmarking the {' and '.join(models)} models (onnx fp32, {threads} thread(s), "
                               "alternating rounds)", None) as update:
            stats = measure_interleaved(runners, np.ascontiguousarray(example[:1]), plan, update=update)
        del runners
    return {name: {**s, "threads": threads} for name, s in zip(models, stats, strict=True)}


def _prune_stage(run: RunDir, recipe: Recipe, index, data_record: dict, inputs_record: dict, prep: Preprocessing,
                 train_record: dict, teacher_record: dict | None) -> dict:
    cfg = recipe.prune
    self_kd = cfg.recover.distill and cfg.recover.teacher == "unpruned"
    use_kd = teacher_record is not None and cfg.recover.distill and not self_kd
    inputs = {"prune": section_dict(cfg), "model": train_record["files"][train_record["model"]],
              "train": section_dict(recipe.train), "data": data_record["files"],
              "val": inputs_record["files"][inputs_record["val"]],
              "calibration": inputs_record["files"][inputs_record["calibration"]], "workers": recipe.data.workers,
              "bench": section_dict(recipe.bench) | {"threads": recipe.bench.threads[0]},
              "exporter": [recipe.export.exporter, recipe.export.opset]}
    if use_kd:
        inputs |= _kd_inputs(recipe, teacher_record)

    def work(folder: Path) -> dict:
        import torch

        from edgetl.backbones import CreatedModel, get_backbone
        from edgetl.compress.prune import PrunePlan, apply_structure, count_macs_params, prune_to_macs, structure_of
        from edgetl.evaluate import top1_accuracy
        from edgetl.train import AugmentedImages, Checkpointer, fine_tune, predict, save_torch, start_run

        start_run(recipe.train)
        model, saved = _load_saved(run.root / train_record["model"])
        backbone = get_backbone(saved["backbone"])
        val = np.asarray(np.load(run.root / inputs_record["val"], mmap_mode="r"))
        val_labels = np.load(run.root / inputs_record["val_labels"])
        example = torch.from_numpy(np.array(val[:1]))
        macs_before, params_before = count_macs_params(model, example)
        distiller = _distiller(run, recipe, teacher_record, prep, cfg.recover) if use_kd else None
        if self_kd:  # the unpruned model teaches its pruned self
            distiller = _self_distiller(recipe, run.root / train_record["model"], prep, cfg.recover)
        teacher_backbone = teacher_record["backbone"] if use_kd else saved["backbone"]
        distiller = _with_feature_kd(distiller, cfg.recover.feature_weight, saved["backbone"], teacher_backbone)
        recover_cfg = recipe.train.model_copy(update={
            "lr": cfg.recover.lr, "backbone_lr_mult": 1.0, "probe_epochs": 0, "freeze_batchnorm": False,
            "mode": "finetune", "warmup_epochs": 0.0, "epochs": max(1, cfg.recover.epochs),
            "early_stop_patience": None})
        if cfg.recover.mixup is not None:
            recover_cfg = recover_cfg.model_copy(
                update={"augment": recover_cfg.augment.model_copy(update={"mixup": cfg.recover.mixup})})

        def created(module) -> CreatedModel:
            return CreatedModel(module, backbone, prep, None, {})

        pruned_path = folder / "pruned.pt"
        key = sha256_json(inputs)
        resumable = torch.load(pruned_path, map_location="cpu", weights_only=True) if pruned_path.is_file() else None
        if resumable and resumable.get("key") == key:
            pruned = apply_structure(copy.deepcopy(model), resumable["structure"])
            pruned.load_state_dict(resumable["state_dict"])
            run.reporter.info("  reusing the pruned model of the interrupted run")
        else:
            images = AugmentedImages(index.train, prep, recipe.train)

            def gradients(module) -> None:
                # Taylor importance: |weight × gradient| of the training loss over a few augmented batches.
                loader = torch.utils.data.DataLoader(images, batch_size=recipe.train.batch_size, shuffle=True,
                                                     generator=torch.Generator().manual_seed(recipe.train.seed))
                module.eval()
                for number, (batch, labels, _) in enumerate(loader):
                    if number >= cfg.taylor_batches:
                        break
                    torch.nn.functional.cross_entropy(module(batch), labels).backward()

            def between_steps(module, step: int) -> None:
                if cfg.step_epochs:
                    step_cfg = recover_cfg.model_copy(update={"epochs": cfg.step_epochs, "early_stop_patience": None})
                    fine_tune(created(module), index.train, val, val_labels, step_cfg, recipe.data.workers,
                              None, run.reporter, distiller)

            plan = PrunePlan(cfg.target_macs, cfg.importance, cfg.scope, cfg.steps, cfg.round_to, cfg.max_layer_ratio,
                             cfg.residual)
            calibration = torch.from_numpy(np.load(run.root / inputs_record["calibration"]))
            pruned = prune_to_macs(model, example, backbone.head, plan, gradients, between_steps, run.reporter,
                                   calibration)
            save_torch(pruned_path, {"key": key, "structure": structure_of(pruned), "state_dict": pruned.state_dict()})
        pruned.eval()
        accuracy_pruned = top1_accuracy(predict(pruned, val), val_labels)
        run.reporter.info(f"  pruned: val acc {accuracy_pruned:.2f}% before recovery")
        history: list[dict] = []
        if cfg.recover.epochs:
            result = fine_tune(created(pruned), index.train, val, val_labels, recover_cfg, recipe.data.workers,
                               Checkpointer(folder / "checkpoint.pt", key), run.reporter, distiller)
            history = result.history
        pruned.eval()
        macs_after, params_after = count_macs_params(pruned, example)
        model_path, logits_path, history_path = folder / "model.pt", folder / "val_logits.npy", folder / "history.json"
        _save_model(model_path, pruned, saved["backbone"], float(saved["dropout"]), index.classes, prep,
                    structure_of(pruned))
        pruned = _load_trained(model_path)
        logits = predict(pruned, val)
        _write_logits(logits_path, logits)
        write_json(history_path, history)
        unpruned = _load_trained(run.root / train_record["model"])
        latencies = _onnx_fp32_latencies(run, recipe, {"unpruned": unpruned, "pruned": pruned}, val[:2], folder)
        latency_before, latency_after = latencies["unpruned"], latencies["pruned"]
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        pruned_path.unlink(missing_ok=True)
        accuracy_after = top1_accuracy(logits, val_labels)
        ratio = latency_after["p50"] / latency_before["p50"]
        run.reporter.info(f"  MACs {macs_before / 1e6:.1f}M → {macs_after / 1e6:.1f}M, val acc "
                          f"{train_record['val_accuracy']:.2f}% → {accuracy_after:.2f}%, onnx fp32 p50 "
                          f"{latency_before['p50']:.2f} → {latency_after['p50']:.2f} ms ({ratio:.2f}×)")
        return {"backbone": saved["backbone"], "model": run.rel(model_path), "val_logits": run.rel(logits_path),
                "history": run.rel(history_path), "macs_before": macs_before, "macs_after": macs_after,
                "params_before": params_before, "params_after": params_after, "params": params_after,
                "macs_ratio": round(macs_after / macs_before, 4), "val_accuracy_before": train_record["val_accuracy"],
                "val_accuracy_pruned": round(accuracy_pruned, 4), "val_accuracy_after": round(accuracy_after, 4),
                "val_accuracy": round(accuracy_after, 4), "recover_epochs_run": len(history),
                "recover_kd_from": "unpruned" if self_kd else ("teacher" if use_kd else None),
                "onnx_fp32_latency_ms_before": latency_before, "onnx_fp32_latency_ms_after": latency_after,
                "onnx_fp32_latency_ratio": round(ratio, 4),
                "files": run.files_record(model_path, logits_path, history_path)}

    return run.stage("prune", inputs, work)


def _qat_stage(run: RunDir, recipe: Recipe, index, data_record: dict, inputs_record: dict, prep: Preprocessing,
               model_record: dict, teacher_record: dict | None) -> dict:
    cfg = recipe.quantize
    self_kd = cfg.distill and cfg.teacher == "float"
    use_kd = not self_kd and teacher_record is not None and cfg.distill
    inputs = {"quantize": section_dict(cfg) | {"keep_ptq": None}, "model": model_record["files"][model_record["model"]],
              "train": section_dict(recipe.train), "data": data_record["files"],
              "val": inputs_record["files"][inputs_record["val"]], "workers": recipe.data.workers,
              "calibration": inputs_record["files"][inputs_record["calibration"]]}
    if use_kd:
        inputs |= _kd_inputs(recipe, teacher_record)
    elif self_kd:
        inputs["kd"] = _kd_settings(recipe, cfg)

    def work(folder: Path) -> dict:
        import torch

        from edgetl.compress.qat import calibrate, convert, export_onnx, prepare_qat
        from edgetl.train import AugmentedImages, Checkpointer, build_optimizer, start_run, train_loop

        start_run(recipe.train)
        model = _load_trained(run.root / model_record["model"])
        val = np.asarray(np.load(run.root / inputs_record["val"], mmap_mode="r"))
        val_labels = np.load(run.root / inputs_record["val_labels"])
        kd = " with KD from the teacher" if use_kd else (" with KD from the float model" if self_kd else "")
        run.reporter.info(f"  fake-quantized fine-tune of {model_record['backbone']} (torchao PT2E, u8 activations, "
                          f"s8 per-channel weights){kd}")
        prepared = prepare_qat(model, torch.from_numpy(np.array(val[:2])))
        calibration = np.load(run.root / inputs_record["calibration"], mmap_mode="r")
        with run.reporter.task(f"calibrating activation ranges on {len(calibration)} images", None):
            calibrate(prepared, (torch.from_numpy(np.array(calibration[i:i + 32]))
                                 for i in range(0, len(calibration), 32)))
        train_cfg = recipe.train.model_copy(update={
            "epochs": cfg.epochs, "lr": cfg.lr, "backbone_lr_mult": 1.0, "probe_epochs": 0, "warmup_epochs": 0.0,
            "freeze_batchnorm": False, "mode": "finetune", "early_stop_patience": None})
        optimizer = build_optimizer([{"params": list(prepared.parameters()), "lr": cfg.lr}], train_cfg)
        distiller = _distiller(run, recipe, teacher_record, prep, cfg) if use_kd else None
        if self_kd:  # the float model teaches its fake-quantized copy
            distiller = _self_distiller(recipe, run.root / model_record["model"], prep, cfg)
        result = train_loop(prepared, optimizer, AugmentedImages(index.train, prep, recipe.train), val, val_labels,
                            # Eval mode while training: batch norm keeps its running statistics (folded into the int8
                            # convolutions as they are) and dropout is off.
                            train_cfg, recipe.data.workers, lambda epoch: prepared.eval(),
                            Checkpointer(folder / "checkpoint.pt", sha256_json(inputs)), run.reporter, distiller)
        onnx_path, history_path = folder / "model_int8_qat.onnx", folder / "history.json"
        with run.reporter.task("exporting the QAT model to ONNX QDQ", None):
            converted = convert(prepared)
            with atomic_path(onnx_path) as tmp:
                details = export_onnx(converted, val[:2], tmp)
        write_json(history_path, result.history)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        return {"onnx": run.rel(onnx_path), "history": result.history, "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch, "fake_quant_val_accuracy": round(result.val_accuracy, 4),
                "kd_from": "float" if self_kd else ("teacher" if use_kd else None),
                "export": details | {"method": "torchao PT2E QAT", "activations": "uint8", "weights": "int8 (7-bit)",
                                     "activation_ranges": f"min/max on {len(calibration)} calibration images, frozen",
                                     "batchnorm": "running statistics, frozen", "epochs": cfg.epochs},
                "files": run.files_record(onnx_path, history_path)}

    return run.stage("qat", inputs, work)


def _artifact_metadata(recipe: Recipe, index, prep: Preprocessing, backbone: str) -> dict[str, str]:
    """What every exported file carries (in the file where the format allows, and in model.json beside it)."""
    return {"edgetl_version": __version__, "labels": json.dumps(index.classes),
            "preprocessing": json.dumps(prep.to_json()), "layout": "NCHW",
            "input_shape": json.dumps([None, 3, prep.crop, prep.crop]), "backbone": backbone,
            "recipe_sha256": sha256_json(recipe.model_dump(mode="json"))}


def _format_options(recipe: Recipe, fmt: str) -> dict:
    """The recipe's settings an exporter of `fmt` reads (ExportRequest.options)."""
    e = recipe.export
    if fmt == "onnx":
        return {"exporter": e.exporter, "opset": e.opset, "int8_format": e.int8_format, "per_channel": e.per_channel,
                "keep_fp32": e.int8_keep_fp32}
    if fmt == "tflite":
        return {"layout": e.tflite.layout, "int8": e.tflite.int8, "keep_fp32": e.int8_keep_fp32}
    return {"accuracy_aware": e.openvino.accuracy_control, "max_drop_pp": recipe.verify.max_accuracy_drop_pp,
            "keep_fp32": e.int8_keep_fp32}


def _more_calibration(run: RunDir, recipe: Recipe, index, prep: Preprocessing, current: int) -> np.ndarray:
    """Four times as many calibration images as the inputs stage chose (up to every train image), same seed."""
    from edgetl.preprocess import preprocess_files

    count = min(4 * current, len(index.train))
    chosen = np.random.default_rng(recipe.data.seed).choice(len(index.train), count, replace=False)
    paths = [index.train[i].path for i in sorted(chosen)]
    with run.reporter.task(f"preprocessing {count} calibration images", count) as update:
        return preprocess_files(paths, prep, progress=lambda done, total: update(1))


def _export_stage(run: RunDir, recipe: Recipe, index, inputs_record: dict, model_record: dict,
                  prep: Preprocessing, qat_record: dict | None = None) -> dict:
    metadata = _artifact_metadata(recipe, index, prep, model_record["backbone"])
    inputs = {"export": section_dict(recipe.export), "model": model_record["files"][model_record["model"]],
              "calibration": inputs_record["files"][inputs_record["calibration"]],
              "metadata": {k: v for k, v in metadata.items() if k != "recipe_sha256"}}
    qat_formats = ("onnx", "openvino")  # the QAT model is ONNX QDQ, which OpenVINO reads as an int8 IR
    if qat_record is not None:
        inputs |= {"quantize": section_dict(recipe.quantize), "qat": qat_record["files"][qat_record["onnx"]]}
    validated = recipe.verify.accuracy_aware_retry or recipe.export.openvino.accuracy_control
    if validated:  # int8 is then made against the val split and the torch model's accuracy on it
        inputs |= {"budget": [recipe.verify.max_accuracy_drop_pp, recipe.verify.accuracy_aware_retry],
                   "val": inputs_record["files"][inputs_record["val"]],
                   "torch_logits": model_record["files"][model_record["val_logits"]]}

    def work(folder: Path) -> dict:
        import importlib

        import onnx

        from edgetl.artifact import write_model_json
        from edgetl.export import ExportRequest, ExportResult
        from edgetl.export.onnx import set_metadata
        from edgetl.export.openvino import from_qdq_onnx
        from edgetl.formats import FORMATS

        model = _load_trained(run.root / model_record["model"])
        example = np.asarray(np.load(run.root / inputs_record["val"], mmap_mode="r")[:2])
        calibration = np.asarray(np.load(run.root / inputs_record["calibration"], mmap_mode="r"))
        wanted = recipe.export.precisions
        produced = []  # (name, format, precision, result)
        onnx_fp32 = None

        val = labels = None
        if validated:
            val = np.load(run.root / inputs_record["val"], mmap_mode="r")
            labels = np.load(run.root / inputs_record["val_labels"])

        def request(fmt: str, name: str, precision: str, fp32_file: Path | None) -> ExportRequest:
            options = _format_options(recipe, fmt) | ({"validation": (val, labels)} if validated else {})
            return ExportRequest(folder / name, precision, example, {**metadata, "precision": precision},
                                 calibration=calibration, options=options, fp32_file=fp32_file,
                                 onnx_file=onnx_fp32.path if onnx_fp32 else None)

        def int8_ptq(exporter, req: ExportRequest):
            if not recipe.verify.accuracy_aware_retry:
                return exporter.export(model, req, run.reporter)
            from edgetl.evaluate import runner_logits, top1_accuracy
            from edgetl.export.accuracy import quantize_within_budget
            from edgetl.runtime import load_runner

            def accuracy(path: Path) -> float:
                return top1_accuracy(runner_logits(load_runner(path, threads=os.cpu_count() or 1), val), labels)

            reference = top1_accuracy(np.load(run.root / model_record["val_logits"]), labels)
            return quantize_within_budget(exporter, model, req, accuracy, reference,
                                          recipe.verify.max_accuracy_drop_pp,
                                          lambda: _more_calibration(run, recipe, index, prep, len(calibration)),
                                          run.reporter)

        # ONNX fp32 first (OpenVINO converts from it), then each format's fp32, from which its fp16 and int8 are made.
        formats = ["onnx"] + [f for f in recipe.export.formats if f != "onnx"]
        for fmt in formats:
            exporter = importlib.import_module(FORMATS[fmt].exporter)
            fp32 = exporter.export(model, request(fmt, f"{fmt}_fp32", "fp32", None), run.reporter)
            onnx_fp32 = onnx_fp32 or fp32
            how = ", ".join(f"{k} {v}" for k, v in fp32.details.items() if k in ("exporter", "converter", "layout"))
            run.reporter.info(f"  {fmt} fp32 written ({how})")
            if fmt not in recipe.export.formats:
                continue
            if "fp32" in wanted:
                produced.append((f"{fmt}_fp32", fmt, "fp32", fp32))
            if "fp16" in wanted:
                produced.append((f"{fmt}_fp16", fmt, "fp16", exporter.export(
                    model, request(fmt, f"{fmt}_fp16", "fp16", fp32.path), run.reporter)))
            if "int8" not in wanted:
                continue
            from_qat = qat_record is not None and fmt in qat_formats
            if from_qat:
                qat_onnx = run.root / qat_record["onnx"]
                int8_request = request(fmt, f"{fmt}_int8", "int8", fp32.path)
                if fmt == "onnx":
                    path = int8_request.out_dir / "model.onnx"
                    with atomic_path(path) as tmp:
                        shutil.copyfile(qat_onnx, tmp)
                        set_metadata(tmp, {**int8_request.metadata, "quantization": "qat"})
                        onnx.checker.check_model(str(tmp), full_check=True)
                    result = ExportResult(path, {"quantization": "qat", **qat_record["export"]})
                else:
                    result = from_qdq_onnx(qat_onnx, int8_request)
                produced.append((f"{fmt}_int8", fmt, "int8", result))
            if not from_qat or recipe.quantize.keep_ptq:
                name = f"{fmt}_int8_ptq" if from_qat else f"{fmt}_int8"
                produced.append((name, fmt, "int8", int8_ptq(exporter, request(fmt, name, "int8", fp32.path))))
        for fmt in formats:  # fp32 files made only as the source of other files
            if "fp32" not in wanted or fmt not in recipe.export.formats:
                shutil.rmtree(folder / f"{fmt}_fp32")
        records = []
        for name, fmt, precision, result in produced:
            files = [*FORMATS[fmt].files(result.path), write_model_json(result, name, fmt, precision, metadata)]
            records.append({"name": name, "format": fmt, "precision": precision, "path": run.rel(result.path),
                            "size_bytes": sum(f.stat().st_size for f in files[:-1]),
                            "sha256": sha256_file(result.path),
                            **({"quantization": result.details["quantization"]} if precision == "int8" else {}),
                            "files": run.files_record(*files), "export": result.details})
        return {"artifacts": records, "files": {k: v for r in records for k, v in r["files"].items()}}

    return run.stage("export", inputs, work)


def _verify_stage(run: RunDir, recipe: Recipe, index, inputs_record: dict, model_record: dict,
                  export_record: dict) -> dict:
    inputs = {"verify": section_dict(recipe.verify), "artifacts": export_record["files"],
              "val": inputs_record["files"][inputs_record["val"]],
              "torch_logits": model_record["files"][model_record["val_logits"]]}

    def work(folder: Path) -> dict:
        from edgetl.evaluate import confusion_matrix, runner_logits, top1_accuracy
        from edgetl.runtime import load_runner

        val = np.load(run.root / inputs_record["val"], mmap_mode="r")
        labels = np.load(run.root / inputs_record["val_labels"])
        torch_logits = np.load(run.root / model_record["val_logits"])
        torch_accuracy = top1_accuracy(torch_logits, labels)
        results = {}
        for artifact in export_record["artifacts"]:
            try:
                runner = load_runner(run.root / artifact["path"], threads=os.cpu_count() or 1)
                with run.reporter.task(f"evaluating {artifact['name']} on {len(val)} val images", len(val)) as update:
                    logits = runner_logits(runner, val, update=update)
            except ModelFileError as exc:  # a file the build itself wrote: its export is at fault, not the input
                raise ExportError(f"{artifact['name']} was exported but its runtime cannot run it: {exc} Try "
                                  "another export.exporter, export.opset or export.int8_format, or leave that "
                                  "precision out.") from None
            parity_n = min(recipe.verify.parity_images, len(val))
            diff = float(np.abs(logits[:parity_n] - torch_logits[:parity_n]).max())
            acc = top1_accuracy(logits, labels)
            results[artifact["name"]] = {
                "val_accuracy": round(acc, 4), "accuracy_drop_pp": round(torch_accuracy - acc, 4),
                "max_abs_logit_diff": diff, "parity_images": parity_n,
                "prediction_agreement": round(float((logits.argmax(1) == torch_logits.argmax(1)).mean() * 100), 4),
                "confusion_matrix": confusion_matrix(logits, labels, len(index.classes))}
            run.reporter.info(f"  {artifact['name']}: val acc {acc:.2f}% (torch {torch_accuracy:.2f}%), "
                              f"max |logit diff| {diff:.2e}")
            tolerance = {"fp32": ("parity_atol", recipe.verify.parity_atol),
                         "fp16": ("parity_atol_fp16", recipe.verify.parity_atol_fp16)}.get(artifact["precision"])
            if tolerance and diff > tolerance[1]:
                raise ParityError(f"{run.root / artifact['path']} disagrees with the torch model: max |logit diff| "
                                  f"{diff:.3g} on {parity_n} val images exceeds verify.{tolerance[0]} "
                                  f"({tolerance[1]:g}). The export is wrong"
                                  f"{'; try `export.exporter: legacy`' if artifact['format'] == 'onnx' else ''}.")
        return {"torch_val_accuracy": round(torch_accuracy, 4), "artifacts": results, "files": {}}

    return run.stage("verify", inputs, work)


def _bench_stage(run: RunDir, recipe: Recipe, inputs_record: dict, export_record: dict) -> dict:
    inputs = {"bench": section_dict(recipe.bench), "artifacts": export_record["files"],
              "val": inputs_record["files"][inputs_record["val"]]}

    def work(folder: Path) -> dict:
        from edgetl.bench.harness import LatencyPlan, measure_interleaved
        from edgetl.runtime import load_runner

        cfg = recipe.bench
        plan = LatencyPlan(warmup=cfg.warmup, min_runs=cfg.min_runs, min_time_s=cfg.min_time_s, max_runs=cfg.max_runs)
        val = np.load(run.root / inputs_record["val"], mmap_mode="r")
        batch = np.ascontiguousarray(np.resize(np.asarray(val[:cfg.batch]), (cfg.batch, *val.shape[1:])))
        artifacts = export_record["artifacts"]
        results: dict[str, dict[str, dict]] = {a["name"]: {} for a in artifacts}
        for threads in cfg.threads:
            # Every artifact in alternating rounds: a change in machine load during the stage hits them alike, so
            # ratios between them (int8 / fp32, one format / another) are not skewed by when each was measured.
            runners = [load_runner(run.root / a["path"], threads=threads) for a in artifacts]
            with run.reporter.task(f"benchmarking {len(artifacts)} artifacts ({threads} thread"
                                   f"{'s' if threads > 1 else ''}, batch {cfg.batch}, alternating rounds)",
                                   None) as update:
                measured = measure_interleaved(runners, batch, plan, update=update)
            del runners
            for artifact, stats in zip(artifacts, measured, strict=True):
                results[artifact["name"]][str(threads)] = stats
                run.reporter.info(f"  {artifact['name']} @ {threads} thread(s): p50 {stats['p50']:.2f} ms, "
                                  f"p90 {stats['p90']:.2f} ms ({stats['runs']} runs)")
        return {"batch": cfg.batch, "latency_ms": results, "method": "alternating rounds", "files": {}}

    return run.stage("bench", inputs, work)


def _environment() -> dict:
    from edgetl.bench.environment import machine_info, package_version

    # Only what summary.json has always carried (usable_cores is new and harmless).
    return {**machine_info(), **{name: package_version(name) for name in (
        "torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "litert-torch", "ai-edge-litert",
        "ai-edge-quantizer")}}


def _compression_summary(recipe: Recipe, records: dict) -> dict:
    """The `distill`, `prune` and `quantize` blocks of summary.json (null when the recipe has no such stage)."""
    out: dict[str, Any] = {"distill": None, "prune": None}
    teacher, train = records.get("teacher"), records["train"]
    if teacher is not None:
        d = recipe.distill
        baseline = records.get("baseline")
        out["distill"] = {
            "teacher": {"backbone": teacher["backbone"], "val_accuracy": teacher["val_accuracy"],
                        "params": teacher["params"], "checkpoint": teacher.get("checkpoint"), "path": teacher["model"]},
            "student": {"backbone": train["backbone"], "val_accuracy": train["val_accuracy"], "params": train["params"]},
            "student_without_kd_val_accuracy": baseline["val_accuracy"] if baseline else None,
            "kd_gain_pp": round(train["val_accuracy"] - baseline["val_accuracy"], 4) if baseline else None,
            "temperature": d.temperature, "alpha": d.alpha, "teacher_logits": d.teacher_logits}
    pruned = records.get("prune")
    if pruned is not None:
        keys = ("macs_before", "macs_after", "params_before", "params_after", "macs_ratio", "val_accuracy_before",
                "val_accuracy_pruned", "val_accuracy_after", "onnx_fp32_latency_ratio", "onnx_fp32_latency_ms_before",
                "onnx_fp32_latency_ms_after", "recover_epochs_run")
        out["prune"] = {key: pruned[key] for key in keys} | {"recover_kd_from": pruned.get("recover_kd_from"),
            "target_macs": recipe.prune.target_macs, "importance": recipe.prune.importance,
            "scope": recipe.prune.scope, "residual": recipe.prune.residual, "steps": recipe.prune.steps,
            "path": pruned["model"]}
    qat = records.get("qat")
    out["quantize"] = {"mode": recipe.quantize.mode, **({key: qat[key] for key in (
        "epochs_run", "best_epoch", "fake_quant_val_accuracy", "kd_from", "history") if key in qat} if qat else {})}
    return out


def _summary(recipe: Recipe, index, prep: Preprocessing, records: dict, run: RunDir, status: str) -> dict:
    train_record, export_record, verify_record = records["train"], records["export"], records["verify"]
    bench_record = records.get("bench")
    reference = records.get("prune") or train_record
    first_threads = str(recipe.bench.threads[0])
    artifacts = []
    for artifact in export_record["artifacts"]:
        verified = verify_record["artifacts"][artifact["name"]]
        latency = (bench_record or {}).get("latency_ms", {}).get(artifact["name"], {})
        entry = {key: artifact[key] for key in ("name", "format", "precision", "path", "size_bytes", "sha256")}
        entry.update({key: verified[key] for key in ("val_accuracy", "accuracy_drop_pp", "max_abs_logit_diff",
                                                     "prediction_agreement")})
        entry["latency_ms"] = dict(latency[first_threads]) if latency else None
        entry["threads"] = int(first_threads)
        entry["batch"] = recipe.bench.batch
        entry["latency_by_threads"] = latency
        if "quantization" in artifact:
            entry["quantization"] = artifact["quantization"]
        entry["files"] = list(artifact["files"])  # the model file, its sidecars, and model.json
        entry["files_sha256"] = dict(artifact["files"])  # what a bundle checks each file against
        entry["model_json"] = entry["files"][-1]
        entry["export"] = artifact["export"]
        entry["confusion_matrix"] = verified["confusion_matrix"]
        artifacts.append(entry)
    return {
        "edgetl_version": __version__,
        "status": status,
        "recipe": recipe.source or "<recipe>",
        "recipe_name": recipe.name,
        "recipe_sha256": sha256_json(recipe.model_dump(mode="json")),
        "classes": index.classes,
        "data": {"root": index.root, "train_images": len(index.train), "val_images": len(index.val),
                 "val_source": index.val_source, "class_counts": index.class_counts(),
                 "bad_images": index.bad_images, "converted_to_rgb": index.converted,
                 "ignored_files": len(index.ignored_files)},
        "model": {"backbone": recipe.model.backbone, "weights": recipe.model.weights,
                  "weights_file": train_record["weights_file"], "mode": recipe.train.mode,
                  "val_accuracy": train_record["val_accuracy"], "epochs_run": train_record["epochs_run"],
                  "final_epoch_val_accuracy": train_record["final_epoch_val_accuracy"],
                  "best_epoch": train_record["best_epoch"], "params": train_record["params"],
                  # processes that fine-tuned it (edgetl build --nproc/--nnodes); 1 for stages cached before
                  "world_size": train_record.get("world_size", 1),
                  "preprocessing": prep.to_json(), "path": train_record["model"]},
        **_compression_summary(recipe, records),
        # The torch model every artifact was exported from and is compared with (pruned when the recipe prunes).
        "reference_model": {"stage": "prune" if records.get("prune") else "train", "path": reference["model"],
                            "backbone": reference["backbone"], "params": reference["params"],
                            "val_accuracy": verify_record["torch_val_accuracy"]},
        "budget": {"max_accuracy_drop_pp": recipe.verify.max_accuracy_drop_pp},
        "artifacts": artifacts,
        "stages": run.timings,
        "environment": _environment(),
    }


def _write_outputs(run: RunDir, summary: dict, plots: bool = True) -> None:
    from edgetl.report import write_report

    write_json(run.root / "summary.json", summary)
    write_report(run.root, summary, plots=plots)


# What a run directory holds besides its stage folders (an older edgetl's run is recognised by these names).
_RUN_FILES = {"summary.json", "report.md", "report.html", "report", "search", "search.json", "bundle", RUN_MARKER}


def _is_old_run(folder: Path) -> bool:
    """A run directory an edgetl without markers wrote: only edgetl's names; each stage folder with its stage.json
    (or, for a stage killed mid-way, only its resumable state); or a search's folder of sub-runs."""
    entries = list(folder.iterdir())
    if any(e.name not in STAGES and e.name not in _RUN_FILES and not e.name.startswith(".") for e in entries):
        return False
    stage_dirs = [e for e in entries if e.name in STAGES]

    def finished(stage: Path) -> bool:
        return stage.is_dir() and (_read_marker(stage / "stage.json") or {}).get("stage") == stage.name

    def killed(stage: Path) -> bool:  # only a checkpoint (and temp files) of a stage killed mid-way
        names = {c.name for c in stage.iterdir()} if stage.is_dir() else set()
        return bool(names & _KEEP_ON_RERUN) and all(n in _KEEP_ON_RERUN or n.endswith(".tmp") for n in names)

    if stage_dirs:  # the data stage always completes first: a folder without it is nobody's old run
        return finished(folder / "data") and all(finished(e) or killed(e) for e in stage_dirs)
    search = folder / "search"
    subs = [sub for sub in search.iterdir() if sub.is_dir()] if search.is_dir() else []
    runs = [run for sub in subs for run in ([*sub.iterdir()] if sub.name == "untrained" else [sub]) if run.is_dir()]
    return (folder / "search.json").is_file() and bool(runs) and all(_is_old_run(run) for run in runs)


def claim_run_dir(root: Path) -> None:
    """Make `root` a run directory: refuse a folder of other files; create it and write the marker otherwise."""
    refuse_unmarked(root, RUN_MARKER, "a run directory", "--out", adopt=_is_old_run)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not is_marked(root, RUN_MARKER):
            mark(root, RUN_MARKER)
    except OSError as exc:
        raise StorageError(f"Cannot create the run directory {root}: {exc.strerror}. Choose another with --out.") from None


def _dataset_folder(recipe: Recipe) -> Path:
    """Where the recipe's images are (or will be extracted to), without downloading anything."""
    from edgetl.data import default_cache_dir

    data = recipe.data
    return recipe.resolve_path(data.path) if data.path else default_cache_dir() / "datasets" / str(data.dataset)


def build(recipe: str | Path | Recipe, out: str | Path | None = None, reporter: Reporter | None = None,
          body: Callable[[Recipe, RunDir], dict] | None = None) -> dict:
    """Run every stage of `recipe` into its run directory; return the summary. `body(recipe, run)` replaces the
    stages with other work in the same run directory, under the same rules (a search: edgetl.api.build passes it)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    reporter = reporter or Reporter()
    root = Path(out) if out else Path("runs") / recipe.name
    check_apart(root, _dataset_folder(recipe), "--out", "the dataset")
    first_created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    claim_run_dir(root)
    reporter.info(f"edgetl {__version__}: building '{recipe.name}' into {root}")
    if body is None and recipe.search is not None:
        raise ValueError("a recipe with `search:` is built by edgetl.build (edgetl.api.build), not the pipeline")
    run = RunDir(root.resolve(), reporter, stage_names(recipe) if body is None else [])
    _mark_building(run.root / "summary.json")
    try:
        if body is not None:
            summary = body(recipe, run)
            _write_outputs(run, summary)
            reporter.info(f"done: {root / 'summary.json'}, {root / 'report.html'}")
            return summary
        return _run(recipe, run)
    except BaseException as exc:
        # A build that failed before any stage completed leaves no empty run directory behind.
        if first_created is not None and not any(first_created.glob("**/stage.json")):
            shutil.rmtree(first_created, ignore_errors=True)
        elif not isinstance(exc, AccuracyBudgetError):
            _record_failure(recipe, run, exc)
        raise


def _mark_building(summary_path: Path) -> None:
    """Say in the last build's summary that a build is under way: a stage it swaps in may replace files that summary
    lists, and a build killed outright (SIGKILL) cannot say so afterwards. Bundles refuse a run in this state."""
    try:
        summary = read_json(summary_path)
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(summary, dict) and summary.get("status") != "building":
        with contextlib.suppress(StorageError):  # a read-only run: the stage that must write says so, by name
            write_json(summary_path, {**summary, "status": "building"})


def _record_failure(recipe: Recipe, run: RunDir, exc: BaseException) -> None:
    """Rewrite summary.json with the build's real status: the last summary's fields, `status: failed: …` and the
    error, and only the artifacts whose files are still there as recorded. Bundles refuse such a run."""
    from edgetl.summary import check_summary

    summary_path = run.root / "summary.json"
    try:
        if not summary_path.is_file() and not any(run.root.glob("*/stage.json")):
            return
        try:
            previous = check_summary(read_json(summary_path), summary_path) if summary_path.is_file() else {}
        except (OSError, ValueError, RecursionError, EdgetlError):
            previous = {}  # a damaged summary is replaced, not a reason to hide the build's own error
        kept = [a for a in previous.get("artifacts", []) if a.get("files_sha256")
                and not changed_files(run.root, a["files_sha256"])]
        kind = "interrupted" if isinstance(exc, KeyboardInterrupt | SystemExit) else getattr(exc, "kind", "internal error")
        summary = {**previous, "edgetl_version": __version__, "status": f"failed: {kind}",
                   "error": str(exc)[:4000] or type(exc).__name__, "failed_stage": run.current,
                   "recipe": recipe.source or "<recipe>", "recipe_name": recipe.name,
                   "recipe_sha256": sha256_json(recipe.model_dump(mode="json")), "artifacts": kept,
                   "stages": {**(previous.get("stages") or {}), **run.timings}}
        _write_outputs(run, summary, plots=False)
    except Exception:
        pass  # the build's own error is the one to report


def _run(recipe: Recipe, run: RunDir) -> dict:
    reporter, root = run.reporter, run.root
    prep = _preprocessing(recipe)
    index, data_record = _data_stage(run, recipe)
    inputs_record = _inputs_stage(run, recipe, index, data_record, prep)
    records: dict[str, dict] = {}
    if recipe.distill is not None:
        records["teacher"] = _teacher_stage(run, recipe, index, data_record, inputs_record, prep)
        if recipe.distill.compare_without_kd:
            records["baseline"] = _train_stage(run, recipe, index, data_record, inputs_record, prep, stage="baseline")
    records["train"] = _train_stage(run, recipe, index, data_record, inputs_record, prep, records.get("teacher"))
    if recipe.prune is not None:
        records["prune"] = _prune_stage(run, recipe, index, data_record, inputs_record, prep, records["train"],
                                        records.get("teacher"))
    model_record = records.get("prune") or records["train"]
    if recipe.quantize.mode == "qat":
        records["qat"] = _qat_stage(run, recipe, index, data_record, inputs_record, prep, model_record,
                                    records.get("teacher"))
    records["export"] = _export_stage(run, recipe, index, inputs_record, model_record, prep, records.get("qat"))
    records["verify"] = verify_record = _verify_stage(run, recipe, index, inputs_record, model_record,
                                                      records["export"])
    over = {name: r for name, r in verify_record["artifacts"].items()
            if r["accuracy_drop_pp"] > recipe.verify.max_accuracy_drop_pp}
    if over:
        _write_outputs(run, _summary(recipe, index, prep, records, run, "failed: accuracy budget"))
        table = "; ".join(f"{name}: {r['val_accuracy']:.2f}% (a drop of {r['accuracy_drop_pp']:.2f} pp)"
                          for name, r in over.items())
        raise AccuracyBudgetError(f"{table} — more than verify.max_accuracy_drop_pp = "
                                  f"{recipe.verify.max_accuracy_drop_pp} pp below the torch model "
                                  f"({verify_record['torch_val_accuracy']:.2f}%). Details in {root / 'summary.json'}. "
                                  "Raise the budget, calibrate with more images (export.calibration_images) or drop "
                                  "that precision.")
    records["bench"] = _bench_stage(run, recipe, inputs_record, records["export"])
    summary = _summary(recipe, index, prep, records, run, "ok")
    _write_outputs(run, summary)
    reporter.info(f"done: {root / 'summary.json'}, {root / 'report.md'}")
    return summary
