"""Knowledge distillation: the Hinton KD loss and the teacher's targets (online or precomputed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgetl.preprocess import Preprocessing


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
            alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 − α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)), batch-averaged."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean", log_target=True)
    # T² keeps the soft term's gradient scale independent of the temperature (Hinton et al., 2015).
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


def similarity_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, 2019): ‖G_s − G_t‖²_F / b², G = row-normalised F·Fᵀ of the batch's
    features. Compares how the images of a batch relate, so the two feature widths may differ (a pruned model's)."""
    b = student_features.shape[0]
    g_s = F.normalize(student_features.flatten(1) @ student_features.flatten(1).T, dim=1)
    g_t = F.normalize(teacher_features.flatten(1) @ teacher_features.flatten(1).T, dim=1)
    return ((g_s - g_t) ** 2).sum() / (b * b)


@dataclass
class Distiller:
    """Gives the teacher's logits for a training batch and combines them with the labels into the KD loss."""

    temperature: float
    alpha: float
    teacher: nn.Module | None = None  # online: run on the student's (augmented) batch
    precomputed: torch.Tensor | None = None  # precomputed: one row per train image, augmentation-free view
    scale: torch.Tensor | None = None  # per-channel affine from the student's normalisation to the teacher's
    shift: torch.Tensor | None = None
    # Similarity-preserving KD on the classifiers' input features (online teacher only): weight, the heads' paths.
    feature_weight: float = 0.0
    student_head: str | None = None
    teacher_head: str | None = None

    def watch(self, student: nn.Module) -> list:
        """Hooks capturing the student's and teacher's head inputs for the feature term (none when it is off); the
        caller removes them (hooks cannot be pickled, so they live only while one process trains)."""
        if not self.feature_weight:
            return []
        assert self.teacher is not None and self.student_head and self.teacher_head, "feature KD needs an online teacher"
        self._features: dict[str, torch.Tensor] = {}

        def keep(name: str):
            return lambda _module, args, _out: self._features.__setitem__(name, args[0])

        return [student.get_submodule(self.student_head).register_forward_hook(keep("student")),
                self.teacher.get_submodule(self.teacher_head).register_forward_hook(keep("teacher"))]

    @classmethod
    def online(cls, teacher: nn.Module, student_prep: Preprocessing, teacher_prep: Preprocessing, temperature: float,
               alpha: float) -> Distiller:
        """A teacher run on every augmented batch; inputs are re-normalised when the two preprocessings differ."""
        s_mean, s_std = torch.tensor(student_prep.mean), torch.tensor(student_prep.std)
        t_mean, t_std = torch.tensor(teacher_prep.mean), torch.tensor(teacher_prep.std)
        # x_teacher = ((x_student·σs + μs) − μt) / σt
        scale, shift = (s_std / t_std).view(1, 3, 1, 1), ((s_mean - t_mean) / t_std).view(1, 3, 1, 1)
        return cls(temperature, alpha, teacher=teacher.eval(), scale=scale, shift=shift)

    @classmethod
    def from_logits(cls, logits: np.ndarray, temperature: float, alpha: float) -> Distiller:
        """Targets computed once per train image (rows in the order of the train samples)."""
        return cls(temperature, alpha, precomputed=torch.from_numpy(np.asarray(logits, dtype=np.float32)))

    @torch.no_grad()
    def targets(self, batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for `batch` (train images `indices`)."""
        if self.precomputed is not None:
            return self.precomputed[indices]
        assert self.teacher is not None and self.scale is not None and self.shift is not None
        self.teacher.eval()
        return self.teacher(batch * self.scale + self.shift)

    def loss(self, student_logits: torch.Tensor, batch: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor,
             label_smoothing: float, mix: tuple[float, torch.Tensor] | None = None) -> torch.Tensor:
        """The KD loss of one batch; `mix` = (λ, permutation) when `batch` is λ·x + (1 − λ)·x[permutation]."""
        loss = self._logit_loss(student_logits, batch, indices, labels, label_smoothing, mix)
        if self.feature_weight:  # the teacher's forward in _logit_loss filled in its features
            loss = loss + self.feature_weight * similarity_loss(self._features["student"], self._features["teacher"])
        return loss

    def _logit_loss(self, student_logits: torch.Tensor, batch: torch.Tensor, indices: torch.Tensor,
                    labels: torch.Tensor, label_smoothing: float, mix: tuple[float, torch.Tensor] | None) -> torch.Tensor:
        if mix is None:
            return kd_loss(student_logits, self.targets(batch, indices), labels, self.temperature, self.alpha,
                           label_smoothing)
        lam, perm = mix
        if self.precomputed is not None:
            # The targets of unmixed views, mixed as distributions; T·log p is a logit vector with softmax p at T.
            t = self.temperature
            probs = lam * F.softmax(self.precomputed[indices] / t, 1) + (1 - lam) * F.softmax(
                self.precomputed[indices[perm]] / t, 1)
            targets = t * torch.log(probs.clamp_min(1e-12))
        else:
            targets = self.targets(batch, indices)  # the teacher sees the very mixed images the student sees
        return (lam * kd_loss(student_logits, targets, labels, self.temperature, self.alpha, label_smoothing)
                + (1 - lam) * kd_loss(student_logits, targets, labels[perm], self.temperature, self.alpha,
                                      label_smoothing))
