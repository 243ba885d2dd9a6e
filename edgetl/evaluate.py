"""Accuracy of an exported model with its own runtime, on preprocessed images. Torch-free."""

from __future__ import annotations

import numpy as np

from edgetl.runtime import Runner


def runner_logits(runner: Runner, inputs: np.ndarray, batch_size: int = 16, update=None) -> np.ndarray:
    """Logits for every image, in batches (batch 1 when the model's batch dimension is fixed)."""
    if runner.input_shape and isinstance(runner.input_shape[0], int):
        batch_size = runner.input_shape[0]
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = np.ascontiguousarray(inputs[start:start + batch_size], dtype=np.float32)
        outputs.append(np.asarray(runner.run(batch)).reshape(len(batch), -1))
        if update:
            update(len(batch))
    return np.concatenate(outputs)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).mean() * 100.0) if len(labels) else 0.0


def confusion_matrix(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[list[int]]:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, logits.argmax(1)), 1)
    return matrix.tolist()
