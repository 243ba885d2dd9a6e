"""The fine-tune loop's modes on a tiny dataset: what trains, what stays frozen, the schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgetl.backbones import create_model, trunk_groups
from edgetl.data import scan_dataset
from edgetl.preprocess import Preprocessing, preprocess_files
from edgetl.recipe import TrainSection
from edgetl.train import fine_tune, seed_everything, warmup_cosine

PREP = Preprocessing(resize=36, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("train")
    make_image_folder(root / "train", {"red": 16, "green": 16}, seed=1)
    make_image_folder(root / "val", {"red": 6, "green": 6}, seed=2)
    index = scan_dataset(root)
    val = preprocess_files([s.path for s in index.val], PREP)
    return index, val, np.array([s.label for s in index.val])


def model():
    seed_everything(0)
    created = create_model("efficientnet_lite0", 2)
    created.preprocessing = PREP
    return created


def snapshot(created):
    groups = trunk_groups(created.model, created.backbone)
    head = [p.detach().clone() for p in created.model.get_submodule(created.backbone.head).parameters()]
    return [[p.detach().clone() for p in g] for g in groups], head


def changed(before, after) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_linear_probe_trains_only_the_head(tiny_data):
    index, val, labels = tiny_data
    created = model()
    groups_before, head_before = snapshot(created)
    result = fine_tune(created, index.train, val, labels, TrainSection(mode="linear_probe", epochs=5, lr=0.01), 0)
    groups_after, head_after = snapshot(created)
    assert changed(head_before, head_after)
    assert not any(changed(b, a) for b, a in zip(groups_before, groups_after, strict=True))
    assert result.val_accuracy >= 90 and len(result.history) == 5


def test_gradual_unfreezes_from_the_top(tiny_data):
    index, val, labels = tiny_data
    cfg = TrainSection(mode="gradual", epochs=2, batch_size=8, probe_epochs=0, warmup_epochs=0,
                       early_stop_patience=None, freeze_batchnorm=True)
    created = model()
    trained = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        trained.append(sum(p.requires_grad for group in self.param_groups for p in group["params"]))
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        fine_tune(created, index.train, val, labels, cfg, 0)
    finally:
        torch.optim.AdamW.step = original
    head = sum(1 for _ in created.model.get_submodule(created.backbone.head).parameters())
    total = sum(1 for _ in created.model.parameters())
    steps = len(trained) // 2
    assert set(trained[:steps]) == {head} and set(trained[steps:]) == {total}


def test_finetune_moves_backbone_and_head_with_lower_backbone_lr(tiny_data):
    index, val, labels = tiny_data
    created = model()
    groups_before, head_before = snapshot(created)
    cfg = TrainSection(mode="finetune", epochs=2, batch_size=8, probe_epochs=2, early_stop_patience=None)
    result = fine_tune(created, index.train, val, labels, cfg, 0)
    groups_after, head_after = snapshot(created)
    assert changed(head_before, head_after) and changed(groups_before[-1], groups_after[-1])
    assert result.epochs_run == 2 and result.val_accuracy >= 90


def test_early_stopping_stops_and_keeps_the_best_epoch(tiny_data):
    index, val, labels = tiny_data
    created = model()
    cfg = TrainSection(mode="finetune", epochs=8, batch_size=8, probe_epochs=0, early_stop_patience=1)
    result = fine_tune(created, index.train, val, labels, cfg, 0)
    accuracies = [h["val_accuracy"] for h in result.history]
    assert result.epochs_run < 8 and result.val_accuracy == max(accuracies)
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 3) for s in (0, 1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0) and factor(6) == pytest.approx(0.5) and factor(10) == pytest.approx(0.0)


def test_a_fine_tune_that_never_beats_its_probe_ships_the_probes_model(tiny_data):
    """The build never ships a model worse on val than one it trained earlier: here the backbone learning rate is
    made absurd (10 per step, beyond what a recipe allows) so that every fine-tune epoch is worse than the linear
    probe before it; the probe's model (its backbone untouched) is the result, as best epoch 0."""
    from edgetl.train import predict

    index, val, labels = tiny_data
    created = model()
    groups_before, _ = snapshot(created)
    cfg = TrainSection(mode="finetune", epochs=2, batch_size=8, probe_epochs=4, lr=0.01, warmup_epochs=0,
                       early_stop_patience=None).model_copy(update={"backbone_lr_mult": 1000.0})
    result = fine_tune(created, index.train, val, labels, cfg, 0)
    epochs = [h["val_accuracy"] for h in result.history]
    assert len(epochs) == 2 and max(epochs) < result.probe_val_accuracy, (epochs, result.probe_val_accuracy)
    assert result.best_epoch == 0 and result.val_accuracy == result.probe_val_accuracy
    groups_after, _ = snapshot(created)
    assert not any(changed(b, a) for b, a in zip(groups_before, groups_after, strict=True))
    shipped = (predict(created.model, val).argmax(1) == labels).mean() * 100
    assert shipped == pytest.approx(result.probe_val_accuracy)
