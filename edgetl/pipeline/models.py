"""The torch models of a build: which model a stage fine-tunes (ModelSpec), how they are saved and loaded, and
the knowledge-distillation losses the training stages share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import RecipeError
from edgetl.fsutil import atomic_path, sha256_file
from edgetl.preprocess import Preprocessing
from edgetl.recipe import QuantizeSection, Recipe, RecoverSection, section_dict


def preprocessing(recipe: Recipe) -> Preprocessing:
    from edgetl.backbones import get_backbone

    default = get_backbone(recipe.model.backbone).default_weights().preprocessing
    override = {k: v for k, v in recipe.model.preprocessing.model_dump().items() if v is not None}
    prep = Preprocessing.from_json({**default.to_json(), **override})
    if prep.resize < prep.crop:
        raise RecipeError(f"{recipe.source or 'recipe'}: model.preprocessing.resize ({prep.resize}) must be at least "
                          f"model.preprocessing.crop ({prep.crop}): images are resized, then center-cropped.")
    return prep


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


def teacher_prep(backbone: str, student_prep: Preprocessing) -> Preprocessing:
    # The teacher sees the student's pixels (same resize, crop, interpolation) with its own normalisation, so the
    # online teacher can take the student's augmented batch after a per-channel affine map.
    from edgetl.backbones import get_backbone

    own = get_backbone(backbone).default_weights().preprocessing
    return Preprocessing.from_json({**student_prep.to_json(), "mean": list(own.mean), "std": list(own.std)})


def teacher_spec(recipe: Recipe, prep: Preprocessing) -> ModelSpec:
    """The teacher the build fine-tunes (`distill.teacher.backbone`)."""
    t = recipe.distill.teacher
    return ModelSpec("teacher", t.backbone, _resolve_weights(recipe, t.weights), t.dropout, recipe.teacher_train(),
                     teacher_prep(t.backbone, prep))


def create_recipe_model(recipe: Recipe, num_classes: int, spec: ModelSpec | None = None):
    """The recipe's backbone (or `spec`'s) with its starting weights; weight errors name the recipe file."""
    from edgetl.backbones import create_model
    from edgetl.errors import WeightsError

    spec = spec or student_spec(recipe, preprocessing(recipe))
    try:
        return create_model(spec.backbone, num_classes, spec.weights, spec.dropout)
    except WeightsError as exc:
        where = "distill.teacher" if spec.role == "teacher" else "model"
        raise WeightsError(f"{recipe.source or 'recipe'} ({where}): {exc}") from None


def save_model(path: Path, model, backbone: str, dropout: float, classes: list[str], prep: Preprocessing,
                structure: dict | None = None) -> None:
    from edgetl.train import save_torch

    saved = {"backbone": backbone, "num_classes": len(classes), "dropout": dropout, "classes": classes,
             "preprocessing": prep.to_json(), "state_dict": model.state_dict()}
    if structure is not None:
        saved["structure"] = structure  # pruned channel counts: rebuilt by compress.prune.apply_structure
    save_torch(path, saved)


def load_saved(model_path: Path):
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


def load_trained(model_path: Path):
    return load_saved(model_path)[0]


def renormalize(inputs: np.ndarray, source: Preprocessing, target: Preprocessing) -> np.ndarray:
    """Preprocessed images re-normalised from `source`'s mean/std to `target`'s (same pixels)."""
    if tuple(source.mean) == tuple(target.mean) and tuple(source.std) == tuple(target.std):
        return np.asarray(inputs, dtype=np.float32)
    s_mean, s_std = np.float32(source.mean).reshape(1, 3, 1, 1), np.float32(source.std).reshape(1, 3, 1, 1)
    t_mean, t_std = np.float32(target.mean).reshape(1, 3, 1, 1), np.float32(target.std).reshape(1, 3, 1, 1)
    return ((np.asarray(inputs, dtype=np.float32) * s_std + s_mean - t_mean) / t_std).astype(np.float32)


def write_logits(path: Path, logits: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(logits, dtype=np.float32))


def distiller(ctx, section: RecoverSection | QuantizeSection | None = None, prep: Preprocessing | None = None):
    """The KD loss of `recipe.distill` against the teacher stage's model or precomputed logits (with the temperature
    and alpha of `section`, the pruning recovery's or the QAT's, where it sets them)."""
    from edgetl.compress.distill import Distiller

    d = ctx.recipe.distill
    temperature, alpha = kd_settings(ctx.recipe, section) if section is not None else (d.temperature, d.alpha)
    if d.teacher_logits == "precomputed":
        return Distiller.from_logits(ctx.load("teacher", "train_logits"), temperature, alpha)
    teacher, saved = load_saved(ctx.path("teacher", "model"))
    return Distiller.online(teacher, prep or ctx.prep, Preprocessing.from_json(saved["preprocessing"]), temperature,
                            alpha)


def with_feature_kd(distiller, weight: float, student_backbone: str, teacher_backbone: str):
    """`distiller` plus the similarity-preserving feature term of the recovery (prune.recover.feature_weight; the
    recipe's schema made sure there is an online teacher when it is set)."""
    from edgetl.backbones import get_backbone

    if not weight:
        return distiller
    distiller.feature_weight = weight
    distiller.student_head, distiller.teacher_head = get_backbone(student_backbone).head, get_backbone(teacher_backbone).head
    return distiller


def kd_settings(recipe: Recipe, section: RecoverSection | QuantizeSection) -> tuple[float, float]:
    """Temperature and alpha of a later stage's KD loss (`section`: prune.recover or quantize): its own, else the
    distill section's, else 4 / 0.7."""
    d = recipe.distill
    return (section.temperature or (d.temperature if d else 4.0),
            section.alpha if section.alpha is not None else (d.alpha if d else 0.7))


def self_distiller(recipe: Recipe, model_path: Path, prep: Preprocessing,
                    section: RecoverSection | QuantizeSection):
    """KD from the model at `model_path`, in float, to the copy made from it (pruned or fake-quantized), which sees
    the same preprocessing."""
    from edgetl.compress.distill import Distiller

    return Distiller.online(load_trained(model_path), prep, prep, *kd_settings(recipe, section))


def kd_inputs(recipe: Recipe, teacher_record: dict) -> dict:
    return {"distill": section_dict(recipe.distill) | {"teacher": None, "compare_without_kd": None},
            "teacher": teacher_record["files"][teacher_record["model"]]}
